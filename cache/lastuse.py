"""Accounts' last use: the times, the log near caches follow, and the times still owed
to the source database. The only writer of those keys (set_account's script also moves
a time forward, with the same rule, when an account arrives with one)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from cache.base import Wiring, redis_errors
from cache.codec import from_ms, to_ms
from cache.errors import brief
from cache.keys import DECODED_ACCOUNTS_MAX, TOUCH_LOG_BATCHES, WRITE_CHUNK
from cache.models import check_account_id

logger = logging.getLogger(__name__)


class LastUseStore:
    """Last-use times: monotonic, one round trip a batch, apart from the payloads."""

    def __init__(self, wiring: Wiring) -> None:
        self._w = wiring
        # Last uses this writer seeded from accounts' payloads, by id.
        self._seeded: dict[int, datetime] = {}

    def update_last_used(
        self, updates: Mapping[int, datetime], *, record_pending: bool = False
    ) -> int:
        """Move last-use times forward; unknown ids are ignored.

        With ``record_pending`` the times are also kept in a pending hash until
        :meth:`ack_pending_last_used` says the source database has them. Returns how
        many cached times moved forward. One round trip, in chunks of bounded cost. An
        id out of range raises :class:`InvalidAccountId` before anything is written.
        """
        if not updates:
            return 0
        items = [(str(check_account_id(i)), str(to_ms(used))) for i, used in updates.items()]
        k = self._w.keys
        keys = [k.last_used, k.digests, k.last_used_pending, k.last_used_log, k.last_used_seq]
        calls: list[tuple[list[str], list[Any]]] = []
        for first in range(0, len(items), WRITE_CHUNK * 2):
            part = items[first : first + WRITE_CHUNK * 2]
            args = [
                "1" if record_pending else "0",
                ",".join(i for i, _ in part),
                ",".join(u for _, u in part),
                TOUCH_LOG_BATCHES,
            ]
            calls.append((keys, args))
        with redis_errors("update_last_used", k.last_used):
            return sum(int(moved) for moved in self._w.run("update_last_used", calls))

    def seed(self, uses: dict[int, datetime], *, everything: bool) -> None:
        """Last uses a snapshot's accounts carried, unless this writer sent them already:
        a refresh rebuilds the same accounts again and again, with the same times."""
        sent = self._seeded
        fresh = uses if everything else {i: t for i, t in uses.items() if sent.get(i) != t}
        if not fresh:
            return
        self.update_last_used(fresh)
        if len(sent) + len(fresh) > DECODED_ACCOUNTS_MAX:
            sent.clear()
        sent.update(fresh)

    def last_used_of(self, account_ids: Sequence[int]) -> dict[int, datetime]:
        """The cached last use of each of ``account_ids`` that has one."""
        if not account_ids:
            return {}
        with redis_errors("last_used_of", self._w.keys.last_used):
            held = self._w.client.hmget(self._w.keys.last_used, [str(i) for i in account_ids])
        return {i: from_ms(ms) for i, ms in zip(account_ids, held, strict=True) if ms}

    def pending_last_used(self) -> dict[int, datetime]:
        """Last-use times not yet acknowledged as written to the source database.

        An entry this package does not write (an id out of range, say from an older
        version, or a time that is not integer ms) is logged and deleted: kept, it
        would fail every write of the others to the database.
        """
        key = self._w.keys.last_used_pending
        with redis_errors("pending_last_used", key):
            found = self._w.client.hgetall(key)
        pending: dict[int, datetime] = {}
        malformed: list[bytes | str] = []
        for field, value in found.items():
            try:
                pending[check_account_id(field)] = from_ms(value)
            except (ValueError, OverflowError, OSError):
                malformed.append(field)
        if malformed:
            logger.error(
                "dropping %d malformed entries of %s: %s",
                len(malformed),
                key,
                brief({f: found[f] for f in malformed[:5]}),
            )
            with redis_errors("pending_last_used", key):
                self._w.client.hdel(key, *malformed)
        return pending

    def ack_pending_last_used(self, written: Mapping[int, datetime]) -> int:
        """Drop pending times the database now has; newer pending times stay."""
        if not written:
            return 0
        args: list[Any] = []
        for account_id, used in written.items():
            args += (int(account_id), to_ms(used))
        key = self._w.keys.last_used_pending
        with redis_errors("ack_pending_last_used", key):
            return int(self._w.scripts["ack_last_used"](keys=[key], args=args))
