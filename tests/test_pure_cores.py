"""The pure cores, against brute-force references, with no server: the outbox batch
plan, the buckets an account change touches, and the last-use batching."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cache import Account
from tasks.buckets import BucketRules, account_buckets, platform_buckets
from tasks.source.protocol import OutboxEvent
from tasks.web.last_used import LastUsedBatcher, keep_latest
from tasks.worker.outbox_plan import plan_batch

# A dev dependency; without it these property tests are skipped, not failed.
pytest.importorskip("hypothesis")
from hypothesis import given, settings
from hypothesis import strategies as st

T0 = datetime(2026, 1, 1, tzinfo=UTC)
RULES = BucketRules(
    platforms=("anthropic", "openai", "antigravity"),
    mixed_platforms=frozenset({"anthropic"}),
    mixed_donor_platform="antigravity",
)
ids = st.integers(min_value=1, max_value=6)
groups = st.integers(min_value=0, max_value=4)
group_lists = st.none() | st.lists(groups, max_size=3)
seconds = st.integers(min_value=0, max_value=10_000)


def account_event(account_id: int, group_ids: list[int] | None) -> dict[str, Any]:
    payload = {} if group_ids is None else {"group_ids": group_ids}
    return {"event_type": "account_changed", "account_id": account_id, "payload": payload}


event_specs = st.one_of(
    st.builds(account_event, ids, group_lists),
    st.builds(
        lambda account_ids, group_ids: {
            "event_type": "account_bulk_changed",
            "payload": {"account_ids": account_ids}
            | ({} if group_ids is None else {"group_ids": group_ids}),
        },
        st.lists(ids, min_size=1, max_size=3),
        group_lists,
    ),
    st.builds(lambda g: {"event_type": "group_changed", "group_id": g}, groups),
    st.just({"event_type": "full_rebuild"}),
    st.builds(
        lambda times: {
            "event_type": "account_last_used",
            "payload": {"last_used": {str(k): v for k, v in times.items()}},
        },
        st.dictionaries(ids, seconds, max_size=3),
    ),
    # Malformed: an unknown type, a bulk change naming no account, a bad account id.
    st.just({"event_type": "no_such_type"}),
    st.just({"event_type": "account_bulk_changed", "payload": {"account_ids": []}}),
    st.just({"event_type": "account_changed", "account_id": 0}),
)


def as_events(specs: list[dict[str, Any]]) -> list[OutboxEvent]:
    return [OutboxEvent(id=i, created_at=T0, **spec) for i, spec in enumerate(specs, start=1)]


def reference_plan(specs: list[dict[str, Any]]) -> dict[str, Any]:
    """What a batch asks for, event by event, the slow and obvious way."""
    accounts: dict[int, set[int] | None] = {}
    named: list[tuple[int, list[int] | None]] = []
    out: dict[str, Any] = {"groups": set(), "full": False, "last_used": {}, "ok": [], "bad": []}
    for number, spec in enumerate(specs, start=1):
        kind, payload = spec["event_type"], spec.get("payload", {})
        if (
            kind == "no_such_type"
            or spec.get("account_id") == 0
            or payload.get("account_ids") == []
        ):
            out["bad"].append(number)
            continue
        out["ok"].append(number)
        if kind == "account_changed":
            named.append((spec["account_id"], payload.get("group_ids")))
        elif kind == "account_bulk_changed":
            named += [(a, payload.get("group_ids")) for a in payload["account_ids"]]
        elif kind == "group_changed":
            out["groups"].add(spec["group_id"])
        elif kind == "full_rebuild":
            out["full"] = True
        else:
            for raw, at in payload["last_used"].items():
                seen = out["last_used"].get(int(raw))
                out["last_used"][int(raw)] = max(at, seen) if seen is not None else at
    for account_id in {a for a, _ in named}:
        hints = [g for a, g in named if a == account_id]
        # Any event that names no groups means every group the account was or is in.
        accounts[account_id] = (
            None if any(h is None for h in hints) else {g for h in hints for g in (h or [0])}
        )
    out["accounts"] = accounts
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(event_specs, max_size=12))
def test_a_batch_plan_asks_for_what_its_events_ask_for(specs: list[dict[str, Any]]) -> None:
    plan = plan_batch(as_events(specs))
    expected = reference_plan(specs)
    assert plan.event_ids == expected["ok"]
    assert plan.malformed == expected["bad"]
    assert {a: (None if g is None else set(g)) for a, g in plan.accounts.items()} == expected[
        "accounts"
    ]
    assert plan.groups == expected["groups"]
    assert plan.full_rebuild is expected["full"]
    assert {a: int(t.timestamp()) for a, t in plan.last_used.items()} == expected["last_used"]
    assert plan.empty == (
        not expected["accounts"]
        and not expected["groups"]
        and not expected["full"]
        and not expected["last_used"]
    )


@settings(max_examples=200, deadline=None)
@given(st.lists(event_specs, max_size=12), st.integers(min_value=0, max_value=12))
def test_a_batch_split_in_two_asks_for_the_same(specs: list[dict[str, Any]], cut: int) -> None:
    # Folding is order-insensitive in what it asks: two halves merged equal the whole.
    whole = plan_batch(as_events(specs))
    first, second = plan_batch(as_events(specs)[:cut]), plan_batch(as_events(specs)[cut:])
    for account_id, hint in second.accounts.items():
        first.add_account(account_id, hint)
    first.add_last_used(second.last_used)
    assert first.accounts == whole.accounts
    assert first.last_used == whole.last_used
    assert first.groups | second.groups == whole.groups


platforms = st.sampled_from(RULES.platforms)
accounts = st.builds(
    lambda account_id, platform, group_ids: Account(
        id=account_id, name=f"a{account_id}", platform=platform, type="apikey", group_ids=group_ids
    ),
    ids,
    platforms,
    st.lists(st.integers(min_value=1, max_value=4), max_size=3),
)


@settings(max_examples=300, deadline=None)
@given(st.none() | accounts, st.none() | accounts, st.none() | st.sets(groups, max_size=3))
def test_an_account_change_touches_every_bucket_that_can_list_it(
    old: Account | None, new: Account | None, hint: set[int] | None
) -> None:
    touched = account_buckets(old, new, groups=hint, rules=RULES)
    known = [a for a in (old, new) if a is not None]
    for account in known:
        # Every bucket that lists the account, in each group named (or its own).
        for group in hint if hint is not None else (account.group_ids or [0]):
            assert set(platform_buckets(group, account.platform, RULES)) <= touched
    if hint is not None and not known:
        # Neither cached nor in the source: any bucket of those groups may list it.
        assert touched == {
            b for g in hint for p in RULES.platforms for b in platform_buckets(g, p, RULES)
        }
    for bucket in touched:
        if hint is not None:
            assert bucket.group_id in hint
        else:
            assert any(bucket.group_id in (a.group_ids or [0]) for a in known)


times = st.builds(lambda s: T0 + timedelta(seconds=s), seconds)


@given(st.lists(st.dictionaries(ids, times, max_size=4), max_size=6))
def test_keeping_the_latest_is_the_maximum_whatever_the_order(
    batches: list[dict[int, datetime]],
) -> None:
    forward: dict[int, datetime] = {}
    backward: dict[int, datetime] = {}
    for batch in batches:
        keep_latest(forward, batch)
    for batch in reversed(batches):
        keep_latest(backward, batch)
    expected: dict[int, datetime] = {}
    for batch in batches:
        for account_id, at in batch.items():
            expected[account_id] = max(at, expected.get(account_id, at))
    assert forward == backward == expected


class Sink:
    """Where the batcher sends its batches; refuses them while ``down``."""

    def __init__(self) -> None:
        self.down = False
        self.received: dict[int, list[datetime]] = {}

    def update_last_used(
        self, updates: Mapping[int, datetime], *, record_pending: bool = False
    ) -> int:
        if self.down:
            raise ConnectionError("down")
        for account_id, at in updates.items():
            self.received.setdefault(account_id, []).append(at)
        return len(updates)


steps = st.lists(
    st.one_of(
        st.tuples(st.just("touch"), ids, times),
        st.tuples(st.just("flush"), st.booleans(), st.just(T0)),
    ),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(steps)
def test_the_batcher_delivers_every_latest_touch_across_outages(
    plan: list[tuple[str, Any, datetime]],
) -> None:
    sink = Sink()
    batcher = LastUsedBatcher(sink, interval_seconds=60)
    touched: dict[int, datetime] = {}
    try:
        for step, arg, at in plan:
            if step == "touch":
                # The flusher thread waits a minute: only the test's flushes send.
                batcher.touch(arg, at)
                touched[arg] = max(at, touched.get(arg, at))
            else:
                sink.down = not arg
                batcher.flush()
        sink.down = False
        batcher.flush()
    finally:
        batcher.close()
    assert batcher.pending == 0
    # Every account's latest touch arrived (the cache keeps the latest it is sent, so an
    # older touch sent after it changes nothing); nothing arrived that was not touched.
    assert {a: max(got) for a, got in sink.received.items()} == touched
    assert all(at <= touched[a] for a, got in sink.received.items() for at in got)
