"""The end-to-end rebuild path on the production servers: PostgreSQL and RabbitMQ."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from tasks import runtime
from tasks.source import SqlSource
from tests.processes import settings_from_env
from tests.support import TestServers
from tests.worker.helpers import change_reaches_snapshot

pytestmark = pytest.mark.slow


@pytest.fixture
def amqp_url(test_servers: TestServers) -> Iterator[str]:
    """A RabbitMQ vhost of this test's own when the server is local, so that a worker of
    another run on the same server never takes this test's messages."""
    if not test_servers.amqp_url:
        pytest.skip("needs SCHED_TEST_AMQP_URL (e.g. amqp://guest:guest@127.0.0.1:5672//)")
    url = urlsplit(test_servers.amqp_url)
    ctl = shutil.which("rabbitmqctl")
    if ctl is None or url.hostname not in ("127.0.0.1", "localhost"):
        yield test_servers.amqp_url
        return
    vhost = f"sched-test-{uuid.uuid4().hex[:12]}"

    def run(*args: str) -> None:
        subprocess.run([ctl, *args], check=True, capture_output=True, timeout=60)

    run("add_vhost", vhost)
    try:
        run("set_permissions", "-p", vhost, url.username or "guest", ".*", ".*", ".*")
        yield f"{url.scheme}://{url.netloc}/{vhost}"
    finally:
        run("delete_vhost", vhost)


def test_end_to_end_on_postgresql(
    worker_env: dict[str, str], start_worker: Any, postgres_url: str
) -> None:
    env = {**worker_env, "SCHED_DATABASE_URL": postgres_url}
    runtime.reset(settings_from_env(env))
    start_worker(env)
    source = SqlSource(postgres_url)
    try:
        change_reaches_snapshot(source, runtime.get_cache())
    finally:
        source.close()


def test_end_to_end_with_rabbitmq_as_the_broker(
    worker_env: dict[str, str], start_worker: Any, source: SqlSource, amqp_url: str
) -> None:
    env = {**worker_env, "SCHED_BROKER_URL": amqp_url}
    runtime.reset(settings_from_env(env))
    start_worker(env)
    change_reaches_snapshot(source, runtime.get_cache())
