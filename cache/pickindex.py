"""The pick of one bucket, without I/O: the account a gateway sends the next request
through, in O(log n).

The order (:func:`order_key`): lowest priority value first, then least recently used
(never used before any use), then a per-process salted hash of the id, then the id. The
salt is what keeps processes apart when their views agree: two web processes that see
the same hundred never-used accounts start on different ones, instead of all sending
their first request through the same account until their touches reach each other.

:class:`PickIndex` keeps that order as a heap with lazy invalidation: every change of an
account (a new snapshot or patch, a touch of this process or another's) pushes a fresh
entry, the only one of that account that counts, and the old entry is skipped when it
reaches the top. Accounts held back by time (rate limit, overload, temporary block) wait in a
second heap ordered by the time their window ends and come back when it has::

    pick at t0:  top is A (rate limited until t5)  -> A waits for t5; B is picked
    pick at t6:  A's window ended                  -> A is back in the order, picked

Each live account has at most one valid entry, in one of the two heaps, or none when
it is out for good (disabled, paused on expiry) until a new payload replaces it.
"""

from __future__ import annotations

import heapq
import os
import random
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from cache.codec import to_ms
from cache.models import Account
from cache.nearrows import Row

_MASK = (1 << 64) - 1
# An odd 64-bit constant (the golden ratio's): multiplying by it spreads close ids apart.
_MIX = 0x9E3779B97F4A7C15

_salt = random.getrandbits(64)


def _new_salt() -> None:
    global _salt
    _salt = random.getrandbits(64)


# A forked web worker (gunicorn, a prefork pool) draws its own salt: a salt shared with
# the parent would put every sibling on the same account first.
os.register_at_fork(after_in_child=_new_salt)

# Stale entries allowed in the heaps beyond twice the live accounts before a rebuild.
SLACK = 64

Key = tuple[int, int, int, int]
# What the order is kept of: accounts, or the rows a near cache holds them as.
Pickable = Account | Row
P = TypeVar("P", Account, Row)


def tiebreak(account_id: int) -> int:
    """The account's place among equals in this process (salted, so not in others)."""
    return (((account_id ^ _salt) * _MIX) & _MASK) >> 1


def use_ms(account: Pickable) -> int:
    """Last use in integer ms, 0 for never (what the near cache lays over accounts)."""
    if isinstance(account, Row):
        return account.used
    return 0 if account.last_used_at is None else to_ms(account.last_used_at)


def order_key(account: Pickable) -> Key:
    """Where ``account`` stands in the pick order: lower first."""
    return (account.priority, use_ms(account), tiebreak(account.id), account.id)


def scan(
    accounts: Iterable[Account],
    now: datetime,
    exclude: Collection[int] = (),
    uses: Mapping[int, int] | None = None,
) -> Account | None:
    """The pick by a scan of every account, for a bucket no index is kept for;
    ``uses`` (ms) are later uses known apart from the accounts'."""
    known = uses or {}

    def key(account: Account) -> Key:
        used = max(use_ms(account), known.get(account.id, 0))
        return (account.priority, used, tiebreak(account.id), account.id)

    candidates = (a for a in accounts if a.id not in exclude and a.is_schedulable(now))
    return min(candidates, key=key, default=None)


def reopens_at(account: Pickable, now: datetime) -> int | None:
    """When (ms) an account not schedulable at ``now`` may be again; None: not by time."""
    if not account.is_candidate(now):
        return None
    until = account.blocked_until(now)
    return None if until is None else to_ms(until)


