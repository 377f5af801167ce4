"""Near caches for the cache tests, closed at the end of each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from cache import NearCache, RedisSchedulerCache


@pytest.fixture
def near_cache(redis_client: redis.Redis) -> Iterator[Callable[..., NearCache]]:
    """``near_cache(**options)``: a near cache over its own client of the test's Redis."""
    made: list[NearCache] = []

    def make(client: redis.Redis | None = None, **options: Any) -> NearCache:
        own = client or redis.Redis(connection_pool=redis_client.connection_pool)
        near = NearCache(RedisSchedulerCache(own), **options)
        made.append(near)
        return near

    try:
        yield make
    finally:
        for near in made:
            near.close()
