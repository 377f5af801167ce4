"""Which failures are retried: outages are, bugs and bad data are not (one place decides,
:func:`tasks.worker.retry.is_transient`)."""

from __future__ import annotations

from typing import Any

import pytest
from kombu.exceptions import OperationalError as BrokerError
from pydantic import ValidationError
from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from cache import (
    CacheError,
    CacheUnavailable,
    CorruptKey,
    CorruptPayload,
    InvalidAccountId,
    InvalidBucket,
    RedisSchedulerCache,
    SchedulerBucket,
)
from tasks.celery import app
from tasks.settings import Settings
from tasks.source.errors import (
    AccountNotFound,
    InvalidDatabaseUrl,
    SchemaMissing,
    SourceError,
    SourceUnavailable,
)
from tasks.worker.last_used import InvalidLastUsed
from tasks.worker.outbox_plan import MalformedEvent
from tasks.worker.retry import LockLost, describe, is_transient
from tests.processes import wait_for


def raised_from(error: CacheError, cause: BaseException) -> CacheError:
    error.__cause__ = cause
    return error


OUTAGES = [
    CacheUnavailable("redis unavailable during read: Connection refused"),
    SourceUnavailable("database unavailable"),
    BrokerError("broker unreachable"),
    LockLost("lock taken over"),
    # What the cache raised for these replies before it named them CacheUnavailable.
    raised_from(CacheError("redis error"), ReadOnlyError("You can't write against a replica")),
    raised_from(CacheError("redis error"), OutOfMemoryError("used memory > 'maxmemory'")),
    raised_from(CacheError("redis error"), ResponseError("BUSY Redis is busy running a script")),
    raised_from(CacheError("redis error"), ResponseError("LOADING Redis is loading")),
    raised_from(CacheError("redis error"), ResponseError("MASTERDOWN Link with MASTER is down")),
    raised_from(CacheError("redis error"), TryAgainError("TRYAGAIN multiple keys")),
    raised_from(CacheError("redis error"), ClusterDownError("CLUSTERDOWN the cluster is down")),
    raised_from(CacheError("redis error"), MasterDownError("MASTERDOWN")),
]

NOT_OUTAGES = [
    # A script that raised: the same input raises again, on every retry.
    raised_from(
        CacheError("redis error during begin rebuild"),
        ResponseError("ERR user_script:12: attempt to compare nil with number"),
    ),
    CacheError("a cache error that says nothing of an outage"),
    CorruptKey("wrong key type during read (key sched:x)", "sched:x"),
    CorruptPayload("account 7: payload does not decode", 7),
    InvalidBucket("invalid bucket 'x'"),
    InvalidAccountId("invalid account id 0"),
    InvalidLastUsed("invalid last use 'soon'"),
    MalformedEvent("unknown event type 'x'"),
    SchemaMissing("schema missing: run `sched db init`"),
    InvalidDatabaseUrl("no driver"),
    AccountNotFound("no account 7"),
    SourceError("insert returned no primary key"),
    ValueError("bad value"),
    TypeError("force must be a bool"),
    KeyError("k"),
    AttributeError("a bug"),
    # A wire error outside a CacheError: the cache let it escape, which is a bug.
    RedisConnectionError("raw"),
]


@pytest.mark.parametrize("exc", OUTAGES, ids=lambda e: f"{type(e).__name__}:{e.__cause__!r}")
def test_outages_are_retried(exc: BaseException) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize("exc", NOT_OUTAGES, ids=lambda e: f"{type(e).__name__}:{e.__cause__!r}")
def test_bugs_and_bad_data_are_not_retried(exc: BaseException) -> None:
    assert not is_transient(exc)


def test_a_validation_error_is_bad_data() -> None:
    with pytest.raises(ValidationError) as info:
        Settings(lock_ttl_seconds="x")
    assert not is_transient(info.value)


def test_busy_loading_is_already_unavailable_to_the_cache() -> None:
    # redis-py raises LOADING as a ConnectionError: the cache's CacheUnavailable.
    assert issubclass(BusyLoadingError, RedisConnectionError)


def test_the_log_names_the_script_and_the_key() -> None:
    exc = CorruptKey("wrong key type", "sched:{0:openai:single}:meta")
    exc.script = "begin_rebuild"  # type: ignore[attr-defined]
    text = describe(exc)
    assert "CorruptKey" in text
    assert "script 'begin_rebuild'" in text
    assert "key 'sched:{0:openai:single}:meta'" in text
    assert describe(ValueError("x" * 10_000)).startswith("ValueError: 'xxx")
    assert len(describe(ValueError("x" * 10_000))) < 700


def test_a_script_error_in_a_worker_fails_at_once_not_retried(
    worker: Any, events: Any, task_cache: RedisSchedulerCache
) -> None:
    bucket = SchedulerBucket(0, "openai", "single")
    # A request count that is no number: begin_rebuild's comparison raises in Lua.
    task_cache.client.hset(task_cache.keys.rebuild_state(bucket), "req", "garbage")
    sent = app.send_task("tasks.rebuild_bucket", (str(bucket),))

    failed = wait_for(
        lambda: [e for e in events.of("task-failed") if e["uuid"] == sent.id],
        timeout=20,
        what="the rebuild to fail",
    )
    assert "attempt to compare" in failed[0]["exception"]
    assert not [e for e in events.of("task-retried") if e["uuid"] == sent.id]
    log = worker.log_path.read_text()
    assert "tasks.rebuild_bucket failed, not retried (a bug or bad data" in log
