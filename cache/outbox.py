"""The outbox position (watermark and the ids skipped over) and the epoch of the state
Redis holds, which are established together."""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from cache.base import Wiring, redis_errors, text
from cache.codec import from_ms, to_ms
from cache.errors import CorruptKey, brief


class OutboxPosition:
    """The only writer of the watermark, the gap set and the epoch."""

    def __init__(self, wiring: Wiring) -> None:
        self._w = wiring

    def get_outbox_watermark(self) -> int:
        """The outbox position; :class:`CorruptKey` naming the key if it is unreadable."""
        key = self._w.keys.outbox_watermark
        with redis_errors("get_outbox_watermark", key):
            held = self._w.client.get(key)
        if held is None:
            return 0
        try:
            value = int(held)
        except ValueError:
            value = -1
        if value < 0:
            raise CorruptKey(f"outbox watermark {key} holds {brief(held)}, not an id", key)
        return value

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
        False when the watermark would go backwards.
        """
        if event_id < 0:
            raise ValueError(f"outbox watermark must be >= 0, got {event_id}")
        gaps = [int(i) for i in new_gaps]
        args: list[Any] = [event_id, to_ms(self._w.clock()), len(gaps), *gaps]
        args += [int(i) for i in resolved_gaps]
        k = self._w.keys
        with redis_errors("advance_outbox", k.outbox_watermark):
            return bool(
                self._w.scripts["advance_watermark"](
                    keys=[k.outbox_watermark, k.outbox_gaps], args=args
                )
            )

    def outbox_gaps(self) -> dict[int, datetime]:
        """Outbox ids skipped over, with when each was first missed."""
        key = self._w.keys.outbox_gaps
        with redis_errors("outbox_gaps", key):
            held: list[tuple[bytes, float]] = self._w.client.zrange(  # type: ignore[assignment]
                key, 0, -1, withscores=True
            )
        try:
            return {int(member): from_ms(int(score)) for member, score in held}
        except (ValueError, OverflowError, OSError):
            raise CorruptKey(f"outbox gaps {key} hold {brief(held[:5])}, not ids", key) from None

    def epoch(self) -> str | None:
        """The id of the state Redis holds; None when it was lost (see ``keys.epoch``)."""
        with redis_errors("epoch", self._w.keys.epoch):
            held = self._w.client.get(self._w.keys.epoch)
        return None if held is None else text(held)

    def reestablish(self, seen: str | None, watermark: int, gaps: Iterable[int] = ()) -> bool:
        """Start a new epoch with the outbox at ``watermark`` and ``gaps`` (ids at or
        below it not visible yet), if the epoch is still ``seen``.

        True for the one caller that did it; it owes every bucket a rebuild from the
        source, which covers every event up to ``watermark``.
        """
        if watermark < 0:
            raise ValueError(f"outbox watermark must be >= 0, got {watermark}")
        args: list[Any] = [secrets.token_hex(8), seen or "", watermark, to_ms(self._w.clock())]
        args += [int(i) for i in gaps]
        k = self._w.keys
        with redis_errors("reestablish", k.epoch):
            return bool(
                self._w.scripts["reestablish"](
                    keys=[k.epoch, k.outbox_watermark, k.outbox_gaps], args=args
                )
            )
