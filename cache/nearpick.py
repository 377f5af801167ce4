"""The last uses a near cache lays over what it holds, and the picks that note them.

Part of :class:`cache.nearstate.NearState`, which owns the held entries and the lock:
:class:`NearUses` has no lock of its own and no caller but NearState, whose methods call
it only while they hold that lock, so its changes are NearState's locked transitions.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from datetime import datetime

from cache.codec import from_ms
from cache.models import Account
from cache.nearentry import Entry
from cache.nearrows import Row
from cache.pickindex import Choice, use_after

# Last uses kept per process: every account of a large source, while a stray id from a
# bad caller cannot grow the map without bound (past it, accounts no bucket holds go).
USES_MAX = 200_000


class NearUses:
    """One last use per account for the whole process, and the held buckets listing
    each account, so a newer use reaches every one of them at once."""

    def __init__(self, entries: Mapping[str, Entry]) -> None:
        # The owner's entries by bucket name, read only here: a use is laid over them.
        self._entries = entries
        # The last use of each account no held bucket lists; a listed account's is its
        # rows' (every row of an account has the same): one map entry less an account.
        self._uses: dict[int, int] = {}
        # The bucket listing an account, or the buckets when more than one does (a set
        # per account would cost 200 bytes each, for the few accounts that need one).
        self._members: dict[int, str | set[str]] = {}
        self._last_pick = 0  # ms of the latest use laid by a pick

    # -- picks -----------------------------------------------------------------------
    def pick(self, entry: Entry, now: datetime, exclude: Collection[int]) -> Choice:
        """The pick of ``entry`` at ``now``, its use laid over at once."""
        chosen = entry.pick(now, exclude)
        if chosen is None:
            return Choice(None, now)
        account = entry.account(chosen)  # as it was before this use
        return Choice(account, from_ms(self._note(chosen, now)))

    def note_pick(self, chosen: Account, now: datetime) -> Choice:
        """Lay the use of a pick of ``chosen`` at ``now``."""
        return Choice(chosen, from_ms(self._note(chosen, now)))

    def _note(self, chosen: Account | Row, now: datetime) -> int:
        # Later than every pick before it in this process: requests that asked at the
        # same instant, or whose threads got the lock in another order than they asked,
        # still go round the tier one account each.
        used = use_after(chosen, now, self._last_pick)
        self._last_pick = used
        self.lay({chosen.id: used})
        return used

    # -- last uses -------------------------------------------------------------------
    def lay(self, uses: Mapping[int, int]) -> None:
        """Lay last uses (integer ms) over the held accounts; older ones change nothing."""
        entries = self._entries
        for account_id, used in uses.items():
            names = self._members.get(account_id)
            if names is None:
                if used > self._uses.get(account_id, 0):
                    self._uses[account_id] = used
            elif used <= self._held(account_id, names).used:
                continue
            elif isinstance(names, str):
                entries[names].lay_over(account_id, used)
            else:
                for name in names:
                    entries[name].lay_over(account_id, used)
        self._bound()

    def _known(self, account_id: int) -> int:
        """The newest last use known of an account (0: none)."""
        names = self._members.get(account_id)
        if names is None:
            return self._uses.get(account_id, 0)
        return self._held(account_id, names).used

    def _held(self, account_id: int, names: str | set[str]) -> Row:
        """A row held of an account that ``names`` list."""
        name = names if isinstance(names, str) else next(iter(names))
        return self._entries[name].by_id[account_id]

    def take(self, rows: list[Row], uses: list[int]) -> None:
        """Give read ``rows`` the newest last use known (their own, as read in
        ``uses``, or newer); the read's uses that are newer than known are laid over
        every other held bucket listing the account too: no bucket lags behind the one
        just read. The rows are then joined (:meth:`join`), or :meth:`lay` is given
        the uses of those that are not."""
        known, members = self._known, self._members
        # Laid over the buckets that list the account already; an account no bucket
        # lists gets it in its rows below (a map entry for it, dropped when they join,
        # would leave the map's table at the bucket's size). The row's own int when it
        # holds the same time: one int an account, not two.
        newer = {
            r.id: r.used if r.used == used else used
            for r, used in zip(rows, uses, strict=True)
            if r.id in members and used > known(r.id)
        }
        if newer:
            self.lay(newer)
        for row, read_use in zip(rows, uses, strict=True):
            used = max(read_use, known(row.id))
            if row.used < used:
                row.lay(used)

    # -- which held buckets list an account ------------------------------------------
    def join(self, name: str, rows: Iterable[Row]) -> None:
        """Bucket ``name`` is held now, listing ``rows`` (given the newest last use
        known already, by :meth:`take`)."""
        members, uses = self._members, self._uses
        for row in rows:
            names = members.get(row.id)
            if names is None:
                members[row.id] = name
                # Listed now: its rows hold its last use from here on.
                known = uses.pop(row.id, 0)
                if known > row.used:
                    row.lay(known)
            elif isinstance(names, str):
                if names != name:
                    members[row.id] = {names, name}
            else:
                names.add(name)

    def leave(self, name: str, rows: Iterable[Row]) -> None:
        """Bucket ``name`` does not list ``rows``' accounts any more (or is not held any
        more); the last use of an account no bucket lists now is kept apart."""
        members = self._members
        for row in rows:
            account_id = row.id
            names = members.get(account_id)
            if names is None:
                continue
            if isinstance(names, str):
                if names == name:
                    del members[account_id]
                    if row.used > self._uses.get(account_id, 0):
                        self._uses[account_id] = row.used
                continue
            names.discard(name)
            if len(names) == 1:
                members[account_id] = next(iter(names))

    def leave_all(self) -> None:
        """No bucket is held any more (the last uses known stay: they are facts).
        Called while the entries are still there."""
        for name, entry in self._entries.items():
            self.leave(name, entry.rows)
        self._members.clear()
        self._bound()

    def _bound(self) -> None:
        if len(self._uses) > USES_MAX:
            for account_id in [i for i in self._uses if i not in self._members]:
                del self._uses[account_id]
