"""Which accounts a bucket holds, and in which order."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cache import Account, SchedulerBucket
from tasks.source import SqlSource, SqlWriter
from tasks.source.schema import account_groups, accounts
from tests.source.helpers import sql

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(minutes=5)
EARLIER = NOW - timedelta(minutes=5)


def ids(source: SqlSource, bucket: str, now: datetime = NOW) -> list[int]:
    return [a.id for a in source.accounts_for_bucket(SchedulerBucket.parse(bucket), now)]


def make(source: SqlSource, account_id: int, platform: str = "anthropic", **fields: Any) -> Account:
    return SqlWriter(source).create_account(
        id=account_id, name=f"acc-{account_id}", platform=platform, type="oauth", **fields
    )


@pytest.mark.parametrize("mode", ["single", "forced", "mixed"])
def test_group_members_by_membership_priority_then_priority_then_id(
    source: SqlSource, mode: str, db: SqlWriter
) -> None:
    group = db.create_group("g", "anthropic", id=5)
    other = db.create_group("h", "anthropic", id=6)
    make(source, 1, priority=1, group_ids={group.id: 20})
    make(source, 2, priority=9, group_ids={group.id: 10})
    make(source, 3, priority=1, group_ids={group.id: 10, other.id: 1})
    make(source, 4, priority=1, group_ids={group.id: 10})
    make(source, 5, priority=0, group_ids={other.id: 1})  # another group
    make(source, 6, platform="openai", group_ids={group.id: 1})  # another platform
    make(source, 7, priority=0)  # no group

    assert ids(source, f"5:anthropic:{mode}") == [3, 4, 2, 1]
    accounts = source.accounts_for_bucket(SchedulerBucket.parse(f"5:anthropic:{mode}"), NOW)
    assert accounts[0].group_ids == (5, 6)
    assert all(a.revision is not None for a in accounts)


@pytest.mark.parametrize("mode", ["single", "forced", "mixed"])
def test_group_zero_holds_accounts_in_no_group_by_priority_then_id(
    source: SqlSource, mode: str, db: SqlWriter
) -> None:
    group = db.create_group("g", "anthropic")
    make(source, 1, priority=5)
    make(source, 2, priority=1)
    make(source, 3, priority=5)
    make(source, 4, priority=0, group_ids=[group.id])
    make(source, 5, platform="gemini", priority=0)

    assert ids(source, f"0:anthropic:{mode}") == [2, 1, 3]


def test_mixed_adds_donor_accounts_that_opt_in(source: SqlSource, db: SqlWriter) -> None:
    group = db.create_group("g", "anthropic")
    make(source, 1, priority=5, group_ids=[group.id])
    make(
        source,
        2,
        platform="antigravity",
        priority=1,
        group_ids=[group.id],
        extra={"mixed_scheduling": True},
    )
    make(source, 3, platform="antigravity", priority=1, group_ids=[group.id])
    make(
        source,
        4,
        platform="antigravity",
        priority=1,
        group_ids=[group.id],
        extra={"mixed_scheduling": "true"},
    )  # only the JSON value true opts in
    make(
        source,
        5,
        platform="antigravity",
        priority=1,
        group_ids=[group.id],
        extra={"mixed_scheduling": False},
    )

    assert ids(source, f"{group.id}:anthropic:mixed") == [2, 1]
    assert ids(source, f"{group.id}:anthropic:single") == [1]
    assert ids(source, f"{group.id}:anthropic:forced") == [1]
    assert ids(source, f"{group.id}:antigravity:single") == [2, 3, 4, 5]


def test_donors_join_only_the_mixing_platforms(source: SqlSource) -> None:
    make(source, 1, platform="openai")
    make(source, 2, platform="gemini")
    make(source, 3, platform="antigravity", extra={"mixed_scheduling": True})

    assert ids(source, "0:openai:mixed") == [1]
    assert ids(source, "0:gemini:mixed") == [2, 3]
    assert ids(source, "0:antigravity:mixed") == [3]


def test_configured_mixing_platforms_and_donor(db_url: str, source: SqlSource) -> None:
    make(source, 1, platform="openai")
    make(source, 2, platform="gemini", extra={"mixed_scheduling": True})
    custom = SqlSource(source.engine, mixed_platforms=["openai"], donor_platform="gemini")

    assert ids(custom, "0:openai:mixed") == [1, 2]
    assert ids(custom, "0:gemini:mixed") == [2]


def test_accounts_held_back_by_a_time_window_are_included(source: SqlSource) -> None:
    make(source, 1, rate_limit_reset_at=LATER, rate_limited_at=EARLIER)
    make(source, 2, overload_until=LATER)
    make(source, 3, temp_unschedulable_until=LATER, temp_unschedulable_reason="429 burst")
    make(source, 4)

    accounts = source.accounts_for_bucket(SchedulerBucket.parse("0:anthropic:single"), NOW)

    assert [a.id for a in accounts] == [1, 2, 3, 4]
    assert [a.is_schedulable(NOW) for a in accounts] == [False, False, False, True]
    assert all(a.is_schedulable(LATER) for a in accounts)


def test_expired_accounts_are_excluded_only_when_auto_paused(source: SqlSource) -> None:
    make(source, 1, expires_at=EARLIER, auto_pause_on_expired=True)
    make(source, 2, expires_at=EARLIER, auto_pause_on_expired=False)
    make(source, 3, expires_at=LATER, auto_pause_on_expired=True)

    assert ids(source, "0:anthropic:single") == [2, 3]
    assert ids(source, "0:anthropic:single", now=LATER) == [2]


def test_disabled_unschedulable_and_deleted_accounts_never_appear(
    source: SqlSource, db: SqlWriter
) -> None:
    group = db.create_group("g", "anthropic")
    make(source, 1, status="disabled", group_ids=[group.id])
    make(source, 2, status="error", group_ids=[group.id])
    make(source, 3, schedulable=False, group_ids=[group.id])
    make(source, 4, group_ids=[group.id])
    make(source, 5, group_ids=[group.id])
    make(source, 6)
    db.delete_account(5)
    db.delete_account(6)

    assert ids(source, f"{group.id}:anthropic:single") == [4]
    assert ids(source, "0:anthropic:single") == []
    assert source.get_accounts([1, 4, 5, 6, 99]).keys() == {1, 4}


def test_changes_show_in_the_next_read(source: SqlSource) -> None:
    """Decoded accounts are reused only while their row is unchanged."""
    bucket = "0:anthropic:single"
    make(source, 1, priority=1)
    make(source, 2, priority=2)
    first = source.accounts_for_bucket(SchedulerBucket.parse(bucket), NOW)

    sql(source, "UPDATE accounts SET concurrency = 9 WHERE id = 2")
    source.update_last_used({1: NOW})
    second = source.accounts_for_bucket(SchedulerBucket.parse(bucket), NOW)

    assert [a.concurrency for a in second] == [3, 9]
    assert second[0].last_used_at == NOW and first[0].last_used_at is None
    assert second[0].revision == first[0].revision

    sql(source, "DELETE FROM accounts WHERE id = 2")
    sql(
        source,
        "INSERT INTO accounts (id, name, platform, type, priority, created_at) "
        "VALUES (2, 'reborn', 'anthropic', 'apikey', 2, :at)",
        at=NOW,
    )
    assert [a.name for a in source.accounts_for_bucket(SchedulerBucket.parse(bucket), NOW)] == [
        "acc-1",
        "reborn",
    ]


def test_a_badly_written_row_is_skipped_not_fatal(source: SqlSource) -> None:
    make(source, 1)
    make(source, 2)
    sql(source, "UPDATE accounts SET status = 'Sleeping' WHERE id = 1")
    sql(source, "UPDATE accounts SET type = 'Not A Token', status = 'active' WHERE id = 2")

    assert ids(source, "0:anthropic:single") == []
    assert source.get_accounts([1, 2]) == {}
    make(source, 3)
    assert ids(source, "0:anthropic:single") == [3]


def test_active_groups_have_a_usable_platform(source: SqlSource, db: SqlWriter) -> None:
    db.create_group("a", "anthropic", id=1)
    db.create_group("b", "openai", id=2, status="disabled")
    sql(source, "INSERT INTO groups (id, name, platform) VALUES (3, 'c', 'Bad Platform')")
    sql(source, "INSERT INTO groups (id, name) VALUES (4, 'd')")
    db.create_group("e", "gemini", id=5)

    assert [(g.id, g.platform) for g in source.active_groups()] == [(1, "anthropic"), (5, "gemini")]


def test_a_large_bucket_is_read_whole_and_in_order(source: SqlSource, db: SqlWriter) -> None:
    group = db.create_group("big", "openai")
    with source.engine.begin() as conn:
        conn.execute(
            accounts.insert(),
            [
                {
                    "id": i,
                    "name": f"a{i}",
                    "platform": "openai",
                    "type": "apikey",
                    "priority": i % 7,
                }
                for i in range(1, 1501)
            ],
        )
        conn.execute(
            account_groups.insert(),
            [{"account_id": i, "group_id": group.id, "priority": i % 3} for i in range(1, 1501)],
        )

    got = source.accounts_for_bucket(SchedulerBucket(group.id, "openai", "single"), NOW)

    expected = sorted(range(1, 1501), key=lambda i: (i % 3, i % 7, i))
    assert [a.id for a in got] == expected
    assert source.get_accounts(range(1, 1501)).keys() == set(range(1, 1501))


def test_reads_after_a_few_changes_in_a_large_bucket(source: SqlSource, db: SqlWriter) -> None:
    """Most rows decoded before, a few changed: each read matches a fresh source."""
    group = db.create_group("g", "anthropic", id=1)
    db.create_group("h", "anthropic", id=2)
    for account_id in range(1, 21):
        make(source, account_id, priority=account_id, group_ids=[group.id])
    make(source, 21, platform="antigravity", priority=0, group_ids=[group.id])
    bucket = "1:anthropic:mixed"
    assert ids(source, bucket) == list(range(1, 21))

    db.set_account_groups(5, {1: 50, 2: 1})
    db.update_account(7, priority=0)
    db.update_account(21, extra={"mixed_scheduling": True})
    sql(source, "UPDATE accounts SET schedulable = :no WHERE id = 9", no=False)
    source.update_last_used({3: NOW})

    fresh = SqlSource(source.engine)
    for reader in (source, fresh):
        got = reader.accounts_for_bucket(SchedulerBucket.parse(bucket), NOW)
        assert [a.id for a in got][:3] == [7, 21, 1]  # priority 0, then id
        assert 9 not in [a.id for a in got]
        by_id = {a.id: a for a in got}
        assert by_id[5].group_ids == (1, 2)
        assert by_id[3].last_used_at == NOW
    assert got == source.accounts_for_bucket(SchedulerBucket.parse(bucket), NOW)


# -- where one account goes: followers -------------------------------------------------
@pytest.mark.parametrize("bucket", ["5:anthropic:single", "0:anthropic:single", "5:gemini:mixed"])
def test_followers_are_the_rest_of_the_bucket_order_after_the_account(
    source: SqlSource, db: SqlWriter, bucket: str
) -> None:
    """Against the reference, the bucket's own order: for every member, the ids after
    it; for an account that is not a candidate of the bucket, None."""
    rng = random.Random(7)
    db.create_group("g", "anthropic", id=5)
    for account_id in range(1, 61):
        groups = {5: rng.choice([10, 20, 30])} if rng.random() < 0.5 else {}
        make(
            source,
            account_id,
            platform=rng.choice(["anthropic", "gemini", "antigravity"]),
            priority=rng.choice([1, 5, 9]),
            group_ids=groups,
            status=rng.choice(["active"] * 5 + ["disabled"]),
            extra={"mixed_scheduling": True},
        )
    order = ids(source, bucket)
    assert len(order) > 3
    chosen = SchedulerBucket.parse(bucket)
    for place, account_id in enumerate(order):
        assert source.followers(chosen, account_id, 100) == order[place + 1 :]
        assert source.followers(chosen, account_id, 2) == order[place + 1 : place + 3]
    outside = [i for i in range(1, 61) if i not in order]
    assert outside
    for account_id in outside:
        assert source.followers(chosen, account_id, 5) is None
