"""The worker's consumer: its reconnect waits reach kombu. (The close it survives,
kombu's AttributeError on a collected Sentinel connection, is shown end to end by
tests/worker/test_sentinel.py: a failover that finds the worker with a task in hand.)"""

from __future__ import annotations

from typing import Any

import pytest

from tasks.celery import app
from tasks.worker.consumer import (
    RECONNECT_FIRST_SECONDS,
    RECONNECT_MAX_SECONDS,
    RECONNECT_STEP_SECONDS,
    Consumer,
    with_lost_channel_errors,
)


def bare_consumer() -> Consumer:
    """The consumer's methods under test need only the app and two counters."""
    consumer: Consumer = Consumer.__new__(Consumer)
    consumer.app = app
    consumer.first_connection_attempt = False
    consumer.broker_connection_retry_attempt = 0
    return consumer


class RecordingConnection:
    """Stands in for a kombu connection; records how it was asked to connect."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def ensure_connection(self, *args: Any, **kwargs: Any) -> RecordingConnection:
        self.calls.append((args, kwargs))
        return self

    def connect(self) -> None:
        raise AssertionError("connected without retrying")


def test_the_reconnect_intervals_reach_ensure_connection() -> None:
    connection = RecordingConnection()
    assert bare_consumer().ensure_connected(connection) is connection
    [(args, kwargs)] = connection.calls
    assert args[1] == app.conf.broker_connection_max_retries
    assert kwargs["interval_start"] == RECONNECT_FIRST_SECONDS
    assert kwargs["interval_step"] == RECONNECT_STEP_SECONDS
    assert kwargs["interval_max"] == RECONNECT_MAX_SECONDS


class LostChannel:
    """A kombu channel after Celery collected its connection: kombu's Redis transport
    rebuilds a pool from no connection info on the next ack."""

    def basic_ack(self, delivery_tag: object, multiple: bool = False) -> None:
        raise AttributeError("'NoneType' object has no attribute 'hostname'")


def test_a_late_ack_on_a_collected_connection_is_logged_not_raised() -> None:
    import logging

    from kombu.message import Message

    message = Message(body=b"{}", delivery_tag=1, channel=LostChannel())  # type: ignore[no-untyped-call]
    errors = app.connection_for_read().connection_errors
    # kombu as it is: ack_log_error lets the AttributeError through, which ends the
    # worker's consumer loop ("Unrecoverable error").
    with pytest.raises(AttributeError):
        message.ack_log_error(logging.getLogger("test"), errors)  # type: ignore[no-untyped-call]
    # With the consumer's errors it is logged as an ack not made.
    message = Message(body=b"{}", delivery_tag=2, channel=LostChannel())  # type: ignore[no-untyped-call]
    message.ack_log_error(logging.getLogger("test"), with_lost_channel_errors(errors))  # type: ignore[no-untyped-call]
    assert with_lost_channel_errors(with_lost_channel_errors(errors)).count(AttributeError) == 1
