"""``python -m benchmarks [cache] [tasks] [outbox] [cluster] [gateway] [pick] [freshness]``:
benchmark suites (all by default).

The cache suite uses SCHED_REDIS_URL (``make bench`` starts a private server); the task
suites start their own Redis and workers, the cluster suite its own 3-master Cluster, the
gateway suite its own Redis and uvicorn processes, loaded by wrk; the pick suite its own
Redis; the freshness suite its own Redis, worker with beat and reader processes, on
SQLite and (with SCHED_TEST_POSTGRES_URL) PostgreSQL.
"""

from __future__ import annotations

import importlib
import sys

from tasks.settings import Settings

SUITES = {
    "cache": "benchmarks.cache_bench",
    "tasks": "benchmarks.tasks_bench",
    "outbox": "benchmarks.tasks_outbox_bench",
    "cluster": "benchmarks.cluster_bench",
    "gateway": "benchmarks.gateway_bench",
    "pick": "benchmarks.pick_bench",
    "freshness": "benchmarks.freshness",
}


def main(argv: list[str]) -> int:
    chosen = argv or list(SUITES)
    unknown = [name for name in chosen if name not in SUITES]
    if unknown:
        print(f"unknown suite(s) {', '.join(unknown)}; choose from {', '.join(SUITES)}")
        return 2
    for name in chosen:
        module = importlib.import_module(SUITES[name])
        print(f"== {name} ==", flush=True)
        if name == "cache":
            module.main(Settings().redis_url)
        else:
            module.main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
