"""The last uses a near cache lays over what it holds, and the picks that note them.

Part of :class:`cache.nearstate.NearState`, which owns the held entries and the lock:
:class:`NearUses` has no lock of its own and no caller but NearState, whose methods call
it only while they hold that lock, so its changes are NearState's locked transitions.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime

from cache.codec import from_ms, with_last_used
from cache.models import Account
from cache.nearentry import Entry
from cache.pickindex import Choice, use_after
from cache.reads import SnapshotRead

# Last uses kept per process: every account of a large source, while a stray id from a
# bad caller cannot grow the map without bound (past it, accounts no bucket holds go).
USES_MAX = 200_000


class NearUses:
    """One last use per account for the whole process, and the held buckets listing
    each account, so a newer use reaches every one of them at once."""

    def __init__(self, entries: Mapping[str, Entry]) -> None:
        # The owner's entries by bucket name, read only here: a use is laid over them.
        self._entries = entries
        self._uses: dict[int, int] = {}
        self._members: dict[int, set[str]] = {}
        self._last_pick = 0  # ms of the latest use laid by a pick

    # -- picks -----------------------------------------------------------------------
    def pick(self, entry: Entry, now: datetime, exclude: Collection[int]) -> Choice:
        """The pick of ``entry`` at ``now``, its use laid over at once."""
        chosen = entry.pick(now, exclude)
        return Choice(None, now) if chosen is None else self.note_pick(chosen, now)

    def note_pick(self, chosen: Account, now: datetime) -> Choice:
        """Lay the use of a pick of ``chosen`` at ``now``."""
        # Later than every pick before it in this process: requests that asked at the
        # same instant, or whose threads got the lock in another order than they asked,
        # still go round the tier one account each.
        used = use_after(chosen, now, self._last_pick)
        self._last_pick = used
        self.lay({chosen.id: used})
        return Choice(chosen, from_ms(used))

    # -- last uses -------------------------------------------------------------------
    def lay(self, uses: Mapping[int, int]) -> None:
        """Lay last uses (integer ms) over the held accounts; older ones change nothing."""
        for account_id, used in uses.items():
            if used <= self._uses.get(account_id, 0):
                continue
            self._uses[account_id] = used
            for name in self._members.get(account_id, ()):
                self._entries[name].lay_over(account_id, used)
        self._bound()

    def take(self, read: SnapshotRead) -> list[Account]:
        """The read's accounts, each with the newest last use known (its own, as read,
        or newer); the read's uses that are newer than known are laid over every other
        held bucket listing the account too: no bucket lags behind the one just read."""
        pairs = list(zip(read.accounts, read.uses, strict=True))
        newer = {a.id: used for a, used in pairs if used > self._uses.get(a.id, 0)}
        if newer:
            self.lay(newer)
        return [self._laid_over(a, used) for a, used in pairs]

    def _laid_over(self, account: Account, read_use: int) -> Account:
        used = self._uses.get(account.id, 0)
        return account if used <= read_use else with_last_used(account, used)

    # -- which held buckets list an account ------------------------------------------
    def join(self, name: str, accounts: Collection[Account]) -> None:
        """Bucket ``name`` is held now, listing ``accounts``."""
        for account in accounts:
            self._members.setdefault(account.id, set()).add(name)

    def leave(self, name: str, entry: Entry) -> None:
        """Bucket ``name``, held as ``entry``, is not held any more."""
        for account_id in entry.positions:
            names = self._members.get(account_id)
            if names is None:
                continue
            names.discard(name)
            if not names:
                del self._members[account_id]

    def leave_all(self) -> None:
        """No bucket is held any more (the last uses known stay: they are facts)."""
        self._members.clear()
        self._bound()

    def _bound(self) -> None:
        if len(self._uses) > USES_MAX:
            for account_id in [i for i in self._uses if i not in self._members]:
                del self._uses[account_id]
