"""Cache benchmarks: each figure next to a baseline measured in the same run.

Run with ``make bench`` (or ``python -m benchmarks cache`` with SCHED_REDIS_URL set).
Baselines: the reference design ported as it is (benchmarks/reference.py) and the floor,
raw redis-py calls moving the same payload bytes with no decoding.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import cast

import redis

from benchmarks.reference import ReferenceCache
from cache import Account, RedisSchedulerCache, SchedulerBucket

BUCKET = SchedulerBucket.parse("12:anthropic:mixed")
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def realistic_accounts(count: int) -> list[Account]:
    """Accounts shaped like the gateway's: windows, groups, extras, a credential."""
    return [
        Account(
            id=i,
            name=f"anthropic-oauth-{i:05d}",
            platform="anthropic",
            type="oauth",
            priority=i % 5,
            concurrency=3 + i % 4,
            load_factor=10,
            rate_multiplier=1.0,
            last_used_at=NOW - timedelta(seconds=i),
            expires_at=NOW + timedelta(days=30),
            rate_limited_at=NOW - timedelta(hours=1) if i % 7 == 0 else None,
            session_window_start=NOW - timedelta(hours=2),
            session_window_end=NOW + timedelta(hours=3),
            session_window_status="allowed",
            group_ids=(12, 14),
            credentials={"base_url": "https://upstream.example", "access_token": "secret"},
            extra={"mixed_scheduling": False, "max_sessions": 8, "window_cost_limit": 40.0},
            revision=100 + i,
        )
        for i in range(1, count + 1)
    ]


def median_ms(action: Callable[[], object], *, repeat: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        action()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def row(name: str, ours: float, baseline_name: str, baseline: float) -> str:
    ratio = baseline / ours if ours else float("inf")
    return f"  {name:<34} {ours:9.3f} ms   {baseline_name:<26} {baseline:9.3f} ms   {ratio:6.2f}x"


def bench_get_snapshot(client: redis.Redis, lines: list[str]) -> None:
    for count in (10, 100, 1000):
        _bench_read(client, count, lines)


def _bench_read(client: redis.Redis, count: int, lines: list[str]) -> None:
    client.flushdb()
    accounts = realistic_accounts(count)
    cache = RedisSchedulerCache(client)
    cache.set_snapshot(BUCKET, accounts, cache.reserve_version(BUCKET))
    ref = ReferenceCache(client)
    ref.set_snapshot(BUCKET, accounts)
    payloads = cast(list[bytes], client.hmget(cache.keys.accounts, [a.id for a in accounts]))
    floor_keys = [f"floor:{a.id}" for a in accounts]
    client.mset(dict(zip(floor_keys, payloads, strict=True)))
    repeat = 400 if count < 1000 else 150
    ours_ids = [a.id for a in cache.get_snapshot(BUCKET) or []]
    assert ours_ids == [a.id for a in ref.get_snapshot(BUCKET) or []] == [a.id for a in accounts]
    ours = median_ms(lambda: cache.get_snapshot(BUCKET), repeat=repeat)
    reference = median_ms(lambda: ref.get_snapshot(BUCKET), repeat=repeat)
    floor = median_ms(lambda: client.mget(floor_keys), repeat=repeat)
    # The first read of a process decodes everything.
    first = median_ms(
        lambda: RedisSchedulerCache(client).get_snapshot(BUCKET),
        repeat=max(repeat // 10, 5),
        warmup=1,
    )
    lines.append(f"get_snapshot, {count} accounts (faster is the ratio > 1)")
    lines.append(row("get_snapshot", ours, "reference 4-step read", reference))
    lines.append(
        row("get_snapshot", ours, "floor: raw MGET, no decode", floor)
        + f"   (ours / floor = {ours / floor:.2f})"
    )
    lines.append(row("get_snapshot, cold process", first, "reference 4-step read", reference))


def bench_update_last_used(client: redis.Redis, lines: list[str]) -> None:
    client.flushdb()
    accounts = realistic_accounts(1000)
    cache = RedisSchedulerCache(client)
    cache.set_snapshot(BUCKET, accounts, cache.reserve_version(BUCKET))
    ref = ReferenceCache(client)
    ref.set_snapshot(BUCKET, accounts)
    tick = [0]

    def batch() -> dict[int, datetime]:
        tick[0] += 1
        moment = NOW + timedelta(milliseconds=tick[0])
        return {a.id: moment for a in accounts}

    ours = median_ms(lambda: cache.update_last_used(batch()), repeat=60)
    reference = median_ms(lambda: ref.update_last_used(batch()), repeat=30)
    lines.append("update_last_used, 1000 accounts")
    lines.append(row("update_last_used", ours, "reference read-modify-write", reference))


def bench_set_snapshot(client: redis.Redis, lines: list[str]) -> None:
    client.flushdb()
    accounts = realistic_accounts(5000)
    cache = RedisSchedulerCache(client)
    payloads = [cache.codec.encode(a)[0] for a in accounts]
    ids = [a.id for a in accounts]

    def raw_write() -> None:
        pipe = client.pipeline(transaction=False)
        pipe.hset("floor:acc", mapping=dict(zip(ids, payloads, strict=True)))
        pipe.delete("floor:snap")
        pipe.rpush("floor:snap", *ids)
        pipe.execute()

    ours = median_ms(
        lambda: cache.set_snapshot(BUCKET, accounts, cache.reserve_version(BUCKET)), repeat=20
    )
    floor = median_ms(raw_write, repeat=20)
    revision = [1000]

    def changed_accounts() -> list[Account]:
        revision[0] += 1
        return [a.model_copy(update={"revision": revision[0] + a.id}) for a in accounts]

    changed = [changed_accounts() for _ in range(12)]
    every_payload_new = median_ms(
        lambda: cache.set_snapshot(BUCKET, changed.pop(), cache.reserve_version(BUCKET)),
        repeat=10,
        warmup=1,
    )
    ref = ReferenceCache(client)
    reference = median_ms(lambda: ref.set_snapshot(BUCKET, accounts), repeat=10)
    lines.append("set_snapshot, 5000 accounts (ours encodes the models; the floor gets bytes)")
    lines.append(
        row("set_snapshot", ours, "floor: one raw pipeline", floor)
        + f"   (ours / floor = {ours / floor:.2f})"
    )
    lines.append(row("set_snapshot", ours, "reference write", reference))
    lines.append(
        row("set_snapshot, every payload new", every_payload_new, "floor: one raw pipeline", floor)
        + f"   (ours / floor = {every_payload_new / floor:.2f})"
    )


def main(url: str) -> None:
    from benchmarks import near_bench

    client = redis.Redis.from_url(url)
    lines = [
        f"cache benchmarks against {client.connection_pool.connection_kwargs.get('host')}"
        f":{client.connection_pool.connection_kwargs.get('port')} (medians; ratio = "
        "baseline / ours)"
    ]
    bench_get_snapshot(client, lines)
    bench_update_last_used(client, lines)
    bench_set_snapshot(client, lines)
    near_bench.main(client, url, lines)
    client.flushdb()
    print("\n".join(lines), flush=True)
