from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from cache import Account, AccountStatus, InvalidBucket, SchedulerBucket, SchedulerMode
from tests.cache.factories import T0, account


def test_bucket_round_trips_through_its_string() -> None:
    bucket = SchedulerBucket.parse("12:anthropic:mixed")
    assert bucket == SchedulerBucket(12, "anthropic", SchedulerMode.MIXED)
    assert str(bucket) == "12:anthropic:mixed"
    assert SchedulerBucket.parse(str(bucket)) == bucket
    assert hash(bucket) == hash(SchedulerBucket(12, "anthropic", "mixed"))


def test_group_zero_is_a_bucket() -> None:
    assert SchedulerBucket.parse("0:openai:single").group_id == 0


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "12:anthropic",
        "12:anthropic:mixed:extra",
        "-1:anthropic:mixed",
        "+1:anthropic:mixed",
        " 1:anthropic:mixed",
        "1_0:anthropic:mixed",
        "x:anthropic:mixed",
        "99999999999999999999:anthropic:mixed",
        "12::mixed",
        "12:anthropic:",
        "12:anthropic:sometimes",
        "12:{anthropic}:mixed",
        "12:anth}ropic:mixed",
        "12:anthropic :mixed",
        "12:anth\nropic:mixed",
        "12:ANTHROPIC:mixed",
        "12:anthropic:MIXED",
    ],
)
def test_malformed_buckets_are_rejected_naming_the_input(raw: str) -> None:
    with pytest.raises(InvalidBucket) as info:
        SchedulerBucket.parse(raw)
    assert repr(raw) in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("raw", [None, 12, b"12:anthropic:mixed"])
def test_non_strings_are_rejected(raw: object) -> None:
    with pytest.raises(InvalidBucket, match="expected a string"):
        SchedulerBucket.parse(raw)


def test_bucket_constructor_validates_its_parts() -> None:
    with pytest.raises(InvalidBucket, match="group id -3"):
        SchedulerBucket(-3, "openai", "single")
    with pytest.raises(InvalidBucket, match="group id True"):
        SchedulerBucket(True, "openai", "single")
    with pytest.raises(InvalidBucket, match="platform 'open ai'"):
        SchedulerBucket(1, "open ai", "single")


def test_schedulable_now() -> None:
    assert account(1).is_schedulable(T0)
    assert not account(1, status=AccountStatus.DISABLED).is_schedulable(T0)
    assert not account(1, status="error").is_schedulable(T0)
    assert not account(1, schedulable=False).is_schedulable(T0)


def test_expiry_pauses_only_with_auto_pause() -> None:
    expired = T0 - timedelta(seconds=1)
    assert account(1, expires_at=expired).is_schedulable(T0)
    paused = account(1, expires_at=expired, auto_pause_on_expired=True)
    assert not paused.is_schedulable(T0)
    assert not paused.is_candidate(T0)
    assert account(1, expires_at=T0, auto_pause_on_expired=True).is_schedulable(T0) is False


@pytest.mark.parametrize(
    "field", ["overload_until", "rate_limit_reset_at", "temp_unschedulable_until"]
)
def test_time_windows_hold_back_until_they_end(field: str) -> None:
    held = account(1, **{field: T0 + timedelta(seconds=30)})
    assert not held.is_schedulable(T0)
    assert held.is_candidate(T0)
    assert held.blocked_until(T0) == T0 + timedelta(seconds=30)
    assert held.is_schedulable(T0 + timedelta(seconds=30))
    assert held.blocked_until(T0 + timedelta(seconds=30)) is None


def test_naive_datetimes_are_taken_as_utc() -> None:
    naive = datetime(2026, 1, 1, 12, 0)
    assert account(1, last_used_at=naive).last_used_at == T0


def test_account_rejects_bad_values_naming_them() -> None:
    with pytest.raises(ValueError, match="id"):
        Account(id=0, name="x", platform="openai", type="apikey")
    with pytest.raises(ValueError, match="open ai"):
        Account(id=1, name="x", platform="open ai", type="apikey")
