"""NearState alone: last uses agree across buckets, nothing served goes back, and its
invariants hold while threads hammer it."""

from __future__ import annotations

import itertools
import random
import threading
import time
from datetime import datetime

from cache import SchedulerBucket
from cache.codec import from_ms, to_ms
from cache.nearcore import Verdict
from cache.nearstate import NearState
from cache.reads import SnapshotRead
from tests.cache.factories import account

A = SchedulerBucket.parse("1:anthropic:single")
B = SchedulerBucket.parse("2:anthropic:single")


def read(bucket: SchedulerBucket, gen: int, uses: dict[int, int]) -> SnapshotRead:
    held = [
        account(i, name=f"g{gen}", last_used_at=from_ms(u) if u else None) for i, u in uses.items()
    ]
    return SnapshotRead(bucket, gen, gen, held, list(uses.values()))


def last_use(state: NearState, bucket: SchedulerBucket, account_id: int) -> int | None:
    verdict, accounts = state.serve(str(bucket), None)
    assert verdict is Verdict.HIT and accounts is not None
    used = next(a.last_used_at for a in accounts if a.id == account_id)
    return None if used is None else to_ms(used)


def test_a_read_of_one_bucket_raises_the_last_use_every_bucket_serves() -> None:
    state = NearState()
    stamp = state.opened("e", 0)
    state.install(read(A, 1, {23: 9028, 24: 0}), time.monotonic(), stamp)
    state.install(read(B, 1, {23: 9488}), time.monotonic(), stamp)
    assert last_use(state, A, 23) == last_use(state, B, 23) == 9488
    state.used({23: 9488})  # the same time again, from the check: nothing to do
    state.install(read(B, 2, {23: 9100}), time.monotonic(), stamp)  # a laggard store
    assert last_use(state, A, 23) == last_use(state, B, 23) == 9488


def test_an_own_touch_outlives_the_buckets_that_held_the_account() -> None:
    state = NearState(max_buckets=1)
    stamp = state.opened("e", 0)
    state.install(read(A, 1, {23: 100}), time.monotonic(), stamp)
    state.used({23: 500})
    state.install(read(B, 1, {7: 0}), time.monotonic(), stamp)  # A is evicted
    state.install(read(A, 2, {23: 100}), time.monotonic(), stamp)  # Redis not told yet
    assert last_use(state, A, 23) == 500


def test_a_slow_read_cannot_bring_back_an_older_version_of_a_bucket_that_went() -> None:
    state = NearState(max_buckets=1)
    stamp = state.opened("e", 0)
    state.install(read(A, 5, {1: 0}), time.monotonic(), stamp)
    state.install(read(B, 1, {1: 0}), time.monotonic(), stamp)  # A is evicted at gen 5
    assert not state.install(read(A, 4, {1: 0}), time.monotonic(), stamp)
    assert state.install(read(A, 5, {1: 0}), time.monotonic(), stamp)
    state.forget(str(A))  # retired: its gen moved past 5
    assert not state.install(read(A, 5, {1: 0}), time.monotonic(), stamp)


def test_a_read_begun_before_a_drop_is_not_held() -> None:
    state = NearState()
    stamp = state.opened("e", 0)
    state.drop_all("e2")
    assert not state.install(read(A, 1, {1: 0}), time.monotonic(), stamp)
    assert state.names() == [] and state.epoch == "e2"


# -- many threads at once --------------------------------------------------------------


class Redis:
    """What the threads read: gens only go up, last uses only go up."""

    def __init__(self, buckets: list[SchedulerBucket]) -> None:
        self.lock = threading.Lock()
        self.gens = {str(b): 1 for b in buckets}
        self.members = {
            str(b): random.Random(n).sample(range(1, 13), 6) for n, b in enumerate(buckets)
        }
        self.uses = dict.fromkeys(range(1, 13), 0)
        self.epoch = "e0"
        self.seq = 0

    def read(self, bucket: SchedulerBucket) -> SnapshotRead:
        with self.lock:
            gen = self.gens[str(bucket)]
            return read(bucket, gen, {i: self.uses[i] for i in self.members[str(bucket)]})

    def touch(self, account_id: int, used: int) -> None:
        with self.lock:
            self.uses[account_id] = max(self.uses[account_id], used)
            self.seq += 1


