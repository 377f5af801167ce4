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


class OutboxWatcher:
    """Reads ``read_end()`` every ``interval`` seconds; nudges a poll when it moved."""

    def __init__(
        self,
        read_end: Callable[[], int],
        nudger: PollNudger,
        *,
        interval: float,
        fallback_seconds: float,
    ) -> None:
        self.read_end = read_end
        self.nudger = nudger
        self.interval = interval
        self.fallback_seconds = fallback_seconds
        self.reads = 0
        self.last: int | None = None
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
        """One read; True when it nudged (the end moved, or this was the first read)."""
        end = self.read_end()
        self.reads += 1
        moved = end != self.last
        self.last = end
        if moved:
            self.nudger.nudge()
        return moved

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
                        "outbox watcher cannot read the source (%s); polling every %ss "
                        "until it can",
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
    from tasks.runtime import build_source, settings
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
