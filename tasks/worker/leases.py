"""Re-sending rebuilds whose queued task was lost: the other half of the leases of
:mod:`cache.rebuilds`."""

from __future__ import annotations

import logging
from contextlib import suppress

from cache import CacheError, RedisSchedulerCache
from tasks import stats
from tasks.requests import send_rebuild

logger = logging.getLogger(__name__)


def reclaim_lost_rebuilds(cache: RedisSchedulerCache) -> int:
    """Send anew the rebuild of every bucket whose lease expired with requests still
    outstanding: its task was lost with a killed worker (reserved, or waiting for its
    countdown). Run by every outbox poll, so a bucket is rebuilt within seconds of a
    change that coalesced into a lost task, not after the broker's visibility timeout.
    Returns how many were sent."""
    sent = cache.reclaim_rebuilds(lambda bucket: send_rebuild(cache, bucket))
    if sent:
        logger.warning("re-sent %d rebuilds whose queued task was lost (lease expired)", sent)
        with suppress(CacheError):
            cache.record_stats({stats.REBUILD_REQUESTS_REQUEUED: sent})
    return sent
