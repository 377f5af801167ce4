"""A real worker (with beat) on a 3-master Redis Cluster: rebuilds and outbox changes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cache import RedisSchedulerCache, SchedulerBucket
from tasks import runtime
from tasks.settings import Settings
from tasks.source import SqlSource, SqlWriter
from tasks.web.requests import request_rebuild
from tests.processes import WorkerProcess, settings_from_env, wait_for
from tests.support import seed_group, snapshot_ids
from tests.topologies import RedisClusterServers, started

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster() -> Iterator[RedisClusterServers]:
    with started(RedisClusterServers()) as servers:
        yield servers


@pytest.fixture
def cluster_env(
    cluster: RedisClusterServers, process_env: dict[str, str], configured: Settings
) -> dict[str, str]:
    """The cache on the cluster with the default key prefix; the broker on plain Redis."""
    env = {
        **process_env,
        "SCHED_REDIS_CLUSTER": "true",
        "SCHED_REDIS_URL": cluster.url,
        "SCHED_BROKER_URL": process_env["SCHED_REDIS_URL"],
    }
    runtime.reset(settings_from_env(env))
    return env


def first_snapshot(cache: RedisSchedulerCache, bucket: SchedulerBucket) -> list[int]:
    return wait_for(lambda: snapshot_ids(cache, bucket), what=f"a snapshot of {bucket}")


def test_rebuilds_and_outbox_changes_reach_snapshots_read_through_the_cluster(
    cluster_env: dict[str, str],
    start_worker: Callable[..., WorkerProcess],
    source: SqlSource,
    tmp_path: Path,
) -> None:
    start_worker(cluster_env, extra_args=("-B", "-s", str(tmp_path / "beat-schedule")))
    cache = runtime.get_cache()
    groups = [seed_group(source, accounts=3) for _ in range(4)]
    buckets = [SchedulerBucket(group.id, "openai", "single") for group in groups]
    for bucket in buckets:
        request_rebuild(bucket)
    firsts = [first_snapshot(cache, bucket) for bucket in buckets]

    changed = time.monotonic()
    writer = SqlWriter(source)
    for first in firsts:
        writer.update_account(first[0], status="disabled")
    wait_for(
        lambda: all(
            snapshot_ids(cache, bucket) == first[1:]
            for bucket, first in zip(buckets, firsts, strict=True)
        ),
        what="the outbox changes in their snapshots",
        timeout=30,
    )
    print(f"\ncluster: 4 outbox changes in their snapshots {time.monotonic() - changed:.2f} s")
