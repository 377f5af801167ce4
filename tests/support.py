"""Real servers for the tests: private redis-server processes, PostgreSQL schemas of a
test's own, SQLite files and test settings."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
import sqlalchemy as sa
from pydantic_settings import BaseSettings, SettingsConfigDict

from cache import RedisSchedulerCache, SchedulerBucket
from tasks.source import SqlSource, SqlWriter
from tasks.source.engine import make_engine

NO_POSTGRES = (
    "needs SCHED_TEST_POSTGRES_URL (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)"
)


class TestServers(BaseSettings):
    """Where the shared test servers are (``SCHED_TEST_*``; unset means skip)."""

    __test__ = False
    model_config = SettingsConfigDict(env_prefix="SCHED_TEST_", extra="ignore")

    postgres_url: str | None = None
    amqp_url: str | None = None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def closed_port() -> int:
    """A port nothing listens on (bound and released just now)."""
    return free_port()


def sqlite_url_in(directory: Path) -> str:
    return f"sqlite:///{directory / 'source.sqlite3'}"


@contextmanager
def postgres_schema(base_url: str) -> Iterator[str]:
    """A URL whose connections use a new, empty schema; the schema is dropped after."""
    schema = f"sched_test_{uuid.uuid4().hex[:12]}"
    admin = make_engine(base_url)
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        url = sa.make_url(base_url).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@contextmanager
def postgres_schema_or_skip(servers: TestServers) -> Iterator[str]:
    """:func:`postgres_schema` on the test server; the test is skipped without one."""
    if not servers.postgres_url:
        pytest.skip(NO_POSTGRES)
    with postgres_schema(servers.postgres_url) as url:
        yield url


class RedisServer:
    """A private ``redis-server`` on a free 127.0.0.1 port, for tests that kill it."""

    def __init__(self, port: int | None = None, args: Sequence[str] = ()) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not on the PATH (apt-get install redis-server)")
        self.port = port or free_port()
        self.args = list(args)
        self.dir = Path(tempfile.mkdtemp(prefix="sched-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
                "--logfile",
                str(self.dir / "redis.log"),
                *self.args,
            ],
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(
                        f"redis-server on port {self.port} did not start: "
                        f"{(self.dir / 'redis.log').read_text(errors='replace')[-2000:]}"
                    ) from None
                time.sleep(0.02)
        client.close()
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def seed_group(source: SqlSource, accounts: int = 3, platform: str = "openai") -> Any:
    group = SqlWriter(source).create_group("team", platform)
    for n in range(accounts):
        SqlWriter(source).create_account(
            name=f"acc-{n}",
            platform=platform,
            type="apikey",
            priority=n,
            group_ids={group.id: 1},
        )
    return group


def snapshot_ids(cache: RedisSchedulerCache, bucket: SchedulerBucket) -> list[int] | None:
    accounts = cache.get_snapshot(bucket)
    return None if accounts is None else [a.id for a in accounts]


@contextmanager
def rabbitmq_vhost(amqp_url: str) -> Iterator[str | None]:
    """A vhost of the caller's own on a local RabbitMQ (made with ``rabbitmqctl``), so a
    worker of another run on the same server never takes this test's messages; None
    when there is no way to make one (no rabbitmqctl, or a remote server)."""
    url = urlsplit(amqp_url)
    ctl = shutil.which("rabbitmqctl")
    if ctl is None or url.hostname not in ("127.0.0.1", "localhost"):
        yield None
        return
    vhost = f"sched-test-{uuid.uuid4().hex[:12]}"

    def run(*args: str) -> None:
        subprocess.run([ctl, *args], check=True, capture_output=True, timeout=60)

    run("add_vhost", vhost)
    try:
        run("set_permissions", "-p", vhost, url.username or "guest", ".*", ".*", ".*")
        yield f"{url.scheme}://{url.netloc}/{vhost}"
    finally:
        run("delete_vhost", vhost)
