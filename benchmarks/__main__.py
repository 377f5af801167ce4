"""``python -m benchmarks [cache] [tasks] [outbox] [cluster] [gateway] [pick] [change]``:
benchmark suites (all by default).

The cache suite uses SCHED_REDIS_URL (``make bench`` starts a private server); the task
suites start their own Redis and workers, the cluster suite its own 3-master Cluster, the
gateway suite its own Redis and uvicorn processes, loaded by wrk; the pick suite its own
Redis; the change suite (what one account's change costs Redis against a rebuild) its own
Redis and SQLite.
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
    "change": "benchmarks.change_cost",
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
