"""The schema: defaults for plain SQL inserts, the revision trigger, UTC datetimes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from cache import AccountStatus, SchedulerBucket
from tasks.source import SqlSource, SqlWriter
from tasks.source.schema import init_schema
from tests.source.helpers import revision, sql

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def test_plain_insert_of_the_four_required_columns_gets_every_default(source: SqlSource) -> None:
    sql(
        source,
        "INSERT INTO accounts (id, name, platform, type) VALUES (7, 'a', 'openai', 'apikey')",
    )

    account = source.get_accounts([7])[7]

    assert account.status is AccountStatus.ACTIVE
    assert account.schedulable is True
    assert (account.priority, account.concurrency) == (50, 3)
    assert account.credentials == {} and account.extra == {}
    assert account.auto_pause_on_expired is False
    assert account.last_used_at is None and account.expires_at is None
    assert account.group_ids == () and account.revision == 1
    bucket = SchedulerBucket.parse("0:openai:single")
    assert [a.id for a in source.accounts_for_bucket(bucket, NOW)] == [7]


def test_plain_inserts_of_groups_and_memberships_get_defaults(source: SqlSource) -> None:
    sql(
        source,
        "INSERT INTO accounts (id, name, platform, type) VALUES (1, 'a', 'openai', 'apikey')",
    )
    sql(source, "INSERT INTO groups (id, name) VALUES (3, 'no platform yet')")
    sql(source, "INSERT INTO account_groups (account_id, group_id) VALUES (1, 3)")

    assert sql(source, "SELECT status, platform FROM groups WHERE id = 3") == [("active", None)]
    assert sql(source, "SELECT priority FROM account_groups") == [(50,)]
    assert source.get_accounts([1])[1].group_ids == (3,)
    assert source.active_groups() == []  # no platform: nothing to keep warm


def test_revision_grows_on_a_plain_sql_update(source: SqlSource, db: SqlWriter) -> None:
    account = db.create_account(name="a", platform="openai", type="apikey")
    start = revision(source, account.id)

    sql(source, "UPDATE accounts SET priority = 9 WHERE id = :id", id=account.id)
    sql(
        source,
        "UPDATE accounts SET status = 'disabled', concurrency = 1 WHERE id = :id",
        id=account.id,
    )

    assert revision(source, account.id) == start + 2
    assert source.get_accounts([account.id])[account.id].revision == start + 2


def test_a_plain_update_that_changes_nothing_keeps_the_revision(
    source: SqlSource, db: SqlWriter
) -> None:
    account = db.create_account(name="a", platform="openai", type="apikey", priority=4)

    sql(source, "UPDATE accounts SET priority = 4 WHERE id = :id", id=account.id)

    assert revision(source, account.id) == account.revision


def test_last_used_only_updates_do_not_bump_the_revision(source: SqlSource, db: SqlWriter) -> None:
    account = db.create_account(name="a", platform="openai", type="apikey")

    sql(
        source, "UPDATE accounts SET last_used_at = CURRENT_TIMESTAMP WHERE id = :id", id=account.id
    )
    source.update_last_used({account.id: NOW})

    assert revision(source, account.id) == account.revision


def test_membership_changes_bump_the_revision_even_in_plain_sql(
    source: SqlSource, db: SqlWriter
) -> None:
    group = db.create_group("g", "openai")
    account = db.create_account(name="a", platform="openai", type="apikey")
    start = revision(source, account.id)

    sql(
        source,
        "INSERT INTO account_groups (account_id, group_id) VALUES (:a, :g)",
        a=account.id,
        g=group.id,
    )
    after_insert = revision(source, account.id)
    sql(source, "UPDATE account_groups SET priority = 1 WHERE account_id = :a", a=account.id)
    after_update = revision(source, account.id)
    sql(source, "DELETE FROM account_groups WHERE account_id = :a", a=account.id)

    assert start < after_insert < after_update < revision(source, account.id)


def test_init_schema_is_idempotent_and_keeps_data_and_one_trigger(db_url: str) -> None:
    source = SqlSource(init_schema(db_url))
    db = SqlWriter(source)
    try:
        account = db.create_account(name="a", platform="openai", type="apikey")
        start = revision(source, account.id)
        init_schema(source.engine)
        init_schema(db_url).dispose()

        updated = db.update_account(account.id, priority=1)

        assert updated.revision == start + 1  # not bumped twice
        assert source.max_outbox_id() == 2
    finally:
        source.close()


def test_datetimes_come_back_timezone_aware_utc(source: SqlSource, db: SqlWriter) -> None:
    paris = timezone(timedelta(hours=2))
    reset = datetime(2030, 6, 1, 14, 30, 15, 123456, tzinfo=paris)

    account = db.create_account(
        name="a",
        platform="openai",
        type="apikey",
        rate_limit_reset_at=reset,
        expires_at=datetime(2031, 1, 1, 0, 0),  # naive means UTC
    )

    assert account.rate_limit_reset_at == reset
    assert account.rate_limit_reset_at is not None and account.rate_limit_reset_at.tzinfo is UTC
    assert account.expires_at == datetime(2031, 1, 1, tzinfo=UTC)


def test_json_columns_round_trip(source: SqlSource, db: SqlWriter) -> None:
    account = db.create_account(
        name="a",
        platform="openai",
        type="apikey",
        credentials={"api_key": "sk-1", "base_url": "https://x"},
        extra={"mixed_scheduling": True, "quota": {"daily": 5}},
    )

    again = source.get_accounts([account.id])[account.id]

    assert again.credentials == {"api_key": "sk-1", "base_url": "https://x"}
    assert again.extra == {"mixed_scheduling": True, "quota": {"daily": 5}}


def test_an_explicit_id_does_not_break_later_inserts_without_one(
    source: SqlSource, db: SqlWriter
) -> None:
    db.create_account(id=100, name="a", platform="openai", type="apikey")
    later = db.create_account(name="b", platform="openai", type="apikey")
    group = db.create_group("g", "openai", id=40)
    next_group = db.create_group("h", "openai")

    assert later.id == 101
    assert (group.id, next_group.id) == (40, 41)


@pytest.mark.parametrize("statement", ["DELETE FROM scheduler_outbox", "SELECT 1"])
def test_outbox_ids_are_never_reused(source: SqlSource, statement: str, db: SqlWriter) -> None:
    first = db.request_full_rebuild()
    sql(source, statement)

    assert db.request_full_rebuild() == first + 1
