"""Wake on commit: a thread in each worker LISTENs on the outbox's channel.

PostgreSQL delivers the outbox trigger's NOTIFY when the writing transaction commits;
the listener then sends the outbox poll at once (coalesced,
:mod:`tasks.worker.wakeup`), so a change reaches the snapshots in a poll's time rather
than a beat interval. Nothing
depends on a notification arriving: beat still polls every
``outbox_backstop_seconds``; while the listener is not connected it polls every
``outbox_interval_seconds`` itself, and a (re)connect polls once, for whatever
committed while nobody listened.

One listener per worker (started in the main process on ``worker_ready``, stopped on
``worker_shutdown``), with its own connection, not one per pool child.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import psycopg
import sqlalchemy as sa
from celery import signals

from tasks.source.engine import POSTGRES_CONNECT_TIMEOUT_SECONDS, mask_url
from tasks.worker.wakeup import PollNudger, poll_nudger

logger = logging.getLogger(__name__)

# Shown in pg_stat_activity, so an operator (or a test) can tell the listener apart.
APPLICATION_NAME = "sched-outbox-listener"
# How often the waiting thread looks up to see whether it is asked to stop.
STOP_CHECK_SECONDS = 0.5
FIRST_RETRY_SECONDS = 0.1


def libpq_dsn(database_url: str) -> str:
    """The SQLAlchemy URL ``database_url`` as a libpq connection string."""
    url = sa.make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


class OutboxListener:
    """LISTENs on ``channel`` and nudges a poll per notification, until stopped."""

    def __init__(
        self, dsn: str, channel: str, nudger: PollNudger, *, fallback_seconds: float
    ) -> None:
        self.dsn = dsn
        self.channel = channel
        self.nudger = nudger
        self.fallback_seconds = fallback_seconds
        self.connects = 0
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=APPLICATION_NAME, daemon=True)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        retry = FIRST_RETRY_SECONDS
        while not self._stop.is_set():
            try:
                self._listen()
                retry = FIRST_RETRY_SECONDS
            except psycopg.Error as exc:
                logger.warning(
                    "outbox listener on %s lost (%s); polling every %ss until it is back",
                    mask_url(self.dsn),
                    exc,
                    self.fallback_seconds,
                )
            self._connected.clear()
            if self._stop.is_set():
                break
            # Not listening: changes may be committing unheard.
            self.nudger.nudge()
            self._stop.wait(retry)
            retry = min(retry * 2, self.fallback_seconds)

    def _listen(self) -> None:
        with psycopg.connect(
            self.dsn,
            autocommit=True,
            application_name=APPLICATION_NAME,
            connect_timeout=POSTGRES_CONNECT_TIMEOUT_SECONDS,
        ) as conn:
            conn.execute(f"LISTEN {self.channel}")
            self.connects += 1
            self._connected.set()
            logger.info("outbox listener on %s, channel %s", mask_url(self.dsn), self.channel)
            self.nudger.nudge()  # whatever committed before this LISTEN
            while not self._stop.is_set():
                for _ in conn.notifies(timeout=STOP_CHECK_SECONDS):
                    self.nudger.nudge()


_listener: OutboxListener | None = None


def start_listener(**kwargs: Any) -> None:
    global _listener
    from tasks.runtime import settings

    config = settings()
    if not config.wakes_on_commit or _listener is not None:
        return
    _listener = OutboxListener(
        libpq_dsn(config.database_url),
        config.outbox_notify_channel,
        poll_nudger(config.outbox_wakeup_window_seconds),
        fallback_seconds=config.outbox_interval_seconds,
    )
    _listener.start()


def stop_listener(**kwargs: Any) -> None:
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None


# In the worker's main process: one listener per worker, whatever its pool.
signals.worker_ready.connect(start_listener, weak=False)
signals.worker_shutdown.connect(stop_listener, weak=False)
