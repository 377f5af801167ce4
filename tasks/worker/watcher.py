"""Wake on commit without notifications: a thread in each worker watches the outbox's end.

SQLite has no NOTIFY, and a commit made by another program (plain SQL, an admin tool)
calls none of our nudges. So on SQLite a thread in the worker's main process reads the
source's highest outbox id every ``outbox_watch_seconds`` (a read of the local database
file: no Redis, no broker) and sends the outbox poll (coalesced,
:mod:`tasks.worker.wakeup`) only when the id moved. A change then reaches the snapshots
in a fraction of a second, and beat polls only every ``outbox_backstop_seconds``, as on
PostgreSQL: the bound on a change the watcher missed (a dead or stuck watcher).

While its reads fail, the watcher cannot tell what committed: it nudges a poll every
``outbox_interval_seconds`` until a read succeeds again, as the listener does while
it is not connected. Its first read nudges once, for whatever committed before it.

A nudged poll can come to nothing: a poll already running holds the poll lock, and the
new one returns "busy"; if the running one read the outbox before the commit, nobody
applies it until the next nudge::

    poll A: lock, read outbox ........................ unlock
    commit 42                 |
    watcher: end 42, nudge -> poll B: lock busy, returns
                                                      42 waits for beat's backstop

So ``confirm_seconds`` (a quarter second) after a nudge the watcher reads the applied
watermark (one Redis GET, only after a change) and nudges again while it is short of
the end it saw.

One watcher per worker (started in the main process on ``worker_ready``, stopped on
``worker_shutdown``), with its own source object: pool children never use it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from celery import signals

from tasks.worker.wakeup import PollNudger, poll_nudger

logger = logging.getLogger(__name__)

THREAD_NAME = "sched-outbox-watcher"
# After a nudge, how long a poll has to apply the end before another is sent: a poll
# takes milliseconds, and a change whose poll came to nothing should still reach the
# readers well within a second.
CONFIRM_SECONDS = 0.25


class OutboxWatcher:
    """Reads ``read_end()`` every ``interval`` seconds; nudges a poll when it moved."""

    def __init__(
        self,
        read_end: Callable[[], int],
        nudger: PollNudger,
        *,
        interval: float,
        fallback_seconds: float,
        read_applied: Callable[[], int] | None = None,
        confirm_seconds: float = CONFIRM_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.read_end = read_end
        self.nudger = nudger
        self.interval = interval
        self.fallback_seconds = fallback_seconds
        self.read_applied = read_applied
        self.confirm_seconds = confirm_seconds
        self.clock = clock
        self.reads = 0
        self.last: int | None = None
        # When the last nudge was sent for an end not yet seen applied.
        self._unconfirmed: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def check(self) -> bool:
        """One read; True when it nudged: the end moved (or this was the first read), or
        a poll nudged ``confirm_seconds`` ago has not applied it yet."""
        end = self.read_end()
        self.reads += 1
        now = self.clock()
        if end != self.last:
            self.last = end
        elif self._unconfirmed is None or now - self._unconfirmed < self.confirm_seconds:
            return False
        elif self.read_applied is None or self.read_applied() >= end:
            self._unconfirmed = None
            return False
        self._unconfirmed = now
        self.nudger.nudge()
        return True

    def _run(self) -> None:
        failing_since: float | None = None
        last_nudge = 0.0
        while not self._stop.is_set():
            try:
                self.check()
                if failing_since is not None:
                    logger.info("outbox watcher reads the source again")
                failing_since = None
            except Exception as exc:  # the database's trouble, or a bug: keep watching
                now = time.monotonic()
                if failing_since is None:
                    failing_since = now
                    logger.warning(
                        "outbox watcher cannot read the outbox's end or the applied "
                        "watermark (%s); polling every %ss until it can",
                        exc,
                        self.fallback_seconds,
                    )
                if now - last_nudge >= self.fallback_seconds:
                    last_nudge = now
                    self.nudger.nudge()
            self._stop.wait(self.interval)


_watcher: OutboxWatcher | None = None


def start_watcher(**kwargs: Any) -> None:
    global _watcher
    from tasks.runtime import build_source, get_cache, settings
    from tasks.source.protocol import Source

    config = settings()
    if not config.watches_outbox or _watcher is not None:
        return
    source: Source = build_source(config)
    # A source that cannot tell its end fails every read: the watcher then polls every
    # outbox_interval_seconds, as beat would without it.
    read_end = getattr(source, "max_outbox_id", _no_end(source))
    _watcher = OutboxWatcher(
        read_end,
        poll_nudger(config.outbox_wakeup_window_seconds),
        interval=config.outbox_watch_seconds,
        fallback_seconds=config.outbox_interval_seconds,
        read_applied=lambda: get_cache().get_outbox_watermark(),
    )
    _watcher.start()


def _no_end(source: object) -> Callable[[], int]:
    def read_end() -> int:
        raise NotImplementedError(f"{type(source).__name__} has no max_outbox_id()")

    return read_end


def stop_watcher(**kwargs: Any) -> None:
    global _watcher
    if _watcher is not None:
        _watcher.stop()
        _watcher = None


# In the worker's main process: one watcher per worker, whatever its pool.
signals.worker_ready.connect(start_watcher, weak=False)
signals.worker_shutdown.connect(stop_watcher, weak=False)
