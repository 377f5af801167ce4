"""Asking for a rebuild from a web process: as the web role, with its own Redis and
broker URLs (``SCHED_WEB_REDIS_URL``, ``SCHED_WEB_BROKER_URL``, docs/security.md). Workers
and tools ask through :mod:`tasks.requests` with their own."""

from __future__ import annotations

from cache import SchedulerBucket
from tasks import runtime
from tasks.requests import REBUILD_TASK, request_through

__all__ = ["REBUILD_TASK", "request_rebuild"]


def request_rebuild(bucket: SchedulerBucket | str) -> bool:
    """Ask for a rebuild of ``bucket``; True when this call enqueued the task.

    Requests coalesce: while a task is queued and has not started, more requests only
    count. A bucket of a platform that is not configured raises
    :class:`tasks.buckets.UnknownPlatform` and leaves nothing behind.
    """
    return request_through(
        runtime.get_web_cache(), bucket, broker_url=runtime.settings().effective_web_broker_url
    )
