"""What the capture triggers and the outbox NOTIFY cost PostgreSQL commit throughput.

Single-row ``UPDATE accounts`` commits, one connection, in one run: the schema as it
is (capture triggers + NOTIFY), without the NOTIFY trigger, and without either (the
revision trigger alone), rounds interleaved so drift hits all three alike.

    SCHED_TEST_POSTGRES_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test \\
        .venv/bin/python benchmarks/notify_cost.py [--seconds 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import sqlalchemy as sa

from tasks.source.schema import init_schema
from tests.support import postgres_schema

VARIANTS = {
    "capture + notify": [],
    "capture, no notify": ["DROP TRIGGER IF EXISTS scheduler_outbox_notify ON scheduler_outbox"],
    "no capture, no notify": [
        "DROP TRIGGER IF EXISTS scheduler_outbox_notify ON scheduler_outbox",
        "DROP TRIGGER IF EXISTS accounts_capture_update ON accounts",
    ],
}


def commits_per_second(engine: sa.Engine, seconds: float) -> float:
    done = 0
    deadline = time.perf_counter() + seconds
    start = time.perf_counter()
    with engine.connect() as conn:
        while time.perf_counter() < deadline:
            with conn.begin():
                conn.exec_driver_sql(
                    "UPDATE accounts SET priority = priority %% 100 + 1 WHERE id = 1"
                )
            done += 1
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with postgres_schema(os.environ["SCHED_TEST_POSTGRES_URL"]) as url:
        for _ in range(args.rounds):
            for name, drops in VARIANTS.items():
                engine = init_schema(url, notify_channel="sched_bench")
                with engine.begin() as conn:
                    conn.exec_driver_sql("DELETE FROM scheduler_outbox")
                    conn.exec_driver_sql(
                        "INSERT INTO accounts (id, name, platform, type)"
                        " VALUES (1, 'a', 'openai', 'x') ON CONFLICT (id) DO NOTHING"
                    )
                    for statement in drops:
                        conn.exec_driver_sql(statement)
                results[name].append(commits_per_second(engine, args.seconds))
                engine.dispose()
    for name, values in results.items():
        median = statistics.median(values)
        print(f"{name:24s} median {median:8.0f} commits/s  {[round(v) for v in values]}")


if __name__ == "__main__":
    main()