class PickIndex(Generic[P]):
    """The pick order of one bucket's accounts, kept as they change."""

    def __init__(self, accounts: Iterable[P] = (), by_id: dict[int, P] | None = None) -> None:
        """``by_id``: the accounts by id, when the caller keeps that map already (and
        changes it before it calls :meth:`put` or :meth:`drop`): shared, not copied."""
        self._accounts: dict[int, P] = {} if by_id is None else by_id
        # id -> its one valid heap entry: the key object itself, so an entry is valid
        # when it is that object (no sequence number to keep per account).
        self._live: dict[int, Key] = {}
        self._heap: list[Key] = []
        self._waiting: list[tuple[int, int, Key]] = []  # (reopens ms, id, its entry)
        self._latest_ms = 0  # the latest ``now`` picked at
        if by_id is None:
            for account in accounts:
                self._accounts[account.id] = account
        self._rebuild()

    def __len__(self) -> int:
        return len(self._accounts)

    # -- changes ---------------------------------------------------------------------
    def refresh(self, accounts: Iterable[P], by_id: dict[int, P] | None = None) -> None:
        """The bucket's accounts are now ``accounts`` (a new snapshot or patch; by id
        in ``by_id``, shared as in the constructor): only those that changed (another
        object) move; those gone leave."""
        old = self._accounts
        self._accounts = {a.id: a for a in accounts} if by_id is None else by_id
        for account in self._accounts.values():
            if old.get(account.id) is not account:
                self.put(account)
        for gone in [i for i in self._live if i not in self._accounts]:
            del self._live[gone]
        self._compact()

    def put(self, account: P) -> None:
        """``account`` as it is now (a new payload or last use)."""
        self._accounts[account.id] = account
        key = self._live[account.id] = order_key(account)
        heapq.heappush(self._heap, key)
        self._compact()

    def drop(self, account_id: int) -> None:
        """The account left the bucket."""
        self._accounts.pop(account_id, None)
        if self._live.pop(account_id, None) is not None:
            self._compact()

    # -- the pick --------------------------------------------------------------------
    def pick(self, now: datetime, exclude: Collection[int] = ()) -> P | None:
        """The first account in order schedulable at ``now`` and not in ``exclude``;
        None when there is none. Nothing changes for the account picked: its use,
        laid over with :meth:`put`, moves it."""
        now_ms = to_ms(now)
        if now_ms < self._latest_ms:
            self._rebuild()  # time went back: accounts set aside may count again
        self._latest_ms = now_ms
        self._reopen(now_ms)
        heap, set_aside = self._heap, []
        chosen: P | None = None
        while heap:
            key = heap[0]
            account_id = key[3]
            if self._live.get(account_id) is not key:
                heapq.heappop(heap)  # stale: the account changed or left since
                continue
            account = self._accounts[account_id]
            if account_id in exclude:
                set_aside.append(heapq.heappop(heap))
                continue
            if not account.is_schedulable(now):
                heapq.heappop(heap)
                reopens = reopens_at(account, now)
                if reopens is not None:
                    heapq.heappush(self._waiting, (reopens, account_id, key))
                continue
            chosen = account
            break
        for entry in set_aside:
            heapq.heappush(heap, entry)
        return chosen

    def _reopen(self, now_ms: int) -> None:
        waiting = self._waiting
        while waiting and waiting[0][0] <= now_ms:
            _, account_id, key = heapq.heappop(waiting)
            if self._live.get(account_id) is key:
                heapq.heappush(self._heap, key)

    # -- upkeep ----------------------------------------------------------------------
    def _compact(self) -> None:
        if len(self._heap) + len(self._waiting) > 2 * len(self._accounts) + SLACK:
            self._rebuild()

    def _rebuild(self) -> None:
        """Every account back in the order with a fresh entry; nothing stale left."""
        self._heap = []
        self._waiting = []
        for account in self._accounts.values():
            key = self._live[account.id] = order_key(account)
            self._heap.append(key)
        heapq.heapify(self._heap)


@dataclass(frozen=True, slots=True)
class Choice:
    """A pick: the account (None when none is left) as it was before this use, and the
    time of this use, later than any use known of it (a strictly later time moves it
    back in the order even when another clock noted a use ahead of this one's)."""

    account: Account | None
    used_at: datetime


# How far past ``now`` a pick still notes its use just after the latest one known.
AHEAD_MS = 1_000


def use_after(account: Pickable, now: datetime, known: int = 0) -> int:
    """The time (ms) to note for a use of ``account`` at ``now`` (``known``: a later
    use known apart from the account's): just after the latest use known, so picks in
    a row go round the tier, unless that is further ahead of ``now`` than a clock skew
    explains (a use noted for a time to come): then ``now``, never chasing it."""
    at = to_ms(now)
    after = max(use_ms(account), known) + 1
    return after if at < after <= at + AHEAD_MS else at
