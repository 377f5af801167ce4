"""One classification of Redis failures: outages are CacheUnavailable, nothing else."""

from __future__ import annotations

import pytest
import redis
from redis.exceptions import (
    BusyLoadingError,
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)

from cache import CacheUnavailable, CorruptKey, RedisSchedulerCache, ScriptError
from cache.base import redis_errors


@pytest.mark.parametrize(
    "exc",
    [
        ReadOnlyError("READONLY You can't write against a read only replica."),
        BusyLoadingError("LOADING Redis is loading the dataset in memory"),
        ResponseError("BUSY Redis is busy running a script."),
        TryAgainError("TRYAGAIN Multiple keys request during rehashing of slot"),
        ResponseError("CLUSTERDOWN The cluster is down"),
        MasterDownError("MASTERDOWN Link with MASTER is down"),
        OutOfMemoryError("OOM command not allowed when used memory > 'maxmemory'."),
        ResponseError("Command # 2 (EVALSHA abc 1 k) of pipeline caused error: BUSY Redis is busy"),
        redis.ConnectionError("Connection refused"),
        redis.TimeoutError("Timeout reading from socket"),
    ],
)
def test_every_outage_is_cache_unavailable(exc: Exception) -> None:
    with pytest.raises(CacheUnavailable), redis_errors("action"):
        raise exc


def test_a_wrong_type_is_a_corrupt_key() -> None:
    with pytest.raises(CorruptKey, match="sched:x"), redis_errors("action", "sched:x"):
        raise ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")


def test_any_other_error_reply_is_a_script_error_naming_the_key() -> None:
    with pytest.raises(ScriptError, match="sched:x") as caught, redis_errors("action", "sched:x"):
        raise ResponseError("ERR user_script:3: boom " + "x" * 10_000)
    assert len(str(caught.value)) < 600


def test_a_lua_error_names_the_script(cache: RedisSchedulerCache) -> None:
    keys = [cache.keys.last_used, cache.keys.digests, "p", "l", "s"]
    script = cache.last_use._w.scripts["update_last_used"]
    with (
        pytest.raises(ScriptError, match="update_last_used") as caught,
        redis_errors("test", cache.keys.last_used),
    ):
        script(keys=keys, args=["0", "1,2", "5", 9])
    assert caught.value.script == "update_last_used"
    assert caught.value.key == cache.keys.last_used
