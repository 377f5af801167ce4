"""ReadPlan on its own: replies in, commands out, no server."""

from __future__ import annotations

import pytest

from cache.codec import AccountCodec
from cache.keys import READ_CHUNK, KeySpace
from cache.models import SchedulerBucket
from cache.reads import Expired, Moved, ReadPlan, VersionHints
from tests.cache.factories import account

BUCKET = SchedulerBucket.parse("3:openai:single")
KEYS = KeySpace()


def _payload(codec: AccountCodec, account_id: int) -> tuple[bytes, bytes]:
    payload, digest = codec.encode(account(account_id))
    return payload, f"{digest}/1".encode()


def test_the_first_call_names_the_expected_versions_keys() -> None:
    hints = VersionHints()
    hints.note(BUCKET, 7)
    keys, args = ReadPlan(KEYS, AccountCodec(), BUCKET, hints).first_call()
    assert keys == [KEYS.meta(BUCKET), KEYS.snapshot(BUCKET, 7), KEYS.entries(BUCKET, 7)]
    assert args == [7, 0, READ_CHUNK]


def test_a_wrong_guess_notes_the_active_version_and_asks_again() -> None:
    hints = VersionHints()
    plan = ReadPlan(KEYS, AccountCodec(), BUCKET, hints)
    with pytest.raises(Moved):
        plan.absorb_first([9])
    assert hints.get(BUCKET) == 9
    assert ReadPlan(KEYS, AccountCodec(), BUCKET, hints).first_call()[1][0] == 9


def test_no_active_version_is_a_miss() -> None:
    assert not ReadPlan(KEYS, AccountCodec(), BUCKET, VersionHints()).absorb_first([])


def test_a_small_bucket_reads_in_one_call_then_payloads_and_uses() -> None:
    writer, codec = AccountCodec(), AccountCodec()
    (p1, e1), (p2, e2) = _payload(writer, 1), _payload(writer, 2)
    plan = ReadPlan(KEYS, codec, BUCKET, VersionHints())
    assert plan.absorb_first([4, 11, 2, [b"1", b"2"], [e1, e2]])
    assert plan.rest_ranges() == []
    payloads, uses = plan.fetches()
    assert payloads == [(KEYS.payloads(BUCKET, 4), [b"1", b"2"])]
    assert uses == [(KEYS.last_used, [b"1", b"2"])]
    read = plan.finish([[p1, p2]], [[b"1767268800000", None]])
    assert read is not None
    assert (read.version, read.gen, [a.id for a in read.accounts]) == (4, 11, [1, 2])
    assert read.uses == [1767268800000, 0]
    # A second read of the same entries fetches no payload: the codec holds them.
    again = ReadPlan(KEYS, codec, BUCKET, VersionHints())
    again.absorb_first([4, 12, 2, [b"1", b"2"], [e1, e2]])
    assert again.fetches()[0] == []
    assert again.finish([], [[None, None]]) is not None


def test_a_missing_payload_is_a_miss() -> None:
    writer = AccountCodec()
    _, e1 = _payload(writer, 1)
    plan = ReadPlan(KEYS, AccountCodec(), BUCKET, VersionHints())
    plan.absorb_first([4, 1, 2, [b"1", b"2"], [e1, None]])
    plan.fetches()
    assert plan.finish([[None, None]], [[None, None]]) is None


def test_a_deleted_or_removed_account_is_skipped_not_a_miss() -> None:
    writer = AccountCodec()
    p1, e1 = _payload(writer, 1)
    plan = ReadPlan(KEYS, AccountCodec(), BUCKET, VersionHints())
    plan.absorb_first([4, 1, 3, [b"1", b"2", b"3"], [e1, b"-/1.5", b"-/2.25"]])
    payloads, _ = plan.fetches()
    assert [ids for _, ids in payloads] == [[b"1"]]  # no payload asked for the others
    read = plan.finish([[p1]], [[b"7", b"8", b"9"]])
    assert read is not None and [a.id for a in read.accounts] == [1] and read.uses == [7]


def test_a_corrupt_payload_is_a_miss() -> None:
    plan = ReadPlan(KEYS, AccountCodec(), BUCKET, VersionHints())
    plan.absorb_first([4, 1, 1, [b"1"], [b"abc/1"]])
    plan.fetches()
    assert plan.finish([[b"{not json"]], [[None]]) is None


def test_a_version_that_shrank_mid_read_expired() -> None:
    plan = ReadPlan(KEYS, AccountCodec(), BUCKET, VersionHints())
    plan.absorb_first([4, 1, READ_CHUNK + 5, [b"1"] * READ_CHUNK, [b"x/1"] * READ_CHUNK])
    with pytest.raises(Expired):
        plan.absorb_rest([[b"2", b"3"]])


@pytest.mark.parametrize(
    ("total", "first"),
    [
        (0, 0),
        (1, 1),
        (READ_CHUNK, READ_CHUNK),
        (READ_CHUNK + 1, READ_CHUNK),
        (5 * READ_CHUNK - 1, 7),
    ],
)
def test_rest_ranges_cover_every_id_past_the_first_chunk_once(total: int, first: int) -> None:
    plan = ReadPlan(KEYS, AccountCodec(), BUCKET, VersionHints())
    plan.absorb_first([2, 0, total, [b"1"] * first, [b"x/1"] * first])
    covered = [i for _, start, end in plan.rest_ranges() for i in range(start, end + 1)]
    assert covered == list(range(first, total))
    assert all(end - start < READ_CHUNK for _, start, end in plan.rest_ranges())
