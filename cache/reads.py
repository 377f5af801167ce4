"""Reading a bucket's snapshot in bounded steps, the same way over either client.

A read is a short plan: one script call for the active version and the first chunk of
its ids and entries (digest and revision of each payload); the call names the version
the reader expects (every key a script touches arrives in KEYS), and a wrong guess, on
the first read of a bucket or after an activation, costs one more call that names the
active one (:class:`Moved`); for a large bucket, plain
chunked reads of the rest of that version; then the payloads the reader has not
decoded yet, with every account's last use. Each step costs Redis about a millisecond
whatever the bucket's size, and every step reads the same version, which no writer
changes except to put a newer revision of one account in (each account is then either
the version's or newer, never older).

:class:`ReadPlan` holds the logic and no I/O; :meth:`cache.client.RedisSchedulerCache.
read_snapshot` (through :class:`cache.reader.SnapshotReader`) and
:meth:`cache.aio.AsyncSchedulerReader.read_snapshot` drive it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from cache.base import raw, text
from cache.codec import AccountCodec
from cache.errors import CorruptPayload
from cache.keys import NEAR_BUCKETS_MAX, READ_CHUNK, KeySpace
from cache.models import Account, SchedulerBucket

logger = logging.getLogger(__name__)

# How an entry without a payload begins (cache.patches.DELETED): a deleted account, or
# one removed from the bucket.
REMOVED = b"-/"


@dataclass(frozen=True, slots=True)
class SnapshotRead:
    """One version of a bucket as read: ``gen`` orders every change readers can see."""

    bucket: SchedulerBucket
    version: int
    gen: int
    accounts: list[Account]
    # Each account's last use in integer ms (0: none), as read.
    uses: list[int]


class Expired(Exception):
    """The version being read expired mid-read (replaced long ago): read again."""


class Moved(Expired):
    """Another version is active than the one the read expected: read again (the plan's
    hints now hold the active version)."""


class VersionHints:
    """The active version last seen per bucket: what the next read expects.

    Only a guess: a wrong one costs a round trip, never a wrong answer, so a process can
    share one between clients. Bounded; when full it starts over.
    """

    def __init__(self, limit: int = NEAR_BUCKETS_MAX * 4) -> None:
        self._limit = limit
        self._seen: dict[SchedulerBucket, int] = {}

    def get(self, bucket: SchedulerBucket) -> int:
        return self._seen.get(bucket, 0)

    def note(self, bucket: SchedulerBucket, version: int) -> None:
        if len(self._seen) >= self._limit and bucket not in self._seen:
            self._seen.clear()
        self._seen[bucket] = version


# For readers that bring no hints of their own.
SHARED_HINTS = VersionHints()


def chunks(items: list[bytes], size: int) -> list[list[bytes]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class ReadPlan:
    """The steps of one snapshot read; the driver runs each step's commands."""

    def __init__(
        self,
        keys: KeySpace,
        codec: AccountCodec,
        bucket: SchedulerBucket,
        hints: VersionHints = SHARED_HINTS,
    ) -> None:
        self.keys = keys
        self.codec = codec
        self.bucket = bucket
        self.hints = hints
        self.version = 0
        self.gen = 0
        self.total = 0
        self.ids: list[bytes] = []
        self.entries: list[bytes | None] = []
        self._need: list[bytes] = []
        # Accounts decoded before for the entries read: held here, since another read
        # in another thread may replace the codec's copy meanwhile.
        self._held: dict[bytes, tuple[bytes | None, Account]] = {}

    # step 1: the script --------------------------------------------------------------
    def first_call(self) -> tuple[list[str], list[Any]]:
        """Keys and arguments of read_snapshot.lua for the first chunk."""
        keys, bucket = self.keys, self.bucket
        expected = self.hints.get(bucket)
        names = [keys.meta(bucket), keys.snapshot(bucket, expected), keys.entries(bucket, expected)]
        return names, [expected, 0, READ_CHUNK]

    def absorb_first(self, reply: list[Any]) -> bool:
        """False when the bucket has no active version (a miss); :class:`Moved` when the
        active version is not the one expected."""
        if not reply:
            return False
        if len(reply) == 1:
            self.hints.note(self.bucket, int(reply[0]))
            raise Moved(f"bucket {self.bucket} now at v{int(reply[0])}")
        version, gen, total, ids, entries = reply
        self.version, self.gen, self.total = int(version), int(gen), int(total)
        self.ids, self.entries = list(ids), list(entries)
        return True

    # step 2 (large buckets): the rest of the ids -------------------------------------
    def rest_ranges(self) -> list[tuple[str, int, int]]:
        """LRANGE arguments for the ids past the first chunk."""
        key = self.keys.snapshot(self.bucket, self.version)
        return [
            (key, start, min(start + READ_CHUNK, self.total) - 1)
            for start in range(len(self.ids), self.total, READ_CHUNK)
        ]

    def absorb_rest(self, replies: list[list[bytes]]) -> list[tuple[str, list[bytes]]]:
        """HMGET arguments for the entries of the ids just read."""
        first = len(self.ids)
        for part in replies:
            self.ids.extend(part)
        if len(self.ids) != self.total:
            raise Expired(f"bucket {self.bucket} v{self.version}")
        key = self.keys.entries(self.bucket, self.version)
        return [(key, part) for part in chunks(self.ids[first:], READ_CHUNK)]

    def absorb_entries(self, replies: list[list[bytes | None]]) -> None:
        for part in replies:
            self.entries.extend(part)

    # step 3: payloads not decoded yet, and every last use ----------------------------
    def fetches(self) -> tuple[list[tuple[str, list[bytes]]], list[tuple[str, list[bytes]]]]:
        """HMGET arguments: payloads the codec lacks, then the last uses of all ids."""
        held = self.codec.held
        self._need = []
        for i, entry in zip(self.ids, self.entries, strict=True):
            if entry is not None and entry.startswith(REMOVED):
                continue  # deleted, or removed from this bucket: skipped, no payload
            account = None if entry is None else held(int(i), entry)
            if account is None:
                self._need.append(i)
            else:
                self._held[i] = account
        return self.fetches_of(self._need)

    def fetches_of(
        self, need: list[bytes]
    ) -> tuple[list[tuple[str, list[bytes]]], list[tuple[str, list[bytes]]]]:
        """HMGET arguments: the payloads of ``need``, then the last uses of all ids."""
        payloads = self.keys.payloads(self.bucket, self.version)
        uses = self.keys.last_used
        return (
            [(payloads, part) for part in chunks(need, READ_CHUNK)],
            [(uses, part) for part in chunks(self.ids, READ_CHUNK)],
        )

    def finish(
        self, payload_replies: list[list[bytes | None]], use_replies: list[list[bytes | None]]
    ) -> SnapshotRead | None:
        """The read, or None on a miss (a missing or corrupt payload, logged)."""
        fetched: dict[bytes, bytes | None] = {}
        for part_ids, part in zip(chunks(self._need, READ_CHUNK), payload_replies, strict=True):
            fetched.update(zip(part_ids, part, strict=True))
        uses = [u for part in use_replies for u in part]
        decode = self.codec.decode
        accounts: list[Account] = []
        uses_ms: list[int] = []
        for i, entry, used in zip(self.ids, self.entries, uses, strict=True):
            if entry is not None and entry.startswith(REMOVED):
                # Deleted, or moved out of this bucket, since the version was written:
                # the version is still right about every other account, so not a miss.
                continue
            payload = fetched.get(i)
            if entry is None or (i in fetched and payload is None):
                logger.info(
                    "snapshot miss for %s v%s: account %s has no payload",
                    self.bucket,
                    self.version,
                    text(i),
                )
                return None
            try:
                account = decode(int(i), payload and raw(payload), used, entry, self._held.get(i))
            except CorruptPayload as exc:
                logger.warning("snapshot miss for %s v%s: %s", self.bucket, self.version, exc)
                return None
            accounts.append(account)
            uses_ms.append(int(used) if used else 0)
        return SnapshotRead(self.bucket, self.version, self.gen, accounts, uses_ms)
