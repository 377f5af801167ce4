"""What a near cache holds and when it may serve it, without any I/O.

Shared by the threaded :class:`cache.near.NearCache` and the asyncio
:class:`cache.aio.AsyncNearCache`. Its fields are private (the last uses and picks among
them, kept by :class:`cache.nearpick.NearUses`): every change is one method that takes
the lock, so request threads and the checker never see half a change.

Trust: a bucket is served from memory only while Redis confirmed its ``gen`` (the
counter every activation and patch moves) within ``trust_seconds``, and no push
announced a newer one. Confirmations come from reads, from the periodic check, and
never from the absence of pushes, so a lost push or a dead subscription costs at most
``trust_seconds`` of staleness, after which reads go back to Redis.

Eras: everything held is dropped at once when the epoch changes (Redis lost its state)
or the touch log was trimmed past this process. Each drop starts a new era, and what a
read or a check found is taken only in the era it began in::

    check:  GET epoch (E1) ..................................... E1 found -> ignored
    read:         epoch changed to E2, drop (era 2), read, install, serve
    (taken, the check would flip the state back to E1 and confirm gens of another Redis)

Revisions (:mod:`cache.nearrevs`) and last uses: no bucket serves an account older than
another held bucket does. Last use is one time per account for the whole process, the
newest known (from reads, the check, this process's own touches).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime

from cache.codec import to_ms
from cache.keys import NEAR_ACCOUNTS_MAX, NEAR_BUCKETS_MAX, NEAR_DECODED_MAX, NEAR_TRUST_SECONDS
from cache.models import Account
from cache.nearcore import Stamp, Verdict
from cache.nearentry import Entry
from cache.nearhold import Holdings
from cache.nearpush import Fetched, Push
from cache.pickindex import Choice
from cache.reads import SnapshotRead
from cache.rowread import HeldRows, RowRead, as_rows

NEVER = float("-inf")


class NearState:
    """Entries by bucket name, the last uses laid over them, the epoch they belong to."""

    @classmethod
    def checked_every(
        cls,
        check_seconds: float,
        *,
        trust_seconds: float,
        monotonic: Callable[[], float],
        **bounds: int,
    ) -> NearState:
        """The state of a near cache that checks every ``check_seconds``: more often
        than its trust lasts, or every entry would lapse between two checks."""
        if not 0 < check_seconds < trust_seconds:
            raise ValueError(
                f"check_seconds must be > 0 and below trust_seconds, got {check_seconds}"
                f" and {trust_seconds}"
            )
        return cls(trust_seconds=trust_seconds, monotonic=monotonic, **bounds)

    def __init__(
        self,
        *,
        trust_seconds: float = NEAR_TRUST_SECONDS,
        max_buckets: int = NEAR_BUCKETS_MAX,
        max_accounts: int = NEAR_ACCOUNTS_MAX,
        max_decoded: int = NEAR_DECODED_MAX,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.trust_seconds = trust_seconds
        self.monotonic = monotonic
        self._lock = threading.Lock()
        # Changed only under self._lock, like every field here (see cache.nearhold).
        self._hold = Holdings(max_buckets, max_accounts, max_decoded)
        self._entries = self._hold.entries
        self._floors = self._hold.floors
        self._epoch: str | None = None
        self._era = 0
        # Touch log position seen up to; None until the first look in an era.
        self._touch_seq: int | None = None
        self._uses = self._hold.uses
        # Whole buckets read, and one-account patches applied instead.
        self.reads = 0
        self.patches = 0

    # -- looking in ------------------------------------------------------------------
    @property
    def epoch(self) -> str | None:
        with self._lock:
            return self._epoch

    def names(self) -> list[str]:
        """Held buckets, least recently served first."""
        with self._lock:
            return list(self._entries)

    def version(self, name: str) -> int | None:
        with self._lock:
            entry = self._entries.get(name)
            return None if entry is None else entry.version

    # -- serving ---------------------------------------------------------------------
    def serve(self, name: str, now: datetime | None) -> tuple[Verdict, Sequence[Account] | None]:
        """``(HIT, accounts)``, or what to do first: CHECK (confirm the gen) or READ.
        Without ``now`` the hit is every account, else the schedulable."""
        with self._lock:
            verdict, entry = self._trusted(name)
            if entry is None:
                return verdict, None
            return Verdict.HIT, entry.accounts(now)

    def pick(
        self, name: str, now: datetime, exclude: Collection[int]
    ) -> tuple[Verdict, Choice | None]:
        """``(HIT, choice)``: the pick at ``now``, its use laid over at once (in the
        same lock, so two threads never pick the same account for one use); else what
        to do first, as :meth:`serve`."""
        with self._lock:
            verdict, entry = self._trusted(name)
            if entry is None:
                return verdict, None
            return Verdict.HIT, self._uses.pick(entry, now, exclude)

    def note_pick(self, chosen: Account, now: datetime) -> Choice:
        """Lay the use of a pick made apart from the index (a scan)."""
        with self._lock:
            return self._uses.note_pick(chosen, now)

    def _trusted(self, name: str) -> tuple[Verdict, Entry | None]:
        entry = self._entries.get(name)
        if entry is None or entry.wanted > entry.gen:
            return Verdict.READ, None
        if self.monotonic() - entry.confirmed > self.trust_seconds:
            return Verdict.CHECK, None
        self._entries.move_to_end(name)
        self._hold.decode(entry)
        return Verdict.HIT, entry

    # -- what Redis said ---------------------------------------------------------------
    def stamp(self) -> Stamp | None:
        """The epoch to read under, or None when the epoch and touch position must be
        fetched first (:meth:`opened`)."""
        with self._lock:
            if self._epoch is None or self._touch_seq is None:
                return None
            return Stamp(self._epoch, self._era)

    def opened(self, epoch: str, seq: int) -> Stamp:
        """Redis is at ``epoch`` with its touch log at ``seq`` (both fetched before any
        bucket is read, so no touch between the two is missed)."""
        with self._lock:
            if epoch != self._epoch:
                self._drop_all(epoch)
            if self._touch_seq is None:
                self._touch_seq = seq
            return Stamp(self._epoch, self._era)

    def held_rows(self, name: str) -> HeldRows:
        """What a read of ``name`` may reuse of what is held (:meth:`Holdings.held_rows`)."""
        with self._lock:
            return self._hold.held_rows(name)

    def install(self, read: SnapshotRead | RowRead, asked_at: float, stamp: Stamp) -> bool:
        """Hold ``read`` (begun at ``asked_at``) unless something newer is held, the
        state was dropped since it began, or it is larger than the accounts bound;
        False when not held."""
        name, (rows, ids) = str(read.bucket), as_rows(read)
        with self._lock:
            self.reads += 1
            if stamp.era != self._era or self._hold.refuses(name, len(rows), read.gen):
                return False
            entry = self._entries.get(name)
            floor = entry.gen if entry is not None else self._floors.get(name, 0)
            if read.gen < floor:
                return False  # a slower read of an older gen: never serve older than served
            if entry is not None and read.gen == entry.gen:
                entry.confirmed = max(entry.confirmed, asked_at)
                return True
            self._uses.take(rows, read.uses)
            rows = self._hold.admit(name, rows)
            self._hold.put(name, Entry.of(read.version, read.gen, asked_at, rows, ids), entry)
            return True

    def forget(self, name: str) -> None:
        """Drop one bucket (it has no active version any more)."""
        with self._lock:
            entry = self._entries.pop(name, None)
            if entry is not None:
                # Its retirement moved the gen past the one held.
                self._hold.remove(name, entry, entry.gen + 1)

    def pushed(self, name: str, gen: int) -> None:
        """A push said ``name`` is at ``gen`` now."""
        with self._lock:
            entry = self._entries.get(name)
            if entry is not None and gen > entry.wanted:
                entry.wanted = gen

    # -- one-account patches ---------------------------------------------------------
    def patchable(self, push: Push) -> Stamp | None:
        """The stamp to fetch ``push``'s account under when the bucket is held at its
        version and the gen just before its own; None: read the bucket again."""
        with self._lock:
            entry = self._entries.get(push.bucket)
            if entry is None or not entry.patches_to(push.version, push.gen):
                return None
            return Stamp(self._epoch, self._era)

    def patched(self, stamp: Stamp, push: Push, fetched: Fetched) -> bool:
        """Put ``push``'s account in place as ``fetched``; False when the held entry is
        not the one the change applies to any more."""
        with self._lock:
            applied = stamp.era == self._era and self._hold.patch(push, fetched)
            self.patches += applied
            return applied

    def holds(self, size: int, decoded: bool = False) -> bool:
        """Whether a bucket of ``size`` accounts may be held at all (or kept decoded)."""
        return size <= (self._hold.max_decoded if decoded else self._hold.max_accounts)

    def begin_check(self) -> Stamp:
        """The stamp of a check starting now."""
        with self._lock:
            return Stamp(self._epoch, self._era, self._touch_seq)

    def checked(
        self, stamp: Stamp, epoch: str, seq: int, gens: Mapping[str, int | None], asked_at: float
    ) -> bool:
        """A check begun at ``asked_at`` found the epoch, the touch log at ``seq`` and
        these gens (None: no active version). True when the touches it read after
        ``stamp.since`` are to be taken (:meth:`caught_up`)."""
        with self._lock:
            if stamp.era != self._era:
                return False  # dropped meanwhile: what it found may be of another epoch
            if epoch != self._epoch:
                self._drop_all(epoch)
                self._touch_seq = seq  # read with the epoch: a position in it
                return False
            for name, gen in gens.items():
                entry = self._entries.get(name)
                if entry is None:
                    continue
                if gen == entry.gen:
                    entry.confirmed = max(entry.confirmed, asked_at)
                else:
                    entry.wanted = max(entry.wanted, entry.gen + 1, gen or 0)
            if stamp.since is None or self._touch_seq is None:
                # Not from here: a bucket read since may have taken an earlier position.
                if self._touch_seq is None:
                    self._touch_seq = seq
                return False
            return True

    def caught_up(self, stamp: Stamp, uses: Mapping[int, int], next_since: int) -> None:
        """The last uses moved after ``stamp.since``, read up to ``next_since``."""
        with self._lock:
            if stamp.era != self._era or self._touch_seq is None:
                return
            self._uses.lay(uses)
            self._touch_seq = max(self._touch_seq, next_since)

    def lost_touches(self, stamp: Stamp) -> None:
        """The touch log was trimmed past this process: what moved is unknown, so
        every bucket is read again (the last uses known here stay: they are facts)."""
        with self._lock:
            if stamp.era == self._era:
                self._drop_all(self._epoch)

    def distrust(self) -> None:
        """Pushes may have been lost (the subscription was re-made): check everything."""
        with self._lock:
            for entry in self._entries.values():
                entry.confirmed = NEVER

    def drop_all(self, epoch: str | None = None) -> None:
        with self._lock:
            self._drop_all(epoch)

    def _drop_all(self, epoch: str | None) -> None:
        self._hold.clear()
        self._epoch = epoch
        self._era += 1
        self._touch_seq = None

    # -- last uses -------------------------------------------------------------------
    def used(self, uses: Mapping[int, int]) -> None:
        """Lay last uses (integer ms) over the held accounts; older ones change nothing."""
        with self._lock:
            self._uses.lay(uses)

    def used_at(self, updates: Mapping[int, datetime]) -> None:
        self.used({int(i): to_ms(t) for i, t in updates.items()})
