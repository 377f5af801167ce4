"""``sched metrics``: the Prometheus exposition, parsed back with prometheus_client's own
parser; served with and without basic auth; queue lengths on Redis and RabbitMQ."""

from __future__ import annotations

import secrets
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cache import Account, RedisSchedulerCache, SchedulerBucket
from tasks import runtime, stats
from tasks.celery import QUEUES, app
from tasks.ops.metrics import queue_lengths
from tasks.settings import Settings
from tasks.source import SqlWriter
from tests.ops.conftest import CliResult
from tests.processes import Service, settings_from_env, wait_for
from tests.support import free_port

pytestmark = pytest.mark.timeout(120)
RunCli = Callable[..., CliResult]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """Every sample by name and labels, as Prometheus would read them."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def figures(configured: Settings, db: SqlWriter) -> RedisSchedulerCache:
    """One bucket built by a 12.5 ms rebuild, events in the outbox, stats, a message."""
    cache = runtime.get_cache()
    now = datetime.now(UTC)
    for n in range(4):
        db.create_account(name=f"a{n}", platform="openai", type="apikey")
    accounts = [Account(id=n, name=f"a{n}", platform="openai", type="apikey") for n in range(1, 4)]
    bucket = SchedulerBucket.parse("0:openai:single")
    cache.set_snapshot(bucket, accounts, rebuild_ms=12.5)
    cache.advance_outbox(3, new_gaps=[2])
    cache.update_last_used({1: now}, record_pending=True)
    cache.record_stats({stats.REBUILDS: 7, stats.OUTBOX_EVENTS_APPLIED: 2})
    app.send_task("tasks.rebuild_bucket", args=["0:openai:single"], queue="rebuild")
    return cache


def test_metrics_are_the_status_figures_in_prometheus_text(
    run_cli: RunCli, figures: RedisSchedulerCache
) -> None:
    result = run_cli("metrics")
    assert result.code == 0, result
    found = samples(result.out)
    assert value(found, "sched_buckets_active") == 1
    assert value(found, "sched_bucket_accounts", bucket="0:openai:single") == 3
    age = value(found, "sched_bucket_age_seconds", bucket="0:openai:single")
    assert 0 <= age < 60
    assert value(found, "sched_rebuild_duration_seconds", bucket="0:openai:single") == 0.0125
    assert value(found, "sched_outbox_lag_events") == 1  # 4 events in the database, 3 applied
    assert value(found, "sched_outbox_gaps") == 1
    assert value(found, "sched_outbox_rows") == 4
    assert 0 <= value(found, "sched_outbox_oldest_row_age_seconds") < 60
    assert value(found, "sched_last_used_pending") == 1
    assert value(found, "sched_rebuilds_total") == 7
    assert value(found, "sched_outbox_events_applied_total") == 2
    for name in stats.COUNTERS:
        assert (f"sched_{name}_total", ()) in found, name
    assert value(found, "sched_broker_up") == 1
    assert value(found, "sched_queue_length", queue="rebuild") == 1
    assert {value(found, "sched_queue_length", queue=q) for q in QUEUES if q != "rebuild"} == {0}
    # The same figures as `sched status`.
    status = run_cli("status", "--json")
    assert '"lag": 1' in status.out and '"gaps": 1' in status.out


def test_a_broker_that_does_not_answer_is_a_figure_not_a_failure(
    run_cli: RunCli, figures: RedisSchedulerCache, ops_env: dict[str, str]
) -> None:
    env = {**ops_env, "SCHED_BROKER_URL": "redis://127.0.0.1:1/0"}
    result = run_cli("metrics", env=env)
    assert result.code == 0, result
    found = samples(result.out)
    assert value(found, "sched_broker_up") == 0
    assert value(found, "sched_buckets_active") == 1


def _serve(ops_env: dict[str, str], tmp_path: Path, **env: str) -> tuple[Service, str]:
    port = free_port()
    service = Service(
        [sys.executable, "-m", "tasks", "metrics", "--serve", "--port", str(port)],
        {**ops_env, **env},
        tmp_path / "metrics.log",
    ).start()
    url = f"http://127.0.0.1:{port}/metrics"

    def up() -> bool:
        if not service.alive():
            pytest.fail(f"sched metrics --serve exited:\n{service.log_tail()}")
        try:
            httpx.get(url, timeout=2)
            return True
        except httpx.HTTPError:
            return False

    wait_for(up, timeout=30, what="the metrics endpoint")
    return service, url


def test_served_with_basic_auth_when_credentials_are_set(
    ops_env: dict[str, str], figures: RedisSchedulerCache, tmp_path: Path
) -> None:
    password = secrets.token_urlsafe(12)
    service, url = _serve(
        ops_env, tmp_path, SCHED_METRICS_USER="prom", SCHED_METRICS_PASSWORD=password
    )
    try:
        assert httpx.get(url, timeout=10).status_code == 401
        assert httpx.get(url, auth=("prom", "wrong"), timeout=10).status_code == 401
        reply = httpx.get(url, auth=("prom", password), timeout=10)
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/plain")
        assert value(samples(reply.text), "sched_buckets_active") == 1
        assert password not in " ".join(service.argv) + service.log_tail()
    finally:
        service.stop()


def test_served_without_auth_on_loopback_only(
    run_cli: RunCli, ops_env: dict[str, str], figures: RedisSchedulerCache, tmp_path: Path
) -> None:
    service, url = _serve(ops_env, tmp_path)
    try:
        assert value(samples(httpx.get(url, timeout=10).text), "sched_buckets_active") == 1
        assert httpx.get(url.replace("/metrics", "/other"), timeout=10).status_code == 404
    finally:
        service.stop()
    exposed = run_cli("metrics", "--serve", "--address", "0.0.0.0")
    assert exposed.code == 2
    assert "need basic auth: set SCHED_METRICS_USER and SCHED_METRICS_PASSWORD" in exposed.err


def test_a_metrics_user_without_a_password_stops_only_the_serving(
    run_cli: RunCli, ops_env: dict[str, str], figures: RedisSchedulerCache
) -> None:
    half = {**ops_env, "SCHED_METRICS_USER": "prom"}
    printed = run_cli("metrics", env=half)
    assert printed.code == 0, printed.err
    assert "sched_buckets_active" in printed.out
    served = run_cli("metrics", "--serve", env=half)
    assert served.code == 2
    assert "SCHED_METRICS_USER is set without SCHED_METRICS_PASSWORD" in served.err
    other_half = run_cli("metrics", "--serve", env={**ops_env, "SCHED_METRICS_PASSWORD": "secret"})
    assert other_half.code == 2
    assert "SCHED_METRICS_PASSWORD is set without SCHED_METRICS_USER" in other_half.err
    assert "secret" not in other_half.err


def test_a_port_without_serve_is_refused(run_cli: RunCli) -> None:
    result = run_cli("metrics", "--port", "9897")
    assert result.code == 2
    assert "--port only apply with --serve" in result.err
    both = run_cli("metrics", "--port", "9897", "--address", "0.0.0.0")
    assert both.code == 2 and "--port and --address only apply with --serve" in both.err


def test_settings_errors_name_the_variables_a_user_sets(
    run_cli: RunCli, ops_env: dict[str, str]
) -> None:
    env = {k: v for k, v in ops_env.items() if k != "SCHED_BROKER_URL"}
    env["SCHED_REDIS_CLUSTER"] = "true"
    result = run_cli("status", env=env)
    assert result.code == 2
    assert "SCHED_REDIS_CLUSTER=true needs its own SCHED_BROKER_URL" in result.err
    limits = {
        **ops_env,
        "SCHED_REBUILD_TIME_LIMIT_SECONDS": "50",
        "SCHED_LOCK_TTL_SECONDS": "40",
    }
    result = run_cli("status", env=limits)
    assert result.code == 2
    assert "SCHED_REBUILD_TIME_LIMIT_SECONDS (50" in result.err
    assert "SCHED_LOCK_TTL_SECONDS (40" in result.err
    assert "rebuild_time_limit_seconds" not in result.err


@pytest.mark.slow
def test_queue_lengths_on_rabbitmq(configured: Settings, rabbitmq_url: str) -> None:
    runtime.reset(settings_from_env({"SCHED_BROKER_URL": rabbitmq_url}))
    try:
        # Before any worker declared the queues: nothing waits, nothing is created.
        assert queue_lengths(QUEUES) == dict.fromkeys(QUEUES, 0)
        with app.connection_for_write() as conn:
            for name in QUEUES:
                conn.default_channel.queue_declare(queue=name, durable=True, auto_delete=False)
        for _ in range(3):
            app.send_task("tasks.rebuild_bucket", args=["0:openai:single"], queue="rebuild")
        app.send_task("tasks.poll_outbox", queue="outbox")

        def lengths() -> dict[str, int] | None:
            found = queue_lengths(QUEUES)
            return found if found["rebuild"] == 3 else None

        found: Any = wait_for(lengths, timeout=30, what="three messages in 'rebuild'")
        assert found == {"rebuild": 3, "outbox": 1, "last_used": 0}
    finally:
        runtime.reset()
