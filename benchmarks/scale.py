"""Scale: what one bucket of 1,000, 10,000 and 100,000 accounts costs a web process,
Redis, and the worker's write path, each figure next to a baseline of the same run.

``python -m benchmarks scale [--sizes 1000,10000,100000]`` (``make bench`` runs it with
every size): a private redis-server and a SQLite file per size; about 80 s for the three
sizes on two cores at a load average of 3, twice that on a busier machine.

Per size, the bucket written through the cache API (``set_snapshot``; its cost is not
what is measured here):

- Redis memory per account: ``INFO memory`` used_memory after the write less before,
  over N; and ``MEMORY USAGE`` of the version's keys (id list, payloads, entries) and of
  the shared stores the write filled (payloads by id, revisions, digests, bucket index).
- In a fresh process each (median of COLD_RUNS; wall and CPU time): the cold first
  ``tasks.list_schedulable`` (connect, read, decode, hold) next to the floor, the same
  payloads fetched with raw redis-py calls and ``json.loads`` into plain dicts; the
  resident memory that first read adds (RSS delta over N; after the first pick too,
  which builds the pick index), and what tracemalloc counts for it in another fresh
  process.
- In the first of those processes, warm: ``tasks.pick`` median and p99 (and the near
  cache's own ``pick`` under it) next to the gateway's old way, ``tasks.list_schedulable``
  and two ``min()`` scans; the garbage collector's collections and longest pause during
  the ``tasks.pick`` calls, and the objects it tracks then.

Then the worker's side, with the SQLite source holding N accounts: Redis CPU (``INFO
cpu`` used_cpu_user + used_cpu_sys of the server) and the longest command (SLOWLOG,
threshold 0) of a full rebuild of the emptied bucket through the rebuild task
(``tasks.worker.rebuild.rebuild_bucket``, run in this process), and of one account's
change applied by :class:`tasks.worker.outbox.OutboxPoller` on its one outbox event
(the rebuild request it makes is noted in Redis, not sent: that rebuild is the line
above). SLOWLOG times commands by the wall clock, so the total of its durations is
printed next to the server's CPU: far above it, the server was descheduled mid-command.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import redis
import sqlalchemy as sa

from benchmarks.cache_bench import BUCKET, NOW, realistic_accounts
from benchmarks.harness import REPO, bench_servers
from benchmarks.near_bench import SLOW_US, server_cpu
from benchmarks.pick_bench import timed
from cache import Account, RedisSchedulerCache
from cache.scripts import script_named_in
from tasks import runtime
from tasks.settings import Settings
from tasks.source.schema import account_groups, accounts, groups, init_schema, scheduler_outbox

SIZES = (1_000, 10_000, 100_000)
# Fresh processes per size for the cold first read and its floor (medians of these);
# one at the largest sizes, where a read takes seconds.
COLD_RUNS = 3
COLD_RUNS_ABOVE = (10_000, 1)
# Picks timed per process; scans as many as fit in about two seconds (at least 50).
PICKS = 5_000
SCAN_SECONDS = 2.0
SCANS_MIN = 20
# The requests' time: after every last use of the bucket, so each pick moves the order.
LATER = NOW + timedelta(hours=1)
SEED_CHUNK = 5_000
# The changed account's new priority: none of the seeded ones (0-4), so it is a change.
CHANGED_PRIORITY = 7
GROUP, PLATFORM = BUCKET.group_id, BUCKET.platform


# -- in a fresh process ------------------------------------------------------------------
def rss_bytes() -> int:
    """This process's resident set (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def scan_pick(n: int) -> Account | None:
    """The gateway's old way: the list, then the best tier, then its least recently used."""
    from tasks import list_schedulable

    found = list_schedulable(GROUP, PLATFORM, now=LATER + timedelta(milliseconds=PICKS + n))
    if not found:
        return None
    best = min(account.priority for account in found)
    tier = [account for account in found if account.priority == best]
    return min(tier, key=lambda a: (a.last_used_at or NOW, a.id))


