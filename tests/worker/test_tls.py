"""Passwords and TLS to Redis, for the cache and the Celery broker, on a real redis-server.

The server of this module listens on TLS only and requires a password; its certificate
comes from a CA made for the module. So whatever works against it went through TLS and
AUTH, and a client that does not verify the server cannot pass for one that does: the
tests without the CA must fail.
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import pytest
import redis
from kombu.exceptions import OperationalError as BrokerError
from pydantic import ValidationError

from cache import CacheError, RedisSchedulerCache, SchedulerBucket
from tasks import runtime
from tasks.celery import app
from tasks.connections import broker_ssl_options, redis_client_options
from tasks.settings import Settings
from tasks.source import SqlSource
from tests.cache.factories import accounts
from tests.processes import REPO, WorkerProcess, child_env, settings_from_env
from tests.support import free_port
from tests.worker.helpers import change_reaches_snapshot

PASSWORD = "tls-test-secret-4f1c"
WRONG_PASSWORD = "not-the-secret-9b2e"
START_TIMEOUT = 10.0
CLI_TIMEOUT = 60.0


def make_certificates(directory: Path) -> None:
    """A CA, and a server certificate it signed for 127.0.0.1, in ``directory``."""

    def openssl(*args: str) -> None:
        subprocess.run(
            ["openssl", *args], cwd=directory, check=True, capture_output=True, timeout=30
        )

    ec_key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl(
        "req",
        "-x509",
        *ec_key,
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=sched test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    openssl(
        "req",
        "-new",
        *ec_key,
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    )
    # Clients match the address they dialled against subjectAltName, not the CN.
    (directory / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "authorityKeyIdentifier=keyid\n"
    )
    openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    )


class TlsRedis:
    """A private ``redis-server`` on TLS only (``--port 0``), with ``--requirepass``."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.port = free_port()
        self.ca_file = directory / "ca.crt"
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, password: str = PASSWORD) -> str:
        return f"rediss://:{password}@127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(
            self.url(),
            ssl_ca_certs=str(self.ca_file),
            socket_timeout=10,
            socket_connect_timeout=1,
        )

    def start(self) -> Self:
        make_certificates(self.dir)
        with (self.dir / "stderr.log").open("wb") as stderr:
            self.process = subprocess.Popen(
                [
                    "redis-server",
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--tls-port",
                    str(self.port),
                    "--tls-cert-file",
                    str(self.dir / "server.crt"),
                    "--tls-key-file",
                    str(self.dir / "server.key"),
                    "--tls-ca-cert-file",
                    str(self.ca_file),
                    "--tls-auth-clients",
                    "no",
                    "--requirepass",
                    PASSWORD,
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.dir),
                    "--logfile",
                    str(self.dir / "redis.log"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        assert self.process is not None
        client = self.client()
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError as exc:
                    if self.process.poll() is not None:
                        self._exited()
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"TLS redis-server on port {self.port} not ready: {exc}\n"
                            f"{self._output()}"
                        ) from None
                    time.sleep(0.05)
        finally:
            client.close()

    def _exited(self) -> None:
        output = self._output()
        # Built without TLS, redis-server 7.0 knows no tls-* option; 7.2 and later, built
        # with TLS as a module, start without its connection type. Any other failure
        # (a bad certificate, say) is this module's bug and must not pass as a skip.
        unknown_option = "Bad directive" in output and ">>> 'tls-" in output
        if unknown_option or "listener of tls" in output.lower():
            lines = [line.strip() for line in output.splitlines() if line.strip()]
            pytest.skip(f"this redis-server has no TLS support: {' / '.join(lines[-3:])}")
        raise RuntimeError(f"TLS redis-server exited at start:\n{output}")

    def _output(self) -> str:
        parts = []
        for name in ("stderr.log", "redis.log"):
            path = self.dir / name
            if path.exists():
                parts.append(path.read_text(errors="replace")[-2000:])
        return "\n".join(parts)

    def flush(self) -> None:
        client = self.client()
        try:
            client.flushdb()
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None


@pytest.fixture(scope="module")
def tls_redis() -> Iterator[TlsRedis]:
    """The module's TLS server; its directory (keys included) is removed after."""
    directory = Path(tempfile.mkdtemp(prefix="sched-tls-redis-"))
    server = TlsRedis(directory)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def process_env(tls_redis: TlsRedis, sqlite_url: str) -> dict[str, str]:
    """Cache and broker on the TLS server (flushed), by password and the module's CA.

    In place of the suite's: ``configured``, ``source``, ``start_worker`` and
    ``task_cache`` of this module all use it.
    """
    tls_redis.flush()
    return child_env(
        SCHED_REDIS_URL=tls_redis.url(),
        SCHED_TLS_CA_FILE=str(tls_redis.ca_file),
        SCHED_DATABASE_URL=sqlite_url,
    )


def run_sched(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tasks", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )


def messages(exc: BaseException | None) -> str:
    """The messages of ``exc`` and of every exception it was raised from or during."""
    parts = []
    while exc is not None:
        parts.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)


# -- the settings --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tls_ca_file", "tls_cert_file"])
def test_a_tls_file_that_does_not_exist_is_named_at_start(name: str, tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere.pem")
    with pytest.raises(ValidationError) as caught:
        settings_from_env({f"SCHED_{name.upper()}": missing})
    assert f"{name}: no such file {missing!r}" in str(caught.value)


def test_tls_options_only_for_tls_urls_and_always_verifying(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    plain = Settings.model_validate({"redis_url": "redis://:pw@h:6379/0", "tls_ca_file": str(ca)})
    assert redis_client_options(plain) == {}
    assert broker_ssl_options(plain) is None

    amqps = plain.model_copy(update={"broker_url": "amqps://u:pw@h:5671//"})
    assert broker_ssl_options(amqps) == {
        "cert_reqs": ssl.CERT_REQUIRED,
        "ca_certs": str(ca),
        "server_hostname": None,
    }
    # Without a CA file the system CAs verify: no option may switch verification off.
    rediss = Settings.model_validate({"redis_url": "rediss://:pw@h:6380/0"})
    assert redis_client_options(rediss) == {"ssl_cert_reqs": "required"}
    assert broker_ssl_options(rediss) == {"ssl_cert_reqs": ssl.CERT_REQUIRED}


# -- the cache -----------------------------------------------------------------------


def test_the_cache_writes_and_reads_a_snapshot_over_tls_with_a_password(
    tls_redis: TlsRedis, task_cache: RedisSchedulerCache
) -> None:
    assert task_cache.client.connection_pool.connection_class is redis.SSLConnection
    bucket = SchedulerBucket(12, "anthropic", "single")

    assert task_cache.set_snapshot(bucket, accounts(3)) is True

    read = task_cache.get_snapshot(bucket)
    assert read is not None and [a.id for a in read] == [1, 2, 3]
    assert task_cache.bucket_info(bucket).account_count == 3


@pytest.mark.parametrize(
    ("password", "with_ca", "reason"),
    [
        (WRONG_PASSWORD, True, "invalid username-password pair"),
        (PASSWORD, False, "certificate verify failed"),
    ],
    ids=["wrong password", "CA unknown to the system"],
)
def test_a_cache_that_cannot_log_in_fails_without_showing_the_password(
    tls_redis: TlsRedis, password: str, with_ca: bool, reason: str
) -> None:
    env = {"SCHED_REDIS_URL": tls_redis.url(password)}
    if with_ca:
        env["SCHED_TLS_CA_FILE"] = str(tls_redis.ca_file)
    runtime.reset(settings_from_env(env))
    try:
        with pytest.raises(CacheError) as caught:
            runtime.get_cache().ping()
    finally:
        runtime.reset()

    said = messages(caught.value)
    assert reason in said.lower()
    assert password not in said and PASSWORD not in said


def test_the_broker_refuses_a_server_it_cannot_verify(tls_redis: TlsRedis) -> None:
    """kombu on its own would connect to a rediss:// broker without verifying it."""
    runtime.reset(settings_from_env({"SCHED_REDIS_URL": tls_redis.url()}))
    try:
        with app.connection_for_write() as connection, pytest.raises(BrokerError) as caught:
            connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0)
    finally:
        runtime.reset()

    said = messages(caught.value)
    assert "certificate verify failed" in said.lower()
    assert PASSWORD not in said


# -- the worker and the CLI ----------------------------------------------------------


@pytest.mark.slow
def test_a_worker_over_tls_turns_a_requested_rebuild_into_a_snapshot(
    start_worker: Any, source: SqlSource, task_cache: RedisSchedulerCache
) -> None:
    worker: WorkerProcess = start_worker()

    change_reaches_snapshot(source, task_cache)

    log = worker.log_tail(chars=1_000_000)
    assert "rediss://:**@127.0.0.1" in log
    assert PASSWORD not in log


def test_sched_status_over_tls_masks_the_password(
    tls_redis: TlsRedis, process_env: dict[str, str], task_cache: RedisSchedulerCache
) -> None:
    task_cache.set_snapshot(SchedulerBucket(12, "anthropic", "single"), accounts(2))

    as_json = run_sched(process_env, "status", "--json")
    tables = run_sched(process_env, "status")

    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    assert report["redis_url"] == f"rediss://:***@127.0.0.1:{tls_redis.port}/0"
    counts = {row["bucket"]: row["account_count"] for row in report["buckets"]}
    assert counts["12:anthropic:single"] == 2
    assert tables.returncode == 0, tables.stderr
    assert "12:anthropic:single" in tables.stdout
    for output in (as_json.stdout, as_json.stderr, tables.stdout, tables.stderr):
        assert PASSWORD not in output


def test_sched_status_with_a_wrong_password_names_the_masked_url(
    tls_redis: TlsRedis, process_env: dict[str, str]
) -> None:
    env = {**process_env, "SCHED_REDIS_URL": tls_redis.url(WRONG_PASSWORD)}

    done = run_sched(env, "status")

    assert done.returncode == 1, done
    assert f"cannot reach Redis at rediss://:***@127.0.0.1:{tls_redis.port}/0" in done.stderr
    assert WRONG_PASSWORD not in done.stderr + done.stdout
