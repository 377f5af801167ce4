"""One recorded run of the whole system: a private Redis, the source, two workers (beat
in the first), a writer, readers and touchers (:mod:`tests.history.actors`), and faults
at planned times; the result is one JSONL history for :mod:`tests.history.checker`.

The run's environment shortens two of the system's time numbers: the outbox is polled
every 0.2 s (a change then reaches the readers well within the 1 s staleness bound when
nothing goes wrong) and last uses reach the database every second (so the run can tell
a lost touch from one still on its way). Every other number (locks, time limits,
retries, the broker's visibility timeout) keeps its default: how long a fault lasts
under them is what the run measures.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import redis

from cache import CacheError, SchedulerBucket
from tasks import request_rebuild, runtime
from tasks.source import SqlSource, SqlWriter
from tests.history.record import Recorder, merge
from tests.history.writer import PLATFORM, ChangeWriter
from tests.processes import Service, WorkerProcess, child_env, settings_from_env, wait_for
from tests.support import RedisServer

# The defaults (the outbox watcher on SQLite, the listener on PostgreSQL), with last uses
# flushed to the database every second.
TIMES = {"SCHED_LAST_USED_DB_FLUSH_SECONDS": "1"}
# Time for the actors to import and connect before the load starts.
STARTUP_SECONDS = 8.0
FAULTS = ("worker_kill", "worker_pause", "flushall", "redis_restart")


@dataclass(frozen=True)
class Plan:
    """What a run does; ``faults`` are (seconds after the load starts, kind)."""

    seconds: float = 30.0
    converge_seconds: float = 6.0
    writes_per_second: float = 30.0
    read_interval: float = 0.004
    touch_interval: float = 0.025
    accounts: int = 24
    groups: int = 3
    readers: int = 3
    touchers: int = 2
    pause_seconds: float = 4.0
    faults: tuple[tuple[float, str], ...] = (
        (5.0, "worker_kill"),
        (11.0, "worker_pause"),
        (17.5, "flushall"),
        (22.0, "redis_restart"),
    )
    seed: int = 1

    @classmethod
    def repeated(cls, minutes: float, **options: float) -> Plan:
        """A long run: the four faults again every 30 s, the last 8 s quiet."""
        seconds = minutes * 60
        faults = tuple(
            (cycle + offset, kind)
            for cycle in range(0, int(seconds) - 30 + 1, 30)
            for offset, kind in cls.faults
        )
        return cls(seconds=seconds, faults=faults, **options)  # type: ignore[arg-type]


@dataclass
class Run:
    plan: Plan
    directory: Path
    database_url: str
    redis_server: RedisServer
    workers: list[WorkerProcess] = field(default_factory=list)
    actors: list[Service] = field(default_factory=list)

    @property
    def history(self) -> Path:
        return self.directory / "history.jsonl"

    def execute(self) -> Path:
        """The run, start to end; returns the history's path."""
        parts = self.directory / "parts"
        parts.mkdir(parents=True, exist_ok=True)
        self.env = child_env(
            SCHED_REDIS_URL=self.redis_server.url, SCHED_DATABASE_URL=self.database_url, **TIMES
        )
        runtime.reset(settings_from_env(self.env))
        try:
            with Recorder(parts / "harness.jsonl", "harness") as recorder:
                self._run(recorder, parts)
        finally:
            for service in [*self.actors, *self.workers]:
                service.kill()
            runtime.reset()
        return merge(sorted(parts.glob("*.jsonl")), self.history)

    def _run(self, recorder: Recorder, parts: Path) -> None:
        plan = self.plan
        source = SqlSource.from_settings(runtime.settings())
        groups = [source_group(source, n) for n in range(plan.groups)]
        writer = ChangeWriter(source, recorder, groups, plan.accounts, plan.seed)
        state = {"groups": groups, "accounts": writer.seed()}
        (self.directory / "state.json").write_text(json.dumps(state))
        schedule = str(self.directory / "beat-schedule")
        self.workers = [
            WorkerProcess(self.env, self.directory, extra_args=("-B", "-s", schedule)).start(),
            WorkerProcess(self.env, self.directory).start(),
        ]
        buckets = [SchedulerBucket(g, PLATFORM, "single") for g in [0, *groups]]
        for bucket in buckets:
            request_rebuild(bucket)
        cache = runtime.get_cache()
        wait_for(
            lambda: all(cache.bucket_info(b).active_version for b in buckets),
            timeout=60,
            what="every bucket served before the load",
        )
        start = time.time() + STARTUP_SECONDS
        end = start + plan.seconds
        self._start_actors(parts, start, end, [0, *groups])
        wait_until(start)
        recorder.write("mark", name="load_start", t=time.time())
        for offset, kind in plan.faults:
            wait_until(start + offset)
            self._fault(kind, recorder)
        wait_until(end)
        recorder.write("mark", name="load_end", t=time.time())
        for actor in self.actors:
            assert actor.process is not None
            actor.process.wait(timeout=plan.converge_seconds + 60)
        ids = {int(json.loads(line)["id"]) for line in _commits(parts)}
        recorder.write("final", **self._final(source, ids))
        source.close()

    def _start_actors(self, parts: Path, start: float, end: float, groups: list[int]) -> None:
        plan = self.plan
        listed = ",".join(map(str, groups))
        roles = [("writer", "writer", end, ["--rate", str(plan.writes_per_second)])]
        reading = ["--interval", str(plan.read_interval)]
        roles += [
            (f"reader-{n}", "reader", end + plan.converge_seconds, reading)
            for n in range(1, plan.readers + 1)
        ]
        roles += [
            (f"toucher-{n}", "toucher", end, ["--interval", str(plan.touch_interval)])
            for n in range(1, plan.touchers + 1)
        ]
        for n, (name, role, until, extra) in enumerate(roles):
            argv = [
                sys.executable, "-m", "tests.history.actors", role,
                "--name", name, "--out", str(parts / f"{name}.jsonl"),
                "--start", str(start), "--until", str(until), "--groups", listed,
                "--state", str(self.directory / "state.json"), "--seed", str(plan.seed + n),
                *extra,
            ]  # fmt: skip
            log = self.directory / f"{name}.log"
            self.actors.append(Service(argv, self.env, log).start())

    def _fault(self, kind: str, recorder: Recorder) -> None:
        started = time.time()
        detail = ""
        if kind == "worker_kill":
            # The second worker: beat keeps ticking in the first.
            victim = self.workers[1]
            victim.kill()
            detail = victim.name
            recorder.write("fault", kind=kind, start=started, end=time.time(), detail=detail)
            self.workers[1] = WorkerProcess(self.env, self.directory).start()
            recorder.write("mark", name="worker_restarted", t=time.time())
            return
        if kind == "worker_pause":
            victim = self.workers[0]
            os.killpg(victim.pid, signal.SIGSTOP)
            time.sleep(self.plan.pause_seconds)
            os.killpg(victim.pid, signal.SIGCONT)
            detail = victim.name
        elif kind == "flushall":
            client = redis.Redis.from_url(self.redis_server.url, socket_timeout=5)
            client.flushall()
            client.close()
        elif kind == "redis_restart":
            self.redis_server.restart()
        else:
            raise ValueError(f"unknown fault {kind!r}: expected one of {FAULTS}")
        recorder.write("fault", kind=kind, start=started, end=time.time(), detail=detail)

    def _final(self, source: SqlSource, ids: set[int]) -> dict[str, object]:
        """The stores once the last uses had time to reach the database."""
        cache = runtime.get_cache()

        def drained() -> bool:
            try:
                return not cache.pending_last_used()
            except CacheError:
                return False

        deadline = time.time() + 20
        while not drained() and time.time() < deadline:
            time.sleep(0.2)
        alive = source.get_accounts(ids)
        redis_used: dict[str, float | None] = {}
        for account_id in alive:
            cached = cache.get_account(account_id)
            if cached is not None:
                redis_used[str(account_id)] = _seconds(cached.last_used_at)
        return {
            "t": time.time(),
            "source": {str(a.id): [a.revision, _seconds(a.last_used_at)] for a in alive.values()},
            "deleted": sorted(ids - set(alive)),
            "redis": redis_used,
        }


def source_group(source: SqlSource, n: int) -> int:
    return SqlWriter(source).create_group(f"history-{n}", PLATFORM).id


def wait_until(t: float) -> None:
    delay = t - time.time()
    if delay > 0:
        time.sleep(delay)


def _seconds(at: datetime | None) -> float | None:
    return None if at is None else at.timestamp()


def _commits(parts: Path) -> list[str]:
    return [
        line
        for part in parts.glob("*.jsonl")
        for line in part.read_text().splitlines()
        if '"op":"commit"' in line
    ]
