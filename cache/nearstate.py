"""What a near cache holds and when it may serve it, without any I/O.

Shared by the threaded :class:`cache.near.NearCache` and the asyncio
:class:`cache.aio.AsyncNearCache`; every method is short and takes one lock.

Trust: a bucket is served from memory only while Redis confirmed its ``gen`` (the
counter every activation and patch moves) within ``trust_seconds``, and no push
announced a newer one. Confirmations come from reads, from the periodic check, and
never from the absence of pushes, so a lost push or a dead subscription costs at most
``trust_seconds`` of staleness, after which reads go back to Redis.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from cache.codec import to_ms, with_last_used
from cache.keys import NEAR_BUCKETS_MAX, NEAR_TRUST_SECONDS
from cache.models import Account
from cache.reads import SnapshotRead

# The epoch a near cache holds while Redis has none (its state was lost and nobody has
# re-established it yet): a change to or from it drops everything, like any other.
NO_EPOCH = ""

NEVER = float("-inf")


@dataclass(slots=True)
class Entry:
    """One bucket as held: its accounts with last uses laid over, and a filtered view
    valid until the next time a window opens or closes."""

    version: int
    gen: int
    confirmed: float
    accounts: list[Account]
    positions: dict[int, int]
    wanted: int = 0
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    schedulable: list[Account] = field(default_factory=list)
    schedulable_positions: dict[int, int] = field(default_factory=dict)


def _boundaries(account: Account) -> Iterable[datetime | None]:
    yield account.overload_until
    yield account.rate_limit_reset_at
    yield account.temp_unschedulable_until
    if account.auto_pause_on_expired:
        yield account.expires_at


class NearState:
    """Entries by bucket name, the last uses laid over them, the epoch they belong to."""

    @classmethod
    def checked_every(
        cls,
        check_seconds: float,
        *,
        trust_seconds: float,
        max_buckets: int,
        monotonic: Callable[[], float],
    ) -> NearState:
        """The state of a near cache that checks every ``check_seconds``: more often
        than its trust lasts, or every entry would lapse between two checks."""
        if not 0 < check_seconds < trust_seconds:
            raise ValueError(
                f"check_seconds must be > 0 and below trust_seconds, got {check_seconds}"
                f" and {trust_seconds}"
            )
        return cls(trust_seconds=trust_seconds, max_buckets=max_buckets, monotonic=monotonic)

    def __init__(
        self,
        *,
        trust_seconds: float = NEAR_TRUST_SECONDS,
        max_buckets: int = NEAR_BUCKETS_MAX,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.trust_seconds = trust_seconds
        self.max_buckets = max_buckets
        self.monotonic = monotonic
        self.lock = threading.Lock()
        self.entries: OrderedDict[str, Entry] = OrderedDict()
        self.epoch: str | None = None
        # Touch sequence seen up to; None until the first check after a (re)start.
        self.touch_seq: int | None = None
        self._uses: dict[int, int] = {}
        self._members: dict[int, set[str]] = {}

    # -- serving ---------------------------------------------------------------------
    def serve(self, name: str, now: datetime | None) -> tuple[str, list[Account] | None]:
        """``("hit", accounts)``, or what to do first: ``"check"`` (confirm the gen)
        or ``"read"``. Without ``now`` the hit is every account, else the schedulable.
        """
        with self.lock:
            entry = self.entries.get(name)
            if entry is None or entry.wanted > entry.gen:
                return "read", None
            if self.monotonic() - entry.confirmed > self.trust_seconds:
                return "check", None
            self.entries.move_to_end(name)
            if now is None:
                return "hit", list(entry.accounts)
            return "hit", list(self._schedulable(entry, now))

    def _schedulable(self, entry: Entry, now: datetime) -> list[Account]:
        if (
            entry.valid_from is not None
            and entry.valid_from <= now
            and (entry.valid_until is None or now < entry.valid_until)
        ):
            return entry.schedulable
        entry.schedulable = [a for a in entry.accounts if a.is_schedulable(now)]
        entry.schedulable_positions = {a.id: n for n, a in enumerate(entry.schedulable)}
        ends = [t for a in entry.accounts for t in _boundaries(a) if t is not None and t > now]
        entry.valid_from, entry.valid_until = now, min(ends, default=None)
        return entry.schedulable

    # -- what Redis said ---------------------------------------------------------------
    def install(self, read: SnapshotRead, asked_at: float, epoch: str) -> None:
        """Hold ``read`` (begun at ``asked_at``) unless something newer is held."""
        name = str(read.bucket)
        with self.lock:
            if epoch != self.epoch:
                self._drop_all(epoch)
            entry = self.entries.get(name)
            if entry is not None and read.gen < entry.gen:
                return  # a slower read of an older gen: never serve older than served
            if entry is not None and read.gen == entry.gen:
                entry.confirmed = max(entry.confirmed, asked_at)
                return
            accounts = [
                self._laid_over(a, used) for a, used in zip(read.accounts, read.uses, strict=True)
            ]
            fresh = Entry(
                version=read.version,
                gen=read.gen,
                confirmed=asked_at,
                accounts=accounts,
                positions={a.id: n for n, a in enumerate(accounts)},
                wanted=entry.wanted if entry is not None else 0,
            )
            if entry is not None:
                self._forget_members(name, entry)
            self.entries[name] = fresh
            self.entries.move_to_end(name)
            members, uses = self._members, self._uses
            for account, used in zip(accounts, read.uses, strict=True):
                members.setdefault(account.id, set()).add(name)
                if used > uses.get(account.id, 0):
                    uses[account.id] = used
            while len(self.entries) > self.max_buckets:
                old_name, old = self.entries.popitem(last=False)
                self._forget_members(old_name, old)

    def forget(self, name: str) -> None:
        """Drop one bucket (it has no active version any more)."""
        with self.lock:
            entry = self.entries.pop(name, None)
            if entry is not None:
                self._forget_members(name, entry)

    def pushed(self, name: str, gen: int) -> None:
        """A push said ``name`` is at ``gen`` now."""
        with self.lock:
            entry = self.entries.get(name)
            if entry is not None and gen > entry.wanted:
                entry.wanted = gen

    def checked(self, epoch: str, gens: Mapping[str, int | None], asked_at: float) -> None:
        """A check begun at ``asked_at`` found these gens (None: no active version)."""
        with self.lock:
            if epoch != self.epoch:
                self._drop_all(epoch)
                return
            for name, gen in gens.items():
                entry = self.entries.get(name)
                if entry is None:
                    continue
                if gen == entry.gen:
                    entry.confirmed = max(entry.confirmed, asked_at)
                else:
                    entry.wanted = max(entry.wanted, entry.gen + 1, gen or 0)

    def distrust(self) -> None:
        """Pushes may have been lost (the subscription was re-made): check everything."""
        with self.lock:
            for entry in self.entries.values():
                entry.confirmed = NEVER

    def _drop_all(self, epoch: str | None) -> None:
        self.entries.clear()
        self._uses.clear()
        self._members.clear()
        self.epoch = epoch
        self.touch_seq = None

    def drop_all(self, epoch: str | None = None) -> None:
        with self.lock:
            self._drop_all(epoch)

    def names(self) -> list[str]:
        with self.lock:
            return list(self.entries)

    # -- last uses -------------------------------------------------------------------
    def used(self, uses: Mapping[int, int]) -> None:
        """Lay last uses (integer ms) over the held accounts; older ones change nothing."""
        with self.lock:
            for account_id, used in uses.items():
                names = self._members.get(account_id)
                if not names or used <= self._uses.get(account_id, 0):
                    continue
                self._uses[account_id] = used
                for name in names:
                    entry = self.entries[name]
                    n = entry.positions[account_id]
                    account = with_last_used(entry.accounts[n], used)
                    entry.accounts[n] = account
                    k = entry.schedulable_positions.get(account_id)
                    if k is not None and entry.schedulable[k].id == account_id:
                        entry.schedulable[k] = account

    def used_at(self, updates: Mapping[int, datetime]) -> None:
        self.used({int(i): to_ms(t) for i, t in updates.items()})

    def _laid_over(self, account: Account, read_use: int) -> Account:
        """``account`` with the newest last use known here (its own, as read, or newer)."""
        used = self._uses.get(account.id, 0)
        return account if used <= read_use else with_last_used(account, used)

    def _forget_members(self, name: str, entry: Entry) -> None:
        for account_id in entry.positions:
            names = self._members.get(account_id)
            if names is None:
                continue
            names.discard(name)
            if not names:
                del self._members[account_id]
                self._uses.pop(account_id, None)
