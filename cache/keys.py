"""Every Redis key name and TTL the cache uses, built in one place.

Every script touches keys of one Cluster slot, by construction and with any prefix:

- a bucket's keys, its snapshot versions and their payloads share the hash tag
  ``{<bucket>}``, so different buckets spread over the masters of a Cluster;
- the shared stores (accounts by id, last use, pending last use, registry, stats,
  outbox position, epoch) share the hash tag ``{shared}``.

A prefix with a hash tag of its own (``prefix="{sched}"``) still works: Redis hashes
the first ``{...}`` of a key, so every key then lives in one slot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cache.models import SchedulerBucket

# A replaced snapshot stays readable this long instead of being deleted, so a reader
# that looked up the active version just before a switch can still read that version.
SNAPSHOT_GRACE_SECONDS = 60
# A version being written lives this long unless it is activated: a writer that dies
# or loses leaves nothing behind for longer. Above the rebuild task's time limit, and
# renewed by every chunk, so a live writer never sees its staged version expire.
STAGE_TTL_SECONDS = 120
# The rebuild request counters of a bucket nobody asked about for a day are dropped;
# a request after that starts from zero, which only costs one rebuild.
REBUILD_STATE_TTL_SECONDS = 86_400
# A queued rebuild task coalesces requests for this long (plus any countdown it waits
# for): a task lost with a killed worker (reserved, or waiting for its ETA) holds its
# bucket's requests no longer, instead of until the broker's visibility timeout. Short,
# so that the outbox poll (every second) re-sends it within seconds of a change; a
# task merely slow to start costs one duplicate, which skips.
REBUILD_LEASE_SECONDS = 2.0
# Accounts per script call or command when a snapshot is written or read: about a
# millisecond of server time each, so no call blocks other clients for long at any
# bucket size (and unpack() stays far below Lua's 8000-slot C stack).
WRITE_CHUNK = 500
READ_CHUNK = 1_000
# Chunks of payloads a near cache fetches per round trip (about 7 MB of replies at a
# time, whatever the bucket's size: what a first read of a large bucket allocates).
READ_GROUP = 10
# Accounts per call that writes the bucket index: each is a hash of its own, which costs
# the server several times what an entry of one hash does.
INDEX_CHUNK = 200
# Batches of last-use changes read per call by a near cache catching up.
TOUCH_CHUNK = 1_000
# Batches the last-use log keeps. Web processes send a batch every half second each, so
# this is minutes of history for a fleet of dozens; a near cache that fell further
# behind (stopped that long) drops what it holds and reads it again.
TOUCH_LOG_BATCHES = 20_000
# Decoded accounts kept per cache object: a payload that has not changed since the last
# read is not decoded again. Bounded so that a huge pool cannot grow the process forever.
DECODED_ACCOUNTS_MAX = 200_000
# Buckets a near cache keeps in memory (least recently read dropped first).
NEAR_BUCKETS_MAX = 1_024
# Accounts a near cache holds over all its buckets (least recently read buckets dropped
# first): at about 800 bytes each, about 800 MB.
NEAR_ACCOUNTS_MAX = 1_000_000
# Accounts a near cache keeps decoded (about 3 KB each, 60 MB): the buckets read most
# recently, up to this many accounts, answer a read with a copy of a list; the others
# build each account as it is read.
NEAR_DECODED_MAX = 20_000
# A near cache checks its buckets' versions, the epoch and other processes' touches
# this often, whatever pushes it received: the backstop for a lost push.
NEAR_CHECK_SECONDS = 0.5
# ... and serves nothing that Redis has not confirmed for longer than this: a
# checker that fell behind (or a Redis that stopped answering) turns reads back into
# round trips instead of stale answers.
NEAR_TRUST_SECONDS = 1.0

_PREFIX = re.compile(r"[A-Za-z0-9_.{}-]{1,64}")
SHARED_TAG = "{shared}"


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

    def _shared(self, *leaf: str) -> str:
        return self._join(SHARED_TAG, *leaf)

    # -- per bucket, all under the bucket's hash tag ---------------------------------
    def meta(self, bucket: SchedulerBucket) -> str:
        """Hash: active version, account count, built_at (ms), rebuild duration, and
        ``gen``, which grows with every change readers can see (activation or patch)."""
        return self._bucket(bucket, "meta")

    def version_counter(self, bucket: SchedulerBucket) -> str:
        """Counter: the last version reserved for the bucket."""
        return self._bucket(bucket, "ver")

    def snapshot_stem(self, bucket: SchedulerBucket) -> str:
        """Stem of the versioned snapshot lists; version N lives at ``stem + N``."""
        return self._bucket(bucket, "snap:")

    def snapshot(self, bucket: SchedulerBucket, version: int) -> str:
        """List: account ids of version N in scheduling order."""
        return f"{self.snapshot_stem(bucket)}{version}"

    def payloads_stem(self, bucket: SchedulerBucket) -> str:
        return self._bucket(bucket, "pay:")

    def payloads(self, bucket: SchedulerBucket, version: int) -> str:
        """Hash: account id -> JSON payload of version N (absent for a deleted account)."""
        return f"{self.payloads_stem(bucket)}{version}"

    def entries_stem(self, bucket: SchedulerBucket) -> str:
        return self._bucket(bucket, "ent:")

    def entries(self, bucket: SchedulerBucket, version: int) -> str:
        """Hash: account id -> ``<digest>/<revision>`` of its payload in version N
        (digest ``-`` for a deleted account); what readers compare to skip decoding."""
        return f"{self.entries_stem(bucket)}{version}"

    def lock(self, bucket: SchedulerBucket) -> str:
        return self._bucket(bucket, "lock")

    def named_lock(self, name: str) -> str:
        """A lock for a singleton job (e.g. the outbox poller), not tied to a bucket."""
        return self._join("lock", name)

    def rebuild_state(self, bucket: SchedulerBucket) -> str:
        """Hash: rebuild request counter, lease deadlines of the queued task and of the
        run in progress, generation of the last rebuild."""
        return self._bucket(bucket, "rebuild")

    # -- shared, all under one hash tag ----------------------------------------------
    @property
    def registry(self) -> str:
        """Set of every bucket that has had a snapshot."""
        return self._shared("buckets")

    @property
    def accounts(self) -> str:
        """Hash: account id -> JSON payload (without last_used_at), newest revision."""
        return self._shared("acc")

    @property
    def revisions(self) -> str:
        """Hash: account id -> revision of the stored payload (x.5: deleted at x)."""
        return self._shared("acc_rev")

    @property
    def digests(self) -> str:
        """Hash: account id -> digest of the stored payload; absent: unknown account."""
        return self._shared("acc_digest")

    def account_buckets(self, account_id: int | str) -> str:
        """Hash: bucket -> the version of it that lists the account (the one its writer
        indexed last). Lets a change of one account reach every snapshot that lists it
        at a cost that grows with those snapshots, not with the registry; an entry
        whose version no longer lists the account is dropped by the next change."""
        return self._shared("acc_in", str(account_id))

    @property
    def rebuild_leases(self) -> str:
        """Sorted set: bucket -> deadline (ms) of its latest rebuild lease; what the
        outbox poll looks at to re-send a lost rebuild, at a cost that grows with the
        expired leases. Named like a bucket's rebuild state, so whoever may request a
        rebuild may write it."""
        return self._shared("rebuild")

    @property
    def last_used(self) -> str:
        """Hash: account id -> last use, integer milliseconds since the epoch."""
        return self._shared("last_used")

    @property
    def last_used_log(self) -> str:
        """Sorted set: one member per call that moved last uses, ``<seq>:<id>,<id>...``,
        scored by its touch sequence number; the last :data:`TOUCH_LOG_BATCHES` kept.
        One member a call, not one an account: adding it costs Redis the same whatever
        the batch's size."""
        return self._shared("last_used", "log")

    @property
    def last_used_seq(self) -> str:
        """Counter: one step per call that moved a last use (the log's scores)."""
        return self._shared("last_used", "seq")

    @property
    def last_used_pending(self) -> str:
        """Hash: account id -> last use not yet written to the source database."""
        return self._shared("last_used", "pending")

    @property
    def stats(self) -> str:
        """Hash: counters and last-seen figures of the background work, for status views."""
        return self._shared("stats")

    @property
    def outbox_watermark(self) -> str:
        return self._shared("outbox", "watermark")

    @property
    def outbox_gaps(self) -> str:
        """Sorted set: outbox ids below the watermark not seen yet, scored by first-seen ms."""
        return self._shared("outbox", "gaps")

    @property
    def epoch(self) -> str:
        """String: a random id, written once when the state is established (by the
        outbox poller, together with the outbox position), never expiring.

        Its absence means Redis lost the state (a restart without persistence, a
        failover to an empty replica, FLUSHALL): every snapshot, and the outbox position
        they were built up to, are gone together, so the workers rebuild every bucket
        from the source instead of waiting for the next refresh, and every near cache
        drops what it holds. Under the shared tag with the outbox keys, so the one
        script that re-establishes all three keeps to one Cluster slot.
        """
        return self._shared("epoch")

    # -- pub/sub -----------------------------------------------------------------------
    @property
    def changes_channel(self) -> str:
        """Channel: ``<bucket> <version> <gen>`` after every change readers can see, and
        `` <account id>`` after it when the change was to that one account."""
        return self._join("changes")
