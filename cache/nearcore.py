"""Every decision of the near caches, without I/O: one core, two thin drivers.

A request (:func:`serve`) and a check (:func:`check`) are generators that yield what
they need from Redis (a :class:`Pipeline` of commands, or a :class:`ReadBucket`) and
are sent the replies. :class:`cache.near.NearCache` runs them on a redis-py client,
:class:`cache.aio.AsyncNearCache` on a ``redis.asyncio`` one; neither decides anything:
what to check, what a push means, when to re-read, what to serve, how touches merge,
how often to retry, and how long to wait all live here and in :mod:`cache.nearstate`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Generator, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from cache.base import text
from cache.keys import TOUCH_CHUNK, KeySpace
from cache.models import Account, SchedulerBucket
from cache.pickindex import Choice, scan

if TYPE_CHECKING:
    from cache.nearstate import NearState

logger = logging.getLogger(__name__)

# Reading a bucket is retried this often when a racing read installed something else.
SERVE_ATTEMPTS = 3
# Pause after the subscription or the check failed, before trying again.
RETRY_SECONDS = 0.2
# Longest wait for a push: the loop comes round to see whether it was stopped.
WAIT_SECONDS = 1.0
# The fields of a bucket's meta hash a check compares.
META_FIELDS = ("active", "gen")
# The epoch a near cache holds while Redis has none (its state was lost and nobody has
# re-established it yet): a change to or from it drops everything, like any other.
NO_EPOCH = ""


class Verdict(StrEnum):
    """What a request does with a bucket: serve it, confirm its gen first, or read it."""

    HIT = "hit"
    CHECK = "check"
    READ = "read"


@dataclass(frozen=True, slots=True)
class Stamp:
    """The epoch a read or check began under, and the era (drops so far) it began in."""

    epoch: str | None
    era: int
    # The touch log position at the start (None: not known yet in this era).
    since: int | None = None


# -- what the drivers run ----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Pipeline:
    """Commands for one round trip, without a transaction: ``(method, args)`` of a
    pipeline; the driver sends back the list of their replies. ``what`` names the call
    in errors."""

    what: str
    commands: list[tuple[str, tuple[Any, ...]]]


@dataclass(frozen=True, slots=True)
class ReadBucket:
    """Read the bucket's active snapshot; the driver sends back a SnapshotRead or None."""

    bucket: SchedulerBucket


Request = Pipeline | ReadBucket
Steps = Generator[Request, Any, Any]


# -- a request -------------------------------------------------------------------------
def hit(state: NearState, name: str, now: datetime | None) -> list[Account] | None:
    """The answer from memory when ``name`` is trusted, else None (then :func:`serve`):
    most requests end here, without the cost of a generator."""
    verdict, accounts = state.serve(name, now)
    return accounts if verdict is Verdict.HIT else None


def serve(
    state: NearState,
    keys: KeySpace,
    bucket: SchedulerBucket,
    now: datetime | None,
    clock: Callable[[], float],
) -> Steps:
    """The accounts of ``bucket`` (schedulable at ``now``, or all), from memory while
    trusted; None on a miss."""
    name = str(bucket)
    read: list[Account] | None = None
    for _ in range(SERVE_ATTEMPTS):
        verdict, accounts = state.serve(name, now)
        if verdict is Verdict.HIT:
            return accounts
        if verdict is Verdict.CHECK:
            yield from check(state, keys, [name], clock)
            continue
        read = yield from read_bucket(state, keys, bucket, clock)
        if read is None:
            return None
    if read is None:
        read = yield from read_bucket(state, keys, bucket, clock)
        if read is None:
            return None
    # Racing reads kept replacing each other: answer from this request's own read.
    return [a for a in read if now is None or a.is_schedulable(now)]


def read_bucket(
    state: NearState, keys: KeySpace, bucket: SchedulerBucket, clock: Callable[[], float]
) -> Steps:
    """Read ``bucket`` from Redis and hold it; its accounts, or None on a miss."""
    asked_at = clock()
    stamp = state.stamp()
    if stamp is None:
        # The epoch and the touch log's position, taken before any bucket is read so
        # no touch between the two is missed; once held, the check keeps them current.
        seq, epoch = yield Pipeline(
            "near cache epoch", [("get", (keys.last_used_seq,)), ("get", (keys.epoch,))]
        )
        stamp = state.opened(as_epoch(epoch), int(seq or 0))
    read = yield ReadBucket(bucket)
    if read is None:
        state.forget(str(bucket))
        return None
    state.install(read, asked_at, stamp)
    return read.accounts


# -- a pick ----------------------------------------------------------------------------
def picked(state: NearState, name: str, now: datetime, exclude: Collection[int]) -> Choice | None:
    """The pick from memory when ``name`` is trusted, else None (then :func:`pick`)."""
    verdict, choice = state.pick(name, now, exclude)
    return choice if verdict is Verdict.HIT else None


