"""The checks of :mod:`tests.history.checker` that measure time: staleness in quiet
periods, recovery after faults, convergence after the last change, and touches lost on
the way to the stores (the definitions are in the checker's docstring)."""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass

from tests.history.model import Commit, History, Read, Seen, Timeline
from tests.history.report import Report, spread


@dataclass(frozen=True, slots=True)
class Seeing:
    """When every reader had seen a commit: ``by`` (None: some reader never did), and
    the slowest reader and bucket with its delay (None: never)."""

    by: float | None
    slowest: tuple[str, int, float | None]


class TimeChecks:
    def __init__(self, history: History, timeline: Timeline, report: Report, origin: float):
        self.history = history
        self.timeline = timeline
        self.report = report
        self.bounds = report.bounds
        self.origin = origin
        self.reads: dict[tuple[str, int], list[Read]] = defaultdict(list)
        for read in history.reads:
            self.reads[(read.p, read.group)].append(read)
        self.starts = {key: [r.t0 for r in reads] for key, reads in self.reads.items()}
        self.readers_of: dict[int, list[str]] = defaultdict(list)
        for p, group in sorted(self.reads):
            self.readers_of[group].append(p)

    def run(self) -> None:
        seeing = self._seeing()
        self._quiet(seeing)
        self._recovery(seeing)
        self._convergence()
        self._lost_last_uses()

    def _at(self, t: float) -> str:
        return f"+{t - self.origin:.3f}s"

    # -- when each commit was seen ---------------------------------------------------
    def _seeing(self) -> dict[Commit, Seeing]:
        start = self.history.marks.get("load_start", float("-inf"))
        seeing = {}
        for commit in self.history.commits:
            if commit.t < start:
                continue  # the seed, before any reader ran
            before = self.timeline.previous(commit)
            affected = [
                g
                for g in self.readers_of
                if commit.eligible_in(g) or (before is not None and before.eligible_in(g))
            ]
            if affected:
                seeing[commit] = self._seen(commit, affected)
        return seeing

    def _seen(self, commit: Commit, groups: list[int]) -> Seeing:
        later = self.timeline.after(commit)
        slowest: tuple[str, int, float | None] = ("", 0, 0.0)
        by: float | None = commit.t
        for group in groups:
            for p in self.readers_of[group]:
                at = self._seen_by(commit, later, p, group)
                delay = None if at is None else at - commit.t
                if delay is None or (slowest[2] is not None and delay > slowest[2]):
                    slowest = (p, group, delay)
                by = None if at is None or by is None else max(by, at)
        return Seeing(by, slowest)

    def _seen_by(self, commit: Commit, later: list[Commit], p: str, group: int) -> float | None:
        reads = self.reads[(p, group)]
        index = bisect.bisect_left(self.starts[(p, group)], commit.t)
        limit = commit.t + self.bounds.horizon
        for read in reads[index:]:
            if read.t0 > limit:
                break
            if _reflects(read, commit, later, group):
                return read.t
        return None

    def _describe(self, commit: Commit, seeing: Seeing) -> str:
        p, group, delay = seeing.slowest
        late = "never (within the horizon)" if delay is None else f"after {delay:.3f} s"
        return (
            f"{commit.kind} of account {commit.id} (rev {commit.rev}) at {self._at(commit.t)}: "
            f"{p} saw it in group {group} {late}"
        )

    # -- quiet periods and faults ----------------------------------------------------
    def _quiet(self, seeing: dict[Commit, Seeing]) -> None:
        stale = self.report.tally("stale_in_quiet_periods")
        b = self.bounds.staleness
        quiet, everything = [], []
        for commit, seen in seeing.items():
            delay = None if seen.by is None else seen.by - commit.t
            if delay is not None:
                everything.append(delay)
            if any(self.bounds.near(commit.t, f) for f in self.history.faults):
                continue
            if delay is not None:
                quiet.append(delay)
            if delay is None or delay > b:
                stale.add(self._describe(commit, seen))
        spread(self.report, "staleness_quiet_s", quiet)
        spread(self.report, "staleness_all_s", everything)
        self.report.figures["commits_never_seen"] = sum(s.by is None for s in seeing.values())

    def _recovery(self, seeing: dict[Commit, Seeing]) -> None:
        worst: dict[str, float] = {}
        for fault in self.history.faults:
            late = self.report.tally(f"late_after_{fault.kind}")
            for commit, seen in seeing.items():
                if not self.bounds.near(commit.t, fault):
                    continue
                since = max(commit.t, fault.end)
                took = None if seen.by is None else seen.by - since
                if took is not None:
                    worst[fault.kind] = max(worst.get(fault.kind, 0.0), took)
                deadline = self.bounds.deadline(commit.t, self.history.faults)
                if seen.by is None or seen.by > deadline:
                    late.add(
                        f"{fault.kind} at {self._at(fault.start)}..{self._at(fault.end)}: "
                        + self._describe(commit, seen)
                    )
        for kind, seconds in worst.items():
            self.report.figures[f"recovery_after_{kind}_max_s"] = seconds

    # -- convergence -----------------------------------------------------------------
    def _convergence(self) -> None:
        tally = self.report.tally("not_converged")
        if not self.history.commits:
            return
        last_change = self.history.commits[-1].t
        longest = 0.0
        for (p, group), reads in sorted(self.reads.items()):
            expected = {
                a: cs[-1].rev for a, cs in self.timeline.of.items() if cs[-1].eligible_in(group)
            }
            agreeing = None
            for read in reversed(reads):
                if _shown(read) != expected:
                    break
                agreeing = read
            last = reads[-1]
            if agreeing is None or last.t0 < last_change:
                tally.add(
                    f"{p} group {group}: last read at {self._at(last.t0)} shows "
                    f"{_shown(last)}, the source {expected}"
                )
                continue
            longest = max(longest, agreeing.t - last_change)
        self.report.figures["convergence_s"] = longest

    # -- last uses -------------------------------------------------------------------
    def _lost_last_uses(self) -> None:
        tally = self.report.tally("lost_last_uses")
        final = self.history.final
        if final is None:
            self.report.figures["touches_unchecked"] = len(self.history.touches)
            return
        last_seen: dict[tuple[str, int], tuple[Read, Seen]] = {}
        for read in self.history.reads:
            for seen in read.accounts:
                last_seen[(read.p, seen.id)] = (read, seen)
        readers = sorted({p for p, _ in self.reads})
        places: dict[str, int] = defaultdict(int)
        skipped = 0
        touches: dict[int, list[float]] = defaultdict(list)
        last_touch: dict[int, float] = {}
        for touch in self.history.touches:
            touches[touch.id].append(touch.at)
            last_touch[touch.id] = max(last_touch.get(touch.id, touch.t), touch.t)
        for account_id, sent in sorted(touches.items()):
            if account_id in final.deleted or account_id not in final.source:
                skipped += len(sent)
                continue
            stores: dict[str, float | None] = {"database": final.source[account_id][1]}
            if account_id in final.redis:
                stores["cache"] = final.redis[account_id]
            for p in readers:
                observed = last_seen.get((p, account_id))
                if observed and observed[0].t0 >= last_touch[account_id] + self.bounds.staleness:
                    stores[p] = observed[1].last_used
            for at in sent:
                missing = [
                    (place, value)
                    for place, value in stores.items()
                    if value is None or value < at - self.bounds.tolerance
                ]
                for place, _ in missing:
                    places["readers" if place in readers else place] += 1
                if missing:
                    tally.add(
                        f"touch of account {account_id} at {at}: missing from "
                        + ", ".join(f"{place} (has {value})" for place, value in missing)
                    )
        for place, count in places.items():
            self.report.figures[f"lost_last_uses_{place}"] = count
        self.report.figures["touches_of_deleted_accounts"] = skipped


def _shown(read: Read) -> dict[int, int | None]:
    return {seen.id: seen.rev for seen in read.accounts}


def _reflects(read: Read, commit: Commit, later: list[Commit], group: int) -> bool:
    """Whether ``read`` of ``group`` shows ``commit`` or something after it."""
    seen = read.find(commit.id)
    if seen is not None:
        return seen.rev is not None and seen.rev >= commit.rev
    if not commit.eligible_in(group):
        return True
    for after in later:
        if after.t > read.t:
            return False
        if not after.eligible_in(group):
            return True
    return False
