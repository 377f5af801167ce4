"""``python -m benchmarks [cache] [tasks] [outbox] [cluster] [gateway] [pick] [scale]
[nearmem] [change] [freshness] [--sizes 1000,10000]``: benchmark suites (all by
default); ``--sizes`` is the scale suite's.

The cache suite uses SCHED_REDIS_URL (``make bench`` starts a private server); the task
suites start their own Redis and workers, the cluster suite its own 3-master Cluster, the
gateway suite its own Redis and uvicorn processes, loaded by wrk; the pick suite its own
Redis; the scale suite its own Redis, SQLite files and fresh processes per bucket size; the
nearmem suite its own Redis and fresh processes; the change suite (what one account's
change costs Redis against a rebuild) its own Redis and SQLite; the freshness suite its own
Redis, worker with beat and reader processes, on SQLite and (with
SCHED_TEST_POSTGRES_URL) PostgreSQL.
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
    "scale": "benchmarks.scale",
    "nearmem": "benchmarks.near_memory_bench",
    "change": "benchmarks.change_cost",
    "freshness": "benchmarks.freshness",
}


def main(argv: list[str]) -> int:
    options = [arg for arg in argv if arg.startswith("-")]
    # A flag's value follows it: "--sizes 1000" as well as "--sizes=1000".
    for n, arg in enumerate(argv[:-1]):
        if arg == "--sizes":
            options.append(argv[n + 1])
    names = [arg for arg in argv if arg not in options]
    chosen = names or list(SUITES)
    unknown = [name for name in chosen if name not in SUITES]
    if unknown:
        print(f"unknown suite(s) {', '.join(unknown)}; choose from {', '.join(SUITES)}")
        return 2
    for name in chosen:
        module = importlib.import_module(SUITES[name])
        print(f"== {name} ==", flush=True)
        if name == "cache":
            module.main(Settings().redis_url)
        elif name == "scale":
            module.main(options)
        else:
            module.main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
