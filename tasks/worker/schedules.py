"""Beat entries that send their task only when a cheap look finds work for it.

An idle system should cost Redis next to nothing. A task sent by beat costs about
fifteen Redis commands before its body runs (the message, its events, the broker's
unacknowledged-message bookkeeping); a look at one key costs one. So an entry whose
task would find nothing to do most of the time asks first, in beat's process, and
sends the task only when the answer is yes, or when the look fails (the task itself
then meets the trouble, and retries as it would have).

Skipping changes nothing the task would have done: ``flush_last_used`` with nothing
pending returns at once and records nothing. An entry that arrives just after a look is
flushed on the next tick, as it would have been had it arrived just after a flush.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from celery.schedules import schedstate, schedule

logger = logging.getLogger(__name__)


class WhenPending(schedule):  # type: ignore[misc]
    """Every ``run_every`` seconds, but only when ``probe()`` is true (or raises)."""

    def __init__(
        self,
        run_every: float | timedelta,
        probe: Callable[[], bool],
        relative: bool = False,
        nowfun: Callable[[], datetime] | None = None,
        app: Any = None,
    ) -> None:
        super().__init__(run_every, relative=relative, nowfun=nowfun, app=app)
        self.probe = probe

    def is_due(self, last_run_at: datetime) -> schedstate:
        due, wait = super().is_due(last_run_at)
        if due and not self._has_work():
            # Not run, so last_run_at stays: the next look comes one interval on.
            return schedstate(False, self.seconds)
        return schedstate(due, wait)

    def _has_work(self) -> bool:
        try:
            return bool(self.probe())
        except Exception as exc:  # Redis down, a wrong type: the task copes with it
            logger.warning("beat could not look for work (%s); sending the task anyway", exc)
            return True

    def __reduce__(self) -> tuple[Any, ...]:
        # Beat keeps its entries in a shelve: the probe must come back with the interval.
        return (self.__class__, (self.run_every, self.probe, self.relative, self.nowfun))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, WhenPending):
            return bool(self.run_every == other.run_every and self.probe == other.probe)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.run_every, self.probe))

    def __repr__(self) -> str:
        return f"<when pending: every {self.human_seconds} if {self.probe.__name__}()>"


def last_use_pending() -> bool:
    """Whether the cache holds last-use times not yet written to the database."""
    from tasks.runtime import get_cache

    return bool(get_cache().pending_last_used())
