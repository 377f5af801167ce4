"""Redis cache of schedulable accounts per bucket: versioned, atomic, race-free."""

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

__all__ = [
    "DEFAULT_CACHED_CREDENTIALS",
    "Account",
    "AccountStatus",
    "BucketInfo",
    "CacheError",
    "CacheUnavailable",
    "Clock",
    "CorruptPayload",
    "InvalidBucket",
    "RedisSchedulerCache",
    "SchedulerBucket",
    "SchedulerMode",
    "VersionNotReserved",
    "as_utc",
    "utc_now",
]
