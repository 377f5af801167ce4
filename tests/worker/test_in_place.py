"""One account's change applied in place (tasks/worker/in_place.py): each kind reaches
readers with no rebuild, in the source's order, and the races with rebuilds in flight
and with stale reads end with what the source says.

The poller runs in this process against a real Redis and SQLite, rebuild requests
recorded instead of sent (a rebuild is run by hand where a test needs one); the last
test runs the same path through a real worker.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import pytest
import redis

from cache import Account, RedisSchedulerCache, SchedulerBucket
from cache.accounts import Keeps, Staged
from tasks.settings import Settings
from tasks.source import SqlSource, SqlWriter
from tasks.worker.in_place import PLACE_LIMIT
from tasks.worker.outbox import OutboxPoller, poll_outbox
from tasks.worker.outbox_plan import BatchPlan
from tests.processes import WorkerProcess, wait_for

GROUP = 5
BUCKETS = [SchedulerBucket(g, "openai", m) for g in (0, GROUP) for m in ("single", "forced")]
IN_GROUP = [b for b in BUCKETS if b.group_id == GROUP]


class Recorder:
    """Stands in for ``request_rebuild``: the buckets asked for, in order."""

    def __init__(self) -> None:
        self.requested: list[SchedulerBucket] = []

    def __call__(self, bucket: SchedulerBucket) -> bool:
        self.requested.append(bucket)
        return True

    def take(self) -> set[SchedulerBucket]:
        taken = set(self.requested)
        self.requested.clear()
        return taken


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def cache(redis_client: redis.Redis) -> RedisSchedulerCache:
    return RedisSchedulerCache(redis_client)


@pytest.fixture
def poller(
    configured: Settings, source: SqlSource, cache: RedisSchedulerCache, recorder: Recorder
) -> OutboxPoller:
    SqlWriter(source).create_group("g5", "openai", id=GROUP)
    made = OutboxPoller(
        cache, source, config=configured, request_rebuild=recorder, refresh_all=lambda: None
    )
    made.poll_batch()
    recorder.take()
    return made


def rebuild(cache: RedisSchedulerCache, source: SqlSource, *buckets: SchedulerBucket) -> None:
    """What a rebuild task does: reserve, read the source, write."""
    for bucket in buckets or BUCKETS:
        version = cache.reserve_version(bucket)
        assert cache.set_snapshot(bucket, source.accounts_for_bucket(bucket, now()), version)


def now() -> datetime:
    return datetime.now(UTC)


def served(cache: RedisSchedulerCache, bucket: SchedulerBucket) -> list[int]:
    """What a fresh read of the bucket serves, in order."""
    read = cache.read_snapshot(bucket)
    assert read is not None, f"{bucket} has no active version"
    return [a.id for a in read.accounts]


def in_source(source: SqlSource, bucket: SchedulerBucket) -> list[int]:
    return [a.id for a in source.accounts_for_bucket(bucket, now())]


def versions(cache: RedisSchedulerCache) -> dict[SchedulerBucket, int | None]:
    return {b: cache.bucket_info(b).active_version for b in BUCKETS}


def assert_in_place(
    cache: RedisSchedulerCache, source: SqlSource, recorder: Recorder, before: dict[Any, Any]
) -> None:
    """No rebuild asked for or run, and every bucket serves what the source says."""
    assert recorder.take() == set()
    assert versions(cache) == before
    for bucket in BUCKETS:
        assert served(cache, bucket) == in_source(source, bucket), bucket


def openai(db: SqlWriter, name: str, **fields: Any) -> Account:
    return db.create_account(name=name, platform="openai", type="apikey", **fields)


# -- each kind of change ------------------------------------------------------------------
def test_insert_move_removal_and_deletion_reach_readers_without_a_rebuild(
    poller: OutboxPoller,
    cache: RedisSchedulerCache,
    source: SqlSource,
    recorder: Recorder,
    db: SqlWriter,
) -> None:
    a = openai(db, "a", priority=1, group_ids={GROUP: 10})
    b = openai(db, "b", priority=5, group_ids={GROUP: 10})
    c = openai(db, "c", priority=9, group_ids={GROUP: 10})
    loose = openai(db, "l", priority=5)
    poller.poll_batch()
    recorder.take()
    rebuild(cache, source)
    before = versions(cache)
    assert served(cache, IN_GROUP[0]) == [a.id, b.id, c.id]

    d = openai(db, "d", priority=6, group_ids={GROUP: 10})  # insert, between b and c
    assert poller.poll_batch().placed == 2
    assert_in_place(cache, source, recorder, before)
    assert served(cache, IN_GROUP[0]) == [a.id, b.id, d.id, c.id]

    db.update_account(b.id, priority=20)  # move, to the end
    db.set_account_groups(a.id, {GROUP: 30})  # move by its membership priority
    db.update_account(loose.id, rate_limit_reset_at=datetime(2099, 1, 1, tzinfo=UTC))
    poller.poll_batch()
    assert_in_place(cache, source, recorder, before)
    assert served(cache, IN_GROUP[0]) == [d.id, c.id, b.id, a.id]

    db.set_account_groups(c.id, {})  # removal from the group, insert into group 0
    db.update_account(d.id, status="disabled")  # no candidate: removed
    poller.poll_batch()
    assert_in_place(cache, source, recorder, before)
    assert served(cache, IN_GROUP[0]) == [b.id, a.id]
    assert served(cache, BUCKETS[0]) == [loose.id, c.id]  # by priority

    db.update_account(d.id, status="active")  # a candidate again: placed back
    db.delete_account(b.id)  # deletion
    poller.poll_batch()
    assert_in_place(cache, source, recorder, before)
    assert served(cache, IN_GROUP[0]) == [d.id, a.id]


def test_the_order_after_many_inserts_and_moves_is_the_source_order(
    poller: OutboxPoller,
    cache: RedisSchedulerCache,
    source: SqlSource,
    recorder: Recorder,
    db: SqlWriter,
) -> None:
    """A reference check: random changes, a few per batch; after every batch each
    bucket serves exactly the source's order, and nothing was rebuilt."""
    rng = random.Random(11)
    ids = [openai(db, f"s{i}", priority=rng.randint(0, 9)).id for i in range(6)]
    poller.poll_batch()
    rebuild(cache, source)
    recorder.take()
    before = versions(cache)
    for step in range(30):
        for _ in range(rng.randint(1, 3)):
            roll = rng.random()
            if roll < 0.3 or len(ids) < 4:
                groups = {GROUP: rng.randint(0, 3)} if rng.random() < 0.6 else {}
                ids.append(openai(db, f"n{step}", priority=rng.randint(0, 9), group_ids=groups).id)
            elif roll < 0.6:
                db.update_account(rng.choice(ids), priority=rng.randint(0, 9))
            elif roll < 0.75:
                groups = {GROUP: rng.randint(0, 3)} if rng.random() < 0.6 else {}
                db.set_account_groups(rng.choice(ids), groups)
            elif roll < 0.85:
                db.update_account(rng.choice(ids), status=rng.choice(["active", "disabled"]))
            else:
                db.delete_account(gone := rng.choice(ids))
                ids.remove(gone)
        poller.poll_batch()
        assert_in_place(cache, source, recorder, before)


