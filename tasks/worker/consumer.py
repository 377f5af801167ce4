"""The worker's consumer, reconnecting to the broker in step with a failover.

Celery's consumer retries a lost broker connection after 2 s, 4 s, 6 s ... (kombu's
defaults). A Sentinel failover or a restarted Redis is usually back within a second or
two, so the second wait alone would keep the worker idle for seconds after the broker
is back. This consumer starts at a quarter second and backs off to one: it is back at
most a second after the broker is.

It also survives acknowledging on a lost connection. With the Redis transport, a task
acknowledged late (``acks_late``) that finishes after the consumer collected its lost
connection acknowledges through a channel whose client is gone: kombu rebuilds a pool
from no connection and raises AttributeError, which ``Message.ack_log_error`` lets
through (it catches only the consumer's ``connection_errors``), and the worker stops
with "Unrecoverable error" on a Redis restart that finds it with a task in hand. That
AttributeError is counted among this consumer's connection errors: the ack is logged as
not made (the message is redelivered by the broker, or was lost with Redis's state), and
the consumer reconnects.

It also survives closing the lost connection. With a ``sentinel://`` broker, kombu's
channel, closed after Celery collected the connection, tries to give back its
unacknowledged messages through a pool it can no longer build and raises
AttributeError, which Celery does not expect there: the worker would exit on every
failover that finds it with a task in hand. The messages stay in the broker's unacked
index; the visibility timeout delivers them again.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Any

from celery.exceptions import CPendingDeprecationWarning
from celery.utils.threads import bound_open_broker_sockets
from celery.utils.time import humanize_seconds
from celery.worker.consumer import Consumer as CeleryConsumer
from celery.worker.consumer.consumer import (
    COLLECT_SOCKET_TIMEOUT,
    CONNECTION_ERROR,
    CONNECTION_FAILOVER,
    CONNECTION_RETRY_STEP,
)
from celery.worker.consumer.consumer import logger as celery_consumer_logger
from celery.worker.state import maybe_shutdown

logger = logging.getLogger(__name__)

RECONNECT_FIRST_SECONDS = 0.25
RECONNECT_STEP_SECONDS = 0.25
# The longest a worker stays away from a broker that is back: a Sentinel promotes a
# replica only after down-after-milliseconds (30 s by default), by when waits that grew
# to 5 s cost up to 5 s more after the promotion. An attempt asks the sentinels and
# logs a line each: one a second during an outage.
RECONNECT_MAX_SECONDS = 1.0
# Idle cost: a worker-heartbeat event every 10 s, not Celery's 2 s (one PUBLISH each).
# Flower and ``celery events`` count a worker gone after twice the interval without
# one; a receiver that starts asks for one at once. ``--heartbeat-interval`` overrides.
EVENT_HEARTBEAT_SECONDS = 10
# Idle cost, Redis broker: an idle BRPOP comes back empty (and is sent again) every 5 s,
# not kombu's every second. A message still arrives at once; what waits longer is only
# the worker's warm shutdown (kombu reads the pending reply as it closes) and the
# detection of a half-open broker connection (this + health_check_interval).
BRPOP_TIMEOUT_SECONDS = 5


class Consumer(CeleryConsumer):  # type: ignore[misc]
    """``worker_consumer`` of the app: Celery's consumer with shorter reconnect waits."""

    # Set by Celery's consumer; declared for the type checker.
    connection: Any
    connection_errors: tuple[type[BaseException], ...]

    def __init__(self, *args: Any, worker_options: Any = None, **kwargs: Any) -> None:
        options = dict(worker_options or {})
        if not options.get("heartbeat_interval"):
            options["heartbeat_interval"] = EVENT_HEARTBEAT_SECONDS
        super().__init__(*args, worker_options=options, **kwargs)
        # Before the task strategies are built: each request takes this tuple as the
        # errors its late acknowledgement may meet (see the module's docstring).
        self.connection_errors = with_lost_channel_errors(self.connection_errors)

    first_connection_attempt: bool
    broker_connection_retry_attempt: int

    def ensure_connected(self, conn: Any) -> Any:
        with_brpop_timeout(conn)
        return self._ensure_connected(conn)

    def _ensure_connected(self, conn: Any) -> Any:
        # Celery's own body; only the interval arguments of ensure_connection differ.
        def _error_handler(
            exc: Exception, interval: float, next_step: str = CONNECTION_RETRY_STEP
        ) -> None:
            if getattr(conn, "alt", None) and interval == 0:
                next_step = CONNECTION_FAILOVER
            elif interval > 0:
                self.broker_connection_retry_attempt += 1
            next_step = next_step.format(
                when=humanize_seconds(interval, "in", " "),
                retries=self.broker_connection_retry_attempt,
                max_retries=self.app.conf.broker_connection_max_retries,
            )
            celery_consumer_logger.error(CONNECTION_ERROR, conn.as_uri(), exc, next_step)

        retry_disabled = False
        if self.app.conf.broker_connection_retry_on_startup is None:
            retry_disabled = not self.app.conf.broker_connection_retry
            if retry_disabled:
                warnings.warn(
                    CPendingDeprecationWarning(
                        "The broker_connection_retry configuration setting will no longer "
                        "determine\nwhether broker connection retries are made during startup "
                        "in Celery 6.0 and above.\nIf you wish to refrain from retrying "
                        "connections on startup,\nyou should set "
                        "broker_connection_retry_on_startup to False instead."
                    ),
                    stacklevel=2,
                )
        elif self.first_connection_attempt:
            retry_disabled = not self.app.conf.broker_connection_retry_on_startup
        else:
            retry_disabled = not self.app.conf.broker_connection_retry

        if retry_disabled:
            conn.connect()
            self.first_connection_attempt = False
            return conn

        conn = conn.ensure_connection(
            _error_handler,
            self.app.conf.broker_connection_max_retries,
            interval_start=RECONNECT_FIRST_SECONDS,
            interval_step=RECONNECT_STEP_SECONDS,
            interval_max=RECONNECT_MAX_SECONDS,
            callback=maybe_shutdown,
        )
        self.first_connection_attempt = False
        self.broker_connection_retry_attempt = 0
        return conn

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        # Celery's teardown of the lost connection (bound its sockets, collect, close),
        # done here so the close can tolerate kombu's AttributeError; Celery's method
        # then finds no connection left to close and does the rest (the warning,
        # cancelling late-acked tasks, the prefetch reduction).
        connection, self.connection = self.connection, None
        if connection is not None:
            bound_open_broker_sockets(connection, COLLECT_SOCKET_TIMEOUT)
            with contextlib.suppress(Exception):  # as Celery: any failure here is moot
                connection.collect(socket_timeout=COLLECT_SOCKET_TIMEOUT)
            self.close_lost_connection(connection)
        super().on_connection_error_after_connected(exc)

    def close_lost_connection(self, connection: Any) -> None:
        """Close a collected broker connection; kombu's AttributeError is not fatal."""
        try:
            connection.close()
        except connection.connection_errors + connection.channel_errors:
            pass
        except AttributeError as error:
            logger.warning(
                "the lost broker connection did not close cleanly (%s); its "
                "unacknowledged messages come back after the visibility timeout",
                error,
            )


def with_lost_channel_errors(
    errors: tuple[type[BaseException], ...],
) -> tuple[type[BaseException], ...]:
    """``errors`` and the AttributeError kombu raises acknowledging on a channel whose
    connection was collected (see the module's docstring)."""
    return errors if AttributeError in errors else (*errors, AttributeError)


def with_brpop_timeout(conn: Any, seconds: float = BRPOP_TIMEOUT_SECONDS) -> None:
    """Give a Redis transport's channels ``seconds`` of BRPOP timeout; other
    transports (RabbitMQ) are left as they are. Before the connection is made: its
    channels take the transport's value as they are created."""
    transport: Any = getattr(conn, "transport", None)
    if hasattr(transport, "brpop_timeout"):
        transport.brpop_timeout = seconds
