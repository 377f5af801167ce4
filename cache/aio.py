"""The read side for asyncio web apps, on ``redis.asyncio``: the same snapshot reads
and near cache as :mod:`cache.client` and :mod:`cache.near`, with the same semantics.

Writes stay with :class:`cache.client.RedisSchedulerCache` (the Celery side).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

from redis.exceptions import RedisError

from cache.aioreader import AsyncSchedulerReader
from cache.base import redis_errors
from cache.errors import CacheError
from cache.keys import (
    NEAR_ACCOUNTS_MAX,
    NEAR_BUCKETS_MAX,
    NEAR_CHECK_SECONDS,
    NEAR_DECODED_MAX,
    NEAR_TRUST_SECONDS,
)
from cache.models import Account, SchedulerBucket
from cache.nearcore import (
    ReadBucket,
    Request,
    Steps,
    check,
    hit,
    pick,
    picked,
    serve,
)
from cache.nearpush import RETRY_SECONDS, Backstop, Push, patch
from cache.nearstate import NearState
from cache.pickindex import Choice

logger = logging.getLogger(__name__)

__all__ = ["AsyncNearCache", "AsyncSchedulerReader"]


class AsyncNearCache:
    """:class:`cache.near.NearCache` for asyncio: one task holds the subscription and
    runs the checks; requests await Redis only when a bucket is not trusted.

    A thin driver: :mod:`cache.nearcore` decides, this runs its requests on
    ``redis.asyncio``. :class:`cache.near.NearCache` is its twin, method for method.
    """

    def __init__(
        self,
        reader: AsyncSchedulerReader,
        *,
        check_seconds: float = NEAR_CHECK_SECONDS,
        trust_seconds: float = NEAR_TRUST_SECONDS,
        max_buckets: int = NEAR_BUCKETS_MAX,
        max_accounts: int = NEAR_ACCOUNTS_MAX,
        max_decoded: int = NEAR_DECODED_MAX,
        monotonic: Callable[[], float] = time.monotonic,
        background: bool = True,
    ) -> None:
        self.reader = reader
        self.check_seconds = check_seconds
        self.monotonic = monotonic
        self.background = background
        self.state = NearState.checked_every(
            check_seconds,
            trust_seconds=trust_seconds,
            monotonic=monotonic,
            max_buckets=max_buckets,
            max_accounts=max_accounts,
            max_decoded=max_decoded,
        )
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    # -- reading ---------------------------------------------------------------------
    async def list_schedulable(
        self, bucket: SchedulerBucket, now: datetime
    ) -> Sequence[Account] | None:
        """As :meth:`cache.near.NearCache.list_schedulable`."""
        return await self._get(bucket, now)

    async def get_snapshot(self, bucket: SchedulerBucket) -> Sequence[Account] | None:
        """As :meth:`cache.near.NearCache.get_snapshot`."""
        return await self._get(bucket, None) or None

    async def pick(
        self, bucket: SchedulerBucket, now: datetime, exclude: Collection[int] = ()
    ) -> Choice | None:
        """As :meth:`cache.near.NearCache.pick`."""
        self._ensure_started()
        choice = picked(self.state, str(bucket), now, exclude)
        if choice is not None:
            return choice
        result: Choice | None = await self._drive(
            pick(self.state, self.reader.keys, bucket, now, exclude, self.monotonic)
        )
        return result

    def note_last_used(self, updates: Mapping[int, datetime]) -> None:
        """As :meth:`cache.near.NearCache.note_last_used`."""
        self.state.used_at(updates)

    async def check(self, names: list[str] | None = None) -> None:
        """As :meth:`cache.near.NearCache.check`."""
        await self._drive(check(self.state, self.reader.keys, names, self.monotonic))

    async def _get(self, bucket: SchedulerBucket, now: datetime | None) -> Sequence[Account] | None:
        self._ensure_started()
        accounts = hit(self.state, str(bucket), now)
        if accounts is not None:
            return accounts
        result: Sequence[Account] | None = await self._drive(
            serve(self.state, self.reader.keys, bucket, now, self.monotonic)
        )
        return result

    async def patch(self, push: Push) -> None:
        """Apply a pushed change of one account to the held bucket (:mod:`cache.nearpatch`);
        when it cannot be, the bucket is read again by the next request."""
        try:
            await self._drive(patch(self.state, self.reader.keys, push, self.monotonic))
        except BaseException:
            self.state.pushed(push.bucket, push.gen)
            raise

    # -- running the core's requests ---------------------------------------------------
    async def _drive(self, steps: Steps) -> Any:
        try:
            request = next(steps)
            while True:
                request = steps.send(await self._do(request))
        except StopIteration as done:
            return done.value

    async def _do(self, request: Request) -> Any:
        if isinstance(request, ReadBucket):
            return await self.reader.read_rows(request.bucket, request.held)
        with redis_errors(request.what):
            pipe = self.reader.client.pipeline(transaction=False)
            for method, args in request.commands:
                getattr(pipe, method)(*args)
            return await pipe.execute()

    # -- the background loop -------------------------------------------------------------
    async def _run(self) -> None:
        backstop = Backstop(self.state, self.check_seconds, self.monotonic)
        pubsub: Any = None
        try:
            while not self._stopped():
                try:
                    if pubsub is None:
                        pubsub = await self._subscribe()
                    push = backstop.heard(await pubsub.get_message(timeout=backstop.wait()))
                    if push is not None:
                        await self.patch(push)
                    if backstop.due():
                        await self.check()
                except (RedisError, OSError, CacheError) as exc:
                    backstop.failed(exc)
                    if pubsub is not None:
                        await self._close_quietly(pubsub)
                        pubsub = None
                    await self._pause(RETRY_SECONDS)
        finally:
            if pubsub is not None:
                await self._close_quietly(pubsub)

    async def _close_quietly(self, pubsub: Any) -> None:
        try:
            await pubsub.aclose()
        except (RedisError, OSError) as exc:
            logger.debug("near cache: closing the subscription failed: %s", exc)

    # -- the event loop's task (what differs from the threaded twin) -------------------
    async def _subscribe(self) -> Any:
        pubsub = self.reader.client.pubsub()
        await pubsub.subscribe(self.reader.keys.changes_channel)
        return pubsub

    def _stopped(self) -> bool:
        return self._stopping

    async def _pause(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def _ensure_started(self) -> None:
        if not self.background or (self._task is not None and not self._task.done()):
            return
        self._stopping = False
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def aclose(self) -> None:
        """Stop the background task."""
        if self._task is not None:
            # The flag as well as the cancel: on Python 3.11 a cancel that lands as the
            # subscription's read times out is taken for the timeout and lost, and the
            # loop would go on waiting for messages; the flag ends it at its next turn.
            self._stopping = True
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
