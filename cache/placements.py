"""Putting one account into a bucket's active version at its place in snapshot order.

A change of one account must not cost a rebuild of its bucket: an account that joins a
bucket (a new one, a membership, a status back to active) is inserted into the active
version's id list before the account that follows it in snapshot order, and one whose
priority changed is moved there, in one script call whose cost is a walk of the list
(see cache/lua/place_account.lua). Which account follows is the caller's to know (it
reads the source); the version only needs to list one of the followers given.

The index entry comes first, in its own call (it lives in another Cluster slot)::

    note acc_in:<a>[B] = N ... place a into N: later changes of a reach N

A poll killed between the two leaves an entry naming a version that does not list the
account, which the next change corrects (cache/patches.py); the other order would leave
an account in N that no change reaches until the next rebuild.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cache.base import Wiring, redis_errors
from cache.errors import CacheError
from cache.models import Account, SchedulerBucket
from cache.replies import Place

# Another version activated between reading the active one and placing: ask again. Only
# rebuilds finishing back to back make it ask more than once.
MOVED_ATTEMPTS = 8


@dataclass(frozen=True, slots=True)
class Placement:
    """What placing an account in a bucket's active version did."""

    status: Place
    version: int  # the active version (0: none)
    # A newer version was reserved than the active one: a writer that may have read the
    # source before this change, whose version will not have it.
    racing: bool


class AccountPlacer:
    """The only writer of an account's place in a version's id list after staging."""

    def __init__(self, wiring: Wiring) -> None:
        self._w = wiring

    def place(
        self, bucket: SchedulerBucket, account: Account, followers: Sequence[int]
    ) -> Placement:
        """Insert ``account`` into the active version of ``bucket``, or move it, before
        the first of ``followers`` (the ids after it in snapshot order, nearest first)
        that the version lists; last when it lists none. Revision-guarded: a version
        that holds a newer revision of it, or its removal or deletion noted after this
        revision, is left as it is (:attr:`Place.STALE`)."""
        k = self._w.keys
        payload, digest = self._w.codec.encode(account)
        revision = -1 if account.revision is None else account.revision
        with redis_errors(f"place_account {account.id} in {bucket}", k.meta(bucket)):
            version = int(self._w.client.hget(k.meta(bucket), "active") or 0)
            for _ in range(MOVED_ATTEMPTS):
                if version:
                    self._w.scripts["note_listing"](
                        keys=[k.account_buckets(account.id)], args=[str(bucket), version]
                    )
                status, active, reserved = self._w.scripts["place_account"](
                    keys=[
                        k.meta(bucket),
                        k.version_counter(bucket),
                        k.snapshot(bucket, version),
                        k.payloads(bucket, version),
                        k.entries(bucket, version),
                    ],
                    args=[
                        version,
                        account.id,
                        revision,
                        digest,
                        payload,
                        ",".join(str(i) for i in followers),
                        k.changes_channel,
                        str(bucket),
                    ],
                )
                if status != Place.MOVED:
                    active = int(active)
                    return Placement(Place(status), active, int(reserved) > active)
                version = int(active)
        raise CacheError(f"bucket {bucket}: versions kept moving while placing {account.id}")