def test_hammered_from_threads_the_state_keeps_its_invariants() -> None:
    trust, bound = 0.05, 3
    buckets = [SchedulerBucket(g, "anthropic", "single") for g in range(1, 6)]
    redis = Redis(buckets)
    state = NearState(trust_seconds=trust, max_buckets=bound)
    deadline = time.monotonic() + 2.0
    guard = threading.Lock()
    served_gen: dict[str, int] = {}  # the newest gen any thread was served, per bucket
    served_use: dict[int, int] = {}  # the newest last use any thread was served, per account
    confirm_began: dict[str, float] = {}  # the latest start of a read or check of each
    clock = itertools.count(1_700_000_000_000)
    errors: list[str] = []
    hits = [0]

    def began(names: list[str], at: float) -> None:
        with guard:
            for name in names:
                confirm_began[name] = max(confirm_began.get(name, at), at)

    def request(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < deadline:
            bucket = rng.choice(buckets)
            name = str(bucket)
            with guard:
                gen_floor, use_floor = served_gen.get(name, 0), dict(served_use)
            asked = time.monotonic()
            verdict, accounts = state.serve(name, None)
            if verdict is Verdict.HIT and accounts is not None:
                with guard:
                    hits[0] += 1
                    if asked - confirm_began.get(name, float("-inf")) > trust:
                        errors.append(f"{name} served {asked - confirm_began[name]:.3f} s after")
                    gen = int(accounts[0].name[1:])
                    if gen < gen_floor:
                        errors.append(f"{name} served gen {gen} after {gen_floor}")
                    served_gen[name] = max(served_gen.get(name, 0), gen)
                    for a in accounts:
                        used = 0 if a.last_used_at is None else to_ms(a.last_used_at)
                        if used < use_floor.get(a.id, 0):
                            errors.append(f"{name} account {a.id} used {used} < {use_floor[a.id]}")
                        served_use[a.id] = max(served_use.get(a.id, 0), used)
                if rng.random() < 0.2:  # this process's own request touches an account
                    touched = rng.choice(accounts).id if accounts else 1
                    used = next(clock)
                    redis.touch(touched, used)
                    state.used({touched: used})
                continue
            stamp = state.stamp() or state.opened(redis.epoch, redis.seq)
            began([name], asked)
            snapshot = redis.read(bucket)
            time.sleep(rng.random() / 2000)  # reads finish out of order
            state.install(snapshot, asked, stamp)
            if len(state.names()) > bound:
                errors.append(f"{len(state.names())} buckets held")

    def checker() -> None:
        rng = random.Random(99)
        while time.monotonic() < deadline:
            move = rng.random()
            if move < 0.3:  # an activation, pushed (or its push lost)
                name = str(rng.choice(buckets))
                with redis.lock:
                    redis.gens[name] += 1
                    gen = redis.gens[name]
                if rng.random() < 0.7:
                    state.pushed(name, gen)
            elif move < 0.4:  # another process's touch, seen by the next check
                redis.touch(rng.randint(1, 12), next(clock))
            elif move < 0.42:  # Redis lost its state
                with redis.lock:
                    redis.epoch = f"e{rng.randint(1, 10**9)}"
            elif move < 0.45:
                state.distrust()
            else:  # a check
                names = state.names()
                stamp = state.begin_check()
                asked = time.monotonic()
                began(names, asked)
                with redis.lock:
                    epoch, seq, uses = redis.epoch, redis.seq, dict(redis.uses)
                    gens: dict[str, int | None] = {n: redis.gens[n] for n in names}
                time.sleep(rng.random() / 5000)
                if state.checked(stamp, epoch, seq, gens, asked):
                    state.caught_up(stamp, uses, seq)
            time.sleep(rng.random() / 1000)

    threads = [threading.Thread(target=request, args=(n,)) for n in range(4)]
    threads.append(threading.Thread(target=checker))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors, errors[:10]
    assert hits[0] > 1000
    # At rest, every held bucket serves the same last use of each account it lists.
    state.checked(state.begin_check(), state.epoch or "", redis.seq, {}, time.monotonic())
    seen: dict[int, set[datetime | None]] = {}
    for name in state.names():
        gens = {name: state.version(name)}
        for _ in range(5):  # a check confirms for the trust window: a stalled machine asks again
            now = time.monotonic()
            state.checked(state.begin_check(), state.epoch or "", redis.seq, gens, now)
            verdict, accounts = state.serve(name, None)
            if verdict is Verdict.HIT:
                break
        assert verdict is Verdict.HIT and accounts is not None
        for a in accounts:
            seen.setdefault(a.id, set()).add(a.last_used_at)
    assert all(len(times) == 1 for times in seen.values()), seen


def test_a_held_accounts_last_use_lives_in_its_rows_and_outlives_them() -> None:
    state = NearState()
    stamp = state.opened("e", 0)
    state.install(read(A, 1, {23: 9028, 24: 0}), time.monotonic(), stamp)
    state.install(read(B, 1, {23: 9000}), time.monotonic(), stamp)
    state.used({23: 9500, 25: 7000})  # 25: held nowhere
    assert last_use(state, A, 23) == last_use(state, B, 23) == 9500
    # One map entry for the account held nowhere; the others' uses are their rows'.
    assert state._hold.uses._uses == {25: 7000}
    state.forget(str(A))
    state.forget(str(B))
    state.install(read(A, 2, {23: 9100, 25: 0}), time.monotonic(), stamp)
    assert last_use(state, A, 23) == 9500 and last_use(state, A, 25) == 7000
    assert state._hold.uses._uses == {}