def test_a_push_names_the_account_it_was_about(
    poller: OutboxPoller, cache: RedisSchedulerCache, source: SqlSource, db: SqlWriter
) -> None:
    first = openai(db, "a", priority=1, group_ids={GROUP: 1})
    second = openai(db, "b", priority=2, group_ids={GROUP: 1})
    poller.poll_batch()
    rebuild(cache, source, IN_GROUP[0])
    pubsub = cache.client.pubsub()
    pubsub.subscribe(cache.keys.changes_channel)
    try:
        assert pubsub.get_message(timeout=1) is not None
        joined = openai(db, "c", priority=3, group_ids={GROUP: 1})  # an insert
        db.update_account(first.id, name="renamed")  # a patch
        db.update_account(second.id, priority=9)  # a move: the patch, then the place
        poller.poll_batch()
        seen: list[list[str]] = []
        deadline = time.monotonic() + 1
        while time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.05)
            if message is not None:
                seen.append(message["data"].decode().split())
    finally:
        pubsub.close()
    mine = [m for m in seen if m[0] == str(IN_GROUP[0])]
    version = str(cache.bucket_info(IN_GROUP[0]).active_version)
    # One push per change, naming the account; a move is two: its patch, its place.
    named = sorted(m[3] for m in mine)
    assert named == sorted(str(a.id) for a in (first, second, second, joined))
    assert served(cache, IN_GROUP[0]) == [first.id, joined.id, second.id]
    assert all(m[1] == version for m in mine)
    gens = [int(m[2]) for m in mine]
    assert gens == list(range(gens[0], gens[0] + len(gens)))  # one step an announcement