def pick(
    state: NearState,
    keys: KeySpace,
    bucket: SchedulerBucket,
    now: datetime,
    exclude: Collection[int],
    clock: Callable[[], float],
) -> Steps:
    """The pick of ``bucket`` at ``now`` from its held index, the bucket read first
    when it is not trusted; None on a miss."""
    name = str(bucket)
    accounts: list[Account] = []
    for _ in range(SERVE_ATTEMPTS):
        choice = picked(state, name, now, exclude)
        if choice is not None:
            return choice
        found = yield from serve(state, keys, bucket, now, clock)
        if found is None:
            return None
        accounts = found
    # Racing reads kept replacing the bucket: a scan of this request's own answer.
    chosen = scan(accounts, now, exclude)
    return Choice(None, now) if chosen is None else state.note_pick(chosen, now)


# -- the check ---------------------------------------------------------------------------
def check(
    state: NearState, keys: KeySpace, names: list[str] | None, clock: Callable[[], float]
) -> Steps:
    """Epoch, the gens of ``names`` (default: every held bucket), and last uses moved
    since the last check. One round trip (two with new touches)."""
    names = state.names() if names is None else names
    stamp = state.begin_check()
    asked_at = clock()
    commands: list[tuple[str, tuple[Any, ...]]] = [
        ("get", (keys.last_used_seq,)),
        ("get", (keys.epoch,)),
    ]
    if stamp.since is not None:
        log = (keys.last_used_log, f"({stamp.since}", "+inf", 0, TOUCH_CHUNK, True)
        commands.append(("zrangebyscore", log))
    commands += [("hmget", (keys.meta(SchedulerBucket.parse(n)), META_FIELDS)) for n in names]
    replies = yield Pipeline("near cache check", commands)
    seq, epoch = int(replies[0] or 0), as_epoch(replies[1])
    touched: list[tuple[bytes, float]] = replies[2] if stamp.since is not None else []
    metas = replies[3:] if stamp.since is not None else replies[2:]
    gens = {
        name: int(gen or 0) if active is not None else None
        for name, (active, gen) in zip(names, metas, strict=True)
    }
    if not state.checked(stamp, epoch, seq, gens, asked_at) or stamp.since is None:
        return None
    touches = read_touches(stamp.since, seq, touched, TOUCH_CHUNK)
    if touches.lost:
        state.lost_touches(stamp)
        return None
    uses: dict[int, int] = {}
    if touches.ids:
        (found,) = yield Pipeline("near cache check", [("hmget", (keys.last_used, touches.ids))])
        uses = {int(i): int(u) for i, u in zip(touches.ids, found, strict=True) if u}
    state.caught_up(stamp, uses, touches.next_since)
    return None


def as_epoch(held: bytes | str | None) -> str:
    return NO_EPOCH if held is None else text(held)


@dataclass(frozen=True, slots=True)
class Touches:
    """What one look at the last-use log found."""

    ids: list[bytes]  # accounts whose last use moved, to fetch
    next_since: int  # where the next look starts
    lost: bool  # batches were trimmed before this process read them


def read_touches(since: int, seq: int, found: list[tuple[bytes, float]], limit: int) -> Touches:
    """The accounts named by the log's batches after ``since`` (``<seq>:<id>,<id>...``),
    read at counter ``seq``. A first batch past ``since + 1``, or none at all while the
    counter moved, means the log was trimmed past this process: it cannot know what
    moved, and must read what it holds again."""
    first = int(found[0][1]) if found else seq + 1
    lost = first > since + 1 and seq > since
    ids = {i for member, _ in found for i in member.partition(b":")[2].split(b",") if i}
    # A truncated read goes on after its last batch; a whole one after the counter.
    next_since = int(found[-1][1]) if len(found) >= limit else max(seq, since)
    return Touches(sorted(ids), next_since, lost)


# -- the background loop -----------------------------------------------------------------
def parse_push(data: bytes | str) -> tuple[str, int] | None:
    """``(bucket name, gen)`` from a message on the changes channel: ``<bucket>
    <version> <gen>``, with a fourth field (the account a one-account change was about)
    after such a change; the field is not used here."""
    parts = text(data).split(" ")
    if len(parts) not in (3, 4) or not parts[2].isdigit():
        return None
    return parts[0], int(parts[2])


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

    def heard(self, message: Mapping[str, Any] | None) -> None:
        kind = None if message is None else message.get("type")
        if kind == "subscribe":
            # Changes made while there was no subscription were not pushed.
            self.state.distrust()
        elif kind == "message" and message is not None:
            push = parse_push(message["data"])
            if push is not None:
                self.state.pushed(*push)

    def failed(self, exc: Exception) -> None:
        """The subscription or the check failed: trust nothing until it is back."""
        logger.info("near cache: subscription or check failed, retrying: %s", exc)
        self.state.distrust()
