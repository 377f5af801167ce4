"""The Redis scheduling cache: snapshots, accounts, last use, locks, registry, outbox."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cache import keys as ttl
from cache.codec import DEFAULT_CACHED_CREDENTIALS, AccountCodec, from_ms, to_ms
from cache.errors import CacheError, CacheUnavailable, CorruptPayload, VersionNotReserved
from cache.keys import KeySpace
from cache.models import Account, BucketInfo, SchedulerBucket, validate_token
from cache.scripts import Scripts

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@contextmanager
def redis_errors(action: str) -> Iterator[None]:
    """Re-raise redis-py failures as this package's errors, naming the action."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError) as exc:
        raise CacheUnavailable(f"redis unavailable during {action}: {exc}") from exc
    except RedisError as exc:
        raise CacheError(f"redis error during {action}: {exc}") from exc


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _raw(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


class RedisSchedulerCache:
    """Versioned snapshots of each bucket's schedulable accounts, in Redis.

    Writers reserve a version *before* they read the source and activate it with a
    compare-and-set, so the snapshot built from the newest read wins::

        rebuild A: reserve v5 .. read (slow, old data) ............ set v5 -> refused
        rebuild B:      reserve v6 .. read (new data) .. set v6 -> active

    Readers get the active snapshot in one atomic script call.
    """

    def __init__(
        self,
        client: redis.Redis,  # type: ignore[type-arg]
        *,
        prefix: str = "sched",
        snapshot_grace_seconds: int = ttl.SNAPSHOT_GRACE_SECONDS,
        cached_credentials: Iterable[str] = DEFAULT_CACHED_CREDENTIALS,
        clock: Clock = utc_now,
    ) -> None:
        if snapshot_grace_seconds < 1:
            raise ValueError(f"snapshot_grace_seconds must be >= 1, got {snapshot_grace_seconds}")
        self.client = client
        self.keys = KeySpace(prefix)
        self.grace_seconds = snapshot_grace_seconds
        self.codec = AccountCodec(cached_credentials)
        self.clock = clock
        self._scripts = Scripts(client)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        socket_timeout: float = 5.0,
        **kwargs: Any,
    ) -> RedisSchedulerCache:
        """A cache over a new client for ``url`` (``redis://``, ``rediss://``, ``unix://``).

        Timeouts are set so that a dead server gives :class:`CacheUnavailable` quickly
        instead of a hang.
        """
        client = redis.Redis.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=min(socket_timeout, 2.0),
            health_check_interval=30,
        )
        return cls(client, **kwargs)

    # -- snapshots -------------------------------------------------------------------
    def get_snapshot(self, bucket: SchedulerBucket) -> list[Account] | None:
        """The active snapshot's accounts in order, or None on a miss.

        A miss: no active version, an empty snapshot, a missing account payload, or a
        corrupt one (logged). Each account's ``last_used_at`` is the cached last use.
        """
        with redis_errors(f"get_snapshot {bucket}"):
            reply = self._scripts["get_snapshot"](
                keys=[self.keys.meta(bucket), self.keys.accounts, self.keys.last_used],
                args=[self.keys.snapshot_stem(bucket)],
            )
        if not reply:
            return None
        version, ids, payloads, last_used = reply
        decode = self.codec.decode
        accounts: list[Account] = []
        try:
            for raw_id, payload, used in zip(ids, payloads, last_used, strict=True):
                if payload is None:
                    logger.info(
                        "snapshot miss for %s v%s: account %s has no payload",
                        bucket, _text(version), _text(raw_id),
                    )
                    return None
                accounts.append(decode(int(raw_id), _raw(payload), used and _raw(used)))
        except CorruptPayload as exc:
            logger.warning("snapshot miss for %s v%s: %s", bucket, _text(version), exc)
            return None
        return accounts

    def reserve_version(self, bucket: SchedulerBucket) -> int:
        """A new version number for ``bucket``; call it before reading the source."""
        with redis_errors(f"reserve_version {bucket}"):
            return int(self.client.incr(self.keys.version_counter(bucket)))

    def set_snapshot(
        self,
        bucket: SchedulerBucket,
        accounts: Iterable[Account],
        version: int | None = None,
        *,
        rebuild_ms: float | None = None,
    ) -> bool:
        """Write ``accounts`` as ``version`` and activate it if nothing newer is active.

        Returns True when it became active. Without ``version`` one is reserved now,
        which is only right when ``accounts`` were read after this call began: a
        rebuilder should call :meth:`reserve_version` before it reads the source.
        Account payloads are written only by the winner, and never over a newer revision.
        """
        if version is None:
            version = self.reserve_version(bucket)
        if version < 1:
            raise VersionNotReserved(f"bucket {bucket}: version {version} was never reserved")
        encode = self.codec.encode
        args: list[Any] = [
            version,
            self.keys.snapshot_stem(bucket),
            str(bucket),
            self.grace_seconds,
            to_ms(self.clock()),
            "" if rebuild_ms is None else f"{rebuild_ms:.3f}",
        ]
        seen: set[int] = set()
        for account in accounts:
            if account.id in seen:
                raise ValueError(f"bucket {bucket}: account {account.id} appears twice")
            seen.add(account.id)
            used = account.last_used_at
            args += (
                account.id,
                -1 if account.revision is None else account.revision,
                encode(account),
                "" if used is None else to_ms(used),
            )
        with redis_errors(f"set_snapshot {bucket} v{version}"):
            status, other = self._scripts["set_snapshot"](
                keys=[
                    self.keys.meta(bucket),
                    self.keys.version_counter(bucket),
                    self.keys.accounts,
                    self.keys.revisions,
                    self.keys.last_used,
                    self.keys.registry,
                ],
                args=args,
            )
        if status == -1:
            raise VersionNotReserved(
                f"bucket {bucket}: version {version} was never reserved (last reserved: {other})"
            )
        if status == 0:
            logger.info(
                "bucket %s: v%s not activated, v%s is newer", bucket, version, int(other)
            )
            return False
        return True

    def bucket_info(self, bucket: SchedulerBucket) -> BucketInfo:
        """Active version, size, age and last rebuild time of one bucket."""
        with redis_errors(f"bucket_info {bucket}"):
            pipe = self.client.pipeline(transaction=False)
            pipe.hmget(self.keys.meta(bucket), ["active", "count", "built_at", "rebuild_ms"])
            pipe.get(self.keys.version_counter(bucket))
            (active, count, built_at, rebuild_ms), reserved = pipe.execute()
        return BucketInfo(
            bucket=bucket,
            active_version=int(active) if active is not None else None,
            reserved_version=int(reserved or 0),
            account_count=int(count or 0),
            built_at=from_ms(built_at) if built_at is not None else None,
            rebuild_ms=float(rebuild_ms) if rebuild_ms is not None else None,
        )

    # -- accounts --------------------------------------------------------------------
    def get_account(self, account_id: int) -> Account | None:
        """The cached account, or None; raise :class:`CorruptPayload` if undecodable."""
        with redis_errors(f"get_account {account_id}"):
            pipe = self.client.pipeline(transaction=False)
            pipe.hget(self.keys.accounts, account_id)
            pipe.hget(self.keys.last_used, account_id)
            payload, used = pipe.execute()
        if payload is None:
            return None
        return self.codec.decode(account_id, _raw(payload), used and _raw(used))

    def set_account(self, account: Account) -> bool:
        """Store ``account`` unless a newer revision is cached; True when stored."""
        used = account.last_used_at
        with redis_errors(f"set_account {account.id}"):
            stored = self._scripts["set_account"](
                keys=[self.keys.accounts, self.keys.revisions, self.keys.last_used],
                args=[
                    account.id,
                    -1 if account.revision is None else account.revision,
                    self.codec.encode(account),
                    "" if used is None else to_ms(used),
                ],
            )
        return bool(stored)

    def delete_account(self, account_id: int, revision: int | None = None) -> bool:
        """Forget an account; with ``revision``, only if nothing newer is cached."""
        with redis_errors(f"delete_account {account_id}"):
            deleted = self._scripts["delete_account"](
                keys=[self.keys.accounts, self.keys.revisions, self.keys.last_used],
                args=[account_id, "" if revision is None else revision],
            )
        return bool(deleted)

    # -- last use --------------------------------------------------------------------
    def update_last_used(
        self, updates: Mapping[int, datetime], *, record_pending: bool = False
    ) -> int:
        """Move last-use times forward in one round trip; unknown ids are ignored.

        With ``record_pending`` the times are also kept in a pending hash until
        :meth:`ack_pending_last_used` says the source database has them. Returns how
        many cached times moved forward.
        """
        if not updates:
            return 0
        args: list[Any] = ["1" if record_pending else "0"]
        for account_id, used in updates.items():
            args += (int(account_id), to_ms(used))
        with redis_errors("update_last_used"):
            moved = self._scripts["update_last_used"](
                keys=[self.keys.last_used, self.keys.accounts, self.keys.last_used_pending],
                args=args,
            )
        return int(moved)

    def pending_last_used(self) -> dict[int, datetime]:
        """Last-use times not yet acknowledged as written to the source database."""
        with redis_errors("pending_last_used"):
            raw = self.client.hgetall(self.keys.last_used_pending)
        return {int(k): from_ms(v) for k, v in raw.items()}

    def ack_pending_last_used(self, written: Mapping[int, datetime]) -> int:
        """Drop pending times the database now has; newer pending times stay."""
        if not written:
            return 0
        args: list[Any] = []
        for account_id, used in written.items():
            args += (int(account_id), to_ms(used))
        with redis_errors("ack_pending_last_used"):
            return int(self._scripts["ack_last_used"](
                keys=[self.keys.last_used_pending], args=args
            ))

    # -- locks -----------------------------------------------------------------------
    def try_lock_bucket(
        self, bucket: SchedulerBucket, ttl_seconds: float, token: str | None = None
    ) -> str | None:
        """Take the bucket's rebuild lock: a token when taken, None when busy.

        Passing the token of an earlier hold renews it (a redelivered task whose first
        run was killed gets its own lock back at once).
        """
        return self._lock(self.keys.lock(bucket), ttl_seconds, token, f"lock {bucket}")

    def try_lock(self, name: str, ttl_seconds: float, token: str | None = None) -> str | None:
        """Take a named lock for a singleton job; same contract as :meth:`try_lock_bucket`."""
        validate_token(name, "lock name")
        return self._lock(self.keys.named_lock(name), ttl_seconds, token, f"lock {name}")

    def unlock(self, name: str, token: str) -> bool:
        """Release a named lock if ``token`` still holds it."""
        validate_token(name, "lock name")
        with redis_errors(f"unlock {name}"):
            return bool(self._scripts["unlock"](keys=[self.keys.named_lock(name)], args=[token]))

    def unlock_bucket(self, bucket: SchedulerBucket, token: str) -> bool:
        """Release the lock if ``token`` still holds it; False when it had moved on."""
        with redis_errors(f"unlock {bucket}"):
            return bool(self._scripts["unlock"](keys=[self.keys.lock(bucket)], args=[token]))

    def _lock(self, key: str, ttl_seconds: float, token: str | None, action: str) -> str | None:
        if ttl_seconds <= 0:
            raise ValueError(f"lock ttl must be > 0 seconds, got {ttl_seconds}")
        token = token or secrets.token_hex(16)
        with redis_errors(action):
            held = self._scripts["lock"](keys=[key], args=[token, int(ttl_seconds * 1000)])
        return token if held else None

    # -- registry --------------------------------------------------------------------
    def list_buckets(self) -> list[SchedulerBucket]:
        """Every registered bucket, sorted; malformed entries are logged and skipped."""
        with redis_errors("list_buckets"):
            members = self.client.smembers(self.keys.registry)
        buckets: list[SchedulerBucket] = []
        for raw in members:
            try:
                buckets.append(SchedulerBucket.parse(_text(raw)))
            except CacheError as exc:
                logger.warning("skipping registry entry: %s", exc)
        return sorted(buckets, key=lambda b: (b.group_id, b.platform, b.mode.value))

    def retire_bucket(self, bucket: SchedulerBucket) -> bool:
        """Stop serving and refreshing ``bucket``; True when it was known."""
        with redis_errors(f"retire_bucket {bucket}"):
            return bool(self._scripts["retire_bucket"](
                keys=[self.keys.meta(bucket), self.keys.registry, self.keys.rebuild_state(bucket)],
                args=[self.keys.snapshot_stem(bucket), str(bucket), self.grace_seconds],
            ))

    # -- outbox ----------------------------------------------------------------------
    def get_outbox_watermark(self) -> int:
        with redis_errors("get_outbox_watermark"):
            raw = self.client.get(self.keys.outbox_watermark)
        return int(raw) if raw is not None else 0

    def set_outbox_watermark(self, event_id: int) -> bool:
        """Advance the watermark to ``event_id``; False when it would go backwards."""
        return self.advance_outbox(event_id)

    def advance_outbox(
        self,
        event_id: int,
        *,
        new_gaps: Iterable[int] = (),
        resolved_gaps: Iterable[int] = (),
    ) -> bool:
        """Advance the watermark and, in the same step, update the skipped-id set.

        ``new_gaps``: ids below ``event_id`` that were not visible yet (their
        transaction had not committed); ``resolved_gaps``: ids applied or given up on.
        """
        if event_id < 0:
            raise ValueError(f"outbox watermark must be >= 0, got {event_id}")
        gaps = [int(i) for i in new_gaps]
        args: list[Any] = [event_id, to_ms(self.clock()), len(gaps), *gaps]
        args += [int(i) for i in resolved_gaps]
        with redis_errors("advance_outbox"):
            return bool(self._scripts["advance_watermark"](
                keys=[self.keys.outbox_watermark, self.keys.outbox_gaps], args=args
            ))

    def outbox_gaps(self) -> dict[int, datetime]:
        """Outbox ids skipped over, with when each was first missed."""
        with redis_errors("outbox_gaps"):
            raw = self.client.zrange(self.keys.outbox_gaps, 0, -1, withscores=True)
        return {int(member): from_ms(int(score)) for member, score in raw}

    # -- coalesced rebuild requests --------------------------------------------------
    def request_rebuild(self, bucket: SchedulerBucket) -> bool:
        """Note a rebuild request; True when the caller must enqueue a rebuild task."""
        with redis_errors(f"request_rebuild {bucket}"):
            return bool(self._scripts["request_rebuild"](
                keys=[self.keys.rebuild_state(bucket)], args=[ttl.REBUILD_STATE_TTL_SECONDS]
            ))

    def begin_rebuild(self, bucket: SchedulerBucket, *, force: bool = False) -> int | None:
        """Call holding the lock, before reading the source.

        Returns the request generation this run covers, or None when every request so
        far is covered by a finished run already (skip the rebuild). Requests from now
        on make :meth:`request_rebuild` return True again.
        """
        with redis_errors(f"begin_rebuild {bucket}"):
            generation = int(self._scripts["begin_rebuild"](
                keys=[self.keys.rebuild_state(bucket)],
                args=["1" if force else "0", ttl.REBUILD_STATE_TTL_SECONDS],
            ))
        return None if generation < 0 else generation

    def finish_rebuild(self, bucket: SchedulerBucket, generation: int) -> int:
        """Record a written rebuild; returns how many requests arrived during it."""
        with redis_errors(f"finish_rebuild {bucket}"):
            return int(self._scripts["finish_rebuild"](
                keys=[self.keys.rebuild_state(bucket)],
                args=[generation, ttl.REBUILD_STATE_TTL_SECONDS],
            ))

    # -- figures for status views ----------------------------------------------------
    def record_stats(
        self, counters: Mapping[str, int] | None = None, values: Mapping[str, str] | None = None
    ) -> None:
        """Add to named counters and set named values, in one round trip."""
        with redis_errors("record_stats"):
            pipe = self.client.pipeline(transaction=False)
            for name, amount in (counters or {}).items():
                pipe.hincrby(self.keys.stats, name, amount)
            if values:
                pipe.hset(self.keys.stats, mapping=dict(values))
            pipe.execute()

    def stats(self) -> dict[str, str]:
        """Every counter and value recorded with :meth:`record_stats`."""
        with redis_errors("stats"):
            raw = self.client.hgetall(self.keys.stats)
        return {_text(k): _text(v) for k, v in raw.items()}

    def ping(self) -> None:
        """Raise :class:`CacheUnavailable` unless Redis answers."""
        with redis_errors("ping"):
            self.client.ping()
