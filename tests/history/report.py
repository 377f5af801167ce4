"""What the checker finds, and the bounds it measures against: counts of each kind of
anomaly with a few examples, figures (percentiles, seconds), the targets as violations,
and the text summary."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from tests.history.model import Fault


@dataclass(frozen=True)
class Bounds:
    """The bounds of :mod:`tests.history.checker`, in seconds.

    - ``staleness``: how long a committed change may take to reach every reader in a
      quiet period; also the propagation window of an impossible read.
    - ``fault_grace``: after a fault ends, how long the period stays not quiet.
    - ``recovery``: after a fault, every change is seen this long after the later of its
      commit and the fault's end.
    - ``convergence``: after the last change, every reader agrees with the source.
    - ``horizon``: how far after a commit a reader's reads are searched for it.
    - ``tolerance``: last-use times equal within it (the stores keep milliseconds).
    """

    staleness: float = 1.0
    fault_grace: float = 5.0
    recovery: float = 5.0
    convergence: float = 2.0
    horizon: float = 60.0
    tolerance: float = 0.001
    examples: int = 5

    def near(self, t: float, fault: Fault) -> bool:
        """Whether a change at ``t`` falls in ``fault``'s window, ``[start - B, end + G]``."""
        return fault.start - self.staleness <= t <= fault.end + self.fault_grace

    def deadline(self, t: float, faults: Sequence[Fault]) -> float:
        """When every reader must show a change committed at ``t``: B after it in a quiet
        period; R after the later of it and the end of each fault whose window it is in,
        or that begins before that deadline has passed."""
        windows = [max(t, f.end) + self.recovery for f in faults if self.near(t, f)]
        deadline = max(windows) if windows else t + self.staleness
        # A fault that begins while the change is still within its allowance can hold
        # it up until the fault is over (a worker paused with the bucket's lock): its
        # window reaches the change too, until no further fault does.
        reached = True
        while reached:
            reached = False
            for f in faults:
                later = f.end + self.recovery
                if f.start - self.staleness <= deadline < later and t <= f.end + self.fault_grace:
                    deadline, reached = later, True
        return deadline


@dataclass
class Tally:
    """How many of one kind of anomaly, and the first few as text."""

    count: int = 0
    examples: list[str] = field(default_factory=list)
    limit: int = 5

    def add(self, example: str) -> None:
        self.count += 1
        if len(self.examples) < self.limit:
            self.examples.append(example)


# The anomalies whose target is zero, in the order the summary lists them.
ZERO_TARGETS = (
    "impossible_reads",
    "backwards_revisions",
    "backwards_last_uses",
    "lost_last_uses",
    "stale_in_quiet_periods",
    "late_after_worker_kill",
    "not_converged",
)


@dataclass
class Report:
    bounds: Bounds
    tallies: dict[str, Tally] = field(default_factory=dict)
    figures: dict[str, float | int | None] = field(default_factory=dict)

    def tally(self, name: str) -> Tally:
        if name not in self.tallies:
            self.tallies[name] = Tally(limit=self.bounds.examples)
        return self.tallies[name]

    def count(self, name: str) -> int:
        return self.tallies[name].count if name in self.tallies else 0

    def violations(self) -> list[str]:
        """Every target missed, one line each; empty when the history passes."""
        found = [f"{name}: {self.count(name)}" for name in ZERO_TARGETS if self.count(name)]
        convergence = self.figures.get("convergence_s")
        if convergence is not None and convergence > self.bounds.convergence:
            found.append(
                f"convergence: {convergence:.3f} s after the last change "
                f"(bound {self.bounds.convergence} s)"
            )
        return found

    def format(self) -> str:
        lines = ["history summary", "  figures:"]
        for name, value in sorted(self.figures.items()):
            shown = "-" if value is None else f"{value:.4g}" if isinstance(value, float) else value
            lines.append(f"    {name}: {shown}")
        lines.append("  anomalies:")
        names = list(ZERO_TARGETS) + sorted(set(self.tallies) - set(ZERO_TARGETS))
        for name in names:
            tally = self.tallies.get(name, Tally())
            lines.append(f"    {name}: {tally.count}")
            lines.extend(f"      e.g. {example}" for example in tally.examples)
        violations = self.violations()
        lines.append("  targets: " + ("all met" if not violations else "MISSED"))
        lines.extend(f"    {v}" for v in violations)
        return "\n".join(lines)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank ``q`` percentile (0-100) of ``values``; None for none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def spread(report: Report, name: str, values: Sequence[float]) -> None:
    """p50, p90, p99 and max of ``values`` as figures ``<name>_p50`` ..."""
    for q in (50, 90, 99):
        report.figures[f"{name}_p{q}"] = percentile(values, q)
    report.figures[f"{name}_max"] = max(values) if values else None
