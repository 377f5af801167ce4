"""The newest revision of each account a near cache has held, across its buckets.

Buckets are read and patched one at a time, so without this a process could serve an
account at revision 124 from one bucket and then at 122 from another whose change had
not arrived yet (a move between groups: the old group's removal and the new group's
insert are two pushes). A row older than one already held is not served: a bucket read
with it leaves it out, and a bucket holding it when a newer one arrives elsewhere drops
it in place, until that bucket's own change (a push, or the check's re-read) brings it
back at its revision or takes it out for good.
"""

from __future__ import annotations

from collections.abc import Iterable

from cache.nearrows import Row


def revision_of(entry: bytes) -> float | None:
    """The revision in a row's entry (``'<digest>/<revision>'``); None without one."""
    _, _, written = entry.partition(b"/")
    try:
        revision = float(written)
    except ValueError:
        return None
    return revision if revision >= 0 else None


class Revisions:
    """Account id -> newest revision held; bounded (forgotten all at once past
    ``limit``, which only lets an older row be served once more)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._newest: dict[int, float] = {}

    def admit(self, rows: Iterable[Row]) -> tuple[list[Row], list[tuple[int, float]]]:
        """The rows not older than the newest held, and the accounts whose newest
        revision they raised (with it)."""
        newest = self._newest
        if len(newest) > self.limit:
            newest.clear()
        kept: list[Row] = []
        raised: list[tuple[int, float]] = []
        for row in rows:
            revision = revision_of(row.entry)
            if revision is None:
                kept.append(row)
                continue
            seen = newest.get(row.id)
            if seen is None or revision > seen:
                newest[row.id] = revision
                if seen is not None:
                    raised.append((row.id, revision))
            elif revision < seen:
                continue
            kept.append(row)
        return kept, raised

    def older(self, row: Row) -> bool:
        """Whether ``row`` is older than the newest revision held of its account."""
        revision = revision_of(row.entry)
        seen = self._newest.get(row.id)
        return revision is not None and seen is not None and revision < seen
