"""One bucket as a near cache holds it (see :mod:`cache.nearstate`, its only writer,
under its lock, with :mod:`cache.nearpick`)."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from cache.codec import with_last_used
from cache.models import Account
from cache.pickindex import PickIndex


def _boundaries(account: Account) -> Iterable[datetime | None]:
    yield account.overload_until
    yield account.rate_limit_reset_at
    yield account.temp_unschedulable_until
    if account.auto_pause_on_expired:
        yield account.expires_at


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
    # The pick order, built on the first pick and carried to the entry that replaces
    # this one, so a bucket only listed pays nothing for it.
    index: PickIndex | None = None

    @classmethod
    def of(cls, version: int, gen: int, confirmed: float, accounts: list[Account]) -> Entry:
        positions = {a.id: n for n, a in enumerate(accounts)}
        return cls(version, gen, confirmed, accounts, positions)

    def schedulable_at(self, now: datetime) -> list[Account]:
        """The accounts schedulable at ``now``, computed again only when ``now`` is
        past a window's start or end since the last time."""
        if (
            self.valid_from is not None
            and self.valid_from <= now
            and (self.valid_until is None or now < self.valid_until)
        ):
            return self.schedulable
        self.schedulable = [a for a in self.accounts if a.is_schedulable(now)]
        self.schedulable_positions = {a.id: n for n, a in enumerate(self.schedulable)}
        ends = [t for a in self.accounts for t in _boundaries(a) if t is not None and t > now]
        self.valid_from, self.valid_until = now, min(ends, default=None)
        return self.schedulable

    def lay_over(self, account_id: int, used: int) -> None:
        """Serve ``used`` (integer ms) as the account's last use from now on."""
        n = self.positions[account_id]
        account = with_last_used(self.accounts[n], used)
        self.accounts[n] = account
        if self.index is not None:
            self.index.put(account)
        k = self.schedulable_positions.get(account_id)
        if k is not None and self.schedulable[k].id == account_id:
            self.schedulable[k] = account

    def pick(self, now: datetime, exclude: Collection[int]) -> Account | None:
        """The first account in pick order schedulable at ``now`` and not excluded."""
        if self.index is None:
            self.index = PickIndex(self.accounts)
        return self.index.pick(now, exclude)

    def succeed(self, older: Entry) -> None:
        """Take over ``older``'s pick order, moving only the accounts that changed."""
        if older.index is not None:
            self.index = older.index
            self.index.refresh(self.accounts)
