"""The pick index against a brute-force reference: the same account, at every step of
random buckets, touches, patches, new snapshots, exclusions and time windows."""

from __future__ import annotations

import gc
from datetime import datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cache import Account
from cache.codec import AccountCodec, from_ms, to_ms, with_last_used
from cache.nearrows import Row, materialize, row_of_account, row_of_payload
from cache.pickindex import PickIndex, key_id, order_key, tiebreak, use_after
from tests.cache.factories import T0, account

IDS = st.integers(min_value=1, max_value=12)
OFFSETS = st.integers(min_value=-2_000, max_value=20_000)  # ms from the start


def reference(accounts: dict[int, Account], now: datetime, exclude: set[int]) -> Account | None:
    """Every account looked at: the lowest (priority, last use or never, tie, id)."""
    best: tuple[Any, ...] | None = None
    chosen = None
    for a in accounts.values():
        if a.id in exclude or not a.is_schedulable(now):
            continue
        used = float("-inf") if a.last_used_at is None else a.last_used_at.timestamp()
        key = (a.priority, used, tiebreak(a.id), a.id)
        if best is None or key < best:
            best, chosen = key, a
    return chosen


def at(offset: int | None) -> datetime | None:
    return None if offset is None else T0 + timedelta(milliseconds=offset)


@st.composite
def an_account(draw: st.DrawFn, account_id: int | None = None) -> Account:
    return account(
        draw(IDS) if account_id is None else account_id,
        priority=draw(st.integers(min_value=0, max_value=2)),
        status=draw(st.sampled_from(["active", "active", "active", "disabled"])),
        last_used_at=at(draw(st.none() | OFFSETS)),
        rate_limit_reset_at=at(draw(st.none() | OFFSETS)),
        overload_until=at(draw(st.none() | OFFSETS)),
        auto_pause_on_expired=draw(st.booleans()),
        expires_at=at(draw(st.none() | OFFSETS)),
    )


STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("pick"), st.integers(-50, 3_000), st.sets(IDS, max_size=4)),
        st.tuples(st.just("touch"), IDS, OFFSETS),
        st.tuples(st.just("patch"), an_account()),
        st.tuples(st.just("snapshot"), st.lists(an_account(), max_size=12)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(first=st.lists(an_account(), max_size=12), steps=STEPS)
def test_the_pick_is_the_brute_force_pick(first: list[Account], steps: list[Any]) -> None:
    model = {a.id: a for a in first}
    index = PickIndex(model.values())
    now = T0
    for step in steps:
        if step[0] == "pick":
            now += timedelta(milliseconds=step[1])
            chosen = index.pick(now, step[2])
            assert chosen is reference(model, now, step[2]) or chosen == reference(
                model, now, step[2]
            )
            if chosen is not None:  # the use, laid over as the near cache does
                model[chosen.id] = with_last_used(chosen, use_after(chosen, now))
                index.put(model[chosen.id])
        elif step[0] == "touch":
            held = model.get(step[1])
            if held is not None and (
                held.last_used_at is None or to_ms(held.last_used_at) < step[2] + to_ms(T0)
            ):
                model[held.id] = with_last_used(held, step[2] + to_ms(T0))
                index.put(model[held.id])
        elif step[0] == "patch":
            if step[1].id in model:
                model[step[1].id] = step[1]
                index.put(step[1])
        else:
            model = {a.id: a for a in step[1]}
            index.refresh(list(model.values()))
        assert len(index) == len(model)


def test_a_window_that_ends_brings_the_account_back_first() -> None:
    index = PickIndex(
        [
            account(1, last_used_at=None, rate_limit_reset_at=T0 + timedelta(seconds=5)),
            account(2, last_used_at=T0),
        ]
    )
    assert [index.pick(T0 + timedelta(seconds=s)) for s in (0, 4)] == [
        account(2, last_used_at=T0)
    ] * 2
    returned = index.pick(T0 + timedelta(seconds=5))
    assert returned is not None and returned.id == 1


def test_picks_in_a_row_go_round_the_tier_least_recently_used_first() -> None:
    tier = [account(i, last_used_at=from_ms(to_ms(T0) + i)) for i in range(1, 6)]
    index = PickIndex([*tier, account(9, priority=11)])
    order = []
    for n in range(10):
        now = T0 + timedelta(seconds=n + 1)
        chosen = index.pick(now)
        assert chosen is not None
        order.append(chosen.id)
        index.put(with_last_used(chosen, use_after(chosen, now)))
    assert order == [1, 2, 3, 4, 5] * 2


def test_an_excluded_account_is_skipped_and_kept() -> None:
    index = PickIndex([account(1), account(2, last_used_at=T0)])
    assert index.pick(T0, {1}) == account(2, last_used_at=T0)
    assert index.pick(T0, {1, 2}) is None
    assert index.pick(T0) == account(1)


_CODEC = AccountCodec()


def as_row(held: Account) -> Row:
    """The row a near cache holds for ``held``: its payload packed, its last use laid."""
    payload, digest = _CODEC.encode(held)
    used = 0 if held.last_used_at is None else to_ms(held.last_used_at)
    return row_of_payload(held.id, f"{digest}/1".encode(), payload, used)


@settings(max_examples=200, deadline=None)
@given(first=st.lists(an_account(), max_size=12), steps=STEPS)
def test_the_pick_of_rows_is_the_brute_force_pick(first: list[Account], steps: list[Any]) -> None:
    """The same, over the rows a near cache holds: each row answers ``is_schedulable``,
    ``blocked_until`` and the order as its account does, and builds that account."""
    model = {a.id: a for a in first}
    rows = {a.id: as_row(a) for a in model.values()}
    index = PickIndex(rows.values(), rows)
    now = T0
    for step in steps:
        if step[0] == "pick":
            now += timedelta(milliseconds=step[1])
            chosen = index.pick(now, step[2])
            expected = reference(model, now, step[2])
            assert (chosen and materialize(chosen)) == expected
            if chosen is not None:
                chosen.lay(use_after(chosen, now))
                model[chosen.id] = with_last_used(model[chosen.id], chosen.used)
                index.put(chosen)
        elif step[0] == "touch":
            row = rows.get(step[1])
            if row is not None and row.used < step[2] + to_ms(T0):
                row.lay(step[2] + to_ms(T0))
                model[row.id] = with_last_used(model[row.id], row.used)
                index.put(row)
        elif step[0] == "patch":
            if step[1].id in model:
                model[step[1].id] = step[1]
                rows[step[1].id] = as_row(step[1])
                index.put(rows[step[1].id])
        else:
            model = {a.id: a for a in step[1]}
            rows = {a.id: as_row(a) for a in model.values()}
            index.refresh(rows.values(), rows)
        assert len(index) == len(model)
        for a in model.values():
            assert rows[a.id].is_schedulable(now) == a.is_schedulable(now)
            assert rows[a.id].blocked_until(now) == a.blocked_until(now)


FIELDS = st.tuples(
    st.integers(-(2**40), 2**40),  # priority: any int, negative ones too
    st.integers(0, 2**45 - 1),  # last use (ms), within the packed width
    st.integers(1, 2**63 - 1),  # id
)


@given(first=FIELDS, second=FIELDS)
def test_packed_keys_compare_as_the_fields_do(
    first: tuple[int, int, int], second: tuple[int, int, int]
) -> None:
    def both(fields: tuple[int, int, int]) -> tuple[int, tuple[int, ...]]:
        priority, used, account_id = fields
        held = row_of_account(account(account_id, priority=priority), used)
        return order_key(held), (priority, used, tiebreak(account_id), account_id)

    (key_a, fields_a), (key_b, fields_b) = both(first), both(second)
    assert (key_a < key_b) == (fields_a < fields_b) and (key_a == key_b) == (fields_a == fields_b)
    assert key_id(key_a) == first[2] and key_id(key_b) == second[2]


def test_a_use_outside_the_packed_width_is_clamped_to_it() -> None:
    def used(ms: int) -> int:
        held = row_of_account(account(1), 0)
        held.used = ms
        return order_key(held)

    assert used(-5) == used(0) < used(2**60) == used(2**45 - 1)


def test_an_earlier_pick_sees_an_account_taken_out_as_expired_since() -> None:
    expiring = account(1, expires_at=T0 + timedelta(seconds=5), auto_pause_on_expired=True)
    index = PickIndex([expiring, account(2, last_used_at=T0)])
    assert index.pick(T0 + timedelta(seconds=6)) == account(2, last_used_at=T0)  # 1 is out
    assert index.pick(T0 + timedelta(seconds=4)) == expiring  # asked earlier: still in
    assert index.pick(T0 + timedelta(seconds=7)) == account(2, last_used_at=T0)


def test_the_index_keeps_no_object_for_the_collector_to_track() -> None:
    rows = {i: as_row(account(i, last_used_at=from_ms(to_ms(T0) + i))) for i in range(1, 50)}
    index = PickIndex(rows.values(), rows)
    for n in range(200):
        now = T0 + timedelta(seconds=n)
        chosen = index.pick(now)
        assert chosen is not None
        chosen.lay(use_after(chosen, now))
        index.put(chosen)
    gc.collect()
    assert not any(gc.is_tracked(row) or gc.is_tracked(row.key) for row in rows.values())
    assert all(row.key is not None and key_id(row.key) == row.id for row in rows.values())
