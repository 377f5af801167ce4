"""Rebuild benchmarks: enqueue-to-active latency next to a no-op task, and coalescing.

``python -m benchmarks tasks``: starts its own redis-server, a SQLite source in a
temporary directory and a real worker (``celery -A tasks worker``, two processes, the
default settings), all stopped at the end.

- Latency: from ``request_rebuild`` to the moment the new version of a 100-account
  bucket is active (the time the worker took right after its compare-and-set), with an
  idle worker; next to the floor, a no-op task's enqueue-to-run time in the same run.
  Requests rotate over 32 buckets of the same 100 accounts, so that none comes within
  ``rebuild_min_interval_seconds`` of its bucket's last rebuild: that spacing applies
  to follow-up rebuilds only, and the first request of a burst starts at once.
  Targets: median within 5x of the floor, p99 under 50 ms.
- Coalescing: requests per executed rebuild, for a burst of 1,000 requests for one
  bucket, and for 1,000 requests spread over two seconds; plus how long the first
  request of the burst waited (it must not wait for the burst to end).
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import redis

from benchmarks.harness import bench_servers, running_worker, wait_until
from cache import RedisSchedulerCache, SchedulerBucket
from tasks import runtime
from tasks.celery import app
from tasks.source.schema import account_groups, accounts, groups, init_schema
from tasks.web.requests import request_rebuild

ACCOUNTS = 100
GROUPS = 16  # x 2 modes (single, forced) = 32 buckets of the same 100 accounts
SAMPLES = 300
WARMUP = 20
IDLE_GAP_SECONDS = 0.01
BURST = 1_000
SPREAD_SECONDS = 2.0
LATENCY_FLOOR_FACTOR = 5.0
P99_TARGET_MS = 50.0
NOOP_KEY = "bench:noop"

_noop_redis: redis.Redis | None = None


@app.task(name="bench.noop")  # type: ignore[untyped-decorator]
def noop(sent_at: float) -> None:
    """Notes how long after its sending it started; nothing else."""
    started = time.time()
    global _noop_redis
    if _noop_redis is None:
        _noop_redis = redis.Redis.from_url(runtime.settings().redis_url)
    _noop_redis.rpush(NOOP_KEY, started - sent_at)


def percentile(samples: list[float], share: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


# -- setup ------------------------------------------------------------------------------
def seed(url: str) -> list[SchedulerBucket]:
    """100 openai accounts, each a member of 16 groups: 32 buckets of 100 accounts."""
    engine = init_schema(url)
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
                    "extra": {"max_sessions": 8},
                }
                for a in range(1, ACCOUNTS + 1)
            ],
        )
        conn.execute(
            account_groups.insert(),
            [
                {"account_id": a, "group_id": g, "priority": a % 3}
                for g in range(1, GROUPS + 1)
                for a in range(1, ACCOUNTS + 1)
            ],
        )
    engine.dispose()
    return [
        SchedulerBucket(g, "openai", mode)
        for g in range(1, GROUPS + 1)
        for mode in ("single", "forced")
    ]


# -- measurements -----------------------------------------------------------------------
def noop_latencies(client: redis.Redis) -> list[float]:
    samples: list[float] = []
    for n in range(WARMUP + SAMPLES):
        noop.apply_async((time.time(),), queue="rebuild")
        raw = wait_until(lambda: client.lpop(NOOP_KEY), "the no-op task")
        if n >= WARMUP:
            samples.append(float(raw) * 1000)
        time.sleep(IDLE_GAP_SECONDS)
    return samples


def rebuild_latencies(cache: RedisSchedulerCache, buckets: list[SchedulerBucket]) -> list[float]:
    samples = [one_rebuild(cache, buckets[n % len(buckets)]) for n in range(WARMUP + SAMPLES)]
    return samples[WARMUP:]


def one_rebuild(cache: RedisSchedulerCache, bucket: SchedulerBucket) -> float:
    """Milliseconds from the request to the worker's activation of the new version."""
    sent_at = time.time()
    request_rebuild(bucket)

    def activated() -> float | None:
        stats = cache.stats()
        if stats.get("last_rebuild_bucket") != str(bucket):
            return None
        at = float(stats["last_rebuild_at"])
        return at if at >= sent_at else None

    at = wait_until(activated, "a rebuild")
    time.sleep(IDLE_GAP_SECONDS)
    return (float(at) - sent_at) * 1000


def settled(cache: RedisSchedulerCache, bucket: SchedulerBucket) -> bool:
    state = cache.client.hgetall(cache.keys.rebuild_state(bucket))
    return b"queued" not in state and state.get(b"done") == state.get(b"req")


