"""``list_schedulable`` for asyncio web apps (FastAPI, Starlette), on ``redis.asyncio``.

The same buckets, the same near cache and the same rules as :mod:`tasks.web.reader`: a
request awaits Redis only when its bucket is not held and confirmed, and never blocks
the event loop. What a miss, a corrupt key or an unreachable Redis needs (the source
read, the fallback write, the rebuild request) runs in a thread with the synchronous
code the threaded reader uses, so both follow one set of rules::

    @app.get("/pick")
    async def pick(group: int, platform: str) -> ...:
        accounts = await list_schedulable_async(group, platform)

    @asynccontextmanager
    async def lifespan(app):
        yield
        await aclose()

The client and near cache belong to the event loop that first used them, and are built
again for another loop, a forked process or new settings (:func:`tasks.runtime.reset`).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cache import Account, AsyncNearCache, AsyncSchedulerReader, CacheUnavailable, CorruptKey
from tasks import runtime
from tasks.connections import cache_options
from tasks.settings import Settings
from tasks.web.marks import without_marked
from tasks.web.reader import on_corrupt_key, on_miss, on_unavailable, resolve, schedulable


@dataclass(frozen=True, slots=True)
class Reading:
    """What one event loop of one process reads through, for the settings it was built from."""

    settings: Settings
    loop: asyncio.AbstractEventLoop
    pid: int
    reader: AsyncSchedulerReader
    near: AsyncNearCache | None

    def serves(self, s: Settings, loop: asyncio.AbstractEventLoop) -> bool:
        return self.settings is s and self.loop is loop and self.pid == os.getpid()

    async def aclose(self) -> None:
        if self.near is not None:
            await self.near.aclose()
        await self.reader.aclose()


_reading: Reading | None = None


async def reading() -> Reading:
    """The running loop's reader and near cache, built on first use."""
    global _reading
    s = runtime.settings()
    loop = asyncio.get_running_loop()
    held = _reading
    if held is not None and held.serves(s, loop):
        return held
    _reading = None
    if held is not None and held.loop is loop and held.pid == os.getpid():
        await held.aclose()
    reader = AsyncSchedulerReader.from_url(s.effective_web_redis_url, **cache_options(s))
    near = (
        AsyncNearCache(
            reader,
            max_buckets=s.near_cache_buckets,
            max_accounts=s.near_cache_accounts,
            max_decoded=s.near_cache_decoded,
        )
        if s.near_cache
        else None
    )
    _reading = Reading(s, loop, os.getpid(), reader, near)
    return _reading


async def list_schedulable_async(
    group_id: int, platform: str, has_force: bool = False, *, now: datetime | None = None
) -> Sequence[Account]:
    """As :func:`tasks.web.reader.list_schedulable`, awaited."""
    now = now or datetime.now(UTC)
    return without_marked(await _list_schedulable(group_id, platform, has_force, now), now)


async def _list_schedulable(
    group_id: int, platform: str, has_force: bool, now: datetime
) -> Sequence[Account]:
    s, bucket, now = resolve(group_id, platform, has_force, now)
    held = await reading()
    try:
        if held.near is not None:
            found = await held.near.list_schedulable(bucket, now)
            if found is not None:
                return found
        else:
            read = await held.reader.read_snapshot(bucket)
            if read is not None:
                return schedulable(read.accounts, now)
    except CacheUnavailable as exc:
        return schedulable(await asyncio.to_thread(on_unavailable, bucket, s, exc), now)
    except CorruptKey as exc:
        cache = runtime.get_web_cache()
        return schedulable(await asyncio.to_thread(on_corrupt_key, cache, bucket, s, exc), now)
    return schedulable(await asyncio.to_thread(on_miss, runtime.get_web_cache(), bucket, s), now)


def note_last_used(updates: Mapping[int, datetime], picked_by: object = None) -> None:
    """This process's own touches, for its asyncio near cache (``record_last_used``
    calls it; safe from any thread), unless that near cache is ``picked_by``, the one
    whose pick laid them over already."""
    held = _reading
    if (
        held is not None
        and held.near is not None
        and held.near is not picked_by
        and held.pid == os.getpid()
    ):
        held.near.note_last_used(updates)


async def aclose() -> None:
    """Stop the near cache's task and close the asyncio client (at the app's shutdown)."""
    global _reading
    held, _reading = _reading, None
    if held is not None and held.loop is asyncio.get_running_loop():
        await held.aclose()
