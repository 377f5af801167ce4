"""mark_unschedulable: a gateway's verdict, written durably with its event, picked up
by a woken poll, and honoured at once by the calling process."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from cache import RedisSchedulerCache, SchedulerBucket
from tasks import list_schedulable, mark_unschedulable, mark_unschedulable_async, pick, runtime
from tasks.settings import Settings
from tasks.source import AccountNotFound, SqlSource, SqlWriter
from tasks.web.marks import forget_marks
from tests.processes import WorkerProcess, wait_for

BUCKET = SchedulerBucket.parse("0:openai:single")


@pytest.fixture
def marked_world(
    configured: Settings, db: SqlWriter, task_cache: RedisSchedulerCache
) -> Iterator[list[int]]:
    runtime.reset(configured.model_copy(update={"near_cache": False, "fallback_enabled": False}))
    forget_marks()  # ids repeat from one test's database to the next
    ids = [db.create_account(name=n, platform="openai", type="apikey").id for n in "ab"]
    publish(task_cache, db.source)
    yield ids
    forget_marks()


def now() -> datetime:
    return datetime.now(UTC)


def publish(cache: RedisSchedulerCache, source: SqlSource) -> None:
    """Write the bucket's snapshot from the source, as a rebuild would."""
    version = cache.reserve_version(BUCKET)
    cache.set_snapshot(BUCKET, source.accounts_for_bucket(BUCKET, now()), version)


def ids_listed(now: datetime | None = None) -> list[int]:
    return [a.id for a in list_schedulable(0, "openai", now=now)]


@pytest.mark.parametrize(
    ("reason", "column"),
    [
        ("rate_limited", "rate_limit_reset_at"),
        ("overloaded", "overload_until"),
        ("auth failed: 401", "temp_unschedulable_until"),
    ],
)
def test_the_verdict_is_written_in_its_column_with_one_event(
    marked_world: list[int], source: SqlSource, reason: str, column: str
) -> None:
    until = now() + timedelta(minutes=5)
    mark = source.max_outbox_id()

    written = mark_unschedulable(marked_world[0], until=until, reason=reason)

    assert getattr(written, column) == until
    assert not written.is_schedulable(now())
    events = source.outbox_after(mark, 10)
    assert [(e.event_type, e.account_id) for e in events] == [("account_changed", marked_world[0])]
    if column == "temp_unschedulable_until":
        assert written.temp_unschedulable_reason == reason
    # A shorter verdict afterwards does not shorten the block.
    again = mark_unschedulable(marked_world[0], until=now() + timedelta(seconds=30), reason=reason)
    assert getattr(again, column) == until


def test_the_calling_process_stops_picking_the_account_at_once(
    marked_world: list[int], source: SqlSource, task_cache: RedisSchedulerCache
) -> None:
    first, second = marked_world
    assert ids_listed() == [first, second]

    mark_unschedulable(first, until=now() + timedelta(minutes=5), reason="overloaded")

    assert ids_listed() == [second]  # the snapshot still lists it: the mark holds it back
    publish(task_cache, source)  # the change arrives through the cache
    assert ids_listed() == [second]
    assert ids_listed(now=now() + timedelta(minutes=6)) == [first, second]


@pytest.mark.parametrize("near_cache", [True, False])
def test_a_just_marked_account_is_never_picked(
    marked_world: list[int], configured: Settings, near_cache: bool
) -> None:
    runtime.reset(configured.model_copy(update={"near_cache": near_cache}))
    first, second = marked_world
    mark_unschedulable(first, until=now() + timedelta(minutes=5), reason="rate_limited")

    picked = [pick(0, "openai") for _ in range(4)]
    assert [a.id if a else None for a in picked] == [second] * 4
    assert pick(0, "openai", exclude=[second]) is None
    later = pick(0, "openai", exclude=[second], now=now() + timedelta(minutes=6))
    assert later is not None and later.id == first


def test_an_expired_mark_lets_the_account_back(marked_world: list[int]) -> None:
    first, second = marked_world
    mark_unschedulable(first, until=datetime.now(UTC) + timedelta(seconds=60))

    assert ids_listed(now=datetime.now(UTC) + timedelta(seconds=61)) == [first, second]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0,), "invalid account id 0"),
        (("seven",), "'seven'"),
        ((1,), "has passed already"),
        ((1,), "more than 30 days ahead"),
        ((1,), "not a datetime"),
        ((1,), "invalid reason ''"),
    ],
)
def test_bad_input_is_refused_by_name_and_writes_nothing(
    marked_world: list[int], source: SqlSource, args: tuple[object], message: str
) -> None:
    until: object = now() + timedelta(minutes=1)
    reason = "x"
    if message == "has passed already":
        until = now() - timedelta(seconds=1)
    elif "30 days" in message:
        until = now() + timedelta(days=31)
    elif message == "not a datetime":
        until = "tomorrow"
    elif "reason" in message:
        reason = ""
    mark = source.max_outbox_id()

    with pytest.raises(ValueError, match=message):
        mark_unschedulable(args[0], until=until, reason=reason)  # type: ignore[arg-type]

    assert source.outbox_after(mark, 10) == []


def test_an_unknown_account_is_not_found(marked_world: list[int]) -> None:
    with pytest.raises(AccountNotFound, match="account 999"):
        mark_unschedulable(999)


def test_the_async_twin_marks_too(marked_world: list[int]) -> None:
    written = asyncio.run(mark_unschedulable_async(marked_world[1], reason="rate_limited"))

    assert written.rate_limit_reset_at is not None
    assert ids_listed() == [marked_world[0]]


def test_on_sqlite_the_mark_reaches_the_cache_by_its_nudge(
    start_worker: Callable[..., WorkerProcess],
    process_env: dict[str, str],
    db: SqlWriter,
    task_cache: RedisSchedulerCache,
) -> None:
    start_worker(process_env)  # no beat: only the nudge sends a poll
    account = db.create_account(name="a", platform="openai", type="apikey")

    mark_unschedulable(account.id, reason="overloaded")

    wait_for(
        lambda: (
            (cached := task_cache.get_account(account.id)) is not None
            and cached.overload_until is not None
        ),
        what="the mark in the cache",
        timeout=10,
    )
