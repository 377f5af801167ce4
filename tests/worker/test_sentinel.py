"""A worker and a reader through Redis Sentinel while the master is SIGKILLed."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from cache import CacheError, SchedulerBucket
from tasks import list_schedulable, runtime
from tasks.settings import Settings
from tasks.source import SqlSource, SqlWriter
from tasks.web.requests import request_rebuild
from tasks.worker.bucket_lock import LOCK_LEASE_SECONDS
from tasks.worker.rebuild import BUSY_RETRY_MAX_SECONDS
from tests.processes import WorkerProcess, settings_from_env, wait_for
from tests.support import seed_group, snapshot_ids
from tests.topologies import MASTER_NAME, SentinelServers, started
from tests.worker.conftest import Gate, GatedSource

pytestmark = pytest.mark.slow


@pytest.fixture
def sentinels() -> Iterator[SentinelServers]:
    with started(SentinelServers()) as servers:
        yield servers


@pytest.fixture
def sentinel_env(
    sentinels: SentinelServers, process_env: dict[str, str], configured: Settings
) -> Iterator[dict[str, str]]:
    """Cache and broker through the sentinels; this process pointed there too."""
    env = {
        **process_env,
        "SCHED_REDIS_URL": sentinels.url,
        "SCHED_REDIS_SENTINEL_MASTER": MASTER_NAME,
    }
    runtime.reset(settings_from_env(env))
    yield env


def snapshot_or_none(bucket: SchedulerBucket) -> list[int] | None:
    try:
        return snapshot_ids(runtime.get_cache(), bucket)
    except CacheError:
        return None


def test_settings_name_the_sentinel_deployment_and_the_broker_follows(
    sentinel_env: dict[str, str],
) -> None:
    settings = runtime.settings()
    assert settings.effective_broker_url == settings.redis_url
    from tasks.celery import app

    options = app.conf.broker_transport_options
    assert options["master_name"] == MASTER_NAME


def test_a_master_killed_under_a_worker_and_a_reader_is_replaced_within_seconds(
    sentinels: SentinelServers,
    sentinel_env: dict[str, str],
    start_worker: Callable[..., WorkerProcess],
    source: SqlSource,
) -> None:
    start_worker(sentinel_env)
    group = seed_group(source)
    bucket = SchedulerBucket(group.id, "openai", "single")
    request_rebuild(bucket)
    first = wait_for(lambda: snapshot_or_none(bucket), what="a snapshot through the sentinels")
    assert [a.id for a in list_schedulable(group.id, "openai")] == first

    old_master = sentinels.master_port()
    sentinels.master.stop()  # SIGKILL: whatever had not replicated is gone
    killed = time.monotonic()
    wait_for(lambda: sentinels.master_port() != old_master, what="a promotion", timeout=30)
    promoted = time.monotonic()

    wait_for(lambda: snapshot_or_none(bucket), what="reads from the new master", timeout=10)
    reads_back = time.monotonic() - promoted
    SqlWriter(source).update_account(first[0], status="disabled")
    changed = time.monotonic()
    # A rebuild request may meet the switch itself: a web app asks again on its next miss.
    wait_for(
        lambda: _request(bucket) and snapshot_or_none(bucket) == first[1:],
        what="a change made after the promotion in the snapshot",
        timeout=15,
        interval=0.2,
    )
    change_seen = time.monotonic() - changed
    print(
        f"\nsentinel failover: promoted {promoted - killed:.1f} s after the kill, reads back "
        f"{reads_back:.2f} s after the promotion, a change in the snapshot {change_seen:.2f} s"
    )
    assert reads_back <= 3.0
    assert change_seen <= 5.0


@pytest.fixture
def sentinels_with_a_writable_replica() -> Iterator[SentinelServers]:
    with started(SentinelServers(writable_replica=True)) as servers:
        yield servers


def wait_showing_log(
    worker: WorkerProcess,
    check: Callable[[], object],
    *,
    what: str,
    timeout: float,
    interval: float,
) -> None:
    """``wait_for``, printing the worker's log when it times out (a slow recovery's why)."""
    try:
        wait_for(check, what=what, timeout=timeout, interval=interval)
    except pytest.fail.Exception:
        print(worker.log_tail(8000))
        raise


def every_bucket_served(source: SqlSource, buckets: list[SchedulerBucket]) -> bool:
    """Every bucket has an active snapshot equal to what the source says (an empty one
    reads as a miss from get_snapshot, so its active version is what counts)."""
    now = datetime.now(UTC)
    cache = runtime.get_cache()
    try:
        for bucket in buckets:
            wanted = [a.id for a in source.accounts_for_bucket(bucket, now)]
            if wanted and snapshot_ids(cache, bucket) != wanted:
                return False
            if not wanted and cache.bucket_info(bucket).active_version is None:
                return False
    except CacheError:
        return False
    return True


def test_a_failover_to_a_replica_without_the_state_rebuilds_every_bucket_within_seconds(
    sentinels_with_a_writable_replica: SentinelServers,
    process_env: dict[str, str],
    configured: Settings,
    start_worker: Callable[..., WorkerProcess],
    source: SqlSource,
    tmp_path: Path,
) -> None:
    sentinels = sentinels_with_a_writable_replica
    env = {
        **process_env,
        "SCHED_REDIS_URL": sentinels.url,
        "SCHED_REDIS_SENTINEL_MASTER": MASTER_NAME,
    }
    runtime.reset(settings_from_env(env))
    seed_group(source)
    # With beat: the outbox poller is what notices a Redis that lost its state.
    worker = start_worker(env, extra_args=("-B", "-s", str(tmp_path / "beat-schedule")))
    buckets = runtime.default_buckets(source)
    wait_for(lambda: runtime.get_cache().epoch(), what="the state established", timeout=30)
    for bucket in buckets:
        request_rebuild(bucket)
    wait_for(lambda: every_bucket_served(source, buckets), what="every bucket", timeout=30)

    replica = redis.Redis(port=sentinels.replica.port)
    replica.flushall()  # the replica alone: what it would hold after a lost resync
    assert replica.get(runtime.get_cache().keys.epoch) is None
    replica.close()
    old_master = sentinels.master_port()
    sentinels.master.stop()
    wait_for(lambda: sentinels.master_port() != old_master, what="a promotion", timeout=30)
    promoted = time.monotonic()
    wait_showing_log(
        worker,
        lambda: every_bucket_served(source, buckets),
        what="every bucket rebuilt on the empty new master",
        timeout=30,
        interval=0.1,
    )
    recovered = time.monotonic() - promoted
    print(f"\nfailover to an empty replica: {len(buckets)} buckets served {recovered:.2f} s after")
    assert recovered <= 10.0, worker.log_tail(8000)


# The gate of a gated source lives on the test's own Redis, which no failover touches.
GATE_URL_ENV = "SCHED_TEST_GATE_URL"


class SentinelGatedSource(GatedSource):
    """:class:`GatedSource` whose gate is on the plain Redis named by ``GATE_URL_ENV``."""

    def __init__(self, settings: Settings) -> None:
        self.inner = SqlSource.from_settings(settings)
        self.redis = redis.Redis.from_url(os.environ[GATE_URL_ENV])


def sentinel_gated_source(settings: Settings) -> SentinelGatedSource:
    return SentinelGatedSource(settings)


def test_a_rebuild_holding_its_lock_when_the_master_dies_holds_the_bucket_one_lease(
    sentinels: SentinelServers,
    sentinel_env: dict[str, str],
    redis_url: str,
    gate: Gate,
    start_worker: Callable[..., WorkerProcess],
    source: SqlSource,
) -> None:
    """The failover that took 29 s, forced::

        old master:  a rebuild takes its bucket's lock, replicated ... SIGKILL
        worker:      the rebuild in hand is terminated (Celery's cancel on the lost
                     broker connection); its unlock never reaches any master
        new master:  holds the lock, whose holder is gone
        a change:    its rebuild waits for that lock to expire

    It waited for the lock TTL (30 s); the lock now outlives its holder by one lease.
    """
    settings = runtime.settings()
    worker = start_worker(
        {
            **sentinel_env,
            "SCHED_SOURCE_FACTORY": f"{__name__}:sentinel_gated_source",
            GATE_URL_ENV: redis_url,
        }
    )
    group = seed_group(source)
    bucket = SchedulerBucket(group.id, "openai", "single")
    request_rebuild(bucket)
    gate.wait_read()
    gate.open()
    first = wait_for(lambda: snapshot_or_none(bucket), what="a snapshot through the sentinels")

    request_rebuild(bucket)
    holder, _, _ = gate.wait_read()  # read, not written: the bucket's lock is held
    lock_key = runtime.get_cache().keys.lock(bucket)
    replica = redis.Redis(port=sentinels.replica.port)
    wait_for(lambda: replica.exists(lock_key), what="the lock on the replica")
    replica.close()
    old_master = sentinels.master_port()
    sentinels.master.stop()
    # What Celery's cancel does a moment later anyway, made certain here.
    os.kill(holder, signal.SIGKILL)
    gate.open(times=50)  # every later read passes
    wait_for(lambda: sentinels.master_port() != old_master, what="a promotion", timeout=30)
    promoted = time.monotonic()

    SqlWriter(source).update_account(first[0], status="disabled")
    wait_showing_log(
        worker,
        lambda: _request(bucket) and snapshot_or_none(bucket) == first[1:],
        what="the change in the snapshot",
        timeout=settings.lock_ttl_seconds + 10,
        interval=0.2,
    )
    landed = time.monotonic() - promoted
    print(f"\na lock orphaned by the failover: the change in the snapshot {landed:.2f} s after")
    bound = LOCK_LEASE_SECONDS + BUSY_RETRY_MAX_SECONDS + 2.0
    assert landed <= bound, worker.log_tail(8000)


def _request(bucket: SchedulerBucket) -> bool:
    try:
        request_rebuild(bucket)
    except Exception:
        return False
    return True
