"""Near-cache benchmarks: what a web process's read costs Redis and the caller, how
fast changes reach it, and how long any one command blocks Redis at 10,000 accounts.

Every figure is printed next to the reference's (benchmarks/reference.py), measured in
the same run against the same server, with the ratio.
"""

from __future__ import annotations

import multiprocessing
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import redis

from benchmarks.cache_bench import BUCKET, NOW, realistic_accounts
from benchmarks.reference import ReferenceCache
from cache import NearCache, RedisSchedulerCache

# Redis's own command budget for this benchmark: nothing may run longer.
SLOW_US = 10_000


def server_cpu(client: redis.Redis) -> float:
    """Seconds of CPU the Redis server has used (user + system, main thread and all)."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def per_read(
    client: redis.Redis, read: Callable[[], object], seconds: float
) -> tuple[float, float, int]:
    """(server CPU µs per read, median client µs per read, reads) over ``seconds``."""
    samples: list[float] = []
    cpu = server_cpu(client)
    deadline = time.perf_counter() + seconds
    while (started := time.perf_counter()) < deadline:
        read()
        samples.append(time.perf_counter() - started)
    used = server_cpu(client) - cpu
    return used / len(samples) * 1e6, statistics.median(samples) * 1e6, len(samples)


def ratio_line(name: str, ours: float, unit: str, ref: float, target: str) -> str:
    ratio = ref / ours if ours > 0 else float("inf")
    return (
        f"  {name:<40} {ours:10.2f} {unit}   reference {ref:10.2f} {unit}   "
        f"{ratio:8.1f}x   (target {target})"
    )


def bench_near_reads(client: redis.Redis, url: str, lines: list[str]) -> None:
    client.flushdb()
    accounts = realistic_accounts(1000)
    cache = RedisSchedulerCache(client)
    cache.set_snapshot(BUCKET, accounts, cache.reserve_version(BUCKET))
    ref = ReferenceCache(client)
    ref.set_snapshot(BUCKET, accounts)
    near = NearCache(RedisSchedulerCache.from_url(url))
    near.list_schedulable(BUCKET, NOW)
    ref_cpu, ref_wall, ref_n = per_read(client, lambda: ref.get_snapshot(BUCKET), 3.0)
    ours_cpu, ours_wall, ours_n = per_read(client, lambda: cache.get_snapshot(BUCKET), 3.0)
    near_cpu, near_wall, near_n = per_read(client, lambda: near.list_schedulable(BUCKET, NOW), 3.0)
    near.close()
    lines.append("read of a 1000-account bucket: Redis server CPU per read (INFO cpu, amortized)")
    lines.append(ratio_line("near cache (checks included)", near_cpu, "µs", ref_cpu, "ref/20: 20x"))
    lines.append(ratio_line("get_snapshot, uncached", ours_cpu, "µs", ref_cpu, "none"))
    lines.append("  ... and median client time per read")
    lines.append(ratio_line("near cache", near_wall, "µs", ref_wall, "10x"))
    lines.append(ratio_line("get_snapshot, uncached", ours_wall, "µs", ref_wall, "none"))
    lines.append(f"  (reads in 3 s: near {near_n}, get_snapshot {ours_n}, reference {ref_n})")


def _activate_in_turn(url: str, rounds: int, out: Any, go: Any) -> None:
    """Another process: activate a new version ``rounds`` times, noting each moment."""
    cache = RedisSchedulerCache.from_url(url)
    activate = cache.snapshots._activation

    def timed(*args: Any) -> tuple[int, int]:
        moment = time.time()
        reply = activate(*args)
        out.put((reply[0], moment))
        return reply

    cache.snapshots._activation = timed  # type: ignore[method-assign,assignment]
    accounts = realistic_accounts(1000)
    for n in range(rounds):
        go.get()
        changed = [accounts[0].model_copy(update={"name": f"round-{n}"}), *accounts[1:]]
        cache.set_snapshot(BUCKET, changed, cache.reserve_version(BUCKET))


def _touch_in_turn(url: str, rounds: int, out: Any, go: Any) -> None:
    cache = RedisSchedulerCache.from_url(url)
    for n in range(rounds):
        go.get()
        moment = time.time()
        cache.update_last_used({500: NOW + timedelta(seconds=n + 1)})
        out.put(moment)


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def bench_propagation(client: redis.Redis, url: str, lines: list[str]) -> None:
    client.flushdb()
    cache = RedisSchedulerCache(client)
    cache.set_snapshot(BUCKET, realistic_accounts(1000), cache.reserve_version(BUCKET))
    near = NearCache(RedisSchedulerCache.from_url(url))
    near.list_schedulable(BUCKET, NOW)
    time.sleep(0.3)  # subscribed
    context = multiprocessing.get_context("fork")
    out, go = context.Queue(), context.Queue()
    rounds = 100
    writer = context.Process(target=_activate_in_turn, args=(url, rounds, out, go))
    writer.start()
    seen: list[float] = []
    for n in range(rounds):
        go.put(n)
        _, activated = out.get(timeout=30)
        while (got := near.list_schedulable(BUCKET, NOW)) and got[0].name != f"round-{n}":
            time.sleep(0.0002)  # a request every 0.2 ms
        seen.append((time.time() - activated) * 1000)
    writer.join(timeout=30)
    rounds = 10
    toucher = context.Process(target=_touch_in_turn, args=(url, rounds, out, go))
    toucher.start()
    touched: list[float] = []
    for n in range(rounds):
        go.put(n)
        moment = out.get(timeout=30)
        want = NOW + timedelta(seconds=n + 1)
        while (
            next(a for a in near.list_schedulable(BUCKET, NOW) or [] if a.id == 500).last_used_at
            != want
        ):
            time.sleep(0.001)
        touched.append(time.time() - moment)
    toucher.join(timeout=30)
    near.close()
    lines.append("changes made by another process, as a near-cached reader sees them")
    lines.append(
        f"  new version seen after activation    median {statistics.median(seen):6.2f} ms"
        f"   p99 {p99(seen):6.2f} ms   (target p99 <= 50 ms; {len(seen)} versions)"
    )
    lines.append(
        f"  another process's touch seen after   median {statistics.median(touched):6.3f} s"
        f"   max {max(touched):6.3f} s   (target <= 1.5 s; {len(touched)} touches)"
    )


FIRST_READ = """
import sys, time, redis
from cache import RedisSchedulerCache, SchedulerBucket
from benchmarks.reference import ReferenceCache
client = redis.Redis.from_url(sys.argv[1])
bucket = SchedulerBucket.parse(sys.argv[3])
reader = RedisSchedulerCache(client) if sys.argv[2] == "ours" else ReferenceCache(client)
started = time.perf_counter()
assert reader.get_snapshot(bucket)
print((time.perf_counter() - started) * 1000)
"""


def bench_first_read(client: redis.Redis, url: str, lines: list[str]) -> None:
    client.flushdb()
    accounts = realistic_accounts(1000)
    cache = RedisSchedulerCache(client)
    cache.set_snapshot(BUCKET, accounts, cache.reserve_version(BUCKET))
    ReferenceCache(client).set_snapshot(BUCKET, accounts)
    times: dict[str, list[float]] = {"ours": [], "ref": []}
    for _ in range(5):
        for who in times:
            done = subprocess.run(
                [sys.executable, "-c", FIRST_READ, url, who, str(BUCKET)],
                capture_output=True,
                text=True,
                check=True,
            )
            times[who].append(float(done.stdout))
    ours, ref = statistics.median(times["ours"]), statistics.median(times["ref"])
    lines.append("first read in a fresh process, 1000 accounts (median of 5 processes)")
    lines.append(ratio_line("get_snapshot (decodes every payload)", ours, "ms", ref, ">= 1x"))


def bench_slowlog(client: redis.Redis, url: str, lines: list[str]) -> None:
    """Every command's server time at 10,000 accounts, from SLOWLOG (threshold 0)."""
    client.flushdb()
    accounts = realistic_accounts(10_000)
    cache = RedisSchedulerCache(client)
    old: Any = client.config_get("slowlog-*")
    client.config_set("slowlog-max-len", 100_000)
    client.config_set("slowlog-log-slower-than", 0)
    revision = [10_000]

    def new_payloads() -> None:
        revision[0] += 1
        changed = [a.model_copy(update={"revision": revision[0] + a.id}) for a in accounts]
        cache.set_snapshot(BUCKET, changed, cache.reserve_version(BUCKET))

    def unchanged() -> None:
        cache.set_snapshot(BUCKET, accounts, cache.reserve_version(BUCKET))

    def reads() -> None:
        RedisSchedulerCache(client).get_snapshot(BUCKET)  # cold: every payload
        cache.get_snapshot(BUCKET)  # warm
        near = NearCache(RedisSchedulerCache(client), background=False)
        near.list_schedulable(BUCKET, NOW)
        near.check()
        cache.update_last_used({a.id: NOW for a in accounts})

    unchanged()
    lines.append(
        f"longest single command at 10,000 accounts (SLOWLOG; target: none over {SLOW_US} µs)"
    )
    try:
        for name, phase in (
            ("full rebuild, every payload new", new_payloads),
            ("unchanged refresh", unchanged),
            ("reads (cold, warm, near) + 10k touches", reads),
        ):
            client.slowlog_reset()
            started = time.perf_counter()
            phase()
            wall = (time.perf_counter() - started) * 1000
            entries = client.slowlog_get(100_000)
            longest = max(entries, key=lambda e: e["duration"])
            over = sum(1 for e in entries if e["duration"] > SLOW_US)
            command = longest["command"][:40]
            lines.append(
                f"  {name:<40} longest {longest['duration']:6d} µs   over {SLOW_US} µs: {over}"
                f"   ({len(entries)} commands, {wall:7.1f} ms wall; longest: {command!r})"
            )
    finally:
        client.config_set("slowlog-log-slower-than", old["slowlog-log-slower-than"])
        client.config_set("slowlog-max-len", old["slowlog-max-len"])
        client.slowlog_reset()


def main(client: redis.Redis, url: str, lines: list[str]) -> None:
    bench_near_reads(client, url, lines)
    bench_propagation(client, url, lines)
    bench_first_read(client, url, lines)
    bench_slowlog(client, url, lines)
