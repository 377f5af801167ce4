"""The bucket rules: which buckets exist, which one a request reads, which platforms fill it."""

from __future__ import annotations

import pytest

from cache import SchedulerBucket, SchedulerMode
from tasks.buckets import (
    BucketRules,
    UnknownPlatform,
    bucket_for,
    check_platform,
    in_order,
    modes_for,
    platform_buckets,
    platforms_read,
    warm_buckets,
)

RULES = BucketRules(
    platforms=("anthropic", "openai", "gemini", "antigravity"),
    mixed_platforms=frozenset({"anthropic", "gemini"}),
    mixed_donor_platform="antigravity",
)


def test_every_platform_is_read_single_and_forced() -> None:
    assert modes_for("openai", RULES) == [SchedulerMode.SINGLE, SchedulerMode.FORCED]


def test_a_mixed_platform_is_also_read_mixed() -> None:
    assert SchedulerMode.MIXED in modes_for("anthropic", RULES)


def test_a_forced_request_reads_the_forced_bucket() -> None:
    assert str(bucket_for(3, "anthropic", True, RULES)) == "3:anthropic:forced"


def test_a_request_for_a_mixed_platform_reads_its_mixed_bucket() -> None:
    assert str(bucket_for(3, "anthropic", False, RULES)) == "3:anthropic:mixed"


def test_a_request_for_another_platform_reads_its_single_bucket() -> None:
    assert str(bucket_for(3, "openai", False, RULES)) == "3:openai:single"


def test_a_mixed_bucket_of_a_mixed_platform_also_reads_the_donor() -> None:
    assert platforms_read(SchedulerBucket.parse("1:gemini:mixed"), RULES) == [
        "gemini",
        "antigravity",
    ]


def test_single_and_forced_buckets_read_their_own_platform_only() -> None:
    for bucket in ("1:gemini:single", "1:gemini:forced"):
        assert platforms_read(SchedulerBucket.parse(bucket), RULES) == ["gemini"]


def test_a_donor_account_is_in_the_mixed_buckets_it_gives_to() -> None:
    assert {str(b) for b in platform_buckets(2, "antigravity", RULES)} == {
        "2:antigravity:single",
        "2:antigravity:forced",
        "2:anthropic:mixed",
        "2:gemini:mixed",
    }


def test_warm_buckets_are_group_zero_of_every_platform_and_each_groups_platform() -> None:
    warm = {str(b) for b in warm_buckets([(5, "openai")], RULES)}
    assert {"0:openai:single", "0:anthropic:mixed", "0:antigravity:forced"} <= warm
    assert {"5:openai:single", "5:openai:forced"} <= warm
    assert not any(b.startswith("5:anthropic") for b in warm)


def test_a_group_with_an_unusable_platform_is_left_out_not_fatal() -> None:
    warm = warm_buckets([(5, "Not A Platform!"), (6, "openai")], RULES)
    assert {b.group_id for b in warm} == {0, 6}


def test_a_group_whose_platform_is_not_configured_is_not_kept_warm() -> None:
    warm = warm_buckets([(5, "nosuchplat"), (6, "openai")], RULES)
    assert {b.group_id for b in warm} == {0, 6}


def test_buckets_are_ordered_by_group_platform_mode_without_repeats() -> None:
    buckets = [SchedulerBucket.parse(b) for b in ("2:a:single", "1:b:forced", "1:a:single")]
    assert [str(b) for b in in_order([*buckets, *buckets])] == [
        "1:a:single",
        "1:b:forced",
        "2:a:single",
    ]


def test_an_unknown_platform_is_refused_naming_it_and_the_configured_ones() -> None:
    with pytest.raises(UnknownPlatform, match=r"'nosuchplat'.*anthropic, openai, gemini"):
        check_platform("nosuchplat", RULES)


def test_a_huge_unknown_platform_is_named_bounded() -> None:
    with pytest.raises(UnknownPlatform) as caught:
        check_platform("x" * 100_000, RULES)
    assert len(str(caught.value)) < 300 and "100,000 characters" in str(caught.value)
