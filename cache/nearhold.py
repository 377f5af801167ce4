"""What a near cache holds, within its bounds: part of :class:`cache.nearstate.NearState`.

Like :class:`cache.nearpick.NearUses`, :class:`Holdings` has no lock of its own and no
caller but NearState, which calls it only while it holds its lock. It keeps three
bounds, dropping or un-decoding the least recently served buckets first:

- ``max_buckets`` buckets held;
- ``max_accounts`` rows held over all buckets (a bucket larger than that alone is
  answered from its read and not held);
- ``max_decoded`` rows whose accounts are kept decoded (see :mod:`cache.nearentry`):
  what makes a warm read of a common bucket a list copy, at about 3 KB an account.
"""

from __future__ import annotations

from collections import OrderedDict

from cache.nearentry import Entry
from cache.nearpick import NearUses
from cache.nearpush import Fetched, Push
from cache.nearrevs import Revisions
from cache.nearrows import Row
from cache.rowread import HeldRows


class Holdings:
    """Entries by bucket name, the last uses laid over them, and the counts the
    bounds are kept with."""

    def __init__(self, max_buckets: int, max_accounts: int, max_decoded: int) -> None:
        self.max_buckets = max_buckets
        self.max_accounts = max_accounts
        self.max_decoded = max_decoded
        self.entries: OrderedDict[str, Entry] = OrderedDict()
        # The gen a bucket no longer held was at: a slower read begun before it went
        # cannot bring an older one back (as many as buckets held).
        self.floors: OrderedDict[str, int] = OrderedDict()
        self.uses = NearUses(self.entries)
        self.held = 0  # rows held, all buckets
        self.decoded = 0  # rows of decoded entries
        # Kept across drops: revisions come from the source and only grow.
        self.revisions = Revisions(limit=max(max_accounts, 1) * 2)

    def admit(self, name: str, rows: list[Row]) -> list[Row]:
        """``rows`` of a read of ``name`` without those older than a revision held
        elsewhere; rows of other buckets older than these are dropped from them."""
        kept, raised = self.revisions.admit(rows)
        if len(kept) < len(rows):  # not joined: their last uses are kept apart
            held = {id(row) for row in kept}
            self.uses.lay({r.id: r.used for r in rows if id(r) not in held and r.used})
        for account_id, _ in raised:
            for other in [
                n for n, e in self.entries.items() if n != name and account_id in e.by_id
            ]:
                if self.revisions.older(self.entries[other].by_id[account_id]):
                    self.hide(other, account_id)
        return kept

    def hide(self, name: str, account_id: int) -> None:
        """Stop serving ``account_id`` from ``name`` until a change or read of it."""
        entry = self.entries[name]
        place = entry.ids.index(account_id) if account_id in entry.ids else None
        row = entry.by_id[account_id]
        if entry.patch(account_id, None, place, len(entry.ids)):
            self.uses.leave(name, [row])
            self.held -= 1
            self.decoded -= 1 if entry.decoded else 0

    def held_rows(self, name: str) -> HeldRows:
        """What a read of ``name`` may reuse: the row held for an account under the
        same entry (looked up without the lock: a row's entry and payload never change,
        and a row found for another account or entry is not taken)."""
        entry = self.entries.get(name)
        by_id = {} if entry is None else entry.by_id

        def held(account_id: int, token: bytes) -> Row | None:
            row = by_id.get(account_id)
            return row if row is not None and row.entry == token else None

        return held

    def put(self, name: str, fresh: Entry, old: Entry | None) -> None:
        """Hold ``fresh`` for ``name`` in place of ``old``; the rows' last uses taken."""
        if old is not None:
            fresh.wanted = old.wanted
            fresh.succeed(old)
            # Only the accounts the bucket lists no more leave it.
            self.uses.leave(name, [r for r in old.rows if r.id not in fresh.by_id])
            self._count_out(old)
        self.floors.pop(name, None)
        self.entries[name] = fresh
        self.entries.move_to_end(name)
        self.uses.join(name, fresh.rows)
        self.held += len(fresh.rows)
        self.decoded += len(fresh.rows) if fresh.decoded else 0
        # The bucket just read is the most recent: decoded now if it fits, and then
        # keeps no account built for it during the read if it does not.
        self.decode(fresh)
        if not fresh.decoded and len(fresh.rows) <= self.max_decoded:
            fresh.undecode()
        self.bound()

    def refuses(self, name: str, size: int, gen: int) -> bool:
        """Whether a read of ``size`` accounts is larger than may be held at all; what
        is held of the bucket goes then (older than that read)."""
        if size <= self.max_accounts:
            return False
        entry = self.entries.pop(name, None)
        if entry is not None:
            self.remove(name, entry, gen)
        return True

    def remove(self, name: str, entry: Entry, floor: int) -> None:
        self._let_go(name, entry)
        self.floors[name] = floor
        while len(self.floors) > self.max_buckets:
            self.floors.popitem(last=False)

    def _let_go(self, name: str, entry: Entry) -> None:
        self.uses.leave(name, entry.rows)
        self._count_out(entry)

    def _count_out(self, entry: Entry) -> None:
        self.held -= len(entry.rows)
        self.decoded -= len(entry.rows) if entry.decoded else 0

    def bound(self) -> None:
        """Drop the least recently served buckets past either bound (never the last)."""
        entries = self.entries
        while len(entries) > self.max_buckets or (
            self.held > self.max_accounts and len(entries) > 1
        ):
            old_name, old = entries.popitem(last=False)
            self.remove(old_name, old, old.gen)

    def decode(self, entry: Entry) -> None:
        """Keep ``entry``'s accounts when it fits the decoded budget, taking it from
        the least recently served decoded buckets when needed."""
        size = len(entry.rows)
        if entry.decoded or size > self.max_decoded:
            return
        for other in self.entries.values():
            if self.decoded + size <= self.max_decoded:
                break
            if other.decoded and other is not entry:
                self.decoded -= len(other.rows)
                other.undecode()
        if self.decoded + size <= self.max_decoded:
            entry.decoded = True
            self.decoded += size

    def patch(self, push: Push, fetched: Fetched) -> bool:
        """Put ``push``'s account in the bucket held as ``fetched``; False when what is
        held is not what the change was made to (another version or gen, or an id list
        that disagrees with the one it was fetched from)."""
        entry = self.entries.get(push.bucket)
        if entry is None or not entry.patches_to(push.version, push.gen):
            return False
        before, row = len(entry.rows), fetched.row
        old = entry.by_id.get(push.account_id)
        if not entry.patch(push.account_id, row, fetched.place, fetched.length):
            return False
        entry.gen = push.gen
        if fetched.gen == entry.gen:
            entry.confirmed = max(entry.confirmed, fetched.asked_at)
        entry.wanted = max(entry.wanted, fetched.gen)
        if old is not None:
            self.uses.leave(push.bucket, [old])
        if row is not None:
            self.uses.take([row], [fetched.used])
            self.uses.join(push.bucket, [row])
        change = len(entry.rows) - before
        self.held += change
        self.decoded += change if entry.decoded else 0
        if row is not None and not self.admit(push.bucket, [row]):
            self.hide(push.bucket, push.account_id)
        self.bound()
        return True

    def clear(self) -> None:
        self.uses.leave_all()
        self.entries.clear()
        self.floors.clear()
        self.held = self.decoded = 0
