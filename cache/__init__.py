"""Redis cache of schedulable accounts per bucket: versioned, atomic, race-free."""

from cache.aio import AsyncNearCache, AsyncSchedulerReader
from cache.base import Clock, utc_now
from cache.client import RedisSchedulerCache
from cache.codec import DEFAULT_CACHED_CREDENTIALS
from cache.errors import (
    CacheError,
    CacheUnavailable,
    CorruptPayload,
    InvalidBucket,
    VersionNotReserved,
)
from cache.models import (
    Account,
    AccountStatus,
    BucketInfo,
    SchedulerBucket,
    SchedulerMode,
    as_utc,
)
from cache.near import NearCache
from cache.reads import SnapshotRead

__all__ = [
    "DEFAULT_CACHED_CREDENTIALS",
    "Account",
    "AccountStatus",
    "AsyncNearCache",
    "AsyncSchedulerReader",
    "BucketInfo",
    "CacheError",
    "CacheUnavailable",
    "Clock",
    "CorruptPayload",
    "InvalidBucket",
    "NearCache",
    "RedisSchedulerCache",
    "SchedulerBucket",
    "SchedulerMode",
    "SnapshotRead",
    "VersionNotReserved",
    "as_utc",
    "utc_now",
]
