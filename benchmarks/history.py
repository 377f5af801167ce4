"""``python -m benchmarks.history [--minutes 12] [--dir .history] [--database-url URL]``:
the recorded-history run of ``tests/history`` for minutes instead of seconds (about a
million observations at the defaults), the four faults again every 30 s, then the
checker's summary. The history stays in ``--dir`` for a second look
(``python -m benchmarks.history --check DIR/history.jsonl``).

Exits 1 when a target is missed, 0 when every one is met.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from tasks.source.schema import init_schema
from tests.history.checker import check_file
from tests.history.harness import Plan, Run
from tests.support import RedisServer, sqlite_url_in


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.history")
    parser.add_argument("--minutes", type=float, default=12.0)
    parser.add_argument("--dir", type=Path, default=Path(".history"))
    parser.add_argument("--database-url", help="default: a new SQLite file in --dir")
    parser.add_argument("--read-interval", type=float, default=0.003)
    parser.add_argument("--check", type=Path, help="only check this history file")
    args = parser.parse_args(argv)
    if args.check:
        report = check_file(args.check)
    else:
        if args.dir.exists():
            shutil.rmtree(args.dir)
        args.dir.mkdir(parents=True)
        url = args.database_url or sqlite_url_in(args.dir.resolve())
        init_schema(url).dispose()
        plan = Plan.repeated(args.minutes, read_interval=args.read_interval)
        redis_server = RedisServer().start()
        started = time.monotonic()
        try:
            history = Run(plan, args.dir.resolve(), url, redis_server).execute()
        finally:
            redis_server.close()
        print(f"run: {time.monotonic() - started:.0f} s, history: {history}", flush=True)
        checking = time.monotonic()
        report = check_file(history)
        print(f"checked in {time.monotonic() - checking:.1f} s")
    print(report.format())
    return 1 if report.violations() else 0


if __name__ == "__main__":
    sys.exit(main())
