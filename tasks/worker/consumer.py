"""The worker's consumer, reconnecting to the broker in step with a failover.

Celery's consumer retries a lost broker connection after 2 s, 4 s, 6 s ... (kombu's
defaults). A Sentinel failover or a restarted Redis is usually back within a second or
two, so the second wait alone would keep the worker idle for seconds after the broker
is back. This consumer starts at a quarter second and backs off to five.

It also survives closing the lost connection. With a ``sentinel://`` broker, kombu's
channel, closed after Celery collected the connection, tries to give back its
unacknowledged messages through a pool it can no longer build and raises
AttributeError, which Celery does not expect there: the worker would exit on every
failover that finds it with a task in hand. The messages stay in the broker's unacked
index; the visibility timeout delivers them again.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer

logger = logging.getLogger(__name__)

RECONNECT_FIRST_SECONDS = 0.25
RECONNECT_STEP_SECONDS = 0.5
RECONNECT_MAX_SECONDS = 5.0


class Consumer(CeleryConsumer):  # type: ignore[misc]
    """``worker_consumer`` of the app: Celery's consumer with shorter reconnect waits."""

    def ensure_connected(self, conn: Any) -> Any:
        conn.ensure_connection = functools.partial(
            conn.ensure_connection,
            interval_start=RECONNECT_FIRST_SECONDS,
            interval_step=RECONNECT_STEP_SECONDS,
            interval_max=RECONNECT_MAX_SECONDS,
        )
        return super().ensure_connected(conn)

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        connection = self.connection
        if connection is not None:
            close = connection.close

            def close_what_can_be_closed() -> None:
                try:
                    close()
                except AttributeError as error:
                    logger.warning(
                        "the lost broker connection did not close cleanly (%s); its "
                        "unacknowledged messages come back after the visibility timeout",
                        error,
                    )

            connection.close = close_what_can_be_closed
        super().on_connection_error_after_connected(exc)
