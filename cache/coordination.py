"""Coordination between workers: locks, the bucket registry, the outbox position,
coalesced rebuild requests and the figures status views read."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from cache.base import CacheBase, redis_errors, text
from cache.codec import from_ms, to_ms
from cache.errors import CacheError, CorruptKey, brief
from cache.keys import REBUILD_STATE_TTL_SECONDS
from cache.models import SchedulerBucket, validate_token

logger = logging.getLogger(__name__)


class CoordinationMixin(CacheBase):
    """The parts of the cache that coordinate background work rather than hold accounts."""

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
                buckets.append(SchedulerBucket.parse(text(raw)))
            except CacheError as exc:
                logger.warning("skipping registry entry: %s", exc)
        return sorted(buckets, key=lambda b: (b.group_id, b.platform, b.mode.value))

    def retire_bucket(self, bucket: SchedulerBucket) -> bool:
        """Stop serving and refreshing ``bucket``; True when it was known."""
        k = self.keys
        with redis_errors(f"retire_bucket {bucket}"):
            active = self._scripts["retire_bucket"](
                keys=[k.meta(bucket), k.rebuild_state(bucket)],
                args=[
                    k.snapshot_stem(bucket),
                    k.payloads_stem(bucket),
                    k.entries_stem(bucket),
                    self.grace_seconds,
                    k.changes_channel,
                    str(bucket),
                ],
            )
            removed = self.client.srem(k.registry, str(bucket))
        return bool(active) or bool(removed)

    # -- outbox ----------------------------------------------------------------------
    def get_outbox_watermark(self) -> int:
        """The outbox position; :class:`CorruptKey` naming the key if it is unreadable."""
        key = self.keys.outbox_watermark
        with redis_errors("get_outbox_watermark", key):
            raw = self.client.get(key)
        if raw is None:
            return 0
        try:
            value = int(raw)
        except ValueError:
            value = -1
        if value < 0:
            raise CorruptKey(f"outbox watermark {key} holds {brief(raw)}, not an id", key)
        return value

    # -- epoch -----------------------------------------------------------------------
    def epoch(self) -> str | None:
        """The id of the state Redis holds; None when it was lost (see ``keys.epoch``)."""
        with redis_errors("epoch", self.keys.epoch):
            raw = self.client.get(self.keys.epoch)
        return None if raw is None else text(raw)

    def reestablish(self, seen: str | None, watermark: int, gaps: Iterable[int] = ()) -> bool:
        """Start a new epoch with the outbox at ``watermark`` and ``gaps`` (ids at or
        below it not visible yet), if the epoch is still ``seen``.

        True for the one caller that did it; it owes every bucket a rebuild from the
        source, which covers every event up to ``watermark``.
        """
        if watermark < 0:
            raise ValueError(f"outbox watermark must be >= 0, got {watermark}")
        args: list[Any] = [secrets.token_hex(8), seen or "", watermark, to_ms(self.clock())]
        args += [int(i) for i in gaps]
        with redis_errors("reestablish"):
            return bool(
                self._scripts["reestablish"](
                    keys=[self.keys.epoch, self.keys.outbox_watermark, self.keys.outbox_gaps],
                    args=args,
                )
            )

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
            return bool(
                self._scripts["advance_watermark"](
                    keys=[self.keys.outbox_watermark, self.keys.outbox_gaps], args=args
                )
            )

    def outbox_gaps(self) -> dict[int, datetime]:
        """Outbox ids skipped over, with when each was first missed."""
        key = self.keys.outbox_gaps
        with redis_errors("outbox_gaps", key):
            raw: list[tuple[bytes, float]] = self.client.zrange(  # type: ignore[assignment]
                key, 0, -1, withscores=True
            )
        try:
            return {int(member): from_ms(int(score)) for member, score in raw}
        except (ValueError, OverflowError, OSError):
            raise CorruptKey(f"outbox gaps {key} hold {brief(raw[:5])}, not ids", key) from None

    # -- coalesced rebuild requests --------------------------------------------------
    def request_rebuild(self, bucket: SchedulerBucket) -> bool:
        """Note a rebuild request; True when the caller must enqueue a rebuild task."""
        with redis_errors(f"request_rebuild {bucket}"):
            return bool(
                self._scripts["request_rebuild"](
                    keys=[self.keys.rebuild_state(bucket)], args=[REBUILD_STATE_TTL_SECONDS]
                )
            )

    def begin_rebuild(self, bucket: SchedulerBucket, *, force: bool = False) -> int | None:
        """Call holding the lock, before reading the source.

        Returns the request generation this run covers, or None when every request so
        far is covered by a finished run already (skip the rebuild). Requests from now
        on make :meth:`request_rebuild` return True again.
        """
        with redis_errors(f"begin_rebuild {bucket}"):
            generation = int(
                self._scripts["begin_rebuild"](
                    keys=[self.keys.rebuild_state(bucket)],
                    args=["1" if force else "0", REBUILD_STATE_TTL_SECONDS],
                )
            )
        return None if generation < 0 else generation

    def finish_rebuild(self, bucket: SchedulerBucket, generation: int) -> int:
        """Record a written rebuild; returns how many requests arrived during it."""
        with redis_errors(f"finish_rebuild {bucket}"):
            return int(
                self._scripts["finish_rebuild"](
                    keys=[self.keys.rebuild_state(bucket)],
                    args=[generation, REBUILD_STATE_TTL_SECONDS],
                )
            )

    def abandon_rebuild_request(self, bucket: SchedulerBucket) -> None:
        """Forget that a rebuild task is queued for ``bucket``.

        For a task that was never sent, or that gave up: the next
        :meth:`request_rebuild` returns True again. Requests stay counted, so the next
        run still rebuilds. Called wrongly, it costs one extra task, which skips.
        """
        with redis_errors(f"abandon_rebuild_request {bucket}"):
            self.client.hdel(self.keys.rebuild_state(bucket), "queued")

    # -- figures for status views ----------------------------------------------------
    def record_stats(
        self, counters: Mapping[str, int] | None = None, values: Mapping[str, str] | None = None
    ) -> None:
        """Add to named counters and set named values, in one round trip."""
        with redis_errors("record_stats"):
            pipe = self.client.pipeline(transaction=False)
            for name, amount in (counters or {}).items():
                pipe.hincrby(self.keys.stats, name, amount)
            for name, value in (values or {}).items():
                pipe.hset(self.keys.stats, name, value)
            pipe.execute()

    def stats(self) -> dict[str, str]:
        """Every counter and value recorded with :meth:`record_stats`."""
        with redis_errors("stats"):
            raw = self.client.hgetall(self.keys.stats)
        return {text(k): text(v) for k, v in raw.items()}

    def ping(self) -> None:
        """Raise :class:`CacheUnavailable` unless Redis answers."""
        with redis_errors("ping"):
            self.client.ping()
