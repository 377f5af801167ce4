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

An entry is one Python int (:func:`order_key`): the four fields of the order packed so
that comparing the ints compares the fields in turn. An int costs about 50 bytes where
a tuple of four cost about 110, and, unlike a tuple, the garbage collector never tracks
it: at 100,000 accounts a heap of tuples was 100,000 objects more for every collection
to walk, and each rebuild of it a few hundred young collections. The valid entry of a
row is the int object the row holds (:attr:`cache.nearrows.Row.key`): no map of ids to
entries beside the bucket's own map of rows.
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
from cache.models import MAX_ID, Account, AccountStatus
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

# An order key's fields, low to high: id (MAX_ID < 2**63), salted hash, last use in ms
# (clamped to 45 bits: 0 is never used, 2**45 ms is the year 3084), priority on top,
# which may be any int (negative ones included: the fields under it are non-negative).
# With a priority below 64 a key fits 180 bits, a 48-byte int.
ID_BITS = 63
TIE_BITS = 63
USE_BITS = 45
_ID_MASK = (1 << ID_BITS) - 1
_USE_MAX = (1 << USE_BITS) - 1
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


def order_key(account: Pickable) -> int:
    """Where ``account`` stands in the pick order, lower first: (priority, last use,
    salted hash, id) packed into one int. A last use before 1970 counts as never."""
    account_id = account.id
    if not 0 < account_id <= MAX_ID:
        raise ValueError(f"account id {account_id} is outside 1..{MAX_ID}")
    used = min(max(use_ms(account), 0), _USE_MAX)
    return (
        (((account.priority << USE_BITS) + used) << TIE_BITS) + tiebreak(account_id)
    ) << ID_BITS | account_id


def key_id(key: int) -> int:
    """The account id of an order key."""
    return key & _ID_MASK


def scan(
    accounts: Iterable[Account],
    now: datetime,
    exclude: Collection[int] = (),
    uses: Mapping[int, int] | None = None,
) -> Account | None:
    """The pick by a scan of every account, for a bucket no index is kept for;
    ``uses`` (ms) are later uses known apart from the accounts'."""
    known = uses or {}

    def key(account: Account) -> tuple[int, int, int, int]:
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


def expiry(account: Pickable) -> datetime | None:
    """When an account that pauses on expiry does; None when time never takes it out."""
    if isinstance(account, Row):
        return account.expires if account.active else None
    if account.status is not AccountStatus.ACTIVE or not account.schedulable:
        return None
    return account.expires_at if account.auto_pause_on_expired else None


class PickIndex(Generic[P]):
    """The pick order of one bucket's accounts, kept as they change."""

    def __init__(self, accounts: Iterable[P] = (), by_id: dict[int, P] | None = None) -> None:
        """``by_id``: the accounts by id, when the caller keeps that map already (and
        changes it before it calls :meth:`put` or :meth:`drop`): shared, not copied."""
        self._accounts: dict[int, P] = {} if by_id is None else by_id
        # Accounts (not rows) by id -> their one valid entry: the key object itself, so
        # an entry is valid when it is that object. Rows hold theirs (Row.key).
        self._keys: dict[int, int] = {}
        self._heap: list[int] = []
        self._waiting: list[tuple[int, int]] = []  # (reopens ms, the entry)
        # The latest expiry (ms) of an account taken out for it: a pick at an earlier
        # time (requests that got the lock in another order than they asked) must see
        # it again; -1: none taken out since the last rebuild.
        self._revive_ms = -1
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
        for gone in [i for i in self._keys if i not in self._accounts]:
            del self._keys[gone]
        self._compact()

    def put(self, account: P) -> None:
        """``account`` as it is now (a new payload or last use)."""
        self._accounts[account.id] = account
        key = self._keep(account)
        heapq.heappush(self._heap, key)
        self._compact()

    def drop(self, account_id: int) -> None:
        """The account left the bucket (its entries are stale: it is not found)."""
        self._accounts.pop(account_id, None)
        self._keys.pop(account_id, None)
        self._compact()

    def _keep(self, account: P) -> int:
        """A fresh entry for ``account``, the only valid one from now on."""
        key = order_key(account)
        if isinstance(account, Row):
            account.key = key
        else:
            self._keys[account.id] = key
        return key

    def _valid(self, key: int) -> P | None:
        """The account whose valid entry ``key`` is; None when it is stale."""
        account = self._accounts.get(key & _ID_MASK)
        if account is None:
            return None
        held = account.key if isinstance(account, Row) else self._keys.get(account.id)
        return account if held is key else None

    # -- the pick --------------------------------------------------------------------
    def pick(self, now: datetime, exclude: Collection[int] = ()) -> P | None:
        """The first account in order schedulable at ``now`` and not in ``exclude``;
        None when there is none. Nothing changes for the account picked: its use,
        laid over with :meth:`put`, moves it."""
        now_ms = to_ms(now)
        if now_ms <= self._revive_ms:
            self._rebuild()  # an account taken out as expired is not at ``now``
        self._reopen(now_ms)
        heap, set_aside = self._heap, []
        chosen: P | None = None
        while heap:
            key = heap[0]
            account = self._valid(key)
            if account is None:
                heapq.heappop(heap)  # stale: the account changed or left since
                continue
            if account.id in exclude:
                set_aside.append(heapq.heappop(heap))
                continue
            if not account.is_schedulable(now):
                heapq.heappop(heap)
                reopens = reopens_at(account, now)
                if reopens is not None:
                    heapq.heappush(self._waiting, (reopens, key))
                else:
                    self._out(account)
                continue
            chosen = account
            break
        for entry in set_aside:
            heapq.heappush(heap, entry)
        return chosen

    def _out(self, account: P) -> None:
        """``account`` leaves the order until a new payload (or an earlier pick)."""
        expires = expiry(account)
        if expires is not None:
            self._revive_ms = max(self._revive_ms, to_ms(expires))

    def _reopen(self, now_ms: int) -> None:
        waiting = self._waiting
        while waiting and waiting[0][0] <= now_ms:
            _, key = heapq.heappop(waiting)
            if self._valid(key) is not None:
                heapq.heappush(self._heap, key)

    # -- upkeep ----------------------------------------------------------------------
    def _compact(self) -> None:
        if len(self._heap) + len(self._waiting) > 2 * len(self._accounts) + SLACK:
            self._rebuild()

    def _rebuild(self) -> None:
        """Every account back in the order with a fresh entry; nothing stale left."""
        self._keys = {}
        self._heap = [self._keep(account) for account in self._accounts.values()]
        heapq.heapify(self._heap)
        self._waiting = []
        self._revive_ms = -1


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
