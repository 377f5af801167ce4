"""Flower with basic auth, over a real worker: tasks and workers read back by name and state."""

from __future__ import annotations

import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tasks.celery import app
from tasks.source import SqlSource, SqlWriter
from tasks.web.requests import request_rebuild
from tests.processes import Service, WorkerProcess, wait_for
from tests.support import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

USER = "ops"


@pytest.fixture
def flower(
    ops_env: dict[str, str], worker: WorkerProcess, tmp_path: Path
) -> Iterator[tuple[str, str]]:
    """Flower started through ``sched flower`` on a free port: (base URL, password)."""
    password = secrets.token_urlsafe(12)
    port = free_port()
    env = {**ops_env, "SCHED_FLOWER_USER": USER, "SCHED_FLOWER_PASSWORD": password}
    service = Service(
        [sys.executable, "-m", "tasks", "flower", "--port", str(port)], env, tmp_path / "flower.log"
    ).start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _healthy(base, service), timeout=60, what="Flower's healthcheck")
        assert password not in " ".join(service.argv)  # never on a command line
        yield base, password
    finally:
        service.stop()


def _healthy(base: str, service: Service) -> bool:
    if not service.alive():
        pytest.fail(f"Flower exited:\n{service.log_tail()}")
    try:
        return httpx.get(f"{base}/healthcheck", timeout=2).text == "OK"
    except httpx.HTTPError:
        return False


def _get(base: str, path: str, auth: tuple[str, str] | None, **params: Any) -> httpx.Response:
    return httpx.get(f"{base}{path}", auth=auth, params=params, timeout=30)


def test_flower_shows_tasks_and_workers_behind_basic_auth(
    flower: tuple[str, str], worker: WorkerProcess, source: SqlSource, db: SqlWriter
) -> None:
    base, password = flower
    auth = (USER, password)
    # Flower learns of workers from their events and from inspect replies.
    wait_for(
        lambda: worker.name in _get(base, "/api/workers", auth, refresh="true").json(),
        timeout=60,
        what="the worker in /api/workers",
    )

    db.create_account(name="a", platform="openai", type="apikey")
    assert request_rebuild("0:openai:single")
    bad = app.send_task("tasks.rebuild_bucket", args=["not-a-bucket"], queue="rebuild")

    def tasks_in(state: str) -> dict[str, Any]:
        reply = _get(base, "/api/tasks", auth, taskname="tasks.rebuild_bucket", state=state)
        assert reply.status_code == 200, reply.text
        return dict(reply.json())

    done = wait_for(lambda: tasks_in("SUCCESS"), timeout=60, what="a SUCCESS rebuild in Flower")
    task = next(iter(done.values()))
    assert task["name"] == "tasks.rebuild_bucket"
    assert task["args"] == "('0:openai:single',)"
    assert task["worker"] == worker.name

    failed = wait_for(lambda: tasks_in("FAILURE"), timeout=60, what="a FAILURE in Flower")
    assert bad.id in failed
    assert "not-a-bucket" in failed[bad.id]["exception"]

    workers = _get(base, "/api/workers", auth).json()
    assert worker.name in workers
    queues = {q["name"] for q in workers[worker.name].get("active_queues", [])}
    assert queues == {"rebuild", "outbox", "last_used"}

    # Without credentials, or with wrong ones: refused.
    for path in ("/api/tasks", "/api/workers", "/", "/metrics"):
        assert _get(base, path, None).status_code == 401, path
        assert _get(base, path, (USER, "wrong")).status_code == 401, path

    metrics = _get(base, "/metrics", auth)
    assert metrics.status_code == 200
    assert "flower_events_total" in metrics.text
    assert 'task="tasks.rebuild_bucket"' in metrics.text
