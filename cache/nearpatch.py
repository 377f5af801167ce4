"""Applying a pushed change of one account to a held bucket, without I/O (a step of
:mod:`cache.nearcore`, run by either driver).

A writer that changes one account of the active version (its payload, its removal, its
insertion or move in the id list) announces ``'<bucket> <version> <gen> <account id>'``,
and every announce moves the gen by exactly one. A near cache holding that version at
the gen just before reads that account alone, in one round trip::

    held: v7 gen 41        push: '12:anthropic:mixed 7 42 1003'
    HMGET meta active gen | HGET entries 1003 | HGET payloads 1003 | LPOS ids 1003
    | LLEN ids | HGET last_used 1003   ->  row replaced / moved / removed; gen 42

and puts it in place: the list order, the pick index, the views. Anything else (a gen
skipped, another version, a three-field push, a length that disagrees, an error) leaves
the bucket to be read again, as any push does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cache.errors import CacheError, CorruptPayload
from cache.keys import KeySpace
from cache.models import SchedulerBucket
from cache.nearcore import META_FIELDS, Pipeline, Push, Steps
from cache.nearrows import Row, row_of_payload
from cache.reads import REMOVED

if TYPE_CHECKING:
    from cache.nearstate import NearState

logger = logging.getLogger(__name__)


def patch(state: NearState, keys: KeySpace, push: Push, clock: Callable[[], float]) -> Steps:
    """Apply ``push`` to the held bucket when it follows what is held: the account's
    entry, payload, place in the version's id list and last use, in one round trip.
    Anything else (a gen skipped, another version, a payload that does not decode,
    a bucket moved on meanwhile) leaves the bucket to be read again, as a push does."""
    stamp = state.patchable(push)
    if stamp is None:
        state.pushed(push.bucket, push.gen)
        return None
    bucket, field = SchedulerBucket.parse(push.bucket), str(push.account_id)
    snapshot = keys.snapshot(bucket, push.version)
    asked_at = clock()
    replies = yield Pipeline(
        "near cache patch",
        [
            ("hmget", (keys.meta(bucket), META_FIELDS)),
            ("hget", (keys.entries(bucket, push.version), field)),
            ("hget", (keys.payloads(bucket, push.version), field)),
            ("lpos", (snapshot, field)),
            ("llen", (snapshot,)),
            ("hget", (keys.last_used, field)),
        ],
    )
    (active, gen), entry, payload, place, length, used = replies
    try:
        row = patched_row(push, entry, payload, place, int(used or 0))
        fetched = Fetched(row, place, int(length), int(used or 0), int(gen or 0), asked_at)
        applied = int(active or 0) == push.version and state.patched(stamp, push, fetched)
    except CacheError as exc:
        logger.warning("near cache: patch %s not applied: %s", push, exc)
        applied = False
    if not applied:
        state.pushed(push.bucket, push.gen)
    return None


@dataclass(frozen=True, slots=True)
class Fetched:
    """What a patch read: the row to put in place (None: not listed any more), its
    place in the version's id list and the list's length, the account's last use, and
    the bucket's gen at ``asked_at``."""

    row: Row | None
    place: int | None
    length: int
    used: int
    gen: int
    asked_at: float


def patched_row(
    push: Push, entry: bytes | None, payload: bytes | None, place: int | None, used: int
) -> Row | None:
    """The row a patch puts in place; None when the account is not listed any more
    (removed from the list, or its entry says removed)."""
    if place is None or entry is None or entry.startswith(REMOVED):
        return None
    if payload is None:
        raise CorruptPayload(f"account {push.account_id}: no payload for entry {entry!r}")
    return row_of_payload(push.account_id, entry, payload, used)
