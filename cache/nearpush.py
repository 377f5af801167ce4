"""What a near cache's background loop does with pushes, without I/O: the loop's
decisions (:class:`Backstop`), and applying a pushed change of one account to a held
bucket (:func:`patch`, a step run by either driver like those of :mod:`cache.nearcore`).

A writer that changes one account of the active version (its payload, its removal, its
insertion or move in the id list) announces ``'<bucket> <version> <gen> <account id>'``,
and every announce moves the gen by exactly one. A near cache holding that version at
the gen just before reads that account alone, in one round trip::

    held: v7 gen 41        push: '12:anthropic:mixed 7 42 1003'
    HMGET meta active gen | HGET entries 1003 | HGET payloads 1003 | LPOS ids 1003
    | LLEN ids | HGET last_used 1003 | HGET meta gen  ->  row replaced / moved / removed

and puts it in place: the list order, the pick index, the views. The round trip is not
a transaction, so it reads the gen first and last: a writer's change and its announce
are one script, so the same gen at both ends (the push's own) means every field was
read as of that change and no other; a place read after a later change would put the
account in another list than the one held. Anything else (a gen skipped or moved on
meanwhile, another version, a three-field push, a length that disagrees, an error)
leaves the bucket to be read again, as any push does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cache.base import text
from cache.errors import CacheError, CorruptPayload
from cache.keys import KeySpace
from cache.models import SchedulerBucket
from cache.nearcore import META_FIELDS, Pipeline, Steps
from cache.nearrows import Row, row_of_payload
from cache.reads import REMOVED

if TYPE_CHECKING:
    from cache.nearstate import NearState

logger = logging.getLogger(__name__)

# Pause after the subscription or the check failed, before trying again.
RETRY_SECONDS = 0.2
# Longest wait for a push: the loop comes round to see whether it was stopped.
WAIT_SECONDS = 1.0


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
            ("hget", (keys.meta(bucket), "gen")),
        ],
    )
    (active, gen), entry, payload, place, length, used, gen_after = replies
    try:
        row = patched_row(push, entry, payload, place, int(used or 0))
        fetched = Fetched(row, place, int(length), int(used or 0), int(gen or 0), asked_at)
        applied = (
            int(active or 0) == push.version
            and int(gen or 0) == push.gen == int(gen_after or 0)
            and state.patched(stamp, push, fetched)
        )
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


def parse_push(data: bytes | str) -> tuple[str, int] | None:
    """``(bucket name, gen)`` from a message on the changes channel."""
    parts = text(data).split(" ")
    if len(parts) not in (3, 4) or not parts[2].isdigit():
        return None
    return parts[0], int(parts[2])


@dataclass(frozen=True, slots=True)
class Push:
    """A change of one account: ``'<bucket> <version> <gen> <account id>'``."""

    bucket: str
    version: int
    gen: int
    account_id: int


def parse_patch(data: bytes | str) -> Push | None:
    """The one-account change a message announces, if it announces one."""
    parts = text(data).split(" ")
    if len(parts) != 4 or not all(p.isdigit() and p.isascii() for p in parts[1:]):
        return None
    return Push(parts[0], int(parts[1]), int(parts[2]), int(parts[3]))


class Backstop:
    """The background loop's decisions: how long to wait for a push, when to check,
    what a message means, what a failure costs."""

    def __init__(self, state: NearState, check_seconds: float, monotonic: Callable[[], float]):
        self.state = state
        self.check_seconds = check_seconds
        self.monotonic = monotonic
        self._next_check = 0.0

    def wait(self) -> float:
        """Seconds to wait for a push before the next check is due."""
        return min(max(self._next_check - self.monotonic(), 0.0), WAIT_SECONDS)

    def due(self) -> bool:
        """True (once) when a check is due."""
        now = self.monotonic()
        if now < self._next_check:
            return False
        self._next_check = now + self.check_seconds
        return True

    def heard(self, message: Mapping[str, Any] | None) -> Push | None:
        """Take in a message; a one-account change to apply is handed back (the
        driver runs :func:`patch`), anything else taken here."""
        kind = None if message is None else message.get("type")
        if kind == "subscribe":
            # Changes made while there was no subscription were not pushed.
            self.state.distrust()
        elif kind == "message" and message is not None:
            one = parse_patch(message["data"])
            if one is not None:
                return one
            push = parse_push(message["data"])
            if push is not None:
                self.state.pushed(*push)
        return None

    def failed(self, exc: Exception) -> None:
        """The subscription or the check failed: trust nothing until it is back."""
        logger.info("near cache: subscription or check failed, retrying: %s", exc)
        self.state.distrust()
