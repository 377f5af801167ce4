"""Asking for a rebuild: the coalesced request any process may make.

Requests coalesce: while a task is queued and has not started, more requests only
count. One that arrives after the task started enqueues another, so a change made during
a rebuild is always followed by a rebuild that sees it.
"""

from __future__ import annotations

import logging
from contextlib import suppress

from cache import CacheError, RedisSchedulerCache, SchedulerBucket
from tasks import runtime, stats
from tasks.buckets import check_platform
from tasks.celery import app

logger = logging.getLogger(__name__)

# By name: a web process sends the task without importing the worker's code; the route
# (the rebuild queue) comes from celeryconfig's task_routes.
REBUILD_TASK = "tasks.rebuild_bucket"


def request_rebuild(bucket: SchedulerBucket | str) -> bool:
    """Ask for a rebuild of ``bucket``; True when this call enqueued the task.

    A bucket of a platform that is not configured raises
    :class:`tasks.buckets.UnknownPlatform` and leaves nothing behind.
    """
    parsed = bucket if isinstance(bucket, SchedulerBucket) else SchedulerBucket.parse(bucket)
    check_platform(parsed.platform, runtime.settings())
    cache = runtime.get_web_cache()
    if not cache.request_rebuild(parsed):
        return False
    send_rebuild(cache, parsed)
    return True


def send_rebuild(cache: RedisSchedulerCache, bucket: SchedulerBucket) -> None:
    """Enqueue the rebuild task of ``bucket``, whose request this process has taken."""
    try:
        _send(bucket)
    except Exception:
        logger.error("could not enqueue the rebuild of bucket %s", bucket)
        with suppress(CacheError):
            cache.abandon_rebuild_request(bucket)
        raise
    with suppress(CacheError):
        cache.record_stats({stats.REBUILD_REQUESTS_SENT: 1})


def _send(bucket: SchedulerBucket) -> None:
    s = runtime.settings()
    url = s.effective_web_broker_url
    if url == s.effective_broker_url:
        app.send_task(REBUILD_TASK, (str(bucket),))
        return
    # The web role's own broker user (docs/security.md): a connection per send, which
    # is rare (requests coalesce), rather than a pool that outlives a settings reset.
    with app.connection_for_write(url) as connection:
        app.send_task(REBUILD_TASK, (str(bucket),), connection=connection)
