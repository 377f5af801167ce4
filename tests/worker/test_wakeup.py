"""Wake on commit: on PostgreSQL a commit reaches the snapshots through the worker's
listener well within the backstop; a killed listener connection comes back; without
wake-ups beat's backstop still brings every change."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from cache import RedisSchedulerCache, SchedulerBucket
from tasks.source import SqlSource, SqlWriter
from tasks.worker.listener import APPLICATION_NAME
from tests.processes import DEFAULT_TIMEOUT, WorkerProcess, wait_for
from tests.support import snapshot_ids

BUCKET = SchedulerBucket.parse("0:openai:single")
# Far longer than a wake-up takes: only the listener can explain a change seen sooner.
LONG_BACKSTOP = 30.0
WAKEUP_BOUND = 5.0


def listener_pid(source: SqlSource, channel: str) -> int | None:
    # Its last statement names the channel: its LISTEN, or its read of the outbox's end.
    query = sa.text(
        "SELECT pid FROM pg_stat_activity WHERE application_name = :app"
        " AND (query = :listen OR query LIKE :read)"
    )
    names = {"app": APPLICATION_NAME, "listen": f"LISTEN {channel}", "read": f"%/* {channel} */"}
    with source.engine.connect() as conn:
        row = conn.execute(query, names).first()
    return None if row is None else int(row[0])


def set_status(source: SqlSource, account_id: int, status: str) -> float:
    """A plain SQL change, as another application makes it; returns its commit time."""
    with source.engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE accounts SET status = :s WHERE id = :i"), {"s": status, "i": account_id}
        )
    return time.monotonic()


def two_accounts(source: SqlSource) -> list[int]:
    """A second account keeps the bucket from being empty (an empty snapshot is a miss)."""
    db = SqlWriter(source)
    return [db.create_account(name=n, platform="openai", type="apikey").id for n in "ab"]


def latency(source: SqlSource, cache: RedisSchedulerCache, ids: list[int], bound: float) -> float:
    """Seconds from disabling the last account to its leaving the snapshot (and back)."""
    assert snapshot_ids(cache, BUCKET) == ids
    committed = set_status(source, ids[-1], "disabled")
    wait_for(lambda: snapshot_ids(cache, BUCKET) == ids[:-1], what="the change", timeout=bound)
    took = time.monotonic() - committed
    set_status(source, ids[-1], "active")
    wait_for(lambda: snapshot_ids(cache, BUCKET) == ids, what="back", timeout=bound)
    return took


def pg_env(worker_env: dict[str, str], source: SqlSource, **extra: str) -> dict[str, str]:
    url = source.engine.url.render_as_string(hide_password=False)
    return {**worker_env, "SCHED_DATABASE_URL": url, **extra}


def listening_worker(
    pg: SqlSource,
    channel: str,
    worker_env: dict[str, str],
    start_worker: Callable[..., WorkerProcess],
    cache: RedisSchedulerCache,
    *,
    accounts_within: float = DEFAULT_TIMEOUT,
    options: dict[str, Any] | None = None,
    **env: str,
) -> tuple[WorkerProcess, int, list[int]]:
    """A worker on PostgreSQL listening on ``channel`` (more settings in ``env``, worker
    ``options`` such as beat's arguments), and two accounts in the bucket: the worker,
    its listener's backend pid and the accounts' ids."""
    worker = start_worker(
        pg_env(worker_env, pg, SCHED_OUTBOX_NOTIFY_CHANNEL=channel, **env), **(options or {})
    )
    listener = wait_for(lambda: listener_pid(pg, channel), what="the listener")
    ids = two_accounts(pg)
    wait_for(
        lambda: snapshot_ids(cache, BUCKET) == ids, what="the accounts", timeout=accounts_within
    )
    return worker, listener, ids


def test_a_commit_reaches_the_snapshot_by_wakeup_and_after_a_killed_connection(
    pg: SqlSource,
    channel: str,
    worker_env: dict[str, str],
    start_worker: Callable[..., WorkerProcess],
    task_cache: RedisSchedulerCache,
) -> None:
    # No beat at all: nothing but wake-ups sends polls.
    _, first, ids = listening_worker(
        pg,
        channel,
        worker_env,
        start_worker,
        task_cache,
        accounts_within=WAKEUP_BOUND,
        SCHED_OUTBOX_BACKSTOP_SECONDS=str(LONG_BACKSTOP),
    )

    took = [latency(pg, task_cache, ids, WAKEUP_BOUND) for _ in range(5)]
    print(f"commit -> snapshot by wake-up: median {statistics.median(took):.3f}s, {took}")

    with pg.engine.connect() as conn:
        conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": first})
    wait_for(lambda: listener_pid(pg, channel) not in (None, first), what="a new listener")
    assert latency(pg, task_cache, ids, WAKEUP_BOUND) < WAKEUP_BOUND


def test_without_wakeups_the_backstop_brings_the_change(
    pg: SqlSource,
    worker_env: dict[str, str],
    start_worker: Callable[..., WorkerProcess],
    task_cache: RedisSchedulerCache,
    tmp_path: Path,
) -> None:
    backstop = 3.0
    # The listener runs, healthy, on a channel nobody notifies: no wake-up ever comes.
    env = pg_env(
        worker_env,
        pg,
        SCHED_OUTBOX_NOTIFY_CHANNEL="sched_t_unheard",
        SCHED_OUTBOX_BACKSTOP_SECONDS=str(backstop),
    )
    start_worker(env, extra_args=("-B", "-s", str(tmp_path / "beat-schedule")))
    ids = two_accounts(pg)
    bound = backstop + WAKEUP_BOUND
    wait_for(lambda: snapshot_ids(task_cache, BUCKET) == ids, what="the accounts")

    took = [latency(pg, task_cache, ids, bound) for _ in range(3)]
    print(f"commit -> snapshot by backstop ({backstop}s): {took}")
    assert max(took) < bound
