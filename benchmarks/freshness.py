"""Fleet freshness: commit -> every reader stops (or starts) returning the account.

``python -m benchmarks freshness [--postgres URL]``: its own redis-server, a real worker
with beat (``celery -A tasks worker -B``, two processes), two reader processes looping
``tasks.list_schedulable`` (near cache on) over one bucket of 300 accounts.

One account at a time is disabled, then enabled again, through the write helpers
(``SqlWriter`` nudging a poll after its commit, as :func:`tasks.mark_unschedulable`
does) and through plain SQL (``UPDATE accounts SET status = ...``, which only the
database's own wake-up can announce: NOTIFY on PostgreSQL, the worker's outbox watcher
on SQLite). For each change: the time from its commit to the moment the last reader's
answer shows it. Baseline, same run: the same plain SQL changes with the wake-ups off
(``SCHED_OUTBOX_WAKEUP=false``), where only beat's 1 s poll brings them.

Idle cost: Redis commands per second (INFO commandstats, over 20 s) with the worker and
beat running and no readers, with Redis server CPU, next to the same with the wake-ups
off.

SQLite always; PostgreSQL when ``--postgres`` or ``SCHED_TEST_POSTGRES_URL`` names a
server (a schema of its own, dropped after). Bounded (each wait has a deadline): about
two and a half minutes per database on two shared cores.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import queue
import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import redis
import sqlalchemy as sa

from benchmarks.harness import BenchServers, bench_servers, running_worker, wait_until
from cache import SchedulerBucket
from tasks import runtime
from tasks.settings import Settings
from tasks.source import SqlSource, SqlWriter
from tasks.source.schema import init_schema
from tasks.worker.wakeup import poll_nudger
from tests.support import postgres_schema

ACCOUNTS = 300
READERS = 2
CHANGES = 40  # per way of writing: 20 accounts, each disabled then enabled
BASELINE_CHANGES = 10
IDLE_SECONDS = 20.0
IDLE_BASELINE_SECONDS = 10.0
# Between two reads of a reader: a reader that never sleeps would take a core of the two
# from the worker it waits for.
READ_PAUSE_SECONDS = 0.001
# Before each change: the rebuilds of the last one finish (else a rebuild it started
# could read this commit and make it look fast), and commits fall at any phase of beat.
SETTLE_SECONDS = (0.25, 0.45)
# A change not seen by every reader this long after its commit ends the run.
CHANGE_DEADLINE_SECONDS = 30.0
TARGET_P99_MS = 50.0
PLATFORM = "openai"
QUEUES = "rebuild,outbox,last_used"


# -- readers ----------------------------------------------------------------------------
def _reader(
    index: int, env: dict[str, str], group_id: int, watched: Any, out: Any, stop: Any
) -> None:
    """A web process: reads the bucket in a loop, reports when the watched account
    appears or disappears (with the monotonic time, comparable across processes)."""
    os.environ.update(env)
    from tasks import list_schedulable

    seen: tuple[int, bool] | None = None
    while not stop.is_set():
        ids = {account.id for account in list_schedulable(group_id, PLATFORM)}
        account_id = watched.value
        now = (account_id, account_id in ids)
        if now != seen:
            out.put((index, *now, time.monotonic()))
            seen = now
        time.sleep(READ_PAUSE_SECONDS)


@dataclass
class Fleet:
    watched: Any
    out: Any
    state: dict[int, tuple[int, bool, float]]

    def drain(self, timeout: float) -> None:
        with contextlib.suppress(queue.Empty):
            index, account_id, present, at = self.out.get(timeout=timeout)
            self.state[index] = (account_id, present, at)
            while True:
                index, account_id, present, at = self.out.get_nowait()
                self.state[index] = (account_id, present, at)

    def all_see(self, account_id: int, present: bool) -> float | None:
        """The time the last reader came to show ``account_id`` as ``present``."""
        views = [self.state.get(i) for i in range(READERS)]
        if all(v is not None and v[0] == account_id and v[1] == present for v in views):
            return max(v[2] for v in views if v is not None)
        return None

    def wait(self, account_id: int, present: bool) -> float:
        deadline = time.monotonic() + CHANGE_DEADLINE_SECONDS
        while (seen := self.all_see(account_id, present)) is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"benchmark: readers never showed account {account_id}")
            self.drain(0.05)
        return seen


@contextlib.contextmanager
def readers(env: dict[str, str], group_id: int) -> Iterator[Fleet]:
    ctx = mp.get_context("spawn")
    watched, out, stop = ctx.Value("q", 0), ctx.Queue(), ctx.Event()
    procs = [
        ctx.Process(target=_reader, args=(i, env, group_id, watched, out, stop), daemon=True)
        for i in range(READERS)
    ]
    for proc in procs:
        proc.start()
    try:
        yield Fleet(watched, out, {})
    finally:
        stop.set()
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()


# -- changes ----------------------------------------------------------------------------
def seed(source: SqlSource) -> tuple[int, list[int]]:
    writer = SqlWriter(source)
    group = writer.create_group("fleet", PLATFORM)
    ids = [
        writer.create_account(
            name=f"acc-{n}", platform=PLATFORM, type="apikey", priority=n, group_ids=[group.id]
        ).id
        for n in range(ACCOUNTS)
    ]
    return group.id, ids


def helper_write(source: SqlSource, config: Settings) -> Callable[[int, str], None]:
    writer = SqlWriter(source, on_commit=poll_nudger(config.outbox_wakeup_window_seconds).nudge)

    def write(account_id: int, status: str) -> None:
        writer.update_account(account_id, status=status)

    return write


def sql_write(source: SqlSource) -> Callable[[int, str], None]:
    def write(account_id: int, status: str) -> None:
        with source.engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE accounts SET status = :s WHERE id = :i"),
                {"s": status, "i": account_id},
            )

    return write


@dataclass
class Changes:
    """Seconds from each commit to the outbox poll that applied it (the wake-up's part)
    and to the last reader showing it, split by direction."""

    applied: list[float] = field(default_factory=list)
    disabled: list[float] = field(default_factory=list)
    enabled: list[float] = field(default_factory=list)

    @property
    def seen(self) -> list[float]:
        return self.disabled + self.enabled


def freshness(
    fleet: Fleet, source: SqlSource, ids: list[int], write: Callable[[int, str], None], n: int
) -> Changes:
    """``n`` changes, each once the previous one has settled, at a random phase of beat."""
    cache = runtime.get_cache()
    changes = Changes()
    for step in range(n):
        account_id = ids[step // 2]
        disable = step % 2 == 0
        if disable:
            fleet.watched.value = account_id
            fleet.wait(account_id, present=True)
        # The rebuilds of the last change done, and no lock-step with beat's ticks.
        time.sleep(random.uniform(*SETTLE_SECONDS))
        write(account_id, "disabled" if disable else "active")
        committed = time.monotonic()
        event = source.max_outbox_id()

        def polled(event: int = event) -> float | None:
            return time.monotonic() if cache.get_outbox_watermark() >= event else None

        applied = wait_until(polled, "the poll", every=0.002)
        changes.applied.append(applied - committed)
        seen = fleet.wait(account_id, present=not disable) - committed
        (changes.disabled if disable else changes.enabled).append(seen)
    return changes


def quantiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": ordered[-1] * 1000}


def line(name: str, took: list[float], base: dict[str, float] | None = None) -> str:
    q = quantiles(took)
    text = f"  {name:<30} n={len(took):<3} " + "  ".join(f"{k} {v:6.1f} ms" for k, v in q.items())
    if base is not None:
        text += f"   p50 x{base['p50'] / max(q['p50'], 1e-9):.1f} faster than beat polling"
    return text


# -- idle cost --------------------------------------------------------------------------
def idle_cost(client: redis.Redis, seconds: float) -> tuple[float, float, float]:
    """Redis commands a second (the measurement's own left out), server CPU ms a second
    and the longest command (SLOWLOG, µs) over ``seconds`` with nobody reading."""
    client.config_set("slowlog-log-slower-than", 0)
    client.config_set("slowlog-max-len", 100_000)
    client.slowlog_reset()
    own = {"info", "slowlog|reset", "slowlog|get", "config|set"}
    before, cpu_before = client.info("commandstats"), client.info("cpu")
    time.sleep(seconds)
    after, cpu_after = client.info("commandstats"), client.info("cpu")
    slow = client.slowlog_get(100_000)

    def calls(stats: dict[str, Any]) -> int:
        return sum(v["calls"] for k, v in stats.items() if k.removeprefix("cmdstat_") not in own)

    cpu = sum(float(cpu_after[k]) - float(cpu_before[k]) for k in ("used_cpu_sys", "used_cpu_user"))
    longest = max((int(e["duration"]) for e in slow if b"slowlog" not in e["command"]), default=0)
    return (calls(after) - calls(before)) / seconds, cpu * 1000 / seconds, float(longest)


# -- one database -----------------------------------------------------------------------
@contextlib.contextmanager
def source_at(servers: BenchServers, postgres: str | None) -> Iterator[tuple[SqlSource, str]]:
    channel = f"sched_bench_{uuid.uuid4().hex[:8]}"
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(postgres_schema(postgres)) if postgres else servers.database_url
        source = SqlSource(init_schema(url, notify_channel=channel if postgres else None))
        stack.callback(source.close)
        servers.env.update(SCHED_DATABASE_URL=url, SCHED_OUTBOX_NOTIFY_CHANNEL=channel)
        yield source, url


def run_one(name: str, postgres: str | None, lines: list[str]) -> None:
    with bench_servers(f"fresh-{name}") as servers, source_at(servers, postgres) as (source, url):
        config = Settings(
            redis_url=servers.redis_url,
            database_url=url,
            outbox_notify_channel=servers.env["SCHED_OUTBOX_NOTIFY_CHANNEL"],
        )
        runtime.reset(config)
        group_id, ids = seed(source)
        bucket = SchedulerBucket(group_id, PLATFORM, "single")
        client = redis.Redis.from_url(servers.redis_url)
        beat = ("-B", "-s", str(servers.workdir / "beat-schedule"))
        lines.append(f"{name}: {ACCOUNTS} accounts, {READERS} readers, worker -c 2 with beat")

        base_env = {**servers.env, "SCHED_OUTBOX_WAKEUP": "false"}
        with running_worker(_with(servers, base_env), QUEUES, *beat):
            wait_until(lambda: runtime.get_cache().bucket_info(bucket).account_count, "a build")
            with readers(base_env, group_id) as fleet:
                base = freshness(fleet, source, ids[100:], sql_write(source), BASELINE_CHANGES)
            idle_off = idle_cost(client, IDLE_BASELINE_SECONDS)
        reference = quantiles(base.seen)
        lines.append(line("baseline: SQL, wake-ups off", base.seen))

        with running_worker(servers, QUEUES, *beat):
            with readers(servers.env, group_id) as fleet:
                client.slowlog_reset()
                helpers = freshness(fleet, source, ids, helper_write(source, config), CHANGES)
                plain = freshness(fleet, source, ids[50:], sql_write(source), CHANGES)
                slow = client.slowlog_get(100_000)
            idle = idle_cost(client, IDLE_SECONDS)
        for label, changes in (("helpers (nudge after commit)", helpers), ("plain SQL", plain)):
            lines.append(line(label, changes.seen, reference))
            lines.append(line("  commit -> poll applied it", changes.applied))
            lines.append(line("  disable -> readers", changes.disabled))
            lines.append(line("  enable -> readers", changes.enabled))
            verdict = "meets" if quantiles(changes.seen)["p99"] <= TARGET_P99_MS else "misses"
            lines.append(f"    p99 target {TARGET_P99_MS:.0f} ms: {verdict}")
        longest = max((int(e["duration"]) for e in slow), default=0)
        lines.append(f"  longest Redis command while changing: {longest} µs (SLOWLOG)")
        lines.append(
            f"  idle, worker + beat, no readers, {IDLE_SECONDS:.0f} s: {idle[0]:.2f} commands/s "
            f"(wake-ups off: {idle_off[0]:.2f}/s, x{idle_off[0] / max(idle[0], 1e-9):.1f}), "
            f"server CPU {idle[1]:.2f} ms/s (off: {idle_off[1]:.2f}), longest {idle[2]:.0f} µs; "
            f"target <= 5/s: {'meets' if idle[0] <= 5 else 'misses'}"
        )


def _with(servers: BenchServers, env: dict[str, str]) -> BenchServers:
    return BenchServers(servers.redis_url, servers.database_url, servers.workdir, env)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks freshness")
    parser.add_argument("--postgres", default=os.environ.get("SCHED_TEST_POSTGRES_URL"))
    args = parser.parse_args(argv or [])
    lines = ["freshness: commit -> every reader's list_schedulable shows it"]
    run_one("SQLite", None, lines)
    if args.postgres:
        run_one("PostgreSQL", args.postgres, lines)
    else:
        lines.append("PostgreSQL: skipped (no --postgres URL or SCHED_TEST_POSTGRES_URL)")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