# -- when a rebuild is still the answer --------------------------------------------------
def test_more_than_the_limit_in_one_bucket_rebuilds_it_instead(
    poller: OutboxPoller,
    cache: RedisSchedulerCache,
    source: SqlSource,
    recorder: Recorder,
    db: SqlWriter,
) -> None:
    openai(db, "first", group_ids={GROUP: 1})
    poller.poll_batch()
    rebuild(cache, source)
    recorder.take()
    for i in range(PLACE_LIMIT + 1):
        openai(db, f"many{i}", priority=i % 7, group_ids={GROUP: 1})
    report = poller.poll_batch()
    assert report.placed == 0
    assert recorder.take() == set(IN_GROUP)


def test_a_source_that_cannot_say_the_order_falls_back_to_a_rebuild(
    configured: Settings,
    cache: RedisSchedulerCache,
    source: SqlSource,
    recorder: Recorder,
    db: SqlWriter,
) -> None:
    class WithoutOrder:
        def __init__(self, inner: SqlSource) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            if name == "followers":
                raise AttributeError(name)
            return getattr(self.inner, name)

    db.create_group("g5", "openai", id=GROUP)
    openai(db, "a", group_ids={GROUP: 1})
    poller = OutboxPoller(
        cache,
        WithoutOrder(source),
        config=configured,
        request_rebuild=recorder,
        refresh_all=lambda: None,
    )
    poller.poll_batch()
    rebuild(cache, source)
    recorder.take()
    before = versions(cache)

    joined = openai(db, "b", group_ids={GROUP: 1})
    db.update_account(joined.id - 1, name="renamed")  # a patch needs no order
    poller.poll_batch()
    assert recorder.take() == set(IN_GROUP)
    assert versions(cache) == before
    assert served(cache, IN_GROUP[0]) == [joined.id - 1]  # until the rebuild runs


# -- races -----------------------------------------------------------------------------
def test_an_insert_while_a_rebuild_from_an_older_read_is_in_flight_is_back_within_one_rebuild(
    poller: OutboxPoller,
    cache: RedisSchedulerCache,
    source: SqlSource,
    recorder: Recorder,
    db: SqlWriter,
) -> None:
    """The timeline in tasks/worker/in_place.py: v(N+1) reserved and read before the
    account joined, staged; the insert goes into vN; v(N+1) activates without it. The
    insert asked for a rebuild, which puts it back."""
    kept = openai(db, "kept", priority=1, group_ids={GROUP: 1})
    poller.poll_batch()
    bucket = IN_GROUP[0]
    rebuild(cache, source, bucket)
    recorder.take()

    version = cache.reserve_version(bucket)
    old_read = source.accounts_for_bucket(bucket, now())
    joined = openai(db, "joined", priority=2, group_ids={GROUP: 1})
    index = cache.accounts.index

    def staged_then_insert(
        bucket: SchedulerBucket, version: int, staged: list[Staged], keeps: Keeps | None = None
    ) -> list[Staged]:
        poller.poll_batch()  # between staging and activation
        assert served(cache, bucket) == [kept.id, joined.id]  # in the active vN
        return index(bucket, version, staged, keeps)

    cache.accounts.index = staged_then_insert  # type: ignore[method-assign]
    assert cache.set_snapshot(bucket, old_read, version)
    cache.accounts.index = index  # type: ignore[method-assign]

    assert served(cache, bucket) == [kept.id]  # v(N+1) left it out ...
    assert bucket in recorder.take()  # ... and the insert asked for the rebuild
    rebuild(cache, source, bucket)
    assert served(cache, bucket) == [kept.id, joined.id]


