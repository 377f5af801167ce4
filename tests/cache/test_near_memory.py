"""What a near cache holds: rows within its bounds, accounts built when asked for, and
a large bucket answered with a sequence that behaves like a list."""

from __future__ import annotations

import gc
from collections.abc import Callable
from datetime import timedelta

import pytest
import redis

from cache import Account, NearCache, RedisSchedulerCache, SchedulerBucket
from cache.nearentry import Accounts
from cache.nearrows import materialize, row_of_account, row_of_payload
from tasks import runtime
from tasks.settings import Settings
from tests.cache.factories import T0, account, accounts

A = SchedulerBucket.parse("12:anthropic:mixed")
B = SchedulerBucket.parse("13:anthropic:mixed")
C = SchedulerBucket.parse("14:anthropic:mixed")
NearFactory = Callable[..., NearCache]


def write(cache: RedisSchedulerCache, bucket: SchedulerBucket, written: list[Account]) -> None:
    cache.set_snapshot(bucket, written, cache.reserve_version(bucket))


def test_a_row_builds_the_account_its_payload_was_encoded_from(cache: RedisSchedulerCache) -> None:
    original = account(
        7,
        overload_until=T0 + timedelta(minutes=5),
        expires_at=T0 + timedelta(days=1),
        auto_pause_on_expired=True,
        credentials={"base_url": "https://upstream.example"},
        status="error",
    )
    payload, digest = cache.reader.codec.encode(original)
    row = row_of_payload(7, f"{digest}/1".encode(), payload, 1_767_268_800_000)
    assert materialize(row) == original.model_copy(update={"last_used_at": T0})
    assert not row.is_schedulable(T0) and not row.is_candidate(T0)  # status error
    fine = row_of_account(account(8, overload_until=T0 + timedelta(minutes=5)), 0)
    assert fine.is_candidate(T0) and not fine.is_schedulable(T0)
    assert fine.blocked_until(T0) == T0 + timedelta(minutes=5)


def test_a_large_bucket_answers_with_a_sequence_that_behaves_like_a_list(
    cache: RedisSchedulerCache, near_cache: NearFactory
) -> None:
    write(cache, A, accounts(40))
    near = near_cache(background=False, max_decoded=10)  # A is too large to keep decoded
    got = near.list_schedulable(A, T0)
    expected = cache.get_snapshot(A)
    assert isinstance(got, Accounts) and expected is not None
    assert len(got) == 40 and got == expected and expected == list(got)
    assert got[0] == expected[0] and got[-1] == expected[-1]
    assert got[3:7] == expected[3:7] and isinstance(got[3:7], list)
    assert [a.id for a in got] == list(range(1, 41))
    assert expected[5] in got and got.index(expected[5]) == 5
    assert got + [] == expected and bool(got)  # noqa: RUF005 and got != expected[:-1]
    with pytest.raises(IndexError):
        got[40]
    with pytest.raises(TypeError):
        hash(got)


def test_the_decoded_budget_goes_to_the_buckets_read_last(
    cache: RedisSchedulerCache, near_cache: NearFactory
) -> None:
    write(cache, A, accounts(30))
    write(cache, B, accounts(30, start=101))
    near = near_cache(background=False, max_decoded=40)
    assert isinstance(near.list_schedulable(A, T0), list)  # within the budget: a list
    assert isinstance(near.list_schedulable(B, T0), list)  # A's accounts make room
    assert isinstance(near.list_schedulable(A, T0), list)
    assert near.list_schedulable(B, T0) == cache.get_snapshot(B)


def test_buckets_past_the_accounts_bound_are_dropped_least_recently_read_first(
    cache: RedisSchedulerCache, near_cache: NearFactory
) -> None:
    write(cache, A, accounts(30))
    write(cache, B, accounts(30, start=101))
    write(cache, C, accounts(80, start=201))
    near = near_cache(background=False, max_accounts=70)
    near.list_schedulable(A, T0)
    near.list_schedulable(B, T0)
    near.list_schedulable(A, T0)  # B is now the least recently read
    assert near.state.reads == 2
    write(cache, C, accounts(35, start=201))
    near.list_schedulable(C, T0)
    assert sorted(near.state.names()) == sorted([str(A), str(C)])
    write(cache, C, accounts(80, start=201))  # larger than the bound alone
    near.check()
    for _ in range(3):
        got = near.list_schedulable(C, T0)
        assert got == cache.get_snapshot(C)
    assert str(C) not in near.state.names()  # answered from each read, never held


def test_a_read_after_one_account_changed_fetches_one_payload(
    cache: RedisSchedulerCache, redis_client: redis.Redis, near_cache: NearFactory
) -> None:
    def sent() -> int:
        return int(redis_client.info("stats")["total_net_output_bytes"])

    write(cache, A, accounts(50, extra={"padding": "x" * 500}))
    near = near_cache(background=False, max_decoded=0)
    before = sent()
    near.list_schedulable(A, T0)
    first = sent() - before
    cache.set_account(account(9, revision=2, name="changed", extra={"padding": "x" * 500}))
    near.check()  # sees the new gen: the next request reads the bucket
    before = sent()
    got = near.get_snapshot(A)
    again = sent() - before
    assert got is not None and got[8].name == "changed"
    assert near.state.reads == 2 and got == cache.get_snapshot(A)
    assert again < first / 5  # 50 payloads of 600 bytes the first time, then one


def test_the_settings_bound_the_process_near_cache(configured: Settings) -> None:
    bounds = {"near_cache_accounts": 123, "near_cache_decoded": 7}
    runtime.reset(configured.model_copy(update=bounds))
    near = runtime.get_near_cache()
    assert near is not None
    assert near.state.holds(123) and not near.state.holds(124)
    assert near.state.holds(7, decoded=True) and not near.state.holds(8, decoded=True)


def test_a_row_keeps_its_entry_and_payload_in_one_object_the_collector_skips(
    cache: RedisSchedulerCache,
) -> None:
    original = account(9, priority=3)
    payload, digest = cache.reader.codec.encode(original)
    entry = f"{digest}/4".encode()
    row = row_of_payload(9, entry, payload, 0)
    assert isinstance(row.packed, bytes) and row.packed.startswith(entry)
    assert row.entry == entry and materialize(row) == original
    held = row_of_account(original, 0, entry)
    assert held.entry == entry and materialize(held) == original
    assert not gc.is_tracked(row) and not gc.is_tracked(held)
