"""The outbox poller's logic, in this process, against a real Redis and SQLite.

Rebuild requests are recorded instead of sent, so each test can say exactly which
buckets an event asks for; the worker tests run the same code through Celery.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from cache import Account, CacheUnavailable, RedisSchedulerCache, SchedulerBucket
from tasks.settings import Settings
from tasks.source import OutboxEvent, SqlSource, SqlWriter
from tasks.source.errors import SourceUnavailable
from tasks.source.schema import scheduler_outbox
from tasks.worker.outbox import POLL_LOCK, OutboxPoller, poll_lock_ttl
from tasks.worker.outbox_plan import MAX_NEW_GAPS
from tests.support import RedisServer


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Recorder:
    """Stands in for ``request_rebuild`` and the refresh, and remembers the calls."""

    def __init__(self) -> None:
        self.requested: list[SchedulerBucket] = []
        self.refreshes = 0

    def request(self, bucket: SchedulerBucket) -> bool:
        self.requested.append(bucket)
        return True

    def refresh(self) -> None:
        self.refreshes += 1

    def take(self) -> set[str]:
        taken = {str(b) for b in self.requested}
        self.requested.clear()
        return taken


def buckets(*names: str) -> set[str]:
    return set(names)


GROUP_5_ANTHROPIC = buckets("5:anthropic:single", "5:anthropic:forced", "5:anthropic:mixed")
GROUPS_5_AND_6_OPENAI = buckets(
    "5:openai:single", "5:openai:forced", "6:openai:single", "6:openai:forced"
)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def poller_cache(redis_client: redis.Redis, clock: Clock) -> RedisSchedulerCache:
    return RedisSchedulerCache(redis_client, clock=clock)


@pytest.fixture
def make_poller(
    configured: Settings, recorder: Recorder, clock: Clock, poller_cache: RedisSchedulerCache
) -> Callable[..., OutboxPoller]:
    def make(source: Any, cache: RedisSchedulerCache | None = None, **changes: Any) -> OutboxPoller:
        config = configured.model_copy(update=changes)
        return OutboxPoller(
            cache or poller_cache,
            source,
            config=config,
            request_rebuild=recorder.request,
            refresh_all=recorder.refresh,
            clock=clock,
        )

    return make


def insert_event(source: SqlSource, event_id: int | None = None, **values: Any) -> int:
    """An outbox row written as another application would, optionally with its id."""
    row = {"event_type": "full_rebuild", "payload": {}, **values}
    if event_id is not None:
        row["id"] = event_id
    with source.engine.begin() as conn:
        key = conn.execute(scheduler_outbox.insert().values(**row)).inserted_primary_key
    assert key is not None
    return int(key[0])


class HidingSource:
    """The SQL source, except that some outbox ids are not visible yet."""

    def __init__(self, inner: SqlSource, hidden: Iterable[int]) -> None:
        self.inner = inner
        self.hidden = set(hidden)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def outbox_after(self, after_id: int, limit: int) -> list[OutboxEvent]:
        return [e for e in self.inner.outbox_after(after_id, limit) if e.id not in self.hidden]

    def outbox_by_ids(self, event_ids: Iterable[int]) -> list[OutboxEvent]:
        return [e for e in self.inner.outbox_by_ids(event_ids) if e.id not in self.hidden]


# -- event types ------------------------------------------------------------------------
def test_account_changed_refreshes_the_payload_and_builds_buckets_never_built(
    source: SqlSource,
    make_poller: Callable[..., OutboxPoller],
    recorder: Recorder,
    poller_cache: RedisSchedulerCache,
    db: SqlWriter,
) -> None:
    db.create_group("g5", "anthropic", id=5)
    poller = make_poller(source)
    poller.poll_batch()
    recorder.take()

    account = db.create_account(name="a", platform="anthropic", type="oauth", group_ids=[5])
    report = poller.poll_batch()

    assert report.applied == 1
    cached = poller_cache.get_account(account.id)
    assert cached is not None and cached.revision == account.revision
    # Nothing to put it in: the buckets are built (with it) by a rebuild.
    assert recorder.take() == GROUP_5_ANTHROPIC

    build(poller_cache, source, *GROUP_5_ANTHROPIC)
    db.update_account(account.id, priority=3)
    poller.poll_batch()
    cached = poller_cache.get_account(account.id)
    assert cached is not None and cached.priority == 3
    assert recorder.take() == set()  # changed in place
    for name in GROUP_5_ANTHROPIC:
        served = poller_cache.get_snapshot(SchedulerBucket.parse(name)) or []
        assert [(a.id, a.priority) for a in served] == [(account.id, 3)]
    assert poller_cache.get_outbox_watermark() == source.max_outbox_id()


def test_a_donor_account_also_requests_the_mixed_buckets_it_can_join(
    source: SqlSource, make_poller: Callable[..., OutboxPoller], recorder: Recorder, db: SqlWriter
) -> None:
    db.create_account(
        name="d", platform="antigravity", type="oauth", extra={"mixed_scheduling": True}
    )
    make_poller(source).poll_batch()
    # No group: group 0. Its own buckets, and the mixed buckets of the mixing platforms.
    assert recorder.take() == buckets(
        "0:antigravity:single", "0:antigravity:forced", "0:anthropic:mixed", "0:gemini:mixed"
    )


def build(cache: RedisSchedulerCache, source: SqlSource, *names: str) -> None:
    """Rebuild the named buckets from the source now, as a rebuild task would."""
    for name in names:
        bucket = SchedulerBucket.parse(name)
        version = cache.reserve_version(bucket)
        assert cache.set_snapshot(
            bucket, source.accounts_for_bucket(bucket, datetime.now(UTC)), version
        )


def test_a_deleted_account_is_forgotten_and_left_out_of_its_buckets_without_a_rebuild(
    source: SqlSource,
    make_poller: Callable[..., OutboxPoller],
    recorder: Recorder,
    poller_cache: RedisSchedulerCache,
    db: SqlWriter,
) -> None:
    account = db.create_account(name="o", platform="openai", type="apikey")
    poller = make_poller(source)
    poller.poll_batch()
    build(poller_cache, source, "0:openai:single", "0:openai:forced")
    assert poller_cache.get_account(account.id) is not None
    recorder.take()

    db.delete_account(account.id)
    poller.poll_batch()

    assert poller_cache.get_account(account.id) is None
    assert recorder.take() == set()  # the entries are marked deleted in place
    for name in ("0:openai:single", "0:openai:forced"):
        read = poller_cache.read_snapshot(SchedulerBucket.parse(name))
        assert read is not None and read.accounts == []


def test_a_deletion_the_cache_never_saw_still_leaves_a_tombstone(
    source: SqlSource,
    make_poller: Callable[..., OutboxPoller],
    poller_cache: RedisSchedulerCache,
    db: SqlWriter,
) -> None:
    account = db.create_account(name="o", platform="openai", type="apikey")
    read_before_deletion = source.get_accounts([account.id])[account.id]
    bucket = SchedulerBucket.parse("0:openai:single")
    version = poller_cache.reserve_version(bucket)  # a rebuild reads the account ...
    db.delete_account(account.id)
    make_poller(source).poll_batch()  # ... the deletion is polled first ...
    poller_cache.set_snapshot(bucket, [read_before_deletion], version)  # ... then it lands

    assert poller_cache.get_account(account.id) is None
    # Skipped, not a miss (a miss would send readers to the source) until the rebuild.
    read = poller_cache.read_snapshot(bucket)
    assert read is not None and read.accounts == []


def account_in_group_5_of_two(
    source: SqlSource, make_poller: Callable[..., OutboxPoller], recorder: Recorder
) -> tuple[Account, OutboxPoller]:
    """An account in group 5 of the openai groups 5 and 6, already polled into the cache."""
    SqlWriter(source).create_group("g5", "openai", id=5)
    SqlWriter(source).create_group("g6", "openai", id=6)
    account = SqlWriter(source).create_account(
        name="o", platform="openai", type="apikey", group_ids=[5]
    )
    poller = make_poller(source)
    poller.poll_batch()
    recorder.take()
    return account, poller


def test_moving_an_account_between_groups_moves_it_between_their_snapshots_in_place(
    source: SqlSource,
    make_poller: Callable[..., OutboxPoller],
    recorder: Recorder,
    poller_cache: RedisSchedulerCache,
    db: SqlWriter,
) -> None:
    account, poller = account_in_group_5_of_two(source, make_poller, recorder)
    build(poller_cache, source, *GROUPS_5_AND_6_OPENAI)

    db.set_account_groups(account.id, {6: 1})
    poller.poll_batch()

    assert recorder.take() == set()
    for name in GROUPS_5_AND_6_OPENAI:
        served = poller_cache.get_snapshot(SchedulerBucket.parse(name)) or []
        assert [a.id for a in served] == ([account.id] if name.startswith("6:") else [])


def test_moving_an_account_into_a_group_never_built_builds_it(
    source: SqlSource, make_poller: Callable[..., OutboxPoller], recorder: Recorder, db: SqlWriter
) -> None:
    account, poller = account_in_group_5_of_two(source, make_poller, recorder)

    db.set_account_groups(account.id, {6: 1})
    poller.poll_batch()

    # Group 5's buckets have nothing to take it out of, group 6's nothing to put it in.
    assert recorder.take() == buckets("6:openai:single", "6:openai:forced")


def test_an_account_moved_out_of_a_group_is_removed_from_its_snapshots_not_patched(
    source: SqlSource,
    make_poller: Callable[..., OutboxPoller],
    recorder: Recorder,
    poller_cache: RedisSchedulerCache,
    db: SqlWriter,
) -> None:
    account, poller = account_in_group_5_of_two(source, make_poller, recorder)
    db.set_account_groups(account.id, {5: 1, 6: 1})
    poller.poll_batch()
    now = datetime.now(UTC)
    for group in (5, 6):
        bucket = SchedulerBucket(group, "openai", "single")
        accounts = source.accounts_for_bucket(bucket, now)
        poller_cache.set_snapshot(bucket, accounts, poller_cache.reserve_version(bucket))
    group_5 = SchedulerBucket(5, "openai", "single")
    assert [a.id for a in poller_cache.get_snapshot(group_5) or ()] == [account.id]

    moved = db.set_account_groups(account.id, {6: 1})  # out of 5; rebuilds not run yet
    poller.poll_batch()

    # Group 5's snapshot no longer serves it (not at its new revision, whose groups lack
    # 5, nor at the old one), and the read is no miss; group 6's has the new revision.
    read = poller_cache.read_snapshot(group_5)
    assert read is not None and read.accounts == []
    entry = poller_cache.client.hget(poller_cache.keys.entries(group_5, read.version), account.id)
    assert entry is not None and str(entry).startswith(("-/", "b'-/"))  # by the patch
    in_6 = poller_cache.get_snapshot(SchedulerBucket(6, "openai", "single")) or []
    assert [(a.id, a.revision, a.group_ids) for a in in_6] == [(account.id, moved.revision, (6,))]
    # Back into group 5 at a later revision: the next change puts it back in.
    back = db.set_account_groups(account.id, {5: 1, 6: 1})
    poller.poll_batch()
    assert [(a.id, a.revision) for a in poller_cache.get_snapshot(group_5) or ()] == [
        (account.id, back.revision)
    ]


def test_a_move_reaches_other_buckets_even_when_a_rebuild_stored_the_revision_first(
    source: SqlSource,
    make_poller: Callable[..., OutboxPoller],
    recorder: Recorder,
    poller_cache: RedisSchedulerCache,
    db: SqlWriter,
) -> None:
    account, poller = account_in_group_5_of_two(source, make_poller, recorder)
    group_5, group_6 = (SchedulerBucket(g, "openai", "single") for g in (5, 6))
    accounts = source.accounts_for_bucket(group_5, datetime.now(UTC))
    poller_cache.set_snapshot(group_5, accounts, poller_cache.reserve_version(group_5))

    moved = db.set_account_groups(account.id, {6: 1})
    # A rebuild of group 6 reads the move before the outbox is polled, and stores the
    # payload (its own bucket only); the cache now holds the revision the event names.
    now = datetime.now(UTC)
    accounts = source.accounts_for_bucket(group_6, now)
    poller_cache.set_snapshot(group_6, accounts, poller_cache.reserve_version(group_6))
    assert (poller_cache.get_account(account.id) or account).revision == moved.revision
    poller.poll_batch()

    read = poller_cache.read_snapshot(group_5)
    assert read is not None and read.accounts == []


def test_without_group_ids_an_account_event_reaches_every_group_it_was_or_is_in(
    source: SqlSource,
    make_poller: Callable[..., OutboxPoller],
    recorder: Recorder,
    poller_cache: RedisSchedulerCache,
) -> None:
    account, poller = account_in_group_5_of_two(source, make_poller, recorder)
    build(poller_cache, source, *GROUPS_5_AND_6_OPENAI)

    # Another application moves it with plain SQL and writes a bare event.
    with source.engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE account_groups SET group_id = 6 WHERE account_id = :a"),
            {"a": account.id},
        )
    insert_event(source, event_type="account_changed", account_id=account.id)
    poller.poll_batch()

    assert recorder.take() == set()
    cached = poller_cache.get_account(account.id)
    assert cached is not None and cached.group_ids == (6,)
    for name in GROUPS_5_AND_6_OPENAI:
        served = poller_cache.get_snapshot(SchedulerBucket.parse(name)) or []
        assert [a.id for a in served] == ([account.id] if name.startswith("6:") else [])


def test_bulk_changes_refresh_every_named_account(
    source: SqlSource,
    make_poller: Callable[..., OutboxPoller],
    recorder: Recorder,
    poller_cache: RedisSchedulerCache,
    db: SqlWriter,
) -> None:
    ids = [db.create_account(name=f"o{i}", platform="openai", type="apikey").id for i in range(5)]
    poller = make_poller(source)
    poller.poll_batch()
    recorder.take()

    db.bulk_update_accounts(ids, priority=7)
    report = poller.poll_batch()

    assert report.applied == len(ids)  # an event per account, applied as one plan
    for account_id in ids:
        cached = poller_cache.get_account(account_id)
        assert cached is not None and cached.priority == 7
    assert recorder.take() == buckets("0:openai:single", "0:openai:forced")


def test_group_changed_rebuilds_every_bucket_of_the_group(
    source: SqlSource,
    make_poller: Callable[..., OutboxPoller],
    recorder: Recorder,
    poller_cache: RedisSchedulerCache,
    db: SqlWriter,
) -> None:
    db.create_group("g9", "gemini", id=9)
    # A bucket of another platform that is served in that group (registered by a read).
    poller_cache.set_snapshot(SchedulerBucket(9, "openai", "single"), [])
    make_poller(source).poll_batch()
    assert recorder.take() == buckets(
        "9:gemini:single", "9:gemini:forced", "9:gemini:mixed", "9:openai:single"
    )


def test_full_rebuild_goes_through_the_refresh_once_per_batch(
    source: SqlSource, make_poller: Callable[..., OutboxPoller], recorder: Recorder, db: SqlWriter
) -> None:
    db.request_full_rebuild()
    db.request_full_rebuild()
    report = make_poller(source).poll_batch()
    assert report.applied == 2
    assert recorder.refreshes == 1


def test_last_used_events_move_the_cached_time_forward_only(
    source: SqlSource,
    make_poller: Callable[..., OutboxPoller],
    poller_cache: RedisSchedulerCache,
    db: SqlWriter,
) -> None:
    account = db.create_account(name="o", platform="openai", type="apikey")
    poller = make_poller(source)
    poller.poll_batch()
    later = datetime(2026, 3, 1, 12, 0, 5, tzinfo=UTC)
    earlier = later - timedelta(seconds=60)
    db.record_last_used_event({account.id: later})
    insert_event(
        source,
        event_type="account_last_used",
        payload={"last_used": {str(account.id): earlier.timestamp()}},
    )
    poller.poll_batch()

    cached = poller_cache.get_account(account.id)
    assert cached is not None and cached.last_used_at == later
    # From the database: nothing left pending to write back to it.
    assert poller_cache.pending_last_used() == {}


# -- malformed and failing events ------------------------------------------------------
@pytest.mark.parametrize(
    "row",
    [
        {"event_type": "account_exploded", "payload": {}},
        {"event_type": "account_changed", "payload": {}},
        {"event_type": "account_changed", "payload": {"account_id": "seven"}},
        {"event_type": "account_changed", "account_id": 3, "payload": {"group_ids": "all"}},
        {"event_type": "account_bulk_changed", "payload": {"account_ids": []}},
        {"event_type": "group_changed", "payload": {}},
        {"event_type": "account_last_used", "payload": {"last_used": {"x": 1}}},
        {"event_type": "account_last_used", "payload": {"last_used": {"3": -5}}},
        {"event_type": "account_last_used", "payload": {"last_used": {"3": 1e300}}},
        {"event_type": "account_last_used", "payload": [1, 2]},
    ],
    ids=lambda row: f"{row['event_type']}-{row.get('payload')!r}",
)
def test_a_malformed_event_is_skipped_and_counted_without_blocking_the_rest(
    source: SqlSource,
    make_poller: Callable[..., OutboxPoller],
    poller_cache: RedisSchedulerCache,
    row: dict[str, Any],
    db: SqlWriter,
) -> None:
    before = db.create_account(name="b", platform="openai", type="apikey")
    insert_event(source, **row)
    after = db.create_account(name="a", platform="openai", type="apikey")

    report = make_poller(source).poll_batch()

    assert (report.applied, report.malformed) == (2, 1)
    assert poller_cache.get_account(before.id) is not None
    assert poller_cache.get_account(after.id) is not None
    assert poller_cache.get_outbox_watermark() == source.max_outbox_id()


def test_a_row_whose_payload_is_not_json_is_one_malformed_event(
    source: SqlSource,
    make_poller: Callable[..., OutboxPoller],
    poller_cache: RedisSchedulerCache,
    db: SqlWriter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = db.create_account(name="b", platform="openai", type="apikey")
    with source.engine.begin() as conn:  # as another application might write it
        bad = conn.execute(
            sa.text(
                "INSERT INTO scheduler_outbox (event_type, payload) "
                "VALUES ('account_changed', '{not json')"
            )
        ).lastrowid
    after = db.create_account(name="a", platform="openai", type="apikey")

    poller = make_poller(source)
    report = poller.poll_batch()

    assert (report.applied, report.malformed) == (2, 1)
    assert poller_cache.get_account(before.id) is not None
    assert poller_cache.get_account(after.id) is not None
    assert poller_cache.get_outbox_watermark() == source.max_outbox_id()
    assert f"skipping outbox event {bad}: payload is not JSON" in caplog.text
    assert poller.poll_batch().malformed == 0  # passed for good


def test_an_event_whose_handling_fails_is_skipped_alone(
    source: SqlSource,
    make_poller: Callable[..., OutboxPoller],
    poller_cache: RedisSchedulerCache,
    db: SqlWriter,
) -> None:
    good = db.create_account(name="g", platform="openai", type="apikey")
    poison = db.create_account(name="p", platform="openai", type="apikey")
    also_good = db.create_account(name="h", platform="openai", type="apikey")

    class PoisonSource(HidingSource):
        # A fault no server shows on demand: one account's row cannot be handled.
        def get_accounts(self, ids: Iterable[int]) -> Any:
            wanted = list(ids)
            if poison.id in wanted:
                raise RuntimeError(f"account {poison.id} cannot be read")
            return self.inner.get_accounts(wanted)

    report = make_poller(PoisonSource(source, ())).poll_batch()

    assert (report.applied, report.failed) == (2, 1)
    assert poller_cache.get_account(good.id) is not None
    assert poller_cache.get_account(also_good.id) is not None
    assert poller_cache.get_outbox_watermark() == source.max_outbox_id()


def test_when_every_event_fails_nothing_is_skipped(
    source: SqlSource,
    make_poller: Callable[..., OutboxPoller],
    poller_cache: RedisSchedulerCache,
    db: SqlWriter,
) -> None:
    db.create_account(name="a", platform="openai", type="apikey")
    db.create_account(name="b", platform="openai", type="apikey")
    poller = make_poller(source)

    def broken(bucket: SchedulerBucket) -> bool:
        raise RuntimeError("rebuild requests are broken")

    poller.request_rebuild = broken
    with pytest.raises(RuntimeError, match="broken"):
        poller.poll_batch()
    assert poller_cache.get_outbox_watermark() == 0


def test_a_database_outage_stops_the_batch_without_advancing(
    source: SqlSource,
    make_poller: Callable[..., OutboxPoller],
    poller_cache: RedisSchedulerCache,
    db: SqlWriter,
) -> None:
    account = db.create_account(name="a", platform="openai", type="apikey")

    class Flaky(HidingSource):
        failures = 1

        def get_accounts(self, ids: Iterable[int]) -> Any:
            if self.failures:
                self.failures -= 1
                raise SourceUnavailable("database unavailable (injected)")
            return self.inner.get_accounts(ids)

    poller = make_poller(Flaky(source, ()))
    with pytest.raises(SourceUnavailable):
        poller.poll_batch()
    assert poller_cache.get_outbox_watermark() == 0
    poller.poll_batch()
    assert poller_cache.get_account(account.id) is not None
    assert poller_cache.get_outbox_watermark() == source.max_outbox_id()


def test_redis_going_away_mid_poll_advances_nothing_and_loses_nothing(
    source: SqlSource,
    make_poller: Callable[..., OutboxPoller],
    recorder: Recorder,
    private_redis: RedisServer,
    clock: Clock,
    db: SqlWriter,
) -> None:
    client = redis.Redis.from_url(private_redis.url, socket_timeout=2, socket_connect_timeout=1)
    cache = RedisSchedulerCache(client, clock=clock)
    ids = [db.create_account(name=f"a{i}", platform="openai", type="apikey").id for i in range(3)]
    # What Redis has on disk when it dies (its RDB file is loaded again at start).
    client.save()

    class DiesMidPoll(HidingSource):
        def get_accounts(self, wanted: Iterable[int]) -> Any:
            private_redis.stop()  # events read, nothing applied yet
            return self.inner.get_accounts(wanted)

    with pytest.raises(CacheUnavailable):
        make_poller(DiesMidPoll(source, ()), cache=cache).poll_batch()

    private_redis.start()
    assert cache.get_outbox_watermark() == 0
    make_poller(source, cache=cache).poll_batch()
    for account_id in ids:
        assert cache.get_account(account_id) is not None
    assert cache.get_outbox_watermark() == source.max_outbox_id()
    assert "0:openai:single" in recorder.take()
    client.close()


# -- gaps: ids that commit out of order --------------------------------------------------
def test_an_id_that_becomes_visible_late_is_applied_on_a_later_poll(
    source: SqlSource,
    make_poller: Callable[..., OutboxPoller],
    poller_cache: RedisSchedulerCache,
    db: SqlWriter,
) -> None:
    first = db.create_account(name="a", platform="openai", type="apikey")
    late = db.create_account(name="b", platform="openai", type="apikey")
    last = db.create_account(name="c", platform="openai", type="apikey")
    late_event = source.max_outbox_id() - 1
    hiding = HidingSource(source, {late_event})
    poller = make_poller(hiding)

    report = poller.poll_batch()
    assert report.gaps_recorded == 1
    assert poller_cache.get_outbox_watermark() == late_event + 1
    assert set(poller_cache.outbox_gaps()) == {late_event}
    assert poller_cache.get_account(first.id) is not None
    assert poller_cache.get_account(last.id) is not None
    assert poller_cache.get_account(late.id) is None

    hiding.hidden.clear()  # its transaction commits
    report = poller.poll_batch()
    assert (report.applied, report.gaps_resolved) == (1, 1)
    assert poller_cache.get_account(late.id) is not None
    assert poller_cache.outbox_gaps() == {}


def test_ids_inserted_out_of_order_are_all_applied(
    source: SqlSource,
    make_poller: Callable[..., OutboxPoller],
    poller_cache: RedisSchedulerCache,
    db: SqlWriter,
) -> None:
    a = db.create_account(name="a", platform="openai", type="apikey")
    b = db.create_account(name="b", platform="openai", type="apikey")
    insert_event(source, 10, event_type="account_changed", account_id=b.id)
    poller = make_poller(source)
    poller.poll_batch()
    assert set(poller_cache.outbox_gaps()) == set(range(3, 10))
    insert_event(source, 7, event_type="account_changed", account_id=a.id)
    db.update_account(a.id, priority=1)  # the row changes after it was first cached
    poller.poll_batch()
    cached = poller_cache.get_account(a.id)
    assert cached is not None and cached.priority == 1
    assert 7 not in poller_cache.outbox_gaps()


def test_a_gap_that_never_shows_is_given_up_after_the_timeout(
    source: SqlSource,
    make_poller: Callable[..., OutboxPoller],
    poller_cache: RedisSchedulerCache,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    insert_event(source, 5)
    poller = make_poller(source, outbox_gap_timeout_seconds=30.0)
    poller.poll_batch()
    assert set(poller_cache.outbox_gaps()) == {1, 2, 3, 4}

    clock.advance(29)
    insert_event(source, 3)
    report = poller.poll_batch()
    assert (report.gaps_resolved, report.gaps_given_up) == (1, 0)
    assert set(poller_cache.outbox_gaps()) == {1, 2, 4}

    clock.advance(2)
    report = poller.poll_batch()
    assert report.gaps_given_up == 3
    assert poller_cache.outbox_gaps() == {}
    assert "outbox event 4 never became visible" in caplog.text


def test_a_long_backlog_is_read_in_batches_until_caught_up(
    source: SqlSource,
    make_poller: Callable[..., OutboxPoller],
    poller_cache: RedisSchedulerCache,
    db: SqlWriter,
) -> None:
    for _ in range(25):
        db.request_full_rebuild()
    report = make_poller(source, outbox_batch_size=10).poll(budget_seconds=30)
    assert (report.batches, report.applied) == (3, 25)
    stats = poller_cache.stats()
    assert stats["outbox_events_applied"] == "25"
    assert stats["outbox_lag"] == "0"
    assert stats["outbox_watermark"] == str(source.max_outbox_id())


def test_a_first_poll_of_a_pruned_outbox_keeps_only_the_nearest_ids_as_gaps(
    source: SqlSource,
    make_poller: Callable[..., OutboxPoller],
    poller_cache: RedisSchedulerCache,
    caplog: pytest.LogCaptureFixture,
) -> None:
    insert_event(source, 3_000_000)  # an old table: everything below was pruned long ago
    make_poller(source).poll_batch()

    gaps = poller_cache.outbox_gaps()
    assert len(gaps) == MAX_NEW_GAPS
    assert min(gaps) == 3_000_000 - MAX_NEW_GAPS and max(gaps) == 2_999_999
    assert poller_cache.get_outbox_watermark() == 3_000_000
    assert "outbox ids 1..2989999 skipped" in caplog.text


# -- one bad value inside an event ------------------------------------------------------
def test_a_bad_pair_in_a_last_used_event_is_dropped_alone(
    source: SqlSource,
    make_poller: Callable[..., OutboxPoller],
    poller_cache: RedisSchedulerCache,
    db: SqlWriter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    account = db.create_account(name="o", platform="openai", type="apikey")
    poller = make_poller(source)
    poller.poll_batch()
    at = datetime(2026, 3, 1, 12, 0, 5, tzinfo=UTC)
    huge = str(2**70)
    insert_event(
        source,
        event_type="account_last_used",
        payload={"last_used": {huge: at.timestamp(), str(account.id): at.timestamp(), "9": "x"}},
    )

    report = poller.poll_batch()

    assert (report.applied, report.malformed) == (1, 0)
    cached = poller_cache.get_account(account.id)
    assert cached is not None and cached.last_used_at == at
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(huge in line for line in warned), warned
    assert any("'x'" in line for line in warned), warned


def test_a_bad_id_in_a_bulk_event_is_dropped_alone(
    source: SqlSource,
    make_poller: Callable[..., OutboxPoller],
    poller_cache: RedisSchedulerCache,
    db: SqlWriter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = [db.create_account(name=f"o{i}", platform="openai", type="apikey") for i in range(2)]
    poller = make_poller(source)
    poller.poll_batch()
    db.bulk_update_accounts([a.id for a in good], priority=7)  # an event each, then ours
    long_bad = "9" * 5000
    insert_event(
        source,
        event_type="account_bulk_changed",
        payload={"account_ids": [good[0].id, 2**70, long_bad, good[1].id], "group_ids": [0, -4]},
    )

    report = poller.poll_batch()

    assert (report.applied, report.malformed) == (3, 0)
    for account in good:
        cached = poller_cache.get_account(account.id)
        assert cached is not None and cached.priority == 7
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(str(2**70) in line for line in warned), warned
    assert any("-4" in line for line in warned), warned
    # The long value is named, cut short.
    assert all(len(line) < 1000 for line in warned), warned


def test_a_killed_pollers_lock_stops_the_outbox_for_two_seconds_at_most(
    configured: Settings, poller_cache: RedisSchedulerCache
) -> None:
    # Every change made while a killed poller's lock lives waits for it: with the
    # default settings that must stay well within the 5 s a bucket may take to recover.
    ttl = poll_lock_ttl(configured)
    assert ttl <= 2.0
    assert poller_cache.try_lock(POLL_LOCK, ttl, token="a-killed-poll")
    assert poller_cache.try_lock(POLL_LOCK, ttl, token="the-next-poll") is None
    time.sleep(ttl + 0.1)
    assert poller_cache.try_lock(POLL_LOCK, ttl, token="the-next-poll")