def test_a_removal_while_a_rebuild_from_an_older_read_is_in_flight_asks_for_a_rebuild(
    poller: OutboxPoller,
    cache: RedisSchedulerCache,
    source: SqlSource,
    recorder: Recorder,
    db: SqlWriter,
) -> None:
    leaving = openai(db, "leaving", priority=1, group_ids={GROUP: 1})
    poller.poll_batch()
    bucket = IN_GROUP[0]
    rebuild(cache, source, bucket)
    recorder.take()

    version = cache.reserve_version(bucket)
    old_read = source.accounts_for_bucket(bucket, now())  # lists it
    db.set_account_groups(leaving.id, {})
    poller.poll_batch()
    assert served(cache, bucket) == []
    assert bucket in recorder.take()
    cache.set_snapshot(bucket, old_read, version)
    rebuild(cache, source, bucket)
    assert served(cache, bucket) == []


def test_a_stale_read_never_puts_back_what_a_newer_change_removed(
    poller: OutboxPoller,
    cache: RedisSchedulerCache,
    source: SqlSource,
    recorder: Recorder,
    db: SqlWriter,
) -> None:
    """A poll that read the account as a member applies after the one that read it
    leave (a second poller after a lost lock): the removal's revision stops it."""
    account = openai(db, "a", priority=1, group_ids={GROUP: 1})
    other = openai(db, "b", priority=2, group_ids={GROUP: 1})
    poller.poll_batch()
    rebuild(cache, source)
    stale = source.get_accounts([account.id])
    db.set_account_groups(account.id, {})
    poller.poll_batch()
    recorder.take()
    before = versions(cache)

    class StaleSource:
        def __init__(self, inner: SqlSource) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        def get_accounts(self, ids: Iterable[int]) -> dict[int, Account]:
            return {i: stale[i] for i in ids if i in stale}

    late = OutboxPoller(
        cache,
        StaleSource(source),
        config=poller.config,
        request_rebuild=recorder,
        refresh_all=lambda: None,
    )
    late._apply_plan(_plan_for(account.id))
    assert_in_place(cache, source, recorder, before)
    assert served(cache, IN_GROUP[0]) == [other.id]
    # The version itself refuses it too, whatever the account store says.
    placed = cache.place_account(IN_GROUP[0], stale[account.id], [other.id])
    assert placed.status.name == "STALE"
    assert served(cache, IN_GROUP[0]) == [other.id]


def _plan_for(account_id: int) -> BatchPlan:
    plan = BatchPlan()
    plan.add_account(account_id, None)
    plan.regrouped.add(account_id)
    return plan


# -- through a worker -----------------------------------------------------------------
@pytest.mark.slow
def test_an_insert_reaches_a_snapshot_through_a_worker_without_a_rebuild(
    start_worker: Callable[..., WorkerProcess],
    worker_env: dict[str, str],
    source: SqlSource,
    task_cache: RedisSchedulerCache,
    db: SqlWriter,
) -> None:
    task_cache.reestablish(None, 0)
    start_worker(worker_env)
    db.create_group("g5", "openai", id=GROUP)
    first = openai(db, "a", priority=1, group_ids={GROUP: 1})
    poll_outbox.delay()
    wait_for(
        lambda: all(served_or_none(task_cache, b) == [first.id] for b in IN_GROUP),
        what="the first builds",
    )
    wait_for(lambda: caught_up(task_cache, source), what="the first poll done")
    before = {b: task_cache.bucket_info(b).active_version for b in IN_GROUP}
    rebuilds = int(task_cache.stats().get("rebuilds", 0))
    placed = int(task_cache.stats().get("outbox_accounts_placed", 0))

    joined = openai(db, "b", priority=0, group_ids={GROUP: 1})
    poll_outbox.delay()
    wait_for(
        lambda: all(served_or_none(task_cache, b) == [joined.id, first.id] for b in IN_GROUP),
        what="the insert",
    )
    wait_for(lambda: caught_up(task_cache, source), what="the poll done")
    assert {b: task_cache.bucket_info(b).active_version for b in IN_GROUP} == before
    assert int(task_cache.stats().get("rebuilds", 0)) == rebuilds
    assert int(task_cache.stats().get("outbox_accounts_placed", 0)) == placed + len(IN_GROUP)


def caught_up(cache: RedisSchedulerCache, source: SqlSource) -> bool:
    return cache.get_outbox_watermark() == source.max_outbox_id()


def served_or_none(cache: RedisSchedulerCache, bucket: SchedulerBucket) -> list[int] | None:
    read = cache.read_snapshot(bucket)
    return None if read is None else [a.id for a in read.accounts]
