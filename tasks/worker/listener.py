"""Wake on commit: a thread in each worker LISTENs on the outbox's channel.

PostgreSQL delivers the outbox trigger's NOTIFY when the writing transaction commits;
the listener then sends the outbox poll at once (coalesced,
:mod:`tasks.worker.wakeup`), so a change reaches the snapshots in a poll's time rather
than a beat interval. Nothing
depends on a notification arriving: beat still polls every
``outbox_backstop_seconds``; while the listener is not connected it polls every
``outbox_interval_seconds`` itself, and a (re)connect polls once, for whatever
committed while nobody listened.

A nudged poll can come to nothing: while another poll runs (and read the outbox before
this commit) it finds the poll lock held and returns. So after the notifications of a
while the listener reads the outbox's highest id on its own connection, and
``confirm_seconds`` later the applied watermark (one Redis GET, only after a change):
while it is short, it nudges again (as the SQLite watcher does, :mod:`tasks.worker.watcher`).

One listener per worker (started in the main process on ``worker_ready``, stopped on
``worker_shutdown``), with its own connection, not one per pool child.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import sqlalchemy as sa
from celery import signals

from tasks.source.engine import POSTGRES_CONNECT_TIMEOUT_SECONDS, mask_url
from tasks.source.schema import scheduler_outbox
from tasks.worker.wakeup import PollNudger, poll_nudger

logger = logging.getLogger(__name__)

# Shown in pg_stat_activity, so an operator (or a test) can tell the listener apart.
APPLICATION_NAME = "sched-outbox-listener"
# How often the waiting thread looks up to see whether it is asked to stop.
STOP_CHECK_SECONDS = 0.5
FIRST_RETRY_SECONDS = 0.1
# The outbox's highest id, read on the listener's own connection. The comment names the
# channel: pg_stat_activity shows a session's last statement, and an operator (or a
# test) tells listeners apart by it, as by their LISTEN.
OUTBOX_END = f"SELECT coalesce(max(id), 0) FROM {scheduler_outbox.name} /* {{channel}} */"
# After a nudge, how long a poll has to apply the outbox's end before another is sent.
CONFIRM_SECONDS = 0.5


def libpq_dsn(database_url: str) -> str:
    """The SQLAlchemy URL ``database_url`` as a libpq connection string."""
    url = sa.make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


class OutboxListener:
    """LISTENs on ``channel`` and nudges a poll per notification, until stopped."""

    def __init__(
        self,
        dsn: str,
        channel: str,
        nudger: PollNudger,
        *,
        fallback_seconds: float,
        read_applied: Callable[[], int] | None = None,
        confirm_seconds: float = CONFIRM_SECONDS,
    ) -> None:
        self.dsn = dsn
        self.channel = channel
        self.nudger = nudger
        self.fallback_seconds = fallback_seconds
        self.read_applied = read_applied
        self.confirm_seconds = confirm_seconds
        self.connects = 0
        # The outbox end nudged for and when, until a poll is seen to have applied it.
        self._expected: int | None = None
        self._nudged_at = 0.0
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
            except Exception:  # a bug: logged, and listening goes on
                logger.exception("outbox listener failed; listening again")
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
                heard = False
                for _ in conn.notifies(timeout=STOP_CHECK_SECONDS):
                    self.nudger.nudge()
                    heard = True
                if heard and self.read_applied is not None:
                    row = conn.execute(OUTBOX_END.format(channel=self.channel)).fetchone()
                    self._expected, self._nudged_at = int(row[0] if row else 0), time.monotonic()
                elif self._expected is not None:
                    self._confirm()

    def _confirm(self) -> None:
        """Nudge again if the poll nudged ``confirm_seconds`` ago has not applied the
        end read then (it may have found the lock held)."""
        if time.monotonic() - self._nudged_at < self.confirm_seconds:
            return
        if self.read_applied is None or self._expected is None:
            return
        try:
            applied = self.read_applied() >= self._expected
        except Exception as exc:  # Redis unavailable: the poll meets it too, and retries
            logger.warning("outbox listener cannot read the applied watermark: %s", exc)
            applied = False
        if applied:
            self._expected = None
        else:
            self.nudger.nudge()
            self._nudged_at = time.monotonic()


_listener: OutboxListener | None = None


def start_listener(**kwargs: Any) -> None:
    global _listener
    from tasks.runtime import get_cache, settings

    config = settings()
    if not config.wakes_on_commit or _listener is not None:
        return
    _listener = OutboxListener(
        libpq_dsn(config.database_url),
        config.outbox_notify_channel,
        poll_nudger(config.outbox_wakeup_window_seconds),
        fallback_seconds=config.outbox_interval_seconds,
        read_applied=lambda: get_cache().get_outbox_watermark(),
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
