"""A near cache's read of a bucket: :class:`cache.nearrows.Row` s, no account decoded.

The same steps as :class:`cache.reads.ReadPlan` (the plan it extends), with two
differences that matter at 100,000 accounts:

- the rows a near cache holds for an unchanged entry are taken as they are, their
  payloads not fetched (a read after one account changed fetches one payload);
- payloads are fetched in groups of :data:`cache.keys.READ_GROUP` chunks, one round
  trip each, and each group becomes rows before the next is fetched: what the read
  allocates for replies at any time is one group's (about 7 MB), not every payload's,
  and the memory freed by one group is what the next one reuses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from cache.base import raw, text
from cache.codec import AccountCodec
from cache.errors import CorruptPayload
from cache.keys import KeySpace
from cache.models import SchedulerBucket
from cache.nearrows import Row, row_of_account, row_of_payload
from cache.reads import REMOVED, SHARED_HINTS, ReadPlan, SnapshotRead, VersionHints

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RowRead:
    """One version of a bucket as a near cache reads it."""

    bucket: SchedulerBucket
    version: int
    gen: int
    rows: list[Row]
    # Each row's last use in integer ms (0: none), as read.
    uses: list[int]
    # The version's id list, removed accounts included (where a patch puts one).
    ids: list[int]
    # The rows this read made (the others were held already, and may be served).
    made: list[Row] = field(default_factory=list)


# The row already held for an account under this entry (the same payload), if any.
HeldRows = Callable[[int, bytes], Row | None]


def as_rows(read: SnapshotRead | RowRead) -> tuple[list[Row], list[int]]:
    """The rows of a read, and the version's ids (accounts handed in decoded are kept
    as they are)."""
    if isinstance(read, RowRead):
        return read.rows, read.ids
    pairs = zip(read.accounts, read.uses, strict=True)
    return [row_of_account(a, u) for a, u in pairs], [a.id for a in read.accounts]


class RowPlan(ReadPlan):
    """The steps of one read into rows; the driver runs each step's commands."""

    def __init__(
        self,
        keys: KeySpace,
        codec: AccountCodec,
        bucket: SchedulerBucket,
        held: HeldRows,
        hints: VersionHints = SHARED_HINTS,
    ) -> None:
        super().__init__(keys, codec, bucket, hints)
        self.held = held
        self._rows: list[Row | None] = []  # by position in the id list
        self._need_at: list[int] = []  # positions whose payload is fetched, in order
        self._done = 0  # payloads absorbed so far
        self._uses: list[bytes | None] = []
        self._miss: str | None = None

    def fetches(self) -> tuple[list[tuple[str, list[bytes]]], list[tuple[str, list[bytes]]]]:
        """HMGET arguments: payloads of the rows not held, then every last use."""
        held = self.held
        self._rows = [None] * len(self.ids)
        self._need, self._need_at = [], []
        for n, (i, entry) in enumerate(zip(self.ids, self.entries, strict=True)):
            if entry is not None and entry.startswith(REMOVED):
                continue  # deleted, or removed from this bucket: skipped, no payload
            row = None if entry is None else held(int(i), entry)
            if row is None:
                self._need.append(i)
                self._need_at.append(n)
            else:
                self._rows[n] = row
        return self.fetches_of(self._need)

    def absorb_uses(self, replies: list[list[bytes | None]]) -> None:
        self._uses = [u for part in replies for u in part]

    def absorb_payloads(self, replies: list[list[bytes | None]]) -> None:
        """One group's payloads, made rows at once (their last uses set at the end)."""
        for part in replies:
            for payload in part:
                n = self._need_at[self._done]
                self._done += 1
                entry = self.entries[n]
                if self._miss is not None:
                    continue
                if payload is None or entry is None:
                    self._miss = f"account {text(self.ids[n])} has no payload"
                    continue
                try:
                    self._rows[n] = row_of_payload(int(self.ids[n]), entry, raw(payload), 0)
                except CorruptPayload as exc:
                    self._miss = str(exc)

    def finish_rows(self) -> RowRead | None:
        """The read, or None on a miss (a missing or corrupt payload, logged)."""
        if self._miss is not None:
            logger.warning("snapshot miss for %s v%s: %s", self.bucket, self.version, self._miss)
            return None
        made: list[Row] = []
        for n in self._need_at:  # made here: their last use as read
            row, used = self._rows[n], self._uses[n]
            if row is not None:
                row.used = int(used) if used else 0
                made.append(row)
        rows: list[Row] = []
        uses: list[int] = []
        ids: list[int] = []
        for n, (i, row, used) in enumerate(zip(self.ids, self._rows, self._uses, strict=True)):
            account_id = row.id if row is not None else int(i)
            ids.append(account_id)
            if row is None:
                entry = self.entries[n]
                if entry is None or not entry.startswith(REMOVED):
                    logger.info(
                        "snapshot miss for %s v%s: account %s has no payload",
                        self.bucket,
                        self.version,
                        account_id,
                    )
                    return None
                continue  # as a read of accounts: skipped, not a miss
            rows.append(row)
            uses.append(int(used) if used else 0)
        return RowRead(self.bucket, self.version, self.gen, rows, uses, ids, made)
