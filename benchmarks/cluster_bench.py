"""How the cache's work spreads over a Redis Cluster: keys and script calls per master.

20 buckets of 50 accounts each are rebuilt twice, read 50 times each and touched, on a
3-master Cluster started from the redis-server binary, with the default key prefix. The
baseline is the layout an old deployment had to use on a Cluster (every key under one
``{sched}`` hash tag): everything on one master.
"""

from __future__ import annotations

from typing import Any

import redis

from benchmarks.cache_bench import NOW, realistic_accounts
from cache import RedisSchedulerCache, SchedulerBucket
from tests.topologies import RedisClusterServers

BUCKETS = [SchedulerBucket(group, "anthropic", "mixed") for group in range(1, 21)]
ACCOUNTS_PER_BUCKET = 50
READS_PER_BUCKET = 50


def _work(cache: RedisSchedulerCache) -> None:
    pool = realistic_accounts(ACCOUNTS_PER_BUCKET * len(BUCKETS))
    for _ in range(2):
        for index, bucket in enumerate(BUCKETS):
            mine = pool[index * ACCOUNTS_PER_BUCKET : (index + 1) * ACCOUNTS_PER_BUCKET]
            cache.set_snapshot(bucket, mine, cache.reserve_version(bucket))
    for bucket in BUCKETS:
        for _ in range(READS_PER_BUCKET):
            cache.get_snapshot(bucket)
    cache.update_last_used({account.id: NOW for account in pool})


def _per_master(cluster: RedisClusterServers) -> list[tuple[int, int, int]]:
    """``(port, keys, script calls)`` of every master."""
    figures = []
    for port in cluster.ports:
        node = redis.Redis(port=port)
        stats: dict[str, Any] = node.info("commandstats")
        calls = sum(
            int(stats.get(name, {}).get("calls", 0))
            for name in ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_fcall")
        )
        figures.append((port, int(node.dbsize()), calls))
        node.close()
    return figures


def _reset(cluster: RedisClusterServers) -> None:
    for port in cluster.ports:
        node = redis.Redis(port=port)
        node.flushall()
        node.config_resetstat()
        node.close()


def main() -> None:
    cluster = RedisClusterServers().start()
    try:
        for label, prefix in (("default prefix", "sched"), ("one tag {sched}", "{sched}")):
            _reset(cluster)
            cache = RedisSchedulerCache.from_url(cluster.url, cluster=True, prefix=prefix)
            _work(cache)
            figures = _per_master(cluster)
            cache.client.close()
            keys = [k for _, k, _ in figures]
            calls = [c for _, _, c in figures]
            print(
                f"cluster, 20 buckets on 3 masters, {label}: keys per master "
                f"{'/'.join(map(str, keys))}, script calls per master "
                f"{'/'.join(map(str, calls))} (busiest master: "
                f"{max(calls) / max(1, sum(calls)):.0%} of the calls)",
                flush=True,
            )
    finally:
        cluster.close()
