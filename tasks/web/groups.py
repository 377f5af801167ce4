"""Which groups the source knows, for a web process's miss path.

A gateway passes request parameters straight into ``list_schedulable``. Without this,
every group id a caller makes up is a bucket: a miss, a source read, a fallback write
that registers it, and a rebuild every refresh until it is retired. With it, a miss on a
group the source does not know (not an active group; group 0 always is) answers empty
and touches neither Redis nor, mostly, the source:

- the known ids come from one ``active_groups()`` read, kept ``ttl`` seconds;
- an id not among them reads that list again, but at most once per ``recheck`` seconds
  for the whole process, so a group created a moment ago is found quickly while a
  flood of made-up ids costs one read a second, not one a request;
- an id still unknown after that is remembered as unknown for ``ttl`` seconds, in a
  map of at most ``max_unknown`` ids (the oldest dropped first), so memory stays
  bounded whatever the flood.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

logger = logging.getLogger(__name__)

# How often a process may read the group list again for an id it has not seen: a new
# group is served within about this long, whatever its cached list says.
RECHECK_SECONDS = 1.0


class KnownGroups:
    """``knows(group_id)``: whether the source has that group, cached both ways."""

    def __init__(
        self,
        load: Callable[[], Iterable[int]],
        *,
        ttl: float,
        max_unknown: int,
        recheck: float = RECHECK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl <= 0 or max_unknown < 1:
            raise ValueError(f"ttl must be > 0 and max_unknown >= 1, got {ttl}, {max_unknown}")
        self._load = load
        self.ttl = ttl
        self.max_unknown = max_unknown
        self._recheck = min(recheck, ttl)
        self._clock = clock
        self._lock = threading.Lock()
        self._known: frozenset[int] = frozenset()
        self._loaded_at: float | None = None
        self._unknown: OrderedDict[int, float] = OrderedDict()
        # Figures for tests and status views.
        self.loads = 0

    def knows(self, group_id: int) -> bool:
        if group_id == 0:
            return True  # the platform defaults: accounts in no group
        with self._lock:
            now = self._clock()
            if self._loaded_at is None or now - self._loaded_at >= self.ttl:
                self._reload(now)
            if group_id in self._known:
                return True
            until = self._unknown.get(group_id)
            if until is not None and now < until:
                return False
            if now - (self._loaded_at or now) >= self._recheck:
                self._reload(now)
                if group_id in self._known:
                    return True
            self._remember_unknown(group_id, now)
            return False

    def _reload(self, now: float) -> None:
        # Stamped before the read: a failing source is asked again after ``recheck``,
        # not on every request meanwhile.
        self._loaded_at = now
        self.loads += 1
        try:
            self._known = frozenset(self._load())
        except Exception as exc:
            logger.warning(
                "could not read the active groups (%s); keeping the %d known", exc, len(self._known)
            )
            return
        for group_id in self._known.intersection(self._unknown):
            del self._unknown[group_id]

    def _remember_unknown(self, group_id: int, now: float) -> None:
        self._unknown.pop(group_id, None)
        self._unknown[group_id] = now + self.ttl
        while len(self._unknown) > self.max_unknown:
            self._unknown.popitem(last=False)
