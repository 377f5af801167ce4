"""The example source over a schema of its own (``examples/upstream_source.py``), loaded
by a real worker with beat through ``SCHED_SOURCE_FACTORY``: snapshots built from its
tables, a change in them reaching the snapshot through its own outbox table, and last
use written back to its column."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cache import RedisSchedulerCache, SchedulerBucket
from examples.upstream_source import create_tables, save_upstream, stamp, upstream_source
from tasks import list_schedulable, record_last_used, runtime
from tasks.web.requests import request_rebuild
from tests.processes import WorkerProcess, settings_from_env, wait_for
from tests.support import snapshot_ids

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

FACTORY = "examples.upstream_source:upstream_source"
NOW = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture
def app_db(tmp_path: Path) -> Path:
    """The application's database: three teams' worth of upstreams in its own layout."""
    path = tmp_path / "app.sqlite3"
    create_tables(path)
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO teams (team_id, title, vendor) VALUES (7, 'gpt-team', 'openai')")
    save_upstream(path, 1, label="gpt-a", vendor="openai", auth_kind="apikey", rank=20,
                  attributes={"teams": {"7": 5}})  # fmt: skip
    save_upstream(path, 2, label="gpt-b", vendor="openai", auth_kind="apikey", rank=10,
                  attributes={"teams": {"7": 1}})  # fmt: skip
    save_upstream(path, 3, label="gpt-solo", vendor="openai", auth_kind="oauth",
                  attributes={"credentials": {"base_url": "https://u.invalid"}})  # fmt: skip
    save_upstream(path, 4, label="claude", vendor="anthropic", auth_kind="oauth")
    save_upstream(path, 5, label="donor", vendor="antigravity", auth_kind="oauth",
                  attributes={"mixed_scheduling": True})  # fmt: skip
    save_upstream(path, 6, label="cooling", vendor="anthropic", auth_kind="oauth",
                  attributes={"cooldown_until": stamp(NOW + timedelta(minutes=5))})  # fmt: skip
    return path


def test_the_source_reads_the_buckets_of_its_own_layout(app_db: Path) -> None:
    source = upstream_source(settings_from_env({"SCHED_DATABASE_URL": f"sqlite:///{app_db}"}))

    def ids(bucket: str) -> list[int]:
        return [a.id for a in source.accounts_for_bucket(SchedulerBucket.parse(bucket), NOW)]

    assert ids("7:openai:single") == [2, 1]  # membership priority first
    assert ids("0:openai:single") == [3]  # group 0: in no team
    assert ids("0:anthropic:mixed") == [4, 5, 6]  # the donor opts in; 6 waits out its window
    assert ids("0:anthropic:single") == [4, 6]
    assert [g.id for g in source.active_groups()] == [7]
    assert [e.event_type for e in source.outbox_after(0, 10)] == ["account_changed"] * 6
    assert source.max_outbox_id() == 6


def test_a_worker_serves_and_follows_a_source_of_its_own(
    app_db: Path,
    process_env: dict[str, str],
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    env = {
        **process_env,
        "SCHED_SOURCE_FACTORY": FACTORY,
        "SCHED_DATABASE_URL": f"sqlite:///{app_db}",
        "SCHED_LAST_USED_DB_FLUSH_SECONDS": "1",
    }
    settings = settings_from_env(env)
    runtime.reset(settings)
    try:
        start_worker(env, extra_args=("-B", "-s", str(tmp_path / "beat-schedule")))
        cache: RedisSchedulerCache = runtime.get_cache()
        team = SchedulerBucket.parse("7:openai:single")
        request_rebuild(team)
        wait_for(lambda: snapshot_ids(cache, team) == [2, 1], what="team 7's snapshot")
        assert [a.id for a in list_schedulable(7, "openai")] == [2, 1]

        # A change written with its event in the application's outbox table: the
        # poller (driven by beat) applies it, with no rebuild asked for.
        save_upstream(app_db, 2, state="off")
        wait_for(lambda: snapshot_ids(cache, team) == [1], what="the change through the outbox")
        save_upstream(app_db, 3, attributes={"teams": {"7": 3}})  # joins team 7
        wait_for(lambda: snapshot_ids(cache, team) == [3, 1], what="a new member of team 7")

        # Last use goes back to the application's own column.
        record_last_used(1, NOW)

        def stored() -> str | None:
            with sqlite3.connect(app_db) as conn:
                row = conn.execute("SELECT last_used_at FROM upstreams WHERE upstream_id = 1")
                value: str | None = row.fetchone()[0]
                return value

        assert wait_for(stored, what="last use in upstreams.last_used_at") == stamp(NOW)
    finally:
        runtime.reset()
