"""The pick: what choosing the account for one request costs a web process, at 1,000,
10,000 and 100,000 accounts in a bucket.

Ours: :meth:`cache.NearCache.pick`, from the index the near cache keeps of the bucket,
the use laid over (what :func:`tasks.pick` does before it hands the use to the batcher).
Next to it, the gateway's old way on the same near cache: ``list_schedulable`` (a copy
of the schedulable list) and two ``min()`` scans, best priority then least recently
used. Each pick is a request at a later time, so the order moves as it would.

Then 10,000 picks, one in ten a millisecond earlier than the pick before it (requests
served concurrently reach the index in another order than they asked): their mean and
slowest time, the garbage collector's collections among them (by generation, from
``gc.callbacks``) and its longest pause; and what one full collection costs
with the bucket held, over how many tracked objects (the pause an event loop sees when
one comes).
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from benchmarks.cache_bench import BUCKET, NOW, realistic_accounts
from cache import Account, NearCache, RedisSchedulerCache
from tests.support import RedisServer

SIZES = (1_000, 10_000, 100_000)
# Picks timed per size (the scan at 100,000 costs milliseconds each: fewer of those).
PICKS = 5_000
# A bucket past the decoded budget answers list_schedulable with accounts built as they
# are read: a scan of 100,000 of them takes about a second, so a few dozen of those.
SCANS_MIN = 20
# The requests' time: after every last use of the bucket, so each pick moves the order.
LATER = NOW + timedelta(hours=1)
# Picks watched for the garbage collector per size, one in LATE earlier than the last.
GC_PICKS = 10_000
LATE = 10


def timed(call: Callable[[int], object], count: int) -> tuple[float, float]:
    """(median µs, p99 µs) of ``count`` calls."""
    samples = []
    for n in range(count):
        started = time.perf_counter()
        call(n)
        samples.append(time.perf_counter() - started)
    samples.sort()
    return statistics.median(samples) * 1e6, samples[int(len(samples) * 0.99)] * 1e6


def collections(near: NearCache, start: datetime) -> str:
    """The garbage collector over GC_PICKS picks from ``start`` on, and a full collection."""
    pauses: list[tuple[int, float]] = []
    began = [0.0]

    def watch(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            began[0] = time.perf_counter()
        else:
            pauses.append((info["generation"], time.perf_counter() - began[0]))

    slowest = 0.0
    gc.collect()
    gc.callbacks.append(watch)
    began_all = time.perf_counter()
    try:
        for n in range(GC_PICKS):
            late = 2 if n % LATE == LATE - 1 else 0
            started = time.perf_counter()
            near.pick(BUCKET, start + timedelta(milliseconds=n - late))
            slowest = max(slowest, time.perf_counter() - started)
    finally:
        gc.callbacks.remove(watch)
    mean = (time.perf_counter() - began_all) / GC_PICKS
    by_generation = "/".join(str(sum(1 for g, _ in pauses if g == k)) for k in range(3))
    longest = max((pause for _, pause in pauses), default=0.0)
    started = time.perf_counter()
    gc.collect()
    full = time.perf_counter() - started
    return (
        f"{GC_PICKS:,} picks, 1 in {LATE} late: mean {mean * 1e6:8.1f} µs, slowest"
        f" {slowest * 1000:6.1f} ms; GC collections gen0/1/2 {by_generation}, longest pause"
        f" {longest * 1000:6.1f} ms; a full collection {full * 1000:6.1f} ms over"
        f" {len(gc.get_objects()):,} tracked objects"
    )


def scan_pick(near: NearCache, n: int) -> Account | None:
    """The gateway's old way: the list, then the best tier, then its least recently used."""
    accounts = near.list_schedulable(BUCKET, LATER + timedelta(milliseconds=PICKS + n))
    if not accounts:
        return None
    best = min(account.priority for account in accounts)
    tier = [account for account in accounts if account.priority == best]
    return min(tier, key=lambda a: (a.last_used_at or NOW, a.id))


def bench_size(url: str, size: int, lines: list[str]) -> None:
    writer = RedisSchedulerCache.from_url(url)
    writer.client.flushdb()
    writer.set_snapshot(BUCKET, realistic_accounts(size), writer.reserve_version(BUCKET))
    writer.client.close()
    del writer  # its codec keeps the accounts it wrote: not what a web process holds
    gc.collect()
    cache = RedisSchedulerCache.from_url(url)
    near = NearCache(cache)
    try:
        # Held, and the index built: both are the first request's cost, not a pick's.
        first = near.pick(BUCKET, NOW)
        assert first is not None and first.account is not None
        picks = timed(lambda n: near.pick(BUCKET, LATER + timedelta(milliseconds=n)), PICKS)
        scans = timed(lambda n: scan_pick(near, n), max(SCANS_MIN, PICKS * 1_000 // size))
        garbage = collections(near, LATER + timedelta(hours=1))
    finally:
        near.close()
        cache.client.close()
    lines.append(
        f"  {size:>7,} accounts: pick median {picks[0]:8.1f} µs  p99 {picks[1]:8.1f} µs   "
        f"list + min() scan median {scans[0]:9.1f} µs  p99 {scans[1]:9.1f} µs   "
        f"{scans[0] / picks[0]:7.1f}x\n  {size:>7,} accounts: {garbage}"
    )


def main() -> None:
    server = RedisServer().start()
    lines: list[str] = []
    try:
        for size in SIZES:
            bench_size(server.url, size, lines)
            print(lines[-1], flush=True)
    finally:
        server.close()
    print("targets: at 100,000 a pick's median <= 20 µs; at 1,000 >= 10x faster than the scan")


if __name__ == "__main__":
    main()
