"""What web processes, workers and tools all ask for: a rebuild of a bucket, and the
repair of keys of the wrong type. Kept apart from both sides, so that a worker loads
nothing of :mod:`tasks.web` and a web process nothing of :mod:`tasks.worker`.

Rebuild requests coalesce: while a task is queued and has not started, more requests
only count. One that arrives after the task started enqueues another, so a change made
during a rebuild is always followed by a rebuild that sees it.
"""

from __future__ import annotations

import logging
from contextlib import suppress

from cache import CacheError, CorruptKey, RedisSchedulerCache, SchedulerBucket
from tasks import runtime, stats
from tasks.buckets import check_platform
from tasks.celery import app

logger = logging.getLogger(__name__)

# By name: a web process sends the task without importing the worker's code; the route
# (the rebuild queue) comes from the app's task_routes.
REBUILD_TASK = "tasks.rebuild_bucket"


def request_rebuild(bucket: SchedulerBucket | str) -> bool:
    """Ask for a rebuild of ``bucket`` as a worker or a tool: with the workers' Redis
    and broker. True when this call enqueued the task.

    A bucket of a platform that is not configured raises
    :class:`tasks.buckets.UnknownPlatform` and leaves nothing behind.
    """
    return request_through(runtime.get_cache(), bucket, broker_url=None)


def request_through(
    cache: RedisSchedulerCache, bucket: SchedulerBucket | str, *, broker_url: str | None
) -> bool:
    """Note the request in ``cache`` and, when no task is queued yet, send one through
    ``broker_url`` (None: the app's own broker)."""
    parsed = bucket if isinstance(bucket, SchedulerBucket) else SchedulerBucket.parse(bucket)
    check_platform(parsed.platform, runtime.settings())
    if not cache.request_rebuild(parsed):
        return False
    send_rebuild(cache, parsed, broker_url=broker_url)
    return True


def send_rebuild(
    cache: RedisSchedulerCache, bucket: SchedulerBucket, *, broker_url: str | None = None
) -> None:
    """Enqueue the rebuild task of ``bucket``, whose request this process has taken."""
    try:
        _send(bucket, broker_url)
    except Exception:
        logger.error("could not enqueue the rebuild of bucket %s", bucket)
        with suppress(CacheError):
            cache.abandon_rebuild_request(bucket)
        raise
    with suppress(CacheError):
        cache.record_stats({stats.REBUILD_REQUESTS_SENT: 1})


def _send(bucket: SchedulerBucket, broker_url: str | None) -> None:
    if broker_url is None or broker_url == runtime.settings().effective_broker_url:
        app.send_task(REBUILD_TASK, (str(bucket),))
        return
    # The web role's own broker user (docs/security.md): a connection per send, which
    # is rare (requests coalesce), rather than a pool that outlives a settings reset.
    with app.connection_for_write(broker_url) as connection:
        app.send_task(REBUILD_TASK, (str(bucket),), connection=connection)


def repair_wrong_types(cache: object, exc: CorruptKey) -> None:
    """Delete the keys of the wrong type under a failed last-use write, and name them:
    the next write recreates them instead of failing the same way forever."""
    find = getattr(cache, "wrong_type_keys", None)
    repaired: object = "unknown (not a Redis cache)"
    if callable(find):
        try:
            repaired = find(repair=True) or "none any more"
        except CacheError as error:
            repaired = f"unknown ({error})"
    logger.error("last-use write refused: %s; deleted keys of the wrong type: %s", exc, repaired)
