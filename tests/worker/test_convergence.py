"""A churn of concurrent changes through a worker SIGKILL, a Redis restarted empty and a
FLUSHALL: every bucket ends equal to the source, and none goes unserved for long."""

from __future__ import annotations

import random
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cache import CacheError, RedisSchedulerCache, SchedulerBucket
from tasks import runtime
from tasks.source import SqlSource, SqlWriter
from tests.processes import Service, WorkerProcess, settings_from_env, wait_for
from tests.support import RedisServer, seed_group

pytestmark = pytest.mark.slow

# Short time numbers, in the order celeryconfig documents.
TIMES = {
    "SCHED_LOCK_TTL_SECONDS": "4",
    "SCHED_REBUILD_TIME_LIMIT_SECONDS": "3",
    "SCHED_RETRY_BACKOFF_MAX_SECONDS": "1",
    "SCHED_VISIBILITY_TIMEOUT_SECONDS": "60",
    "SCHED_OUTBOX_INTERVAL_SECONDS": "0.3",
}
MAX_UNSERVED_SECONDS = 5.0


class Watch:
    """Reads every bucket's active version every 0.1 s; keeps each bucket's longest
    stretch without one (Redis down counts as unserved)."""

    def __init__(self, cache: RedisSchedulerCache, buckets: list[SchedulerBucket]) -> None:
        self.cache = cache
        self.buckets = buckets
        self.longest = dict.fromkeys(buckets, 0.0)
        self._since: dict[SchedulerBucket, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _served(self, bucket: SchedulerBucket) -> bool:
        try:
            return self.cache.bucket_info(bucket).active_version is not None
        except CacheError:
            return False

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            now = time.monotonic()
            for bucket in self.buckets:
                if self._served(bucket):
                    self._since.pop(bucket, None)
                else:
                    start = self._since.setdefault(bucket, now)
                    self.longest[bucket] = max(self.longest[bucket], now - start)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def churn(db: SqlWriter, ids: list[int], stop: threading.Event) -> None:
    rng = random.Random(7)
    while not stop.wait(0.05):
        account_id = rng.choice(ids)
        if rng.random() < 0.5:
            db.update_account(account_id, status=rng.choice(["active", "disabled"]))
        else:
            db.update_account(account_id, priority=rng.randint(1, 99))


def matches_source(
    cache: RedisSchedulerCache, source: SqlSource, buckets: list[SchedulerBucket]
) -> bool:
    now = datetime.now(UTC)
    for bucket in buckets:
        try:
            cached = [a.id for a in cache.get_snapshot(bucket) or ()]
        except CacheError:
            return False
        if cached != [a.id for a in source.accounts_for_bucket(bucket, now)]:
            return False
    return True


def differences(
    cache: RedisSchedulerCache, source: SqlSource, buckets: list[SchedulerBucket]
) -> str:
    """What a failed convergence left: each bucket that differs, with its state."""
    now = datetime.now(UTC)
    lines = []
    for bucket in buckets:
        cached = [a.id for a in cache.get_snapshot(bucket) or ()]
        wanted = [a.id for a in source.accounts_for_bucket(bucket, now)]
        if cached != wanted:
            state = cache.client.hgetall(cache.keys.rebuild_state(bucket))
            lines.append(f"{bucket}: cached {cached}, source {wanted}, rebuild state {state}")
    lines.append(f"epoch {cache.epoch()}, watermark {cache.get_outbox_watermark()}")
    return "\n".join(lines)


def test_a_churn_through_a_killed_worker_and_lost_redis_ends_equal_to_the_source(
    worker_env: dict[str, str],
    start_worker: Callable[..., WorkerProcess],
    private_redis: RedisServer,
    source: SqlSource,
    db: SqlWriter,
    tmp_path: Path,
) -> None:
    env = {**worker_env, **TIMES, "SCHED_REDIS_URL": private_redis.url}
    runtime.reset(settings_from_env(env))
    cache = runtime.get_cache()
    ids: list[int] = []
    for platform in ("openai", "anthropic"):
        group = seed_group(source, accounts=4, platform=platform)
        bucket = SchedulerBucket(group.id, platform, "single")
        ids += [a.id for a in source.accounts_for_bucket(bucket, datetime.now(UTC))]
    doomed = start_worker(env)
    survivor = start_worker(env)
    beat = Service(
        [sys.executable, "-m", "celery", "-A", "tasks", "beat", "-s", str(tmp_path / "beat")],
        env,
        tmp_path / "beat.log",
    ).start()
    try:
        buckets = runtime.default_buckets(source)
        wait_for(lambda: matches_source(cache, source, buckets), what="first snapshots")
        stop = threading.Event()
        writer = threading.Thread(target=churn, args=(db, ids, stop), daemon=True)
        with Watch(cache, buckets) as watch:
            writer.start()
            time.sleep(1.5)
            doomed.kill()  # SIGKILL, mid-work: rebuilds and polls run all the time
            time.sleep(2)
            private_redis.restart()  # empty: a restart without persistence, a failover
            time.sleep(3)
            cache.client.flushall()
            time.sleep(3)
            stop.set()
            writer.join(timeout=10)
            try:
                wait_for(
                    lambda: matches_source(cache, source, buckets),
                    timeout=30,
                    interval=0.2,
                    what="every bucket equal to the source",
                )
            except pytest.fail.Exception:
                print(differences(cache, source, buckets), survivor.log_tail(6000), sep="\n")
                raise
        longest = max(watch.longest.values())
        print(f"longest a bucket went unserved: {longest:.1f} s")
        assert longest < MAX_UNSERVED_SECONDS, watch.longest
    finally:
        beat.stop(timeout=5)
