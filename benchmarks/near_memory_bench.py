"""What a near cache holds per account, and what its first call costs, at 1,000, 10,000
and 100,000 accounts in one bucket.

Each figure comes from a fresh process (``python -c``), so nothing decoded before is
reused and the memory counted is this bucket's alone:

- held per account: resident memory (``/proc/self/statm``) after the first
  ``list_schedulable`` minus before, divided by the accounts; and the same from
  ``tracemalloc`` (a separate process: tracing slows every allocation);
- cold first call: the first ``list_schedulable`` of the process, next to the floor
  measured in the same run: fetch the same payloads (HMGET of the version's payload
  hash, in the reader's chunks, one pipeline, ids known beforehand: 1..N) and ``json.loads``
  each into a plain dict;
- warm ``list_schedulable`` at 1,000 (the call, and the call plus reading every account).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from collections.abc import Sequence

from benchmarks.cache_bench import BUCKET, realistic_accounts
from cache import RedisSchedulerCache
from tests.support import RedisServer

SIZES = (1_000, 10_000, 100_000)
# Fresh processes per figure (the median is printed).
RUNS = 3

PRELUDE = """
import gc, json, sys, time, tracemalloc
from datetime import timedelta
import redis
from benchmarks.cache_bench import BUCKET, NOW
from cache import NearCache, RedisSchedulerCache
from cache.keys import READ_CHUNK

url, what = sys.argv[1], sys.argv[2]
PAGE = 4096

def rss():
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE
"""

OURS = (
    PRELUDE
    + """
cache = RedisSchedulerCache.from_url(url)
cache.client.ping()
near = NearCache(cache, background=False)
if what == "trace":
    tracemalloc.start()
before = rss()
started = time.perf_counter()
found = near.list_schedulable(BUCKET, NOW)
took = time.perf_counter() - started
assert found is not None and len(found) > 0
held = (tracemalloc.get_traced_memory()[0] if what == "trace" else rss() - before)
near.pick(BUCKET, NOW + timedelta(hours=1))
picked = (tracemalloc.get_traced_memory()[0] if what == "trace" else rss() - before)
print(json.dumps({"ms": took * 1000, "held": held, "picked": picked, "n": len(found)}))
"""
)

FLOOR = (
    PRELUDE
    + """
client = redis.Redis.from_url(url)
client.ping()
key, ids = sys.argv[3], list(range(1, int(sys.argv[4]) + 1))
started = time.perf_counter()
pipe = client.pipeline(transaction=False)
for start in range(0, len(ids), READ_CHUNK):
    pipe.hmget(key, ids[start : start + READ_CHUNK])
decoded = [json.loads(p) for part in pipe.execute() for p in part]
took = time.perf_counter() - started
assert len(decoded) == len(ids)
print(json.dumps({"ms": took * 1000}))
"""
)

WARM = (
    PRELUDE
    + """
cache = RedisSchedulerCache.from_url(url)
near = NearCache(cache)
near.list_schedulable(BUCKET, NOW)
samples, reading = [], []
for n in range(20_000):
    started = time.perf_counter()
    found = near.list_schedulable(BUCKET, NOW)
    samples.append(time.perf_counter() - started)
for n in range(2_000):
    started = time.perf_counter()
    for account in near.list_schedulable(BUCKET, NOW):
        account.priority
    reading.append(time.perf_counter() - started)
near.close()
samples.sort(); reading.sort()
call, read = samples[len(samples) // 2], reading[len(reading) // 2]
print(json.dumps({"call": call * 1e6, "read": read * 1e6}))
"""
)


def run(script: str, *args: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, check=True
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def median(runs: Sequence[dict[str, float]], field: str) -> float:
    return statistics.median(r[field] for r in runs)


def bench_size(url: str, size: int) -> list[str]:
    cache = RedisSchedulerCache.from_url(url)
    cache.client.flushdb()
    accounts = realistic_accounts(size)
    version = cache.reserve_version(BUCKET)
    cache.set_snapshot(BUCKET, accounts, version)
    payloads = cache.keys.payloads(BUCKET, version)
    cache.client.close()
    ours: list[dict[str, float]] = []
    floors: list[dict[str, float]] = []
    for _ in range(RUNS):
        # Interleaved, so a noisy neighbour costs both alike.
        ours.append(run(OURS, url, "rss"))
        floors.append(run(FLOOR, url, "floor", payloads, str(size)))
    traced = run(OURS, url, "trace")
    first, floor = median(ours, "ms"), median(floors, "ms")
    lines = [
        f"  {size:>7,} accounts: held per account after the first read  "
        f"RSS {median(ours, 'held') / size:7.0f} B   tracemalloc {traced['held'] / size:7.0f} B"
        f"   (after the first pick too: RSS {median(ours, 'picked') / size:7.0f} B,"
        f" tracemalloc {traced['picked'] / size:7.0f} B)",
        f"  {size:>7,} accounts: cold first call {first:9.1f} ms   floor (fetch + json.loads)"
        f" {floor:9.1f} ms   ours / floor = {first / floor:5.2f}",
    ]
    if size == SIZES[0]:
        warm = run(WARM, url, "warm")
        lines.append(
            f"  {size:>7,} accounts: warm list_schedulable median {warm['call']:7.1f} µs;"
            f" call and read every account {warm['read']:8.1f} µs"
        )
    return lines


def main() -> None:
    server = RedisServer().start()
    try:
        for size in SIZES:
            for line in bench_size(server.url, size):
                print(line, flush=True)
    finally:
        server.close()
    print("targets: <= 1 KB per account at 100,000; cold first call at 100,000 <= the floor")


if __name__ == "__main__":
    main()
