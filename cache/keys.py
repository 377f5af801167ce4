"""Every Redis key name and TTL the cache uses, built in one place.

Keys of one bucket share the hash tag ``{<bucket>}`` so that a bucket's scripts touch a
single Cluster slot. The account store, the last-used store and the registry are shared
by all buckets; to run every script on Redis Cluster, give the prefix a hash tag of its
own (``prefix="{sched}"``): Redis hashes the first ``{...}`` of a key, so every key then
lives in one slot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cache.models import SchedulerBucket

# A replaced snapshot stays readable this long instead of being deleted, so a reader
# that looked up the active version just before a switch can still read that version.
SNAPSHOT_GRACE_SECONDS = 60
# The rebuild request counters of a bucket nobody asked about for a day are dropped;
# a request after that starts from zero, which only costs one rebuild.
REBUILD_STATE_TTL_SECONDS = 86_400
# Decoded accounts kept per cache object: a payload that has not changed since the last
# read is not decoded again. Bounded so that a huge pool cannot grow the process forever.
DECODED_ACCOUNTS_MAX = 200_000
# Buckets whose last read is kept decoded per cache object (each holds its payload bytes).
DECODED_SNAPSHOTS_MAX = 1_024

_PREFIX = re.compile(r"[A-Za-z0-9_.{}-]{1,64}")


@dataclass(frozen=True, slots=True)
class KeySpace:
    """Builds key names; the only place where the layout is written down."""

    prefix: str = "sched"

    def __post_init__(self) -> None:
        if not _PREFIX.fullmatch(self.prefix) or self.prefix.count("{") > 1:
            raise ValueError(f"invalid key prefix {self.prefix!r}")

    def _join(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def _bucket(self, bucket: SchedulerBucket, leaf: str) -> str:
        return self._join(f"{{{bucket}}}", leaf)

    # -- per bucket, all under the bucket's hash tag ---------------------------------
    def meta(self, bucket: SchedulerBucket) -> str:
        """Hash: active version, account count, built_at (ms), rebuild duration."""
        return self._bucket(bucket, "meta")

    def version_counter(self, bucket: SchedulerBucket) -> str:
        """Counter: the last version reserved for the bucket."""
        return self._bucket(bucket, "ver")

    def snapshot_stem(self, bucket: SchedulerBucket) -> str:
        """Stem of the versioned snapshot lists; version N lives at ``stem + N``."""
        return self._bucket(bucket, "snap:")

    def snapshot(self, bucket: SchedulerBucket, version: int) -> str:
        return f"{self.snapshot_stem(bucket)}{version}"

    def lock(self, bucket: SchedulerBucket) -> str:
        return self._bucket(bucket, "lock")

    def named_lock(self, name: str) -> str:
        """A lock for a singleton job (e.g. the outbox poller), not tied to a bucket."""
        return self._join("lock", name)

    def rebuild_state(self, bucket: SchedulerBucket) -> str:
        """Hash: rebuild request counter, queued flag, generation of the last rebuild."""
        return self._bucket(bucket, "rebuild")

    # -- shared ----------------------------------------------------------------------
    @property
    def registry(self) -> str:
        """Set of every bucket that has had a snapshot."""
        return self._join("buckets")

    @property
    def accounts(self) -> str:
        """Hash: account id -> JSON payload (without last_used_at)."""
        return self._join("acc")

    @property
    def revisions(self) -> str:
        """Hash: account id -> revision of the stored payload."""
        return self._join("acc_rev")

    @property
    def digests(self) -> str:
        """Hash: account id -> digest of the stored payload (what readers compare)."""
        return self._join("acc_digest")

    @property
    def last_used(self) -> str:
        """Hash: account id -> last use, integer milliseconds since the epoch."""
        return self._join("last_used")

    @property
    def last_used_pending(self) -> str:
        """Hash: account id -> last use not yet written to the source database."""
        return self._join("last_used", "pending")

    @property
    def stats(self) -> str:
        """Hash: counters and last-seen figures of the background work, for status views."""
        return self._join("stats")

    @property
    def outbox_watermark(self) -> str:
        return self._join("outbox", "watermark")

    @property
    def epoch(self) -> str:
        """String: a random id, written once when the state is established.

        Its absence means Redis lost the state (a restart without persistence, a
        failover to an empty replica, FLUSHALL): every snapshot, and the outbox position
        they were built up to, are gone together, so the workers rebuild every bucket
        from the source instead of waiting for the next refresh.
        """
        return self._join("epoch")

    @property
    def outbox_gaps(self) -> str:
        """Sorted set: outbox ids below the watermark not seen yet, scored by first-seen ms."""
        return self._join("outbox", "gaps")
