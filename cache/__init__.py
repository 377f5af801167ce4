"""Redis cache of schedulable accounts per bucket: versioned, atomic, race-free."""

from cache.aio import AsyncNearCache, AsyncSchedulerReader
from cache.base import Clock, utc_now
from cache.client import RedisSchedulerCache
from cache.codec import DEFAULT_CACHED_CREDENTIALS
from cache.errors import (
    CacheError,
    CacheUnavailable,
    CorruptKey,
    CorruptPayload,
    InvalidAccountId,
    InvalidBucket,
    ScriptError,
    VersionNotReserved,
    brief,
)
from cache.models import (
    MAX_ID,
    Account,
    AccountStatus,
    BucketInfo,
    SchedulerBucket,
    SchedulerMode,
    as_utc,
    check_account_id,
)
from cache.near import NearCache
from cache.patches import Reach
from cache.placements import Placement
from cache.reader import SnapshotReader
from cache.reads import SnapshotRead
from cache.replies import Place

__all__ = [
    "DEFAULT_CACHED_CREDENTIALS",
    "MAX_ID",
    "Account",
    "AccountStatus",
    "AsyncNearCache",
    "AsyncSchedulerReader",
    "BucketInfo",
    "CacheError",
    "CacheUnavailable",
    "Clock",
    "CorruptKey",
    "CorruptPayload",
    "InvalidAccountId",
    "InvalidBucket",
    "NearCache",
    "Place",
    "Placement",
    "Reach",
    "RedisSchedulerCache",
    "SchedulerBucket",
    "SchedulerMode",
    "ScriptError",
    "SnapshotRead",
    "SnapshotReader",
    "VersionNotReserved",
    "as_utc",
    "brief",
    "check_account_id",
    "utc_now",
]
