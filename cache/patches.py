"""Putting one changed account into every snapshot version that lists it.

Which versions list an account is the account's bucket index (``keys.account_buckets``):
each snapshot writer notes its version there for every account it staged, before it
activates (see cache/lua/index_accounts.lua). A change reads the index in the same step
as it stores the payload, so it reaches every version indexed before it, and a version
indexed after it picks the change up from the store by itself.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from cache.base import Wiring, text
from cache.models import SchedulerBucket
from cache.replies import Patch

# What a version's entry holds for an account that has no payload (deleted, or removed
# from a bucket it no longer belongs to); readers skip such an entry.
DELETED = "-"
# A removal from a bucket is noted at the changed revision plus this: above the payload
# of that revision (which must not come back into a bucket it is not in), below the next
# revision (which may, when it belongs there again), and apart from a deletion's x.5.
REMOVED_STEP = 0.25

Target = tuple[SchedulerBucket, int]
# What a version's entry becomes: revision, digest, payload.
Content = tuple[str, str, bytes]


@dataclass(slots=True)
class Reach:
    """What a change found in the active versions of the buckets it reached."""

    # Buckets whose active version lists the account (after the change: as a removal
    # where it no longer belongs).
    listed: set[SchedulerBucket] = field(default_factory=set)
    # Buckets whose active version the change altered while a newer version was
    # reserved: a writer that may have read the source before the change, and whose
    # version may leave the change out (the payload reaches it through the index; a
    # removal or a new place in the order may not).
    racing: set[SchedulerBucket] = field(default_factory=set)


def parse_index(flat: list[bytes]) -> dict[SchedulerBucket, int]:
    """HGETALL of an account's bucket index as buckets and versions; entries this
    package did not write are skipped (they list no snapshot)."""
    found: dict[SchedulerBucket, int] = {}
    for i in range(0, len(flat) - 1, 2):
        try:
            found[SchedulerBucket.parse(text(flat[i]))] = int(flat[i + 1])
        except ValueError:
            continue
    return found


def _listing(version: int, listed: bool, active: int, active_listed: bool) -> int:
    """The version an index entry should name after a change: the indexed one while it
    lists the account and is not replaced (a staged version counts), else the active
    one if that lists it, else none (0)."""
    if active in (0, version):
        return version if listed else 0  # active 0: staged in a new bucket
    if version > active and listed:
        return version  # staged by a writer that has not activated it yet
    return active if active_listed else 0


class AccountPatcher:
    """Writes a changed account into snapshot versions; the only writer of the account
    bucket index's corrections (the snapshot writer adds entries, this drops stale ones).
    """

    def __init__(self, wiring: Wiring) -> None:
        self._w = wiring

    def reach(
        self,
        account_id: int,
        index: Mapping[SchedulerBucket, int],
        revision: str,
        digest: str,
        payload: bytes,
        belongs: Collection[SchedulerBucket] | None = None,
    ) -> Reach:
        """Put the account's new payload (or deletion: ``digest`` ``-``) into each indexed
        version and the active version of each indexed bucket; one push per bucket whose
        active version changed. Entries naming a version that no longer lists the account
        are corrected, unless a writer indexed a newer version meanwhile.

        With ``belongs`` (the buckets the account belongs to at this revision), a bucket
        outside it gets a removal instead of the payload: a version must never serve an
        account with a membership that excludes the bucket read. (Adding the account to
        a bucket that does not list it yet is :class:`cache.placements.AccountPlacer`'s.)
        """
        reach = Reach()
        targets = list(index.items())
        if not targets:
            return reach
        removed: Content = (removal(revision), DELETED, b"")
        content = {
            bucket: (revision, digest, payload)
            if belongs is None or bucket in belongs or digest == DELETED
            else removed
            for bucket, _ in targets
        }
        replies = self._patch(account_id, targets, content)
        follow = [
            (bucket, int(active))
            for (bucket, version), (_, active, _) in zip(targets, replies, strict=True)
            if int(active) > 0 and int(active) != version
        ]
        again = self._patch(account_id, follow, content) if follow else []
        listed_active = {
            target[0]: int(status) != Patch.NOT_LISTED
            for target, (status, _, _) in zip(follow, again, strict=True)
        }
        for (bucket, version), (status, active, reserved) in zip(
            [*targets, *follow], [*replies, *again], strict=True
        ):
            if version != int(active) or int(status) == Patch.NOT_LISTED:
                continue
            reach.listed.add(bucket)
            if int(status) == Patch.PUSHED and int(reserved) > version:
                reach.racing.add(bucket)
        fixes: list[tuple[list[str], list[Any]]] = []
        key = self._w.keys.account_buckets(account_id)
        for (bucket, version), (status, active, _) in zip(targets, replies, strict=True):
            listed = int(status) != Patch.NOT_LISTED
            now = _listing(version, listed, int(active), listed_active.get(bucket, False))
            if now != version:
                fixes.append(([key], [str(bucket), version, now]))
        if fixes:
            self._w.run("reindex_account", fixes)
        return reach

    def _patch(
        self,
        account_id: int,
        targets: list[Target],
        content: Mapping[SchedulerBucket, Content],
    ) -> list[list[Any]]:
        k = self._w.keys
        calls: list[tuple[list[str], list[Any]]] = [
            (
                [
                    k.meta(bucket),
                    k.payloads(bucket, version),
                    k.entries(bucket, version),
                    k.version_counter(bucket),
                ],
                [version, account_id, *content[bucket], k.changes_channel, str(bucket)],
            )
            for bucket, version in targets
        ]
        return self._w.run("patch_account", calls)


def removal(revision: str) -> str:
    """The revision a removal is noted at; '' (whatever the version holds, marked as a
    deletion) when the account has none."""
    number = float(revision) if revision else -1.0
    return "" if number < 0 else repr(number + REMOVED_STEP)
