"""tasks.pick against a real Redis: threads and processes spread over the best tier,
an excluded or just-used account is not picked while an older one is left, a window
that ends brings its account back, and the fallback without a near cache agrees."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cache import Account, InvalidBucket, RedisSchedulerCache, SchedulerBucket
from tasks import pick, pick_async, record_last_used, runtime
from tasks.settings import Settings
from tasks.web import aio
from tasks.web.last_used import default_batcher

pytestmark = pytest.mark.timeout(120)

BUCKET = SchedulerBucket.parse("0:openai:single")
TIER = 40  # accounts of the best priority; 5 more of a worse one


def bucket_accounts(**changes: Any) -> list[Account]:
    return [
        Account(
            id=i, name=f"a{i}", platform="openai", type="apikey", priority=1 if i <= TIER else 5
        )
        for i in range(1, TIER + 6)
    ]


def write(cache: RedisSchedulerCache, accounts: list[Account]) -> None:
    cache.set_snapshot(BUCKET, accounts, cache.reserve_version(BUCKET))


@pytest.fixture
def seeded(configured: Settings, task_cache: RedisSchedulerCache) -> Iterator[Settings]:
    write(task_cache, bucket_accounts())
    yield configured


@pytest.fixture
def without_near(configured: Settings, task_cache: RedisSchedulerCache) -> Iterator[Settings]:
    settings = configured.model_copy(update={"near_cache": False})
    runtime.reset(settings)
    write(task_cache, bucket_accounts())
    yield settings


def test_threads_go_round_the_best_tier_evenly(seeded: Settings) -> None:
    picked: list[int] = []
    lock = threading.Lock()

    def run() -> None:
        for _ in range(20):
            account = pick(0, "openai")
            assert account is not None
            with lock:
                picked.append(account.id)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counts = Counter(picked)
    assert set(counts) == set(range(1, TIER + 1))  # every one of the tier, no other
    assert max(counts.values()) - min(counts.values()) <= 1


def picks_in_a_process(settings: Settings, rounds: int, out: Any) -> None:
    """Another web process: ``rounds`` picks as fast as it can."""
    runtime.reset(settings)
    ids = []
    for _ in range(rounds):
        account = pick(0, "openai")
        ids.append(None if account is None else account.id)
    default_batcher().close()
    out.put(ids)


def test_processes_that_see_the_same_times_start_on_different_accounts(seeded: Settings) -> None:
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    # They hear of each other's uses only at the end (their batchers send on close): a
    # slow start on a loaded machine would otherwise let one hear of another's midway.
    deaf = seeded.model_copy(update={"last_used_cache_flush_seconds": 60.0})
    processes = [
        context.Process(target=picks_in_a_process, args=(deaf, TIER // 2, out)) for _ in range(4)
    ]
    for process in processes:
        process.start()
    results = [out.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=30)
    for ids in results:
        # Within a process, no account twice before the whole half-tier was used once.
        assert len(set(ids)) == len(ids) and all(i is not None and i <= TIER for i in ids)
    # Each takes half the tier before it hears of the others' uses: one shared order
    # would use that half four times and leave the other idle.
    distinct = {i for ids in results for i in ids}
    assert len(distinct) >= 30, sorted(distinct)


def test_an_excluded_or_just_used_account_is_not_picked_while_an_older_is_left(
    seeded: Settings,
) -> None:
    first = pick(0, "openai")
    assert first is not None
    second = pick(0, "openai", exclude=[first.id])
    assert second is not None and second.id != first.id
    # Touched by this process (not picked): it goes to the back of the tier at once.
    others = [pick(0, "openai") for _ in range(TIER - 3)]
    left = set(range(1, TIER + 1)) - {first.id, second.id} - {a.id for a in others if a}
    (last,) = left
    record_last_used(last)
    fallback = pick(0, "openai", exclude=[first.id])
    assert fallback is not None and fallback.id not in (last, first.id)


def test_every_account_excluded_or_held_back_gives_none(seeded: Settings) -> None:
    assert pick(0, "openai", exclude=range(1, TIER + 6)) is None


def test_a_window_that_ends_brings_its_account_back(
    seeded: Settings, task_cache: RedisSchedulerCache
) -> None:
    now = datetime.now(UTC) + timedelta(hours=1)  # later than every use noted so far
    accounts = bucket_accounts()
    accounts[0] = accounts[0].model_copy(update={"rate_limit_reset_at": now + timedelta(seconds=5)})
    write(task_cache, accounts)
    during = [pick(0, "openai", now=now + timedelta(milliseconds=n)) for n in range(TIER - 1)]
    assert 1 not in {a.id for a in during if a}
    back = pick(0, "openai", now=now + timedelta(seconds=5))
    assert back is not None and back.id == 1


def test_without_a_near_cache_the_scan_skips_own_recent_picks(without_near: Settings) -> None:
    assert runtime.get_near_cache() is None
    ids = []
    for _ in range(TIER):
        account = pick(0, "openai")
        assert account is not None
        ids.append(account.id)
    assert sorted(ids) == list(range(1, TIER + 1))


def test_pick_async_goes_round_the_tier(seeded: Settings) -> None:
    async def main() -> list[int]:
        try:
            picked = [await pick_async(0, "openai") for _ in range(TIER)]
            return [a.id for a in picked if a is not None]
        finally:
            await aio.aclose()

    assert sorted(asyncio.run(main())) == list(range(1, TIER + 1))


@pytest.mark.parametrize("near_cache", [True, False])
def test_a_pick_for_a_time_to_come_does_not_drag_later_uses_with_it(
    seeded: Settings, near_cache: bool
) -> None:
    runtime.reset(seeded.model_copy(update={"near_cache": near_cache}))
    ahead = datetime.now(UTC) + timedelta(hours=1)
    assert pick(0, "openai", now=ahead) is not None
    default_batcher().flush()

    before = datetime.now(UTC) - timedelta(milliseconds=1)  # uses are noted in ms
    account = pick(0, "openai")
    assert account is not None
    noted = default_batcher().held()[account.id]
    assert before <= noted <= datetime.now(UTC) + timedelta(seconds=1)


def test_a_remembered_bucket_still_refuses_a_bool_group_and_follows_new_settings(
    seeded: Settings,
) -> None:
    from tasks.buckets import UnknownPlatform

    assert pick(1, "openai") is None  # group 1's bucket is remembered now (and empty)
    with pytest.raises(InvalidBucket, match="group id"):
        pick(True, "openai")  # equal to 1, and still refused
    assert pick(0, "openai") is not None
    runtime.reset(seeded.model_copy(update={"platforms": ["anthropic"]}))
    with pytest.raises(UnknownPlatform, match="openai"):
        pick(0, "openai")


def test_a_pick_of_either_near_cache_reaches_the_other_at_once(seeded: Settings) -> None:
    """A process serving both ways (threads and asyncio): a use the sync near cache
    laid over reaches the asyncio one without a flush, and the other way round."""

    async def main() -> None:
        try:
            await pick_async(0, "openai")  # the asyncio near cache holds the bucket
            picked = {}
            for _ in range(TIER // 2):
                account = pick(0, "openai")
                assert account is not None
                picked[account.id] = account
            for _ in range(TIER // 2):
                account = await pick_async(0, "openai")
                assert account is not None
                assert account.id not in picked, "the asyncio pick missed a sync pick's use"
                picked[account.id] = account
            assert len(picked) == TIER
        finally:
            await aio.aclose()

    asyncio.run(main())
