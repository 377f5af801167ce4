"""The worker's consumer, reconnecting to the broker in step with a failover.

Celery's consumer retries a lost broker connection after 2 s, 4 s, 6 s ... (kombu's
defaults). A Sentinel failover or a restarted Redis is usually back within a second or
two, so the second wait alone would keep the worker idle for seconds after the broker
is back. This consumer starts at a quarter second and backs off to five.
"""

from __future__ import annotations

import functools
from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer

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
