"""Shared fixtures: one Redis for the whole run, flushed for every test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from cache import RedisSchedulerCache
from tasks.settings import Settings
from tests.support import RedisServer, TestServers


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """SCHED_REDIS_URL (set by `make test` to a private server), else a private server."""
    configured = Settings().redis_url if _env_has_redis_url() else None
    if configured:
        yield configured
        return
    server = RedisServer().start()
    try:
        yield server.url
    finally:
        server.close()


def _env_has_redis_url() -> bool:
    # Settings has a default URL; only an explicit one counts as "given".
    return "redis_url" in Settings().model_fields_set


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, socket_timeout=10)
    client.flushdb()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def cache(redis_client: redis.Redis) -> RedisSchedulerCache:
    return RedisSchedulerCache(redis_client)


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A Redis of this test's own, free to stop and restart."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def test_servers() -> TestServers:
    return TestServers()
