"""Uncached snapshot reads for asyncio web apps, on ``redis.asyncio``: the reads of
:class:`cache.reader.SnapshotReader`, with the same semantics (the near cache over them
is :class:`cache.aio.AsyncNearCache`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any, cast

import redis.asyncio

from cache.base import redis_errors, text
from cache.codec import DEFAULT_CACHED_CREDENTIALS, AccountCodec
from cache.connect import connect_async
from cache.keys import READ_GROUP, KeySpace
from cache.models import Account, SchedulerBucket
from cache.reader import MOVED_ATTEMPTS, READ_ATTEMPTS
from cache.reads import Expired, Moved, ReadPlan, SnapshotRead, VersionHints
from cache.rowread import HeldRows, RowPlan, RowRead
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
        self.hints = VersionHints()
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
        read = await self._read(ReadPlan, bucket)
        assert read is None or isinstance(read, SnapshotRead)
        return read

    async def read_rows(self, bucket: SchedulerBucket, held: HeldRows) -> RowRead | None:
        """As :meth:`cache.reader.SnapshotReader.read_rows`."""
        read = await self._read(partial(RowPlan, held=held), bucket)
        assert read is None or isinstance(read, RowRead)
        return read

    async def _read(
        self, plan_of: Callable[..., ReadPlan], bucket: SchedulerBucket
    ) -> SnapshotRead | RowRead | None:
        with redis_errors(f"get_snapshot {bucket}", self.keys.meta(bucket)):
            expired = moved = 0
            while expired < READ_ATTEMPTS and moved < MOVED_ATTEMPTS:
                try:
                    plan = plan_of(self.keys, self.codec, bucket, hints=self.hints)
                    return await self._read_once(plan)
                except Moved as exc:
                    moved += 1
                    logger.debug("reading again: %s", exc)
                except Expired as exc:
                    expired += 1
                    logger.info("snapshot %s expired mid-read; reading again", exc)
        return None

    async def _read_once(self, plan: ReadPlan) -> SnapshotRead | RowRead | None:
        keys, args = plan.first_call()
        if not plan.absorb_first(await self._scripts["read_snapshot"](keys=keys, args=args)):
            return None
        ranges = plan.rest_ranges()
        if ranges:
            pipe = self.client.pipeline(transaction=False)
            for key, start, end in ranges:
                pipe.lrange(key, start, end)
            # As the threaded reader: an insert or a move in place since the first
            # chunk shifts the ids after it, and moves gen; read again then.
            pipe.hget(self.keys.meta(plan.bucket), "gen")
            *parts, gen = await pipe.execute()
            if int(gen or 0) != plan.gen:
                raise Expired(f"bucket {plan.bucket} v{plan.version} (changed mid-read)")
            calls = plan.absorb_rest(parts)
            plan.absorb_entries(await self._hmgets(calls))
        payloads, uses = plan.fetches()
        if isinstance(plan, RowPlan):
            plan.absorb_uses(await self._hmgets(uses))
            for start in range(0, len(payloads), READ_GROUP):
                group = payloads[start : start + READ_GROUP]
                plan.absorb_payloads(await self._hmgets(group))
            return plan.finish_rows()
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
