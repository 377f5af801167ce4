"""Waking the outbox poller: the ``tasks.poll_outbox`` task sent now, coalesced.

A commit that wrote outbox rows should not wait for beat's next tick. Whoever learns
of one (the worker's listener on a PostgreSQL notification, a write helper after its
commit on SQLite) calls :meth:`PollNudger.nudge`, which returns at once; one thread
per process sends the poll. A burst of nudges costs one poll now and one more after
the window, never one per commit, and a nudge is always followed by a poll sent after
it, so the last commit of a burst is never left for beat.

It sends by task name and imports no task module, so a web process that marks an
account (:mod:`tasks.web.marks`) can use it without loading the worker's tasks.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

POLL_TASK = "tasks.poll_outbox"
# A wake-up poll queued behind a stopped worker is worthless after this: beat's
# backstop and the next wake-up cover what it would have found.
WAKEUP_EXPIRES_SECONDS = 5.0


def send_poll() -> None:
    """Send the outbox poll task by name (no import of the worker's modules)."""
    from tasks.celery import app

    app.send_task(POLL_TASK, expires=WAKEUP_EXPIRES_SECONDS)


class PollNudger:
    """Calls ``send`` at most once per ``window`` seconds, and once after every nudge."""

    def __init__(self, window: float, send: Callable[[], None] = send_poll) -> None:
        self.window = window
        self.send = send
        self.sent = 0
        self._wanted = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def nudge(self) -> None:
        """Ask for a poll; never blocks on the broker."""
        self._wanted.set()
        with self._lock:
            # A forked child has the object but not the thread.
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._pid = os.getpid()
                self._thread = threading.Thread(
                    target=self._run, name="sched-poll-nudger", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            try:
                self.send()
                self.sent += 1
            except Exception as exc:  # the broker's trouble: beat's backstop covers it
                logger.warning("could not send an outbox poll: %s", exc)
            time.sleep(self.window)


_nudgers: dict[float, PollNudger] = {}
_nudgers_lock = threading.Lock()


def poll_nudger(window: float) -> PollNudger:
    """The process's nudger for ``window`` (SCHED_OUTBOX_WAKEUP_WINDOW_SECONDS)."""
    with _nudgers_lock:
        nudger = _nudgers.get(window)
        if nudger is None:
            nudger = _nudgers[window] = PollNudger(window)
        return nudger