def rebuilds(cache: RedisSchedulerCache) -> int:
    return int(cache.stats().get("rebuilds", 0))


def burst(cache: RedisSchedulerCache, bucket: SchedulerBucket) -> tuple[int, float]:
    """Rebuilds run for a burst of requests, and how long the burst took (s)."""
    time.sleep(1.0)  # quiet: the bucket's last rebuild is long past
    before = rebuilds(cache)
    started = time.time()
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda _: request_rebuild(bucket), range(BURST)))
    took = time.time() - started
    wait_until(lambda: settled(cache, bucket), "the burst to settle", every=0.01)
    return rebuilds(cache) - before, took


def first_wait_ms(cache: RedisSchedulerCache, bucket: SchedulerBucket) -> float:
    """How long the first request of a burst waits for its rebuild to be active.

    Read from the first new version's ``built_at`` (the writer's clock, in ms): the
    follow-up rebuild comes ``rebuild_min_interval_seconds`` later at the earliest, so
    the first version stays active long enough to be seen.
    """
    time.sleep(1.0)
    before = cache.bucket_info(bucket).active_version
    sent_at = time.time()
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(request_rebuild, bucket) for _ in range(BURST)]
        info = wait_until(
            lambda: (i := cache.bucket_info(bucket)).active_version != before and i,
            "the first rebuild of the burst",
        )
        for future in futures:
            future.result()
    wait_until(lambda: settled(cache, bucket), "the burst to settle", every=0.01)
    assert info.built_at is not None
    return float(info.built_at.timestamp() - sent_at) * 1000


def spread(cache: RedisSchedulerCache, bucket: SchedulerBucket) -> int:
    time.sleep(1.0)
    before = rebuilds(cache)
    pause = SPREAD_SECONDS / BURST
    for _ in range(BURST):
        request_rebuild(bucket)
        time.sleep(pause)
    wait_until(lambda: settled(cache, bucket), "the spread requests to settle", every=0.01)
    return rebuilds(cache) - before


# -- report -----------------------------------------------------------------------------
def main() -> None:
    with bench_servers("tasks") as servers:
        buckets = seed(servers.database_url)
        # -I: the worker registers the no-op task of this module too.
        with running_worker(servers, "rebuild", "-I", "benchmarks.tasks_bench"):
            cache = runtime.get_cache()
            client = redis.Redis.from_url(servers.redis_url)

            floor = noop_latencies(client)
            latency = rebuild_latencies(cache, buckets)
            deferred = int(cache.stats().get("rebuilds_deferred", 0))
            burst_rebuilds, burst_seconds = burst(cache, buckets[0])
            first_ms = first_wait_ms(cache, buckets[1])
            spread_rebuilds = spread(cache, buckets[2])

    floor_median, rebuild_median = statistics.median(floor), statistics.median(latency)
    p99 = percentile(latency, 0.99)
    ratio = rebuild_median / floor_median
    print(
        f"enqueue-to-run, no-op task (floor) median {floor_median:7.2f} ms   "
        f"p99 {percentile(floor, 0.99):7.2f} ms   ({SAMPLES} samples)"
    )
    print(
        f"enqueue-to-active, {ACCOUNTS}-account rebuild   median {rebuild_median:7.2f} ms   "
        f"p99 {p99:7.2f} ms   ({SAMPLES} samples, {deferred} deferred)"
    )
    print(
        f"  median / floor {ratio:5.2f}x (target <= {LATENCY_FLOOR_FACTOR:.0f}x: "
        f"{'met' if ratio <= LATENCY_FLOOR_FACTOR else 'MISSED'}); "
        f"p99 target < {P99_TARGET_MS:.0f} ms: {'met' if p99 < P99_TARGET_MS else 'MISSED'}"
    )
    print(
        f"coalescing, burst of {BURST} requests in {burst_seconds * 1000:.0f} ms: "
        f"{burst_rebuilds} rebuilds = {BURST / max(burst_rebuilds, 1):.0f} requests per "
        f"rebuild (target: at most 2 rebuilds: "
        f"{'met' if burst_rebuilds <= 2 else 'MISSED'})"
    )
    print(
        f"  first request of a burst active after {first_ms:.2f} ms "
        f"({first_ms / rebuild_median:.2f}x the idle median: no fixed delay)"
    )
    print(
        f"coalescing, {BURST} requests spread over {SPREAD_SECONDS:.0f} s: {spread_rebuilds} "
        f"rebuilds = {BURST / max(spread_rebuilds, 1):.0f} requests per rebuild"
    )


if __name__ == "__main__":
    main()
