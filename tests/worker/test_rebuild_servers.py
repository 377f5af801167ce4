"""The end-to-end rebuild path on the production servers: PostgreSQL and RabbitMQ."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tasks import runtime
from tasks.source import SqlSource
from tests.processes import settings_from_env
from tests.support import TestServers, rabbitmq_vhost
from tests.worker.helpers import change_reaches_snapshot

pytestmark = pytest.mark.slow


@pytest.fixture
def amqp_url(test_servers: TestServers) -> Iterator[str]:
    """A RabbitMQ vhost of this test's own when the server is local, else the server's."""
    if not test_servers.amqp_url:
        pytest.skip("needs SCHED_TEST_AMQP_URL (e.g. amqp://guest:guest@127.0.0.1:5672//)")
    with rabbitmq_vhost(test_servers.amqp_url) as url:
        yield url or test_servers.amqp_url


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
