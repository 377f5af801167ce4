"""The read side for asyncio web apps, on ``redis.asyncio``: the same snapshot reads
and near cache as :mod:`cache.client` and :mod:`cache.near`, with the same semantics.

Writes stay with :class:`cache.client.RedisSchedulerCache` (the Celery side).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, cast

import redis.asyncio
from redis.exceptions import RedisError

from cache.base import redis_errors, text
from cache.codec import DEFAULT_CACHED_CREDENTIALS, AccountCodec
from cache.connect import connect_async
from cache.errors import CacheError
from cache.keys import (
    NEAR_BUCKETS_MAX,
    NEAR_CHECK_SECONDS,
    NEAR_TRUST_SECONDS,
    TOUCH_CHUNK,
    KeySpace,
)
from cache.models import Account, SchedulerBucket
from cache.near import RETRY_SECONDS, SERVE_ATTEMPTS, parse_push, read_touches
from cache.nearstate import NO_EPOCH, NearState
from cache.reads import Expired, ReadPlan, SnapshotRead
from cache.scripts import Scripts

logger = logging.getLogger(__name__)


class AsyncSchedulerReader:
    """Uncached snapshot reads over a ``redis.asyncio`` client (bytes, not str)."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        prefix: str = "sched",
        cached_credentials: Iterable[str] = DEFAULT_CACHED_CREDENTIALS,
    ) -> None:
        if client.get_encoder().decode_responses:  # type: ignore[no-untyped-call]
            raise ValueError("the cache needs a client with decode_responses=False (bytes)")
        self.client = client
        self.keys = KeySpace(prefix)
        self.codec = AccountCodec(cached_credentials)
        self._scripts = Scripts(client)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        socket_timeout: float = 5.0,
        client_options: Mapping[str, Any] | None = None,
        cluster: bool = False,
        sentinel_master: str | None = None,
        sentinel_password: str | None = None,
        **kwargs: Any,
    ) -> AsyncSchedulerReader:
        """A reader over a new client for ``url``, in any topology
        :meth:`cache.client.RedisSchedulerCache.from_url` takes, with the same options
        (:func:`cache.connect.connect_async`); ``kwargs`` go to the reader."""
        client = connect_async(
            url,
            cluster=cluster,
            sentinel_master=sentinel_master,
            sentinel_password=sentinel_password,
            socket_timeout=socket_timeout,
            client_options=client_options,
        )
        return cls(client, **kwargs)

    async def get_snapshot(self, bucket: SchedulerBucket) -> list[Account] | None:
        """As :meth:`cache.client.RedisSchedulerCache.get_snapshot`."""
        read = await self.read_snapshot(bucket)
        return read.accounts if read is not None and read.accounts else None

    async def read_snapshot(self, bucket: SchedulerBucket) -> SnapshotRead | None:
        """As :meth:`cache.client.RedisSchedulerCache.read_snapshot`."""
        with redis_errors(f"get_snapshot {bucket}"):
            for _ in range(3):
                try:
                    return await self._read_once(ReadPlan(self.keys, self.codec, bucket))
                except Expired as exc:
                    logger.info("snapshot %s expired mid-read; reading again", exc)
        return None

    async def _read_once(self, plan: ReadPlan) -> SnapshotRead | None:
        keys, args = plan.first_call()
        if not plan.absorb_first(await self._scripts["read_snapshot"](keys=keys, args=args)):
            return None
        ranges = plan.rest_ranges()
        if ranges:
            pipe = self.client.pipeline(transaction=False)
            for key, start, end in ranges:
                pipe.lrange(key, start, end)
            calls = plan.absorb_rest(await pipe.execute())
            plan.absorb_entries(await self._hmgets(calls))
        payloads, uses = plan.fetches()
        replies = await self._hmgets(payloads + uses)
        return plan.finish(replies[: len(payloads)], replies[len(payloads) :])

    async def _hmgets(self, calls: list[tuple[str, list[bytes]]]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for key, fields in calls:
            pipe.hmget(key, fields)
        return await pipe.execute()

    async def epoch(self) -> str | None:
        """As :meth:`cache.client.RedisSchedulerCache.epoch`."""
        with redis_errors("epoch", self.keys.epoch):
            held = await self.client.get(self.keys.epoch)
        return None if held is None else text(cast(bytes, held))

    async def aclose(self) -> None:
        await self.client.aclose()


class AsyncNearCache:
    """:class:`cache.near.NearCache` for asyncio: one task holds the subscription and
    runs the checks; requests await Redis only when a bucket is not trusted."""

    def __init__(
        self,
        reader: AsyncSchedulerReader,
        *,
        check_seconds: float = NEAR_CHECK_SECONDS,
        trust_seconds: float = NEAR_TRUST_SECONDS,
        max_buckets: int = NEAR_BUCKETS_MAX,
        monotonic: Callable[[], float] = time.monotonic,
        background: bool = True,
    ) -> None:
        self.reader = reader
        self.check_seconds = check_seconds
        self.monotonic = monotonic
        self.background = background
        self.state = NearState.checked_every(
            check_seconds, trust_seconds=trust_seconds, max_buckets=max_buckets, monotonic=monotonic
        )
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def list_schedulable(
        self, bucket: SchedulerBucket, now: datetime
    ) -> list[Account] | None:
        """As :meth:`cache.near.NearCache.list_schedulable`."""
        return await self._get(bucket, now)

    async def get_snapshot(self, bucket: SchedulerBucket) -> list[Account] | None:
        """As :meth:`cache.near.NearCache.get_snapshot`."""
        return await self._get(bucket, None) or None

    def note_last_used(self, updates: Mapping[int, datetime]) -> None:
        """As :meth:`cache.near.NearCache.note_last_used`."""
        self.state.used_at(updates)

    async def _get(self, bucket: SchedulerBucket, now: datetime | None) -> list[Account] | None:
        self._ensure_started()
        name = str(bucket)
        read: list[Account] | None = None
        for _ in range(SERVE_ATTEMPTS):
            state, accounts = self.state.serve(name, now)
            if state == "hit":
                return accounts
            if state == "check":
                await self.check([name])
                continue
            read = await self._read(bucket)
            if read is None:
                return None
        if read is None:
            read = await self._read(bucket)
            if read is None:
                return None
        return [a for a in read if now is None or a.is_schedulable(now)]

    async def _read(self, bucket: SchedulerBucket) -> list[Account] | None:
        asked_at = self.monotonic()
        epoch = await self._epoch()
        read = await self.reader.read_snapshot(bucket)
        if read is None:
            self.state.forget(str(bucket))
            return None
        self.state.install(read, asked_at, epoch)
        return read.accounts

    async def _epoch(self) -> str:
        """As :meth:`cache.near.NearCache._epoch`."""
        held = self.state.epoch
        if held is not None and self.state.touch_seq is not None:
            return held
        keys = self.reader.keys
        with redis_errors("near cache epoch"):
            pipe = self.reader.client.pipeline(transaction=False)
            pipe.get(keys.last_used_seq)
            pipe.get(keys.epoch)
            seq, epoch = await pipe.execute()
        epoch = NO_EPOCH if epoch is None else text(epoch)
        if epoch != self.state.epoch:
            self.state.drop_all(epoch)
        if self.state.touch_seq is None:
            self.state.touch_seq = int(seq or 0)
        return epoch

    async def check(self, names: list[str] | None = None) -> None:
        """As :meth:`cache.near.NearCache.check`."""
        keys = self.reader.keys
        client = self.reader.client
        names = self.state.names() if names is None else names
        since = self.state.touch_seq
        asked_at = self.monotonic()
        with redis_errors("near cache check"):
            pipe = client.pipeline(transaction=False)
            pipe.get(keys.last_used_seq)
            pipe.get(keys.epoch)
            if since is not None:
                pipe.zrangebyscore(
                    keys.last_used_log, f"({since}", "+inf", 0, TOUCH_CHUNK, withscores=True
                )
            for name in names:
                pipe.hmget(keys.meta(SchedulerBucket.parse(name)), ["active", "gen"])
            replies = await pipe.execute()
            seq, epoch = int(replies[0] or 0), replies[1]
            touched: list[tuple[bytes, float]] = replies[2] if since is not None else []
            metas = replies[3:] if since is not None else replies[2:]
            held = NO_EPOCH if epoch is None else text(epoch)
            gens = {
                name: int(gen or 0) if active is not None else None
                for name, (active, gen) in zip(names, metas, strict=True)
            }
            self.state.checked(held, gens, asked_at)
            if since is None or self.state.touch_seq is None:
                # Not from here: a bucket read since may have taken an earlier position.
                if self.state.touch_seq is None:
                    self.state.touch_seq = seq
                return
            touches = read_touches(since, seq, touched, TOUCH_CHUNK)
            if touches.lost:
                self.state.drop_all(self.state.epoch)
                return
            if touches.ids:
                ids = touches.ids
                uses = await client.hmget(keys.last_used, ids)
                self.state.used({int(i): int(u) for i, u in zip(ids, uses, strict=True) if u})
            self.state.touch_seq = touches.next_since

    def _ensure_started(self) -> None:
        if not self.background or (self._task is not None and not self._task.done()):
            return
        self._stopping = False
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        pubsub: Any = None
        next_check = 0.0
        try:
            while not self._stopping:
                try:
                    if pubsub is None:
                        pubsub = self.reader.client.pubsub()
                        await pubsub.subscribe(self.reader.keys.changes_channel)
                    wait = min(max(next_check - self.monotonic(), 0.0), 1.0)
                    message = await pubsub.get_message(timeout=wait)
                    if message is not None:
                        self._on_message(message)
                    if self.monotonic() >= next_check:
                        next_check = self.monotonic() + self.check_seconds
                        await self.check()
                except (RedisError, OSError, CacheError) as exc:
                    logger.info("near cache: subscription or check failed, retrying: %s", exc)
                    self.state.distrust()
                    if pubsub is not None:
                        await self._close_quietly(pubsub)
                        pubsub = None
                    await asyncio.sleep(RETRY_SECONDS)
        finally:
            if pubsub is not None:
                await self._close_quietly(pubsub)

    def _on_message(self, message: Mapping[str, Any]) -> None:
        kind = message.get("type")
        if kind == "subscribe":
            self.state.distrust()
        elif kind == "message":
            push = parse_push(message["data"])
            if push is not None:
                self.state.pushed(*push)

    @staticmethod
    async def _close_quietly(pubsub: Any) -> None:
        try:
            await pubsub.aclose()
        except (RedisError, OSError) as exc:
            logger.debug("near cache: closing the subscription failed: %s", exc)

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
