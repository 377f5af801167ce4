"""Redis as production runs it, started by the tests from the ``redis-server`` binary on
free ports: a Cluster of three masters, and a master with a replica watched by three
sentinels. Skipped with a reason where the binaries are missing."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

from tests.support import RedisServer, free_port

MASTER_NAME = "sched-master"
# Sentinels call a master down after this long without an answer: short, so that a
# failover test takes seconds (production keeps the default 30 s or a few seconds).
DOWN_AFTER_MS = 1000


def needs_redis_binaries() -> None:
    for binary in ("redis-server", "redis-cli"):
        if shutil.which(binary) is None:
            pytest.skip(f"needs {binary} on the PATH (apt-get install redis-server redis-tools)")


Topology = TypeVar("Topology", "RedisClusterServers", "SentinelServers")


@contextmanager
def started(servers: Topology) -> Iterator[Topology]:
    """``servers`` running for the ``with`` block (skipped without the binaries)."""
    needs_redis_binaries()
    servers.start()
    try:
        yield servers
    finally:
        servers.close()


def wait_until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def free_cluster_port() -> int:
    """A free port whose cluster bus port (10000 higher, at most 65535) is free too."""
    for _ in range(200):
        port = random.randint(20_000, 55_535)
        if all(_free(candidate) for candidate in (port, port + 10_000)):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class RedisClusterServers:
    """Three cluster-enabled masters, slots spread by ``redis-cli --cluster create``."""

    def __init__(self, masters: int = 3) -> None:
        options = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        options += ["--cluster-node-timeout", "2000"]
        self.nodes = [RedisServer(free_cluster_port(), options) for _ in range(masters)]

    @property
    def url(self) -> str:
        """A seed node: the clients learn the others from it."""
        return f"redis://127.0.0.1:{self.nodes[0].port}"

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    def start(self) -> RedisClusterServers:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [
                "redis-cli", "--cluster", "create",
                *(f"127.0.0.1:{port}" for port in self.ports),
                "--cluster-replicas", "0", "--cluster-yes",
            ],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        for port in self.ports:
            client = redis.Redis(port=port, socket_timeout=1)
            wait_until(
                lambda c=client: c.cluster("info")["cluster_state"] == "ok",  # type: ignore[misc]
                f"cluster node {port} to say the cluster is ok",
            )
            client.close()
        return self

    def close(self) -> None:
        for node in self.nodes:
            node.close()


class SentinelServers:
    """A master, one replica, and three sentinels watching them as :data:`MASTER_NAME`.

    ``writable_replica`` lets a test write to the replica alone (a FLUSHALL there is
    not replicated): the way to make a replica that lacks the master's state.
    """

    def __init__(self, *, writable_replica: bool = False) -> None:
        self.writable_replica = writable_replica
        self.master = RedisServer()
        self.replica = RedisServer()
        self.dir = Path(tempfile.mkdtemp(prefix="sched-sentinel-"))
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """Every sentinel, in the form Celery's broker takes too."""
        return ";".join(f"sentinel://127.0.0.1:{port}/0" for port in self.sentinel_ports)

    def start(self) -> SentinelServers:
        self.master.start()
        self.replica.args = ["--replicaof", "127.0.0.1", str(self.master.port)]
        if self.writable_replica:
            self.replica.args += ["--replica-read-only", "no"]
        self.replica.start()
        replica = redis.Redis(port=self.replica.port, socket_timeout=1)
        wait_until(
            lambda: replica.info("replication").get("master_link_status") == "up",
            "the replica to sync",
        )
        replica.close()
        for port in self.sentinel_ports:
            conf = self.dir / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.dir}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {MASTER_NAME} 10000\n"
                f"sentinel parallel-syncs {MASTER_NAME} 1\n"
            )
            log = (self.dir / f"sentinel-{port}.log").open("wb")
            self.sentinels.append(
                subprocess.Popen(["redis-server", str(conf), "--sentinel"], stdout=log, stderr=log)
            )
        for port in self.sentinel_ports:
            sentinel = redis.Redis(port=port, socket_timeout=1, decode_responses=True)
            wait_until(
                lambda s=sentinel: (  # type: ignore[misc]
                    len(s.sentinel_sentinels(MASTER_NAME)) == 2
                    and len(s.sentinel_slaves(MASTER_NAME)) == 1
                ),
                f"sentinel {port} to know the others and the replica",
            )
            sentinel.close()
        return self

    def master_port(self) -> int:
        """The port of the master the sentinels name now."""
        sentinel = redis.Redis(port=self.sentinel_ports[0], socket_timeout=1)
        try:
            address: Any = sentinel.execute_command(  # type: ignore[no-untyped-call]
                "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME
            )
            return int(address[1])
        finally:
            sentinel.close()

    def close(self) -> None:
        for process in self.sentinels:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
        self.master.close()
        self.replica.close()
        shutil.rmtree(self.dir, ignore_errors=True)