def child_first(size: int) -> dict[str, float]:
    """Cold first ``list_schedulable`` (wall and this process's CPU: the machine may be
    busy), the RSS it adds, the first pick (which builds the pick index)."""
    from tasks import list_schedulable, pick

    gc.collect()
    before = rss_bytes()
    started, cpu = time.perf_counter(), time.process_time()
    held = list_schedulable(GROUP, PLATFORM, now=LATER)
    first_ms = (time.perf_counter() - started) * 1000
    first_cpu_ms = (time.process_time() - cpu) * 1000
    gc.collect()
    after_read = rss_bytes()
    assert len(held) > 0.8 * size, f"{len(held)} schedulable of {size}"
    started = time.perf_counter()
    assert pick(GROUP, PLATFORM, now=LATER) is not None
    first_pick_ms = (time.perf_counter() - started) * 1000
    gc.collect()
    return {
        "first_ms": first_ms,
        "first_cpu_ms": first_cpu_ms,
        "first_pick_ms": first_pick_ms,
        "rss_read": after_read - before,
        "rss_pick": rss_bytes() - before,
    }


def child_picks(size: int) -> dict[str, float]:
    """A first read as :func:`child_first`, then warm: ``tasks.pick``, the near cache's
    own ``pick`` under it (what :mod:`benchmarks.pick_bench` times), and the scan."""
    from tasks import pick

    figures = child_first(size)
    with watched() as garbage:
        picks = timed(lambda n: pick(GROUP, PLATFORM, now=LATER + timedelta(milliseconds=n)), PICKS)
    near = runtime.get_near_cache()
    assert near is not None
    later = LATER + timedelta(milliseconds=PICKS)
    near_picks = timed(lambda n: near.pick(BUCKET, later + timedelta(milliseconds=n)), PICKS)
    scan_pick(0)  # warm
    per_scan = max(timed(scan_pick, 3)[0] / 1e6, 1e-6)
    scans = timed(scan_pick, max(SCANS_MIN, min(PICKS, int(SCAN_SECONDS / per_scan))))
    return {
        **figures,
        "pick_median_us": picks[0],
        "pick_p99_us": picks[1],
        "near_pick_median_us": near_picks[0],
        "near_pick_p99_us": near_picks[1],
        "scan_median_us": scans[0],
        "scan_p99_us": scans[1],
        **garbage,
    }


