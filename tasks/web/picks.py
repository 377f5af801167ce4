"""The pick: the account a gateway sends its next request through, sync and asyncio.

What every gateway does after :func:`tasks.list_schedulable` (take the best priority,
in it the least recently used account, note the use, try another on failure) in one
call::

    tried: list[int] = []
    while (account := pick(group_id, platform, exclude=tried)) is not None:
        if send(account):
            break
        tried.append(account.id)

Served from the index the process's near cache keeps per bucket (:mod:`cache.pickindex`,
O(log n) a pick); the use is laid over at once, so the next pick of this process (any
thread) moves on, and batched to the others by :func:`tasks.record_last_used`. With
the near cache off, or on a miss, the answer of ``list_schedulable`` is scanned, with
this process's recent picks laid over it (Redis has them only after the next flush).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Collection, Sequence
from datetime import datetime

from cache import Account, CacheUnavailable, CorruptKey
from cache.codec import from_ms, to_ms
from cache.pickindex import Choice, scan, use_after
from tasks import runtime
from tasks.web.aio import list_schedulable_async, reading
from tasks.web.last_used import record_last_used, record_pick
from tasks.web.marks import marked
from tasks.web.reader import (
    list_schedulable,
    on_corrupt_key,
    on_miss,
    on_unavailable,
    resolve,
    schedulable,
)

# Own picks remembered for the scan: well past the time a touch takes to reach Redis
# (a flush, about half a second), after which the snapshot's times are as new.
RECENT_MS = 10_000
# Own picks remembered at most (the oldest go first past it).
RECENT_MAX = 10_000


class RecentPicks:
    """This process's picks of the last ``RECENT_MS``, for scans of Redis's answer."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._uses: dict[int, int] = {}
        self._last = 0

    def choose(
        self, accounts: Sequence[Account], now: datetime, exclude: Collection[int]
    ) -> Choice:
        with self._lock:
            chosen = scan(accounts, now, exclude, self._uses)
            if chosen is None:
                return Choice(None, now)
            # Later than this process's previous pick, as the near cache's picks are.
            used = use_after(chosen, now, max(self._uses.get(chosen.id, 0), self._last))
            self._uses[chosen.id] = self._last = used
            if len(self._uses) > RECENT_MAX:
                self._forget(to_ms(now) - RECENT_MS)
            return Choice(chosen, from_ms(used))

    def _forget(self, before: int) -> None:
        kept = sorted(((u, i) for i, u in self._uses.items() if u >= before), reverse=True)
        self._uses = {i: u for u, i in kept[: RECENT_MAX // 2]}


_recent = RecentPicks()


def pick(
    group_id: int,
    platform: str,
    has_force: bool = False,
    *,
    exclude: Collection[int] = (),
    now: datetime | None = None,
) -> Account | None:
    """The account a request for ``(group_id, platform)`` goes through at ``now``:
    schedulable, of the lowest priority value, the least recently used in it (never
    used first; ties in an order of this process's own), not in ``exclude`` (the ids
    this request already tried); None when none is left. Its use is recorded
    (:func:`tasks.record_last_used`). A platform that is not configured raises
    :class:`tasks.buckets.UnknownPlatform`, as ``list_schedulable`` does."""
    s, bucket, now = resolve(group_id, platform, has_force, now)
    exclude = _with_marked(exclude, now)
    near = runtime.get_near_cache()
    if near is None:
        accounts = list_schedulable(group_id, platform, has_force, now=now)
        return _recorded(_recent.choose(accounts, now, exclude))
    try:
        choice = near.pick(bucket, now, exclude)
    except CacheUnavailable as exc:
        accounts = schedulable(on_unavailable(bucket, s, exc), now)
    except CorruptKey as exc:
        accounts = schedulable(on_corrupt_key(runtime.get_web_cache(), bucket, s, exc), now)
    else:
        if choice is not None:
            return _recorded(choice, near)
        accounts = schedulable(on_miss(runtime.get_web_cache(), bucket, s), now)
    return _recorded(_recent.choose(accounts, now, exclude))


async def pick_async(
    group_id: int,
    platform: str,
    has_force: bool = False,
    *,
    exclude: Collection[int] = (),
    now: datetime | None = None,
) -> Account | None:
    """As :func:`pick`, awaited: Redis only when the bucket is not held and trusted."""
    s, bucket, now = resolve(group_id, platform, has_force, now)
    exclude = _with_marked(exclude, now)
    held = await reading()
    if held.near is None:
        accounts = await list_schedulable_async(group_id, platform, has_force, now=now)
        return _recorded(_recent.choose(accounts, now, exclude))
    try:
        choice = await held.near.pick(bucket, now, exclude)
    except CacheUnavailable as exc:
        found = await asyncio.to_thread(on_unavailable, bucket, s, exc)
    except CorruptKey as exc:
        cache = runtime.get_web_cache()
        found = await asyncio.to_thread(on_corrupt_key, cache, bucket, s, exc)
    else:
        if choice is not None:
            return _recorded(choice, held.near)
        found = await asyncio.to_thread(on_miss, runtime.get_web_cache(), bucket, s)
    return _recorded(_recent.choose(schedulable(found, now), now, exclude))


def _with_marked(exclude: Collection[int], now: datetime) -> Collection[int]:
    """``exclude`` and the accounts this process marked unschedulable (still in force)."""
    held = marked(now)
    return held.union(exclude) if held else exclude


def _recorded(choice: Choice, picked_by: object = None) -> Account | None:
    """The chosen account, its use recorded (``picked_by``: the near cache whose pick
    laid the use over already)."""
    if choice.account is not None:
        if picked_by is None:
            record_last_used(choice.account.id, choice.used_at)
        else:
            record_pick(choice.account.id, choice.used_at, picked_by)
    return choice.account
