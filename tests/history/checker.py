"""Checks a recorded history (:mod:`tests.history.model`) after the fact, in the manner
of Jepsen: no process judged anything while it ran; every judgement is made here, from
the operations and their times alone. Pure: no Redis, no database, no clock.

Words. An account's *state at* time t is the state of its last commit that returned at
or before t (the writer is one process, so its commits are serial and each state is
known exactly). A state is *eligible in* group g when it is not deleted, its status is
``active``, it is schedulable, and it is a member of g (for g = 0: of no group). A read
covers ``[t0, t]``, from the call to its return. B is :attr:`Bounds.staleness`
(1 s by default), G :attr:`Bounds.fault_grace` (5 s), R :attr:`Bounds.recovery` (5 s).

A change committed at time c is in a fault's *window* when ``start - B <= c <= end + G``;
in a *quiet period* when it is in no fault's window. Its *deadline*, by when every
reader must show it, is ``c + B`` in a quiet period, else the latest
``max(c, end) + R`` over the faults whose window it is in; a fault that begins (less B)
before that deadline has passed extends it to the fault's ``end + R`` in turn: it can
hold the change up, a worker paused with the bucket's lock say (:meth:`Bounds.deadline`).

What is reported (each a count with examples; the targets are all zero):

- ``impossible_reads``: an observation of account a in group g's bucket where either
  (revision) the committed state of the revision served is not eligible in g, or a
  revision never committed was served — a reader is never shown a revision together
  with a membership that revision does not have; or (stale) a was not eligible in g at
  t0, and the commit that took it out (the first of the unbroken run of non-eligible
  states t0 is in) has its deadline before t0: in a quiet period, a had been out for
  longer than B before the read even started.
- ``backwards_revisions``: a reader sees account a at a revision lower than one it has
  already seen (in any bucket: one process, one account, one order).
- ``backwards_last_uses``: a reader sees a's last use lower than one it has already
  seen (a value then none counts too). A wipe (FLUSHALL, Redis restarted empty) loses
  Redis's last-use times: the comparison restarts at each wipe's start, and reads that
  start within ``[start, end + G]`` of a wipe are not compared.
- ``stale_in_quiet_periods``: a commit is *seen* by a reader in bucket g when a read of
  g starting after the commit returned shows a at that revision or a later one, or
  leaves a out while a commit of a at that revision or later, returned before the read
  did, is not eligible in g. Its *staleness* is the longest, over the readers and the
  buckets it affects (those of g where it or the state before it is eligible), of the
  time from its return to the return of the first read that sees it (never seen within
  :attr:`Bounds.horizon`: unbounded). The anomaly is a commit in a quiet period whose
  staleness exceeds B.
- ``late_after_<fault kind>``: a commit in the fault's window not seen by every reader
  within R of the later of its return and the fault's end (``late_after_worker_kill``
  is a target: every bucket current within R after a worker is SIGKILLed).
- ``not_converged`` and the figure ``convergence_s``: after the last commit, each
  reader's reads of each bucket must come to show exactly the final committed state
  (the eligible accounts, each at its last revision) and keep showing it; convergence is
  the time from the last commit to the first read of the last such agreeing run, the
  longest over readers and buckets. A reader whose last read of a bucket disagrees has
  not converged.
- ``lost_last_uses``: a touch (account, time sent) of an account not deleted at the end
  that is not covered (a value at least the time sent, within
  :attr:`Bounds.tolerance`) by the database's last use after the run settled, by the
  cache's, or by the last observation of each reader that read the account at least B
  after its last touch. Each touch counts once, named by where it is missing.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from pathlib import Path

from tests.history.model import Commit, Fault, History, Read, Timeline
from tests.history.report import Bounds, Report, spread
from tests.history.timing import TimeChecks

__all__ = ["Bounds", "Report", "check", "check_file"]


def check_file(path: Path, bounds: Bounds | None = None) -> Report:
    return check(History.load(path), bounds)


def check(history: History, bounds: Bounds | None = None) -> Report:
    bounds = bounds or Bounds()
    report = Report(bounds)
    origin = history.marks.get("load_start") or min(
        [c.t for c in history.commits] + [r.t0 for r in history.reads], default=0.0
    )
    timeline = Timeline(history.commits)
    report.figures.update(
        commits=len(history.commits),
        reads=len(history.reads),
        observations=history.observations,
        touches=len(history.touches),
        read_errors=len(history.errors),
        faults=len(history.faults),
    )
    ReadChecks(history, timeline, report, origin).run()
    TimeChecks(history, timeline, report, origin).run()
    return report


def at(t: float, origin: float) -> str:
    """A time as seconds since the load started, for examples."""
    return f"+{t - origin:.3f}s"


class ReadChecks:
    """Each observation against the committed states and against what the same reader
    saw before: impossible reads, backwards revisions, backwards last uses."""

    def __init__(self, history: History, timeline: Timeline, report: Report, origin: float):
        self.history = history
        self.timeline = timeline
        self.report = report
        self.origin = origin
        self.faults = history.faults
        # How long after the commit of the revision served each revision-impossible
        # read started: how long a bucket keeps an account its payload has left.
        self.after_commit: list[float] = []
        self.wipes = [f for f in history.faults if f.wipe]
        self.wipe_starts = [f.start for f in self.wipes]

    def run(self) -> None:
        impossible = self.report.tally("impossible_reads")
        backwards = self.report.tally("backwards_revisions")
        backwards_used = self.report.tally("backwards_last_uses")
        # Per (reader, account): the highest revision seen and the read that showed it.
        revisions: dict[tuple[str, int], tuple[int, Read]] = {}
        uses: dict[tuple[str, int, int], tuple[float | None, Read]] = {}
        reasons: dict[str, int] = defaultdict(int)
        cross = 0
        for read in self.history.reads:
            epoch = bisect.bisect_right(self.wipe_starts, read.t0)
            in_wipe = self._in_wipe_window(read.t0)
            for seen in read.accounts:
                reason = self._impossible(read, seen.id, seen.rev)
                if reason:
                    why = reason
                    reasons[why.split(":")[0]] += 1
                    impossible.add(
                        f"{read.p} at {at(read.t0, self.origin)} got account {seen.id} rev "
                        f"{seen.rev} (groups {list(seen.groups)}) in group {read.group}: {why}"
                    )
                key = (read.p, seen.id)
                if seen.rev is not None:
                    best = revisions.get(key)
                    if best is None or seen.rev > best[0]:
                        revisions[key] = (seen.rev, read)
                    elif seen.rev < best[0]:
                        high, shown = best
                        cross += shown.group != read.group
                        backwards.add(
                            f"{read.p} saw account {seen.id} at rev {high} in group "
                            f"{shown.group} at {at(shown.t0, self.origin)}, then rev "
                            f"{seen.rev} in group {read.group} at {at(read.t0, self.origin)}"
                        )
                if in_wipe:
                    continue
                used_key = (read.p, seen.id, epoch)
                before = uses.get(used_key)
                if before is None or _later(seen.last_used, before[0]):
                    uses[used_key] = (seen.last_used, read)
                elif _earlier(seen.last_used, before[0], self.report.bounds.tolerance):
                    latest, where = before
                    backwards_used.add(
                        f"{read.p} saw account {seen.id} last used {latest} in group "
                        f"{where.group} at {at(where.t0, self.origin)}, then "
                        f"{seen.last_used} in group {read.group} at {at(read.t0, self.origin)}"
                    )
        for reason, count in reasons.items():
            self.report.figures[f"impossible_reads_{reason}"] = count
        self.report.figures["backwards_revisions_across_buckets"] = cross
        spread(self.report, "impossible_revision_after_commit_s", self.after_commit)

    def _impossible(self, read: Read, account_id: int, rev: int | None) -> str | None:
        committed = self.timeline.at_revision(account_id, rev)
        if committed is None:
            return "revision: never committed"
        if not committed.eligible_in(read.group):
            self.after_commit.append(read.t0 - committed.t)
            return f"revision: that revision is {_describe(committed)}"
        if committed.t > read.t0:
            # A commit in flight when the read began (the writer notes a commit once
            # it returned): the read shows something newer than the state at t0, and
            # that revision is eligible, so it cannot be a stale one.
            return None
        out = self._out_since(account_id, read.group, read.t0)
        if out is not None and read.t0 > self.report.bounds.deadline(out.t, self.faults):
            now = self.timeline.state_at(account_id, read.t0) or out
            return f"stale: {_describe(now)} since {at(out.t, self.origin)}"
        return None

    def _out_since(self, account_id: int, group: int, t: float) -> Commit | None:
        """The commit that took the account out of ``group`` for good before ``t`` (the
        first of the run of non-eligible states that ``t`` is in); None if it is in."""
        state = self.timeline.state_at(account_id, t)
        if state is None or state.eligible_in(group):
            return None
        first = state
        while (before := self.timeline.previous(first)) is not None and not before.eligible_in(
            group
        ):
            first = before
        return first

    def _in_wipe_window(self, t: float) -> bool:
        grace = self.report.bounds.fault_grace
        return any(_within(t, f, 0.0, grace) for f in self.wipes)


def _describe(state: Commit) -> str:
    if state.deleted:
        return f"deleted (rev {state.rev})"
    return (
        f"{state.status}, schedulable={state.schedulable}, groups {list(state.groups)} "
        f"(rev {state.rev})"
    )


def _within(t: float, fault: Fault, before: float, after: float) -> bool:
    return fault.start - before <= t <= fault.end + after


def _later(value: float | None, than: float | None) -> bool:
    return value is not None and (than is None or value > than)


def _earlier(value: float | None, than: float | None, tolerance: float) -> bool:
    if than is None:
        return False
    return value is None or value < than - tolerance
