"""Outbox and last-use benchmarks, each figure next to a target or a baseline of the run.

``python -m benchmarks outbox``: starts its own redis-server, a SQLite source in a
temporary directory and a real worker (``celery -A tasks worker``, two processes).

- Outbox: 10,000 ``account_changed`` events over 100 buckets (1,000 accounts in 50
  groups), applied end to end: every event read and applied, every snapshot rebuilt
  from the changed rows. Target: under 30 s on two cores.
- ``record_last_used``: touches per second from one process (target 20,000/s) next to
  the baseline of one Celery message per touch; Celery messages per 1,000 touches;
  Redis round trips per flush.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import redis
import sqlalchemy as sa
from celery.signals import after_task_publish

from benchmarks.harness import bench_servers, running_worker, wait_until
from cache import RedisSchedulerCache, SchedulerBucket
from tasks import runtime
from tasks.source.schema import account_groups, accounts, groups, init_schema, scheduler_outbox
from tasks.web.last_used import LastUsedBatcher
from tasks.web.requests import request_rebuild
from tasks.worker.last_used import update_last_used
from tasks.worker.outbox import poll_outbox

GROUPS = 50
ACCOUNTS_PER_GROUP = 20
EVENTS = 10_000
OUTBOX_ROUNDS = 3
OUTBOX_TARGET_SECONDS = 30.0
TOUCHES = 200_000
TOUCH_ROUNDS = 5
TOUCH_TARGET_PER_SECOND = 20_000
TOUCHED_ACCOUNTS = 10_000
DEADLINE_SECONDS = 120.0


class CountingRedis(redis.Redis):
    """Counts the commands sent: each is one round trip."""

    calls = 0

    def execute_command(self, *args: Any, **options: Any) -> Any:
        type(self).calls += 1
        return super().execute_command(*args, **options)  # type: ignore[no-untyped-call]


# -- setup ------------------------------------------------------------------------------
def seed(engine: sa.Engine) -> list[SchedulerBucket]:
    """50 openai groups of 20 accounts: 100 buckets (single and forced per group)."""
    with engine.begin() as conn:
        conn.execute(
            groups.insert(),
            [{"id": g, "name": f"g{g}", "platform": "openai"} for g in range(1, GROUPS + 1)],
        )
        conn.execute(
            accounts.insert(),
            [
                {
                    "id": a,
                    "name": f"acct-{a}",
                    "platform": "openai",
                    "type": "apikey",
                    "priority": a % 5,
                }
                for a in range(1, GROUPS * ACCOUNTS_PER_GROUP + 1)
            ],
        )
        conn.execute(
            account_groups.insert(),
            [
                {"account_id": a, "group_id": group_of(a), "priority": 1}
                for a in range(1, GROUPS * ACCOUNTS_PER_GROUP + 1)
            ],
        )
    return [
        SchedulerBucket(g, "openai", mode)
        for g in range(1, GROUPS + 1)
        for mode in ("single", "forced")
    ]


def group_of(account_id: int) -> int:
    return (account_id - 1) // ACCOUNTS_PER_GROUP + 1


def change_everything(engine: sa.Engine, priority: int) -> int:
    """One change to every account, then 10,000 events naming them; the last id."""
    ids = range(1, GROUPS * ACCOUNTS_PER_GROUP + 1)
    with engine.begin() as conn:
        conn.execute(sa.update(accounts).values(priority=priority))
        conn.execute(
            scheduler_outbox.insert(),
            [
                {
                    "event_type": "account_changed",
                    "account_id": a,
                    "payload": {"group_ids": [group_of(a)]},
                }
                for _ in range(EVENTS // len(ids))
                for a in ids
            ],
        )
        return int(conn.execute(sa.select(sa.func.max(scheduler_outbox.c.id))).scalar_one())


# -- outbox ----------------------------------------------------------------------------
def all_current(cache: RedisSchedulerCache, buckets: list[SchedulerBucket], priority: int) -> bool:
    for bucket in buckets:
        state = cache.client.hgetall(cache.keys.rebuild_state(bucket))
        if b"queued" in state or state.get(b"done") != state.get(b"req"):
            return False
        snapshot = cache.get_snapshot(bucket)
        if snapshot is None or any(a.priority != priority for a in snapshot):
            return False
    return True


def outbox_round(
    cache: RedisSchedulerCache, engine: sa.Engine, buckets: list[SchedulerBucket], priority: int
) -> tuple[float, float, int]:
    """Seconds until every event is applied, until every snapshot is current; rebuilds."""
    rebuilds_before = int(cache.stats().get("rebuilds", 0))
    last_id = change_everything(engine, priority)
    started = time.perf_counter()
    next_tick = 0.0
    while cache.get_outbox_watermark() < last_id:
        now = time.perf_counter() - started
        if now >= next_tick:  # as beat would, every outbox_interval_seconds
            poll_outbox.delay()
            next_tick = now + 1.0
        if now > DEADLINE_SECONDS:
            raise RuntimeError("benchmark: the outbox did not catch up")
        time.sleep(0.005)
    applied = time.perf_counter() - started
    wait_until(lambda: all_current(cache, buckets, priority), "every snapshot current", every=0.02)
    current = time.perf_counter() - started
    return applied, current, int(cache.stats().get("rebuilds", 0)) - rebuilds_before


def bench_outbox(cache: RedisSchedulerCache, engine: sa.Engine, lines: list[str]) -> None:
    buckets = seed(engine)
    for bucket in buckets:
        request_rebuild(bucket)
    poll_outbox.delay()  # the groups' own events
    wait_until(lambda: _built(cache, buckets), "warm-up", every=0.02)
    results = [outbox_round(cache, engine, buckets, 10 + n) for n in range(OUTBOX_ROUNDS)]
    applied = statistics.median(r[0] for r in results)
    current = statistics.median(r[1] for r in results)
    rebuilds = statistics.median(r[2] for r in results)
    lines += [
        f"  outbox: {EVENTS:,} account_changed events, {len(buckets)} buckets, "
        f"{GROUPS * ACCOUNTS_PER_GROUP:,} accounts (median of {OUTBOX_ROUNDS} rounds)",
        f"    all events applied            {applied:8.2f} s   {EVENTS / applied:10,.0f} events/s",
        f"    every snapshot current        {current:8.2f} s   target {OUTBOX_TARGET_SECONDS:.0f} s"
        f"   ({OUTBOX_TARGET_SECONDS / current:.1f}x under it)",
        f"    rebuilds run                  {rebuilds:8.0f}     {EVENTS / max(rebuilds, 1):10,.0f}"
        f" events per rebuild (coalesced; {rebuilds / len(buckets):.1f} per bucket)",
    ]


def _built(cache: RedisSchedulerCache, buckets: list[SchedulerBucket]) -> bool:
    return all(cache.get_snapshot(b) is not None for b in buckets) and all(
        _idle(cache, b) for b in buckets
    )


def _idle(cache: RedisSchedulerCache, bucket: SchedulerBucket) -> bool:
    state = cache.client.hgetall(cache.keys.rebuild_state(bucket))
    return b"queued" not in state and state.get(b"done") == state.get(b"req")


# -- last use ---------------------------------------------------------------------------
def bench_last_used(url: str, lines: list[str]) -> None:
    cache = RedisSchedulerCache(CountingRedis.from_url(url))
    published = []

    def count(**_: Any) -> None:
        published.append(1)

    after_task_publish.connect(count, weak=False)
    try:
        batcher = LastUsedBatcher(cache)  # the default interval, its thread running
        ids = [1 + i % TOUCHED_ACCOUNTS for i in range(TOUCHES)]
        rates = []
        for _ in range(TOUCH_ROUNDS):
            started = time.perf_counter()
            for account_id in ids:
                batcher.touch(account_id)
            rates.append(TOUCHES / (time.perf_counter() - started))
        batcher.close()
        messages = len(published)
        rate = statistics.median(rates)

        # Baseline: a Celery message per touch, as a caller of update_last_used pays.
        samples = 1000
        started = time.perf_counter()
        for n in range(samples):
            update_last_used.delay({str(1 + n): time.time()})
        per_message = samples / (time.perf_counter() - started)
    finally:
        after_task_publish.disconnect(count)
    cache.client.delete("last_used")  # those baseline messages are not work to do

    flusher = LastUsedBatcher(cache, interval_seconds=3600)
    trips, flush_ms = [], []
    for _ in range(TOUCH_ROUNDS):
        for account_id in range(1, TOUCHED_ACCOUNTS + 1):
            flusher.touch(account_id)
        CountingRedis.calls = 0
        started = time.perf_counter()
        flusher.flush()
        flush_ms.append((time.perf_counter() - started) * 1000)
        trips.append(CountingRedis.calls)
    lines += [
        f"  record_last_used, one process, {TOUCHES:,} touches over {TOUCHED_ACCOUNTS:,}"
        f" accounts (median of {TOUCH_ROUNDS})",
        f"    touches per second            {rate:10,.0f}   target {TOUCH_TARGET_PER_SECOND:,}"
        f"   ({rate / TOUCH_TARGET_PER_SECOND:.1f}x of it)",
        f"    baseline: a message per touch {per_message:10,.0f}   (ours: {rate / per_message:.0f}x"
        " as many)",
        f"    Celery messages per 1,000     {1000 * messages / (TOUCHES * TOUCH_ROUNDS):10.3f}"
        f"   ({messages} in {TOUCHES * TOUCH_ROUNDS:,} touches)",
        f"    Redis round trips per flush   {max(trips):10d}   ({TOUCHED_ACCOUNTS:,} accounts,"
        f" {statistics.median(flush_ms):.1f} ms per flush)",
    ]


def main() -> None:
    with bench_servers("outbox") as servers:
        engine = init_schema(servers.database_url)
        lines = [
            f"outbox and last-use benchmarks (private Redis {servers.redis_url}, SQLite, "
            "2 worker processes)"
        ]
        try:
            bench_last_used(servers.redis_url, lines)
            with running_worker(servers, "rebuild,outbox,last_used"):
                bench_outbox(runtime.get_cache(), engine, lines)
        finally:
            engine.dispose()
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
