"""The checker on small hand-made histories: a clean one passes, and each planted
anomaly is found, counted once and named in an example."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.history.checker import Bounds, check
from tests.history.model import History

Op = dict[str, Any]
# What a reader shows at a time: (account id, revision, last used).
Shown = Callable[[float], list[tuple[int, int, float | None]]]


def commit(t: float, account: int, rev: int, *, groups: tuple[int, ...] = (1,), **state: Any) -> Op:
    return {
        "op": "commit",
        "t0": t - 0.001,
        "t": t,
        "kind": state.pop("kind", "update"),
        "id": account,
        "rev": rev,
        "status": state.pop("status", "active"),
        "schedulable": state.pop("schedulable", True),
        "groups": list(groups),
        "priority": 0,
        "deleted": state.pop("deleted", False),
    }


def reads(p: str, group: int, start: float, end: float, shown: Shown) -> list[Op]:
    """A read of ``group`` every 0.1 s from ``start`` to ``end``, each taking 2 ms."""
    ops, t = [], start
    while t < end:
        accounts = [[a, rev, used, [group]] for a, rev, used in shown(t)]
        ops.append({"op": "read", "p": p, "t0": t, "t": t + 0.002, "group": group,
                    "accounts": accounts})  # fmt: skip
        t = round(t + 0.1, 6)
    return ops


def fault(kind: str, start: float, end: float | None = None) -> Op:
    return {"op": "fault", "kind": kind, "start": start, "end": start if end is None else end}


def touch(t: float, account: int, at: float) -> Op:
    return {"op": "touch", "p": "toucher-1", "t": t, "id": account, "at": at}


def final(source: dict[int, tuple[int, float | None]], **more: Any) -> Op:
    return {"op": "final", "t": 12.0, "source": {str(k): list(v) for k, v in source.items()},
            "deleted": more.get("deleted", []), "redis": more.get("redis", {})}  # fmt: skip


def base(*extra: Op, shown: Shown | None = None) -> list[Op]:
    """Accounts 1 and 2 in group 1 from t=0; two readers of group 1 from 1 s to 10 s;
    the load from 1 s to 8 s; account 1 touched at 2 s."""

    def clean(t: float) -> list[tuple[int, int, float | None]]:
        return [(1, 1, 2.0 if t >= 2.6 else None), (2, 1, None)]

    ops = [
        commit(0.0, 1, 1, kind="create"),
        commit(0.0, 2, 1, kind="create"),
        {"op": "mark", "name": "load_start", "t": 1.0},
        {"op": "mark", "name": "load_end", "t": 8.0},
        touch(2.0, 1, 2.0),
        final({1: (1, 2.0), 2: (1, None)}, redis={"1": 2.0}),
    ]
    for p in ("reader-1", "reader-2"):
        ops += reads(p, 1, 1.0, 10.0, shown or clean)
    return ops + list(extra)


def findings(ops: list[Op], **bounds: Any) -> dict[str, int]:
    report = check(History.parse(ops), Bounds(**bounds))
    print(report.format())
    return {name: tally.count for name, tally in report.tallies.items() if tally.count}


def test_a_clean_history_with_changes_and_a_fault_passes() -> None:
    def shown(t: float) -> list[tuple[int, int, float | None]]:
        used = 2.0 if t >= 2.6 else None
        second = [] if 3.2 <= t < 5.2 else [(2, 3 if t >= 5.2 else 1, None)]
        return [(1, 1, used), *second]

    ops = base(
        commit(3.0, 2, 2, status="disabled"),
        commit(5.0, 2, 3),
        fault("worker_kill", 6.0),
        fault("flushall", 6.5),
        shown=shown,
    )
    ops[5] = final({1: (1, 2.0), 2: (3, None)}, redis={"1": 2.0})
    report = check(History.parse(ops))
    print(report.format())
    assert report.violations() == []
    assert report.figures["observations"] == 2 * 90 * 2 - 2 * 20
    assert report.figures["staleness_quiet_s_max"] == pytest.approx(0.202)
    assert report.figures["convergence_s"] == pytest.approx(0.202)


def test_an_account_served_in_a_group_its_revision_left_is_impossible_at_once() -> None:
    def shown(t: float) -> list[tuple[int, int, float | None]]:
        return [(1, 1, 2.0 if t >= 2.6 else None), (2, 2 if t >= 3.0 else 1, None)]

    # Moved to group 2 at 3 s, still served in group 1 at its new revision: no window.
    found = findings(base(commit(3.0, 2, 2, groups=(2,)), shown=shown))
    assert found["impossible_reads"] == 2 * 70
    assert found["not_converged"] == 2


def test_a_stale_removal_is_impossible_only_past_the_propagation_window() -> None:
    def shown(t: float) -> list[tuple[int, int, float | None]]:
        used = 2.0 if t >= 2.6 else None
        return [(1, 1, used), (2, 1, None)] if t < 4.55 else [(1, 1, used)]

    # Disabled at 3 s, served at its old revision until 4.5 s: the reads starting
    # after 4 s (4.1 to 4.5) are impossible, those before not.
    found = findings(base(commit(3.0, 2, 2, status="disabled"), shown=shown))
    assert found["impossible_reads"] == 2 * 5
    assert found["stale_in_quiet_periods"] == 1
    # Near a fault the allowance is R after the fault's end instead.
    assert findings(base(commit(3.0, 2, 2, status="disabled"), fault("worker_pause", 2.5, 3.5),
                         shown=shown)) == {}  # fmt: skip


def test_a_revision_committed_while_the_read_ran_is_not_stale() -> None:
    # Disabled at 3 s (rev 2), enabled again by a commit that returned at 6.05 s
    # (rev 3); a read from 6.0 s that shows rev 3 saw the commit in flight.
    def shown(t: float) -> list[tuple[int, int, float | None]]:
        used = 2.0 if t >= 2.6 else None
        if t < 3.15:
            return [(1, 1, used), (2, 1, None)]
        return [(1, 1, used)] if t < 5.95 else [(1, 1, used), (2, 3, None)]

    ops = base(commit(3.0, 2, 2, status="disabled"), commit(6.05, 2, 3), shown=shown)
    assert findings(ops).get("impossible_reads", 0) == 0


def test_a_revision_never_committed_is_impossible() -> None:
    def shown(t: float) -> list[tuple[int, int, float | None]]:
        return [(1, 1, 2.0 if t >= 2.6 else None), (2, 9 if 5.0 <= t < 5.15 else 1, None)]

    found = findings(base(shown=shown))
    assert found["impossible_reads"] == 2 * 2


def test_a_revision_going_back_is_found_within_and_across_buckets() -> None:
    def shown(t: float) -> list[tuple[int, int, float | None]]:
        used = 2.0 if t >= 2.6 else None
        return [(1, 1 if 4.15 < t < 4.3 else 2 if t >= 4.0 else 1, used), (2, 1, None)]

    ops = base(commit(3.9, 1, 2), shown=shown)
    ops[5] = final({1: (2, 2.0), 2: (1, None)}, redis={"1": 2.0})
    found = findings(ops)
    assert found == {"backwards_revisions": 2 * 1}


def test_last_use_going_back_is_found_except_across_a_wipe() -> None:
    def shown(t: float) -> list[tuple[int, int, float | None]]:
        used = None if t < 2.6 else 1.5 if 5.0 <= t < 5.15 else 2.0
        return [(1, 1, used), (2, 1, None)]

    assert findings(base(shown=shown)) == {"backwards_last_uses": 2 * 2}
    # A wipe at 4.9 s: the lower value is read within its window, then the comparison
    # restarts.
    assert findings(base(fault("flushall", 4.9), shown=shown)) == {}


def test_staleness_beyond_the_bound_counts_only_in_quiet_periods() -> None:
    def shown(t: float) -> list[tuple[int, int, float | None]]:
        return [(1, 1, 2.0 if t >= 2.6 else None), (2, 2 if t >= 4.5 else 1, None)]

    ops = base(commit(3.0, 2, 2, kind="priority"), shown=shown)
    ops[5] = final({1: (1, 2.0), 2: (2, None)}, redis={"1": 2.0})
    assert findings(ops) == {"stale_in_quiet_periods": 1}
    assert findings([*ops, fault("worker_pause", 3.5, 4.0)]) == {}


def test_a_change_not_current_within_the_recovery_bound_of_a_worker_kill_is_late() -> None:
    def shown(t: float) -> list[tuple[int, int, float | None]]:
        return [(1, 1, 2.0 if t >= 2.6 else None), (2, 2 if t >= 8.5 else 1, None)]

    ops = base(commit(3.2, 2, 2, kind="priority"), fault("worker_kill", 3.0), shown=shown)
    ops[5] = final({1: (1, 2.0), 2: (2, None)}, redis={"1": 2.0})
    assert findings(ops) == {"late_after_worker_kill": 1}
    assert findings(ops, recovery=6.0) == {}


def test_a_fault_that_begins_within_a_changes_allowance_extends_it() -> None:
    # Killed at 3.0, change at 3.2 (its deadline 8.2); a pause from 6.0 to 7.0 begins
    # before that deadline and holds the change until 7.0 + R = 12.0: seen at 9.5 is
    # in time. Without the pause, 9.5 is late.
    def shown(t: float) -> list[tuple[int, int, float | None]]:
        return [(1, 1, 2.0 if t >= 2.6 else None), (2, 2 if t >= 9.45 else 1, None)]

    ops = base(commit(3.2, 2, 2, kind="priority"), fault("worker_kill", 3.0), shown=shown)
    ops[5] = final({1: (1, 2.0), 2: (2, None)}, redis={"1": 2.0})
    assert findings(ops) == {"late_after_worker_kill": 1}
    assert findings([*ops, fault("worker_pause", 6.0, 7.0)]) == {}
    # A fault that begins after the deadline passed extends nothing.
    assert findings([*ops, fault("worker_pause", 9.3, 9.35)]) == {"late_after_worker_kill": 1}


def test_a_reader_that_never_agrees_with_the_source_has_not_converged() -> None:
    def late(t: float) -> list[tuple[int, int, float | None]]:
        return [(1, 1, 2.0 if t >= 2.6 else None), (2, 2 if t >= 9.75 else 1, None)]

    ops = base(commit(7.0, 2, 2, kind="priority"), shown=late)
    ops[5] = final({1: (1, 2.0), 2: (2, None)}, redis={"1": 2.0})
    report = check(History.parse(ops))
    assert report.figures["convergence_s"] == pytest.approx(2.802)
    assert "convergence: 2.802 s" in " ".join(report.violations())

    ops = base(commit(7.0, 2, 2, kind="priority"))
    ops[5] = final({1: (1, 2.0), 2: (2, None)}, redis={"1": 2.0})
    found = findings(ops)
    assert found["not_converged"] == 2


def test_a_touch_missing_from_a_store_is_lost_unless_its_account_is_gone() -> None:
    ops = base(touch(6.0, 1, 6.0))
    assert findings(ops) == {"lost_last_uses": 1}
    report = check(History.parse(ops))
    # Missing from the database, the cache and both readers' last observations.
    assert report.figures["lost_last_uses_database"] == 1
    assert report.figures["lost_last_uses_readers"] == 2
    assert "account 1 at 6.0" in report.tallies["lost_last_uses"].examples[0]

    ops[5] = final({2: (1, None)}, deleted=[1])
    assert findings(ops) == {}


def test_a_bad_line_is_named() -> None:
    with pytest.raises(ValueError, match="history line 2: unknown op 'nap'"):
        History.parse(['{"op": "mark", "name": "x", "t": 1}', '{"op": "nap"}'])
    with pytest.raises(ValueError, match="history line 1"):
        History.parse(["{not json"])
