"""The near caches' core without any server: its requests are answered by the test."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from cache import SchedulerBucket
from cache.keys import TOUCH_CHUNK, KeySpace
from cache.nearcore import (
    SERVE_ATTEMPTS,
    Pipeline,
    ReadBucket,
    Request,
    Steps,
    check,
    hit,
    read_touches,
    serve,
)
from cache.nearpush import WAIT_SECONDS, Backstop, parse_push
from cache.nearstate import NearState
from cache.reads import SnapshotRead
from tests.cache.factories import T0, account, accounts

BUCKET = SchedulerBucket.parse("12:anthropic:mixed")
NAME = str(BUCKET)
KEYS = KeySpace("sched")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def snapshot(gen: int, count: int = 3, uses: list[int] | None = None, **changes: Any) -> Any:
    held = accounts(count, **changes)
    return SnapshotRead(BUCKET, gen, gen, held, uses or [0] * count)


def run(steps: Steps, answer: Callable[[Request], Any]) -> tuple[Any, list[Request]]:
    """Drive ``steps`` as a driver does, answering each request with ``answer``."""
    asked: list[Request] = []
    try:
        request = next(steps)
        while True:
            asked.append(request)
            request = steps.send(answer(request))
    except StopIteration as done:
        return done.value, asked


def redis(
    *, epoch: bytes | None = b"e1", seq: int = 0, gens: dict[str, int] | None = None
) -> Callable[[Request], Any]:
    """Answers as a Redis holding ``BUCKET`` at gen 1 (or ``gens``) would."""
    held = {NAME: 1} if gens is None else gens
    metas = {KEYS.meta(SchedulerBucket.parse(name)): name for name in held}

    def answer(request: Request) -> Any:
        if isinstance(request, ReadBucket):
            return snapshot(held[str(request.bucket)])
        replies: list[Any] = []
        for method, args in request.commands:
            if method == "get":
                replies.append(str(seq).encode() if args[0] == KEYS.last_used_seq else epoch)
            elif method == "zrangebyscore":
                replies.append([])
            else:
                gen = held.get(metas[args[0]])
                replies.append([b"1", str(gen).encode()] if gen is not None else [None, None])
        return replies

    return answer


def state(clock: Clock) -> NearState:
    return NearState(trust_seconds=1.0, max_buckets=8, monotonic=clock)


def test_a_first_read_fetches_the_epoch_then_the_bucket_and_then_serves_from_memory() -> None:
    clock = Clock()
    near = state(clock)
    got, asked = run(serve(near, KEYS, BUCKET, T0, clock), redis())
    assert [a.id for a in got] == [1, 2, 3]
    assert isinstance(asked[0], Pipeline) and asked[0].what == "near cache epoch"
    assert asked[1:] == [ReadBucket(BUCKET)]
    assert near.epoch == "e1"
    assert [a.id for a in hit(near, NAME, T0) or []] == [1, 2, 3]
    got, asked = run(serve(near, KEYS, BUCKET, None, clock), redis())
    assert asked == [] and len(got) == 3


def test_past_the_trust_window_the_bucket_is_checked_before_it_is_served() -> None:
    clock = Clock()
    near = state(clock)
    run(serve(near, KEYS, BUCKET, T0, clock), redis())
    clock.now += 1.5
    assert hit(near, NAME, T0) is None
    got, asked = run(serve(near, KEYS, BUCKET, T0, clock), redis())
    assert [r.what for r in asked if isinstance(r, Pipeline)] == ["near cache check"]
    assert not any(isinstance(r, ReadBucket) for r in asked)  # same gen: confirmed
    assert len(got) == 3 and hit(near, NAME, T0) is not None


def test_a_push_of_a_newer_gen_makes_the_next_request_read_without_an_epoch_fetch() -> None:
    clock = Clock()
    near = state(clock)
    run(serve(near, KEYS, BUCKET, T0, clock), redis())
    near.pushed(NAME, 2)
    near.pushed(NAME, 1)  # an older push changes nothing
    assert hit(near, NAME, T0) is None
    _, asked = run(serve(near, KEYS, BUCKET, T0, clock), redis(gens={NAME: 2}))
    assert asked == [ReadBucket(BUCKET)]
    assert near.version(NAME) == 2


def test_a_miss_forgets_the_bucket() -> None:
    clock = Clock()
    near = state(clock)
    run(serve(near, KEYS, BUCKET, T0, clock), redis())
    near.pushed(NAME, 5)
    got, _ = run(
        serve(near, KEYS, BUCKET, T0, clock),
        lambda r: None if isinstance(r, ReadBucket) else [b"0", b"e1"],
    )
    assert got is None and near.names() == []


def test_reads_that_keep_being_overtaken_answer_from_the_requests_own_read() -> None:
    clock = Clock()
    near = state(clock)
    run(serve(near, KEYS, BUCKET, T0, clock), redis())
    reads = iter(range(2, 10))

    def overtaken(request: Request) -> Any:
        gen = next(reads)
        near.pushed(NAME, gen + 1)  # a newer version activates as each read ends
        return snapshot(gen, rate_limit_reset_at=None)

    near.pushed(NAME, 2)
    got, asked = run(serve(near, KEYS, BUCKET, T0, clock), overtaken)
    assert len(asked) == SERVE_ATTEMPTS and got is not None and len(got) == 3


def test_a_check_confirms_the_same_gen_and_distrusts_another() -> None:
    clock = Clock()
    near = state(clock)
    run(serve(near, KEYS, BUCKET, T0, clock), redis())
    clock.now += 0.9
    run(check(near, KEYS, None, clock), redis())
    clock.now += 0.9  # 1.8 s after the read, 0.9 s after the check
    assert hit(near, NAME, T0) is not None
    run(check(near, KEYS, None, clock), redis(gens={NAME: 3}))
    assert hit(near, NAME, T0) is None


def test_a_check_that_finds_another_epoch_drops_everything() -> None:
    clock = Clock()
    near = state(clock)
    run(serve(near, KEYS, BUCKET, T0, clock), redis())
    run(check(near, KEYS, None, clock), redis(epoch=None))
    assert near.names() == [] and near.epoch == ""


def test_a_check_reads_the_touches_after_its_position_and_lays_them_over() -> None:
    clock = Clock()
    near = state(clock)
    run(serve(near, KEYS, BUCKET, T0, clock), redis(seq=4))
    used = 1_767_268_800_000

    def touched(request: Request) -> Any:
        assert isinstance(request, Pipeline)
        methods = [method for method, _ in request.commands]
        if methods == ["hmget"] and request.commands[0][1][0] == KEYS.last_used:
            assert request.commands[0][1][1] == [b"2"]
            return [[str(used).encode()]]
        assert methods[:3] == ["get", "get", "zrangebyscore"]
        assert request.commands[2][1][1] == "(4"
        return [b"5", b"e1", [(b"5:2", 5.0)], [b"1", b"1"]]

    _, asked = run(check(near, KEYS, None, clock), touched)
    assert len(asked) == 2
    got = hit(near, NAME, None) or []
    assert got[1].last_used_at is not None and got[1].last_used_at.timestamp() * 1000 == used
    # The next check starts after batch 5.
    _, asked = run(check(near, KEYS, None, clock), redis(seq=5))
    assert isinstance(asked[0], Pipeline) and asked[0].commands[2][1][1] == "(5"


def test_a_trimmed_touch_log_drops_what_is_held() -> None:
    clock = Clock()
    near = state(clock)
    run(serve(near, KEYS, BUCKET, T0, clock), redis(seq=4))
    run(check(near, KEYS, None, clock), lambda r: [b"9", b"e1", [(b"8:1", 8.0)], [b"1", b"1"]])
    assert near.names() == []


def test_a_check_begun_before_the_state_was_dropped_changes_nothing() -> None:
    clock = Clock()
    near = state(clock)
    run(serve(near, KEYS, BUCKET, T0, clock), redis(epoch=b"old"))
    steps = check(near, KEYS, None, clock)
    request = next(steps)
    # Meanwhile Redis lost its state, and a request read it under the new epoch.
    run(check(near, KEYS, None, clock), redis(epoch=b"new"))
    run(serve(near, KEYS, BUCKET, T0, clock), redis(epoch=b"new"))
    with pytest.raises(StopIteration):
        steps.send(redis(epoch=b"old")(request))
    assert near.epoch == "new" and near.names() == [NAME]


def test_read_touches() -> None:
    assert read_touches(4, 6, [(b"5:1,2", 5.0), (b"6:2,3", 6.0)], TOUCH_CHUNK).ids == [
        b"1",
        b"2",
        b"3",
    ]
    assert read_touches(4, 6, [(b"5:1", 5.0), (b"6:2", 6.0)], 2).next_since == 6
    assert read_touches(4, 9, [(b"5:1", 5.0), (b"6:2", 6.0)], 2).next_since == 6  # truncated
    assert read_touches(4, 4, [], TOUCH_CHUNK) == read_touches(4, 4, [], 1)
    assert not read_touches(4, 4, [], TOUCH_CHUNK).lost
    assert read_touches(4, 7, [(b"7:1", 7.0)], TOUCH_CHUNK).lost
    assert read_touches(4, 7, [], TOUCH_CHUNK).lost


def test_parse_push() -> None:
    assert parse_push(b"12:anthropic:mixed 8 15") == ("12:anthropic:mixed", 15)
    assert parse_push("12:anthropic:mixed 8") is None
    assert parse_push(b"12:anthropic:mixed 8 x") is None
    assert parse_push(b"12:anthropic:mixed 8 16 42") == ("12:anthropic:mixed", 16)
    assert parse_push(b"12:anthropic:mixed 8 16 42 1") is None


def test_the_backstop_checks_on_time_and_takes_pushes_and_resubscriptions() -> None:
    clock = Clock()
    near = state(clock)
    run(serve(near, KEYS, BUCKET, T0, clock), redis())
    backstop = Backstop(near, 0.5, clock)
    assert backstop.wait() == 0.0 and backstop.due() and not backstop.due()
    assert backstop.wait() == 0.5
    clock.now += 0.2
    assert backstop.wait() == pytest.approx(0.3)
    clock.now += 0.3
    assert backstop.due()
    assert Backstop(near, 5, clock).wait() == 0.0
    slow = Backstop(near, 5, clock)
    slow.due()
    assert slow.wait() == WAIT_SECONDS
    backstop.heard(None)
    backstop.heard({"type": "message", "data": b"garbage"})
    assert hit(near, NAME, T0) is not None
    backstop.heard({"type": "message", "data": f"{NAME} 2 2".encode()})
    assert hit(near, NAME, T0) is None
    run(serve(near, KEYS, BUCKET, T0, clock), redis(gens={NAME: 2}))
    backstop.heard({"type": "subscribe", "data": 1})  # pushes may have been lost
    assert hit(near, NAME, T0) is None
    backstop.failed(OSError("down"))
    assert hit(near, NAME, T0) is None


def test_own_touches_are_laid_over_at_once_and_never_go_back() -> None:
    clock = Clock()
    near = state(clock)
    run(serve(near, KEYS, BUCKET, T0, clock), redis())
    near.used_at({1: T0})
    near.used_at({1: T0.replace(year=2025)})
    got = hit(near, NAME, None) or []
    assert got[0].last_used_at == T0 and got[1] == account(2)
