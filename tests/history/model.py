"""A recorded history: its operations as read back from JSONL, and the writer's
committed states as a timeline per account.

One JSON object a line, told apart by ``op``; every time is wall-clock seconds
(``time.time()``) of the one machine all the processes run on:

- ``commit``: a change the writer committed, with the account's committed state after
  it: ``t0`` (call started), ``t`` (commit returned), ``kind``, ``id``, ``rev``,
  ``status``, ``schedulable``, ``groups``, ``priority``, ``deleted``.
- ``read``: one ``list_schedulable`` call of a reader ``p`` on group ``group``:
  ``t0``/``t`` around the call, ``accounts`` as ``[id, revision, last_used, group_ids]``
  (one observation each, in the order served).
- ``error``: a call of any process that raised (``p``, ``t``, ``error``).
- ``touch``: a ``record_last_used`` call of a toucher ``p`` at ``t`` for ``id`` with the
  time ``at`` it sent (strictly increasing per toucher).
- ``fault``: ``kind`` (``worker_kill``, ``worker_pause``, ``flushall``,
  ``redis_restart``) from ``start`` to ``end`` (equal for an instant fault).
- ``mark``: a named moment of the run (``load_start``, ``load_end``, ...).
- ``final``: after the run settled: ``source`` (``{id: [revision, last_used]}`` of the
  accounts not deleted), ``deleted`` (ids) and ``redis`` (``{id: last_used}`` from the
  cache).
"""

from __future__ import annotations

import bisect
import json
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# A wipe loses Redis's state, last-use times included: their monotonicity restarts.
WIPES = frozenset({"flushall", "redis_restart"})


@dataclass(frozen=True, slots=True)
class Commit:
    t0: float
    t: float
    kind: str
    id: int
    rev: int
    status: str
    schedulable: bool
    groups: tuple[int, ...]
    priority: int
    deleted: bool

    def eligible_in(self, group: int) -> bool:
        """Whether this state belongs in ``group``'s bucket (0: accounts in no group)."""
        if self.deleted or self.status != "active" or not self.schedulable:
            return False
        return group in self.groups if group else not self.groups


@dataclass(frozen=True, slots=True)
class Seen:
    """One account in one read."""

    id: int
    rev: int | None
    last_used: float | None
    groups: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Read:
    p: str
    t0: float
    t: float
    group: int
    accounts: tuple[Seen, ...]

    def find(self, account_id: int) -> Seen | None:
        for seen in self.accounts:
            if seen.id == account_id:
                return seen
        return None


@dataclass(frozen=True, slots=True)
class Touch:
    p: str
    t: float
    id: int
    at: float


@dataclass(frozen=True, slots=True)
class Fault:
    kind: str
    start: float
    end: float
    detail: str = ""

    @property
    def wipe(self) -> bool:
        return self.kind in WIPES


@dataclass(slots=True)
class Final:
    t: float
    source: dict[int, tuple[int, float | None]]
    deleted: frozenset[int]
    redis: dict[int, float | None]


@dataclass(slots=True)
class History:
    commits: list[Commit] = field(default_factory=list)
    reads: list[Read] = field(default_factory=list)
    touches: list[Touch] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    final: Final | None = None

    @classmethod
    def load(cls, path: Path) -> History:
        with path.open() as lines:
            return cls.parse(lines)

    @classmethod
    def parse(cls, lines: Iterable[str | dict[str, Any]]) -> History:
        """A history from JSONL lines (or already decoded objects); an unknown ``op``
        or a line that does not decode is an error naming the line."""
        history = cls()
        for number, line in enumerate(lines, 1):
            if isinstance(line, str) and not line.strip():
                continue
            try:
                op = json.loads(line) if isinstance(line, str) else line
                history._add(op)
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"history line {number}: {exc}: {str(line)[:200]!r}") from exc
        history.commits.sort(key=lambda c: c.t)
        history.reads.sort(key=lambda r: r.t0)
        history.touches.sort(key=lambda t: t.t)
        history.faults.sort(key=lambda f: f.start)
        return history

    def _add(self, op: dict[str, Any]) -> None:
        kind = op["op"]
        if kind == "commit":
            self.commits.append(
                Commit(
                    t0=float(op["t0"]),
                    t=float(op["t"]),
                    kind=str(op["kind"]),
                    id=int(op["id"]),
                    rev=int(op["rev"]),
                    status=str(op["status"]),
                    schedulable=bool(op["schedulable"]),
                    groups=tuple(int(g) for g in op["groups"]),
                    priority=int(op["priority"]),
                    deleted=bool(op["deleted"]),
                )
            )
        elif kind == "read":
            seen = tuple(
                Seen(int(i), None if r is None else int(r), lu, tuple(g))
                for i, r, lu, g in op["accounts"]
            )
            self.reads.append(Read(str(op["p"]), op["t0"], op["t"], int(op["group"]), seen))
        elif kind == "error":
            self.errors.append(op)
        elif kind == "touch":
            self.touches.append(Touch(str(op["p"]), op["t"], int(op["id"]), float(op["at"])))
        elif kind == "fault":
            self.faults.append(Fault(op["kind"], op["start"], op["end"], op.get("detail", "")))
        elif kind == "mark":
            self.marks[str(op["name"])] = float(op["t"])
        elif kind == "final":
            self.final = Final(
                t=float(op["t"]),
                source={int(k): (int(v[0]), v[1]) for k, v in op["source"].items()},
                deleted=frozenset(int(i) for i in op["deleted"]),
                redis={int(k): v for k, v in op["redis"].items()},
            )
        else:
            raise ValueError(f"unknown op {kind!r}")

    @property
    def observations(self) -> int:
        return sum(len(read.accounts) for read in self.reads)


class Timeline:
    """Each account's committed states in commit order (one writer: commits are serial)."""

    def __init__(self, commits: Iterable[Commit]) -> None:
        self.of: dict[int, list[Commit]] = defaultdict(list)
        for commit in commits:
            self.of[commit.id].append(commit)
        self._times = {a: [c.t for c in cs] for a, cs in self.of.items()}
        self._revs = {a: {c.rev: c for c in cs} for a, cs in self.of.items()}
        self._index = {c: i for cs in self.of.values() for i, c in enumerate(cs)}

    def state_at(self, account_id: int, t: float) -> Commit | None:
        """The committed state at ``t``; None before the account's first commit."""
        times = self._times.get(account_id)
        if not times:
            return None
        index = bisect.bisect_right(times, t) - 1
        return self.of[account_id][index] if index >= 0 else None

    def at_revision(self, account_id: int, rev: int | None) -> Commit | None:
        if rev is None:
            return None
        return self._revs.get(account_id, {}).get(rev)

    def previous(self, commit: Commit) -> Commit | None:
        index = self._index[commit]
        return self.of[commit.id][index - 1] if index > 0 else None

    def after(self, commit: Commit) -> list[Commit]:
        """The account's later commits, oldest first."""
        return self.of[commit.id][self._index[commit] + 1 :]

    def states_during(self, account_id: int, start: float, end: float) -> Iterator[Commit | None]:
        """Every state the account was in at some moment of ``[start, end]``."""
        yield self.state_at(account_id, start)
        times = self._times.get(account_id, [])
        first = bisect.bisect_right(times, start)
        last = bisect.bisect_right(times, end)
        yield from self.of[account_id][first:last]

    def last(self, account_id: int) -> Commit:
        return self.of[account_id][-1]
