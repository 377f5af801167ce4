"""One bucket as a near cache holds it (see :mod:`cache.nearstate`, its only writer,
under its lock, with :mod:`cache.nearpick`).

An entry holds :class:`cache.nearrows.Row` s, not accounts. Accounts are built from
them when asked for, in one of two ways:

- a *decoded* entry (its bucket fits the process's decoded budget, which
  :class:`cache.nearstate.NearState` keeps) keeps each row's account and the list it
  last answered with, so a warm ``list_schedulable`` of a common bucket is a copy of a
  list, as it always was;
- any other entry answers with :class:`Accounts`, a sequence that builds each account
  as it is read, and keeps none: a 100,000-account bucket costs its rows only.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import overload

from cache.models import Account
from cache.nearrows import Row, materialize
from cache.pickindex import PickIndex


class Accounts(Sequence[Account]):
    """Accounts of held rows, each built when read: a ``Sequence[Account]`` that
    behaves like a list for a caller (``len``, indexing, iteration, slices, which are
    lists, and ``==`` with a list or another sequence). A last use laid over an
    account after the call shows in what is read later: last uses only move forward."""

    __slots__ = ("_rows",)

    def __init__(self, rows: list[Row]) -> None:
        self._rows = rows  # never changed in place by the entry: it replaces its lists

    def __len__(self) -> int:
        return len(self._rows)

    @overload
    def __getitem__(self, index: int) -> Account: ...
    @overload
    def __getitem__(self, index: slice) -> list[Account]: ...
    def __getitem__(self, index: int | slice) -> Account | list[Account]:
        if isinstance(index, slice):
            return [materialize(row) for row in self._rows[index]]
        return materialize(self._rows[index])

    def __iter__(self) -> Iterator[Account]:
        return map(materialize, self._rows)

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, Account):
            return False
        return any(row.id == value.id and materialize(row) == value for row in self._rows)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, (list, tuple, Accounts)):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]  # like a list: mutable-looking, unhashable

    def __add__(self, other: Sequence[Account]) -> list[Account]:
        return [*self, *other]

    def __repr__(self) -> str:
        return f"Accounts({len(self._rows)} accounts)"


@dataclass(slots=True)
class Entry:
    """One bucket as held: its rows in order, the version's id list they were read
    from (removed ones included: where a patch puts an account), and a filtered view
    valid until the next time a window opens or closes."""

    version: int
    gen: int
    confirmed: float
    rows: list[Row]
    by_id: dict[int, Row]
    ids: list[int]
    wanted: int = 0
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    schedulable: list[Row] | None = None
    # Decoded entries only: the accounts of ``rows`` and of ``schedulable``, as answered.
    decoded: bool = False
    listed: list[Account] | None = None
    shown: list[Account] | None = None
    # The pick order, built on the first pick and carried to the entry that replaces
    # this one, so a bucket only listed pays nothing for it.
    index: PickIndex[Row] | None = None

    @classmethod
    def of(cls, version: int, gen: int, confirmed: float, rows: list[Row], ids: list[int]) -> Entry:
        return cls(version, gen, confirmed, rows, {r.id: r for r in rows}, ids)

    def accounts(self, now: datetime | None) -> Sequence[Account]:
        """Every account (``now`` None) or those schedulable at ``now``, in order."""
        rows = self.rows if now is None else self.schedulable_at(now)
        if not self.decoded:
            return Accounts(rows)
        held = self.listed if now is None else self.shown
        if held is None:
            held = [row.account or self._keep(row) for row in rows]
            if now is None:
                self.listed = held
            else:
                self.shown = held
        return list(held)

    def account(self, row: Row) -> Account:
        """The account of one of this entry's rows (kept when the entry is decoded)."""
        return row.account or (self._keep(row) if self.decoded else materialize(row))

    @staticmethod
    def _keep(row: Row) -> Account:
        row.account = account = materialize(row)
        return account

    def undecode(self) -> None:
        """Keep no account any more (the decoded budget went to other buckets)."""
        self.decoded = False
        self.listed = self.shown = None
        for row in self.rows:
            row.account = None

    def schedulable_at(self, now: datetime) -> list[Row]:
        """The rows schedulable at ``now``, computed again only when ``now`` is past a
        window's start or end since the last time."""
        if (
            self.schedulable is not None
            and self.valid_from is not None
            and self.valid_from <= now
            and (self.valid_until is None or now < self.valid_until)
        ):
            return self.schedulable
        self.schedulable = [r for r in self.rows if r.is_schedulable(now)]
        self.shown = None
        ends = [t for r in self.rows for t in r.boundaries() if t is not None and t > now]
        self.valid_from, self.valid_until = now, min(ends, default=None)
        return self.schedulable

    def lay_over(self, account_id: int, used: int) -> None:
        """Serve ``used`` (integer ms) as the account's last use from now on."""
        row = self.by_id[account_id]
        row.lay(used)
        if row.account is not None:
            self.listed = self.shown = None
        if self.index is not None:
            self.index.put(row)

    def pick(self, now: datetime, exclude: Collection[int]) -> Row | None:
        """The first row in pick order schedulable at ``now`` and not excluded."""
        if self.index is None:
            self.index = PickIndex(self.rows, self.by_id)
        return self.index.pick(now, exclude)

    def succeed(self, older: Entry) -> None:
        """Take over ``older``'s pick order, moving only the rows that changed, and
        whether it kept its accounts."""
        self.decoded = older.decoded
        if older.index is not None:
            self.index = older.index
            self.index.refresh(self.rows, self.by_id)

    # -- one-account patches ---------------------------------------------------------
    def patches_to(self, version: int, gen: int) -> bool:
        """Whether a change announced at ``gen`` of ``version`` follows what is held."""
        return self.version == version and self.gen == gen - 1

    def patch(self, account_id: int, row: Row | None, place: int | None, length: int) -> bool:
        """Put ``row`` (None: the account is not listed any more) where the version's id
        list has the account now (``place``, None: not in the list), the list being
        ``length`` long after the change; False, and nothing changed, when that length
        says the list held is not the one the change was made to."""
        ids = self.ids
        try:
            current: int | None = ids.index(account_id)
        except ValueError:
            current = None
        moved = place != current
        after = len(ids) - (moved and current is not None) + (moved and place is not None)
        if after != length:
            return False
        if moved:
            if current is not None:
                del ids[current]
            if place is not None:
                ids.insert(place, account_id)
        old = self.by_id.pop(account_id, None)
        if row is not None:
            self.by_id[account_id] = row
        # New lists, never changed in place: a caller may still be reading the old ones.
        if not moved and old is not None and row is not None:
            rows = list(self.rows)
            rows[rows.index(old)] = row
        else:
            by_id = self.by_id
            rows = [by_id[i] for i in ids if i in by_id]
        self.rows = rows
        if self.index is not None:
            if row is None:
                self.index.drop(account_id)
            else:
                self.index.put(row)
        self.schedulable = self.listed = self.shown = None
        self.valid_from = self.valid_until = None
        return True