@contextmanager
def watched() -> Iterator[dict[str, float]]:
    """The garbage collector's collections (by generation) and longest pause while the
    block runs; the objects it tracks at the end (what a full collection walks)."""
    figures: dict[str, float] = {"gc0": 0, "gc1": 0, "gc2": 0, "gc_longest_ms": 0.0}
    began = [0.0]

    def watch(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            began[0] = time.perf_counter()
            return
        figures[f"gc{info['generation']}"] += 1
        pause = (time.perf_counter() - began[0]) * 1000
        figures["gc_longest_ms"] = max(figures["gc_longest_ms"], pause)

    gc.callbacks.append(watch)
    try:
        yield figures
    finally:
        gc.callbacks.remove(watch)
        figures["gc_tracked"] = len(gc.get_objects())


def child_traced(size: int) -> dict[str, float]:
    """What tracemalloc counts for the first read (slower: timed elsewhere)."""
    from tasks import list_schedulable

    tracemalloc.start()
    held = list_schedulable(GROUP, PLATFORM, now=LATER)
    gc.collect()
    current, peak = tracemalloc.get_traced_memory()
    assert held
    return {"traced": current, "traced_peak": peak}


def child_floor(size: int) -> dict[str, float]:
    """The floor of a first read: the active version's payloads fetched with raw
    redis-py calls (its id list, then the payloads a chunk at a time) and each
    ``json.loads``-ed into a plain dict; what that holds in RSS."""
    keys = RedisSchedulerCache.from_url(runtime.settings().redis_url).keys
    gc.collect()
    before = rss_bytes()
    started = time.perf_counter()
    cpu = time.process_time()
    client = redis.Redis.from_url(runtime.settings().redis_url)
    version = int(cast(bytes, client.hget(keys.meta(BUCKET), "active")))
    ids = cast(list[bytes], client.lrange(keys.snapshot(BUCKET, version), 0, -1))
    held: list[dict[str, Any]] = []
    for start in range(0, len(ids), 1_000):
        payloads = cast(
            list[bytes], client.hmget(keys.payloads(BUCKET, version), ids[start : start + 1_000])
        )
        held += [json.loads(payload) for payload in payloads]
    floor_ms = (time.perf_counter() - started) * 1000
    floor_cpu_ms = (time.process_time() - cpu) * 1000
    gc.collect()
    assert len(held) == size
    return {"floor_ms": floor_ms, "floor_cpu_ms": floor_cpu_ms, "floor_rss": rss_bytes() - before}


CHILDREN: dict[str, Callable[[int], dict[str, float]]] = {
    "first": child_first,
    "picks": child_picks,
    "traced": child_traced,
    "floor": child_floor,
}


def in_fresh_process(kind: str, size: int, env: dict[str, str]) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.scale", "--child", kind, "--sizes", str(size)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"scale: the {kind} process failed:\n{done.stderr[-3000:]}")
    return cast(dict[str, float], json.loads(done.stdout.splitlines()[-1]))


def cold_runs(size: int) -> int:
    return COLD_RUNS_ABOVE[1] if size > COLD_RUNS_ABOVE[0] else COLD_RUNS


# -- in this process ---------------------------------------------------------------------
@dataclass
class Figures:
    size: int
    values: dict[str, float]

    def __getitem__(self, name: str) -> float:
        return self.values[name]


def redis_memory(client: redis.Redis, cache: RedisSchedulerCache, size: int) -> dict[str, float]:
    """used_memory before and after the write; MEMORY USAGE of what it wrote."""
    client.flushall()
    before = int(client.info("memory")["used_memory"])
    written = realistic_accounts(size)
    cache.set_snapshot(BUCKET, written, cache.reserve_version(BUCKET))
    used = int(client.info("memory")["used_memory"]) - before
    keys = cache.keys
    version = int(cast(bytes, client.hget(keys.meta(BUCKET), "active")))

    def usage(*names: str) -> int:
        return sum(int(client.memory_usage(name, samples=0) or 0) for name in names)

    pipe = client.pipeline(transaction=False)
    for account in written:
        pipe.memory_usage(keys.account_buckets(account.id), samples=0)
    index = sum(int(found or 0) for found in pipe.execute())
    return {
        "used_memory": used,
        "version_keys": usage(
            keys.snapshot(BUCKET, version),
            keys.payloads(BUCKET, version),
            keys.entries(BUCKET, version),
        ),
        "shared_stores": usage(keys.accounts, keys.revisions, keys.digests),
        "bucket_index": index,
    }


def seed_source(url: str, size: int) -> int:
    """``size`` accounts of the bucket's group and platform; the highest outbox id."""
    engine = init_schema(url)
    try:
        with engine.begin() as conn:
            conn.execute(groups.insert(), [{"id": GROUP, "name": "scale", "platform": PLATFORM}])
            for start in range(1, size + 1, SEED_CHUNK):
                ids = range(start, min(start + SEED_CHUNK, size + 1))
                conn.execute(accounts.insert(), [_row(a) for a in ids])
                conn.execute(
                    account_groups.insert(),
                    [{"account_id": a, "group_id": GROUP, "priority": a % 5} for a in ids],
                )
            return int(conn.execute(sa.select(sa.func.max(scheduler_outbox.c.id))).scalar() or 0)
    finally:
        engine.dispose()


def _row(account_id: int) -> dict[str, Any]:
    """A source row shaped like :func:`realistic_accounts`' accounts."""
    return {
        "id": account_id,
        "name": f"{PLATFORM}-oauth-{account_id:06d}",
        "platform": PLATFORM,
        "type": "oauth",
        "priority": account_id % 5,
        "concurrency": 3 + account_id % 4,
        "load_factor": 10,
        "rate_multiplier": 1.0,
        "last_used_at": NOW - timedelta(seconds=account_id),
        "expires_at": NOW + timedelta(days=30),
        "session_window_start": NOW - timedelta(hours=2),
        "session_window_end": NOW + timedelta(hours=3),
        "session_window_status": "allowed",
        "credentials": {"base_url": "https://upstream.example", "access_token": "secret"},
        "extra": {"mixed_scheduling": False, "max_sessions": 8, "window_cost_limit": 40.0},
    }


@dataclass(frozen=True)
class Cost:
    cpu_ms: float
    longest_us: int
    commands: int
    wall_ms: float
    longest: str
    over: int  # commands longer than SLOW_US
    logged_ms: float  # the durations SLOWLOG gives, summed: near cpu_ms unless preempted
    kind_calls: int  # commands of the longest one's kind
    kind_median_us: float


def server_cost(client: redis.Redis, action: Callable[[], object]) -> Cost:
    """Redis CPU and the longest command (SLOWLOG, threshold 0) of ``action``."""
    old: Any = client.config_get("slowlog-*")
    client.config_set("slowlog-max-len", 1_000_000)
    client.config_set("slowlog-log-slower-than", 0)
    try:
        client.slowlog_reset()
        cpu = server_cpu(client)
        started = time.perf_counter()
        action()
        wall = (time.perf_counter() - started) * 1000
        used = server_cpu(client) - cpu
        entries = client.slowlog_get(1_000_000)
    finally:
        client.config_set("slowlog-log-slower-than", old["slowlog-log-slower-than"])
        client.config_set("slowlog-max-len", old["slowlog-max-len"])
        client.slowlog_reset()
    longest = max(entries, key=lambda e: e["duration"])
    kind = [e["duration"] for e in entries if command_name(e) == command_name(longest)]
    return Cost(
        cpu_ms=used * 1000,
        longest_us=int(longest["duration"]),
        commands=len(entries),
        wall_ms=wall,
        longest=command_name(longest),
        over=sum(1 for e in entries if e["duration"] > SLOW_US),
        logged_ms=sum(e["duration"] for e in entries) / 1000,
        kind_calls=len(kind),
        kind_median_us=statistics.median(kind),
    )


def command_name(entry: dict[str, Any]) -> str:
    """A SLOWLOG entry's command, a script by its name."""
    words = entry["command"].decode(errors="replace").split()
    if words[0].upper() == "EVALSHA" and len(words) > 1:
        return f"script {script_named_in(words[1]) or words[1][:12]}"
    return str(words[0]).upper()


def write_path(
    client: redis.Redis, cache: RedisSchedulerCache, database_url: str, size: int
) -> tuple[Cost, Cost]:
    """The rebuild of the emptied bucket from the source, then one account's change
    through the outbox poller; Redis's cost of each."""
    from tasks.source import SqlSource, SqlWriter
    from tasks.worker.outbox import OutboxPoller
    from tasks.worker.rebuild import rebuild_bucket

    top = seed_source(database_url, size)
    client.flushall()
    cache.request_rebuild(BUCKET)  # what a request notes first; the rebuild covers it
    outcome: list[str] = []
    rebuild = server_cost(
        client, lambda: outcome.append(rebuild_bucket.apply(args=(str(BUCKET),), throw=True).get())
    )
    if "active" not in outcome[0] or f": {size} accounts" not in outcome[0]:
        raise RuntimeError(f"scale: the rebuild of {size} accounts did not activate: {outcome}")

    source = runtime.get_source()
    assert isinstance(source, SqlSource)
    cache.advance_outbox(top)  # the seeding's events: the rebuild read them all
    poller = OutboxPoller(
        cache,
        source,
        config=runtime.settings(),
        request_rebuild=cache.request_rebuild,
        refresh_all=lambda: None,
    )
    # A change before the one measured: a poller that runs has its scripts loaded.
    SqlWriter(source).update_account(1, priority=CHANGED_PRIORITY)
    poller.poll_batch()
    SqlWriter(source).update_account(size // 2, priority=CHANGED_PRIORITY)
    reports = []
    change = server_cost(client, lambda: reports.append(poller.poll_batch()))
    if reports[0].applied != 1:
        raise RuntimeError(f"scale: the poller applied {reports[0]} instead of one event")
    patched = cache.get_snapshot(BUCKET)
    assert patched is not None
    if next(a for a in patched if a.id == size // 2).priority != CHANGED_PRIORITY:
        raise RuntimeError("scale: the change did not reach the active version")
    return rebuild, change


def bench_size(size: int, workdir: Path, redis_url: str) -> Figures:
    database_url = f"sqlite:///{workdir / f'source-{size}.sqlite3'}"
    init_schema(database_url).dispose()
    runtime.reset(
        Settings(redis_url=redis_url, database_url=database_url, rebuild_min_interval_seconds=0)
    )
    client = redis.Redis.from_url(redis_url)
    cache = RedisSchedulerCache(client)
    values: dict[str, float] = redis_memory(client, cache, size)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHED_")}
    env.update(SCHED_REDIS_URL=redis_url, SCHED_DATABASE_URL=database_url)
    runs = cold_runs(size)
    values.update(in_fresh_process("picks", size, env))
    firsts = [values] + [in_fresh_process("first", size, env) for _ in range(runs - 1)]
    floors = [in_fresh_process("floor", size, env) for _ in range(runs)]
    for name in ("first_ms", "first_cpu_ms", "first_pick_ms", "rss_read", "rss_pick"):
        values[name] = statistics.median(f[name] for f in firsts)
    for name in floors[0]:
        values[name] = statistics.median(f[name] for f in floors)
    values.update(in_fresh_process("traced", size, env))
    rebuild, change = write_path(client, cache, database_url, size)
    client.close()
    figures = Figures(size, values)
    print_size(figures, rebuild, change)
    return figures


# -- report ------------------------------------------------------------------------------
def print_size(f: Figures, rebuild: Cost, change: Cost) -> None:
    n = f.size
    print(f"  {n:,} accounts in one bucket", flush=True)
    print(
        f"    pick (warm)           median {f['pick_median_us']:9.1f} µs  p99 "
        f"{f['pick_p99_us']:9.1f} µs   list + min() scan median {f['scan_median_us']:9.1f} µs"
        f"  p99 {f['scan_p99_us']:9.1f} µs   {f['scan_median_us'] / f['pick_median_us']:7.1f}x"
    )
    print(
        f"    of which near.pick    median {f['near_pick_median_us']:9.1f} µs  p99"
        f" {f['near_pick_p99_us']:9.1f} µs   (without tasks.pick's settings, marks and use"
        f" recording)   scan / near.pick {f['scan_median_us'] / f['near_pick_median_us']:7.1f}x"
    )
    print(
        f"    first list_schedulable, fresh process {f['first_ms']:8.1f} ms"
        f" ({f['first_cpu_ms']:.0f} ms CPU)   floor (raw fetch + json.loads)"
        f" {f['floor_ms']:8.1f} ms"
        f" ({f['floor_cpu_ms']:.0f} ms CPU)   {f['first_ms'] / f['floor_ms']:5.2f}x the floor"
        f" ({f['first_cpu_ms'] / f['floor_cpu_ms']:.2f}x in CPU); median of {cold_runs(n)}"
    )
    print(
        f"    garbage collector     during {PICKS:,} tasks.pick: collections gen0/1/2"
        f" {f['gc0']:.0f}/{f['gc1']:.0f}/{f['gc2']:.0f}, longest pause"
        f" {f['gc_longest_ms']:.1f} ms; {f['gc_tracked']:,.0f} objects tracked"
    )
    print(f"    first pick after it   {f['first_pick_ms']:8.1f} ms (builds the pick index)")
    print(
        f"    web process memory    RSS {f['rss_read'] / n:7.0f} B/account after the first read,"
        f" {f['rss_pick'] / n:7.0f} after the first pick; tracemalloc {f['traced'] / n:6.0f}"
        f" B/account (peak {f['traced_peak'] / n:.0f});"
        f" floor's dicts {f['floor_rss'] / n:6.0f} B/account"
        f" ({f['rss_read'] / f['floor_rss']:.2f}x)"
    )
    version, shared, index = f["version_keys"], f["shared_stores"], f["bucket_index"]
    print(
        f"    Redis memory          used_memory {f['used_memory'] / n:6.0f} B/account;"
        f" MEMORY USAGE: version keys {version / n:5.0f}, shared payloads/revisions/digests"
        f" {shared / n:5.0f}, bucket index {index / n:4.0f} B/account"
    )
    for name, cost in (("full rebuild", rebuild), ("one change, outbox", change)):
        print(
            f"    {name:<21} Redis CPU {cost.cpu_ms:9.2f} ms   longest command"
            f" {cost.longest_us:6d} µs ({cost.longest}: {cost.kind_calls} calls, median"
            f" {cost.kind_median_us:.0f} µs), {cost.over} over {SLOW_US} µs; {cost.commands}"
            f" commands, SLOWLOG total {cost.logged_ms:.1f} ms, {cost.wall_ms:.1f} ms wall"
        )
    print(
        f"    rebuild / one change: Redis CPU {rebuild.cpu_ms / max(change.cpu_ms, 0.001):.0f}x,"
        f" longest command {rebuild.longest_us / max(change.longest_us, 1):.1f}x",
        flush=True,
    )


def print_slopes(results: Sequence[Figures]) -> None:
    """Per-account memory between sizes: the fixed cost of a process's first read
    (imports, connections, threads) falls out of the difference."""
    for small, large in itertools.pairwise(results):
        added = large.size - small.size
        print(
            f"  {small.size:,} -> {large.size:,}: web RSS +"
            f"{(large['rss_read'] - small['rss_read']) / added:.0f} B per added account"
            f" (floor's dicts +{(large['floor_rss'] - small['floor_rss']) / added:.0f}), Redis"
            f" used_memory +{(large['used_memory'] - small['used_memory']) / added:.0f};"
            f" pick median x{large['pick_median_us'] / small['pick_median_us']:.2f},"
            f" scan median x{large['scan_median_us'] / small['scan_median_us']:.1f}"
        )


def parse_sizes(text: str) -> tuple[int, ...]:
    sizes = tuple(int(part.replace("_", "")) for part in text.split(",") if part.strip())
    if not sizes or any(size < 1 or size > 200_000 for size in sizes):
        raise argparse.ArgumentTypeError(f"sizes between 1 and 200000, got {text!r}")
    return sizes


def main(argv: Sequence[str] = ()) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks scale")
    parser.add_argument("--sizes", type=parse_sizes, default=SIZES, help="e.g. 1000,10000")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    args = parser.parse_args(list(argv))
    if args.child:
        print(json.dumps(CHILDREN[args.child](args.sizes[0])))
        return
    started = time.perf_counter()
    with bench_servers("scale") as servers:
        print(
            f"scale: one bucket ({BUCKET}), private Redis, SQLite source; fresh processes:"
            f" {COLD_RUNS} per size ({COLD_RUNS_ABOVE[1]} above {COLD_RUNS_ABOVE[0]:,}) for the"
            f" first read and for its floor; load average {os.getloadavg()[0]:.1f} on"
            f" {os.cpu_count()} CPUs",
            flush=True,
        )
        results = [bench_size(size, servers.workdir, servers.redis_url) for size in args.sizes]
    print_slopes(results)
    print(f"  load average at the end {os.getloadavg()[0]:.1f}")
    print(
        f"  targets: at 100,000 a pick's median <= 20 µs; at 1,000 >= 10x faster than the scan"
        f"   ({time.perf_counter() - started:.0f} s for this run)"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
