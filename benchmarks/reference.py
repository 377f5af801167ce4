"""The original design, ported as it is, to measure against and to show its races.

Key layout and round trips follow the seed's ``SchedulerCache``: ``GetSnapshot`` is GET
ready, GET active, ZRANGE, MGET (four round trips, not atomic); ``SetSnapshot`` takes its
version when it writes, not when it read; ``UpdateLastUsed`` is a read-modify-write of
whole payloads; ``UnlockBucket`` deletes whatever lock is there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, cast

import redis

from cache import Account, SchedulerBucket

ACTIVATE = """
local version = tonumber(ARGV[1])
local active = tonumber(redis.call('GET', KEYS[1]) or '0')
if version < active then return 0 end
redis.call('SET', KEYS[1], version)
redis.call('SET', KEYS[2], '1')
redis.call('SADD', KEYS[3], ARGV[2])
if active > 0 and active ~= version then redis.call('EXPIRE', ARGV[3] .. active, 60) end
return 1
"""


class ReferenceCache:
    """The seed's Redis cache, faithfully naive."""

    def __init__(self, client: redis.Redis, prefix: str = "ref") -> None:
        self.client = client
        self.prefix = prefix
        self._activate = client.register_script(ACTIVATE)

    def _snap(self, bucket: SchedulerBucket, version: int | bytes) -> str:
        v = version.decode() if isinstance(version, bytes) else version
        return f"{self.prefix}:{bucket}:v{v}"

    def _acc(self, account_id: int | bytes) -> str:
        i = account_id.decode() if isinstance(account_id, bytes) else account_id
        return f"{self.prefix}:acc:{i}"

    def get_snapshot(self, bucket: SchedulerBucket) -> list[Account] | None:
        if self.client.get(f"{self.prefix}:ready:{bucket}") is None:
            return None
        active = cast(bytes | None, self.client.get(f"{self.prefix}:active:{bucket}"))
        if active is None:
            return None
        ids = cast(list[bytes], self.client.zrange(self._snap(bucket, active), 0, -1))
        if not ids:
            return None
        payloads = cast(list[bytes | None], self.client.mget([self._acc(i) for i in ids]))
        decoded = [Account.model_validate_json(p) for p in payloads if p is not None]
        return decoded if len(decoded) == len(ids) else None

    def set_snapshot(self, bucket: SchedulerBucket, accounts: Iterable[Account]) -> bool:
        version = int(self.client.incr(f"{self.prefix}:ver:{bucket}"))
        pipe = self.client.pipeline(transaction=False)
        members: dict[str, float] = {}
        for position, account in enumerate(accounts):
            pipe.set(self._acc(account.id), account.model_dump_json())
            members[str(account.id)] = position
        if members:
            pipe.zadd(self._snap(bucket, version), members)
        pipe.execute()
        activated = self._activate(
            keys=[
                f"{self.prefix}:active:{bucket}",
                f"{self.prefix}:ready:{bucket}",
                f"{self.prefix}:buckets",
            ],
            args=[version, str(bucket), f"{self.prefix}:{bucket}:v"],
        )
        if not activated:
            self.client.delete(self._snap(bucket, version))
        return bool(activated)

    def set_account(self, account: Account) -> None:
        self.client.set(self._acc(account.id), account.model_dump_json())

    def get_account(self, account_id: int) -> Account | None:
        raw = self.client.get(self._acc(account_id))
        return None if raw is None else Account.model_validate_json(raw)

    def update_last_used(self, updates: Mapping[int, datetime]) -> None:
        ids = list(updates)
        payloads = self.client.mget([self._acc(i) for i in ids])
        pipe = self.client.pipeline(transaction=False)
        for account_id, payload in zip(ids, payloads, strict=True):
            if payload is None:
                continue
            account = Account.model_validate_json(payload)
            changed = account.model_copy(update={"last_used_at": updates[account_id]})
            pipe.set(self._acc(account_id), changed.model_dump_json())
        pipe.execute()

    def try_lock_bucket(self, bucket: SchedulerBucket, ttl_seconds: float) -> bool:
        key = f"{self.prefix}:lock:{bucket}"
        return bool(self.client.set(key, "1", nx=True, px=int(ttl_seconds * 1000)))

    def unlock_bucket(self, bucket: SchedulerBucket) -> None:
        self.client.delete(f"{self.prefix}:lock:{bucket}")

    def set_outbox_watermark(self, event_id: int) -> None:
        self.client.set(f"{self.prefix}:outbox:watermark", event_id)

    def get_outbox_watermark(self) -> int:
        raw: Any = self.client.get(f"{self.prefix}:outbox:watermark")
        return int(raw) if raw is not None else 0
