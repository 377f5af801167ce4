"""docker-compose.sentinel.yml, checked without a container engine: every service goes
through the sentinels, and the sentinels' configuration runs on the real binary."""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from tasks.connections import broker_transport_options
from tests.processes import REPO, settings_from_env
from tests.support import RedisServer, free_port
from tests.topologies import needs_redis_binaries, wait_until

BASE = REPO / "docker-compose.yml"
OVERRIDE = REPO / "docker-compose.sentinel.yml"
PYTHON_SERVICES = ("db-init", "seed", "worker", "beat", "flower", "metrics")
SENTINELS = ("sentinel-1", "sentinel-2", "sentinel-3")


def _load(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict)
    services = loaded["services"]
    assert isinstance(services, dict)
    return services


def _resolved(value: str) -> str:
    """``${NAME:-default}`` and ``${NAME:?message}`` as compose resolves them with no
    variable set (a required one gets a stand-in)."""
    value = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)
    return re.sub(r"\$\{[A-Z_]+:\?[^}]*\}", "set-by-the-operator", value)


def merged_env(name: str) -> dict[str, str]:
    """A service's environment as compose merges the two files: key by key."""
    env: dict[str, str] = {}
    for services in (_load(BASE), _load(OVERRIDE)):
        for key, value in (services.get(name, {}).get("environment") or {}).items():
            env[str(key)] = _resolved(str(value))
    return env


def sentinel_config_lines() -> list[str]:
    command = _load(OVERRIDE)["sentinel-1"]["command"]
    return re.findall(r"'([^']+)'", command[2])[1:]  # after printf's own '%s\n'


def monitor_line() -> str:
    return next(line for line in sentinel_config_lines() if line.startswith("sentinel monitor"))


@pytest.mark.parametrize("name", PYTHON_SERVICES)
def test_every_python_service_goes_through_the_sentinels(name: str) -> None:
    env = merged_env(name)
    settings = settings_from_env(env)
    monitored = next(
        line for line in sentinel_config_lines() if line.startswith("sentinel monitor")
    )
    master = monitored.split()[2]
    assert settings.redis_sentinel_master == master
    sentinels = set(re.findall(r"sentinel://([a-z0-9-]+):26379", settings.redis_url))
    assert sentinels == {"sentinel-1", "sentinel-2", "sentinel-3"}
    assert sentinels <= set(_load(OVERRIDE))
    assert broker_transport_options(settings)["master_name"] == master


def test_the_sentinels_watch_the_master_with_a_quorum_and_the_replica_follows_it() -> None:
    services = _load(OVERRIDE)
    monitored = next(
        line for line in sentinel_config_lines() if line.startswith("sentinel monitor")
    )
    _, _, _, host, port, quorum = monitored.split()
    assert (host, port) == ("redis", "6379") and int(quorum) == 2
    replica = [str(part) for part in services["redis-replica"]["command"]]
    assert replica[replica.index("--replicaof") + 1 :][:2] == ["redis", "6379"]
    assert replica[replica.index("--maxmemory-policy") + 1] == "noeviction"


@pytest.fixture
def master() -> Iterator[RedisServer]:
    needs_redis_binaries()
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.close()


def test_the_sentinel_configuration_runs_on_the_real_binary(master: RedisServer) -> None:
    """The file's lines, with this machine's master for the `redis` service."""
    port = free_port()
    lines = [line.replace("port 26379", f"port {port}") for line in sentinel_config_lines()]
    lines = [line.replace(" redis 6379 ", f" 127.0.0.1 {master.port} ") for line in lines]
    with tempfile.TemporaryDirectory() as workdir:
        conf = Path(workdir) / "sentinel.conf"
        conf.write_text("\n".join(lines) + f"\nbind 127.0.0.1\ndir {workdir}\n")
        process = subprocess.Popen(
            ["redis-server", str(conf), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        sentinel = redis.Redis(port=port, socket_timeout=1, decode_responses=True)

        def watching() -> bool:
            state: Any = sentinel.sentinel_master("sched")
            return bool(state["port"] == master.port)

        try:
            wait_until(
                watching,
                "the sentinel to monitor the master",
            )
        finally:
            sentinel.close()
            process.kill()
            process.wait(timeout=10)


@pytest.mark.parametrize("name", PYTHON_SERVICES)
def test_every_python_service_waits_for_healthy_sentinels(name: str) -> None:
    depends = _load(OVERRIDE)[name]["depends_on"]
    for sentinel in SENTINELS:
        assert depends[sentinel]["condition"] == "service_healthy", (name, sentinel)
    # The base file's conditions stay: compose merges depends_on key by key.
    base = _load(BASE)[name]["depends_on"]
    assert not set(base) & set(SENTINELS)


def test_a_sentinel_is_healthy_once_it_knows_the_master() -> None:
    services = _load(OVERRIDE)
    master = monitor_line().split()[2]
    for sentinel in SENTINELS:
        test = services[sentinel]["healthcheck"]["test"]
        assert test[0] == "CMD-SHELL"
        assert f"sentinel get-master-addr-by-name {master}" in test[1], test
    assert "redis-cli" in " ".join(services["redis-replica"]["healthcheck"]["test"])
