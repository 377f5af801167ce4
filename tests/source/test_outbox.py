"""Every helper's change writes exactly one outbox event per account (by the triggers),
in the same transaction as its change."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import ValidationError

from tasks.source import AccountNotFound, GroupNotFound, OutboxEventType, SqlSource, SqlWriter
from tasks.source.schema import scheduler_outbox
from tests.source.helpers import events_after, revision, sql

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


EventFacts = tuple[str, int | None, int | None, dict[str, Any]]


def only_event(source: SqlSource, after_id: int) -> EventFacts:
    events = events_after(source, after_id)
    assert len(events) == 1, events
    event = events[0]
    return event.event_type, event.account_id, event.group_id, event.payload


@pytest.fixture
def world(source: SqlSource, db: SqlWriter) -> SqlSource:
    db.create_group("one", "anthropic", id=1)
    db.create_group("two", "anthropic", id=2)
    db.create_group("three", "openai", id=3)
    db.create_account(
        id=10, name="grouped", platform="anthropic", type="oauth", group_ids={1: 5, 2: 5}
    )
    db.create_account(id=11, name="loose", platform="anthropic", type="oauth")
    return source


def test_create_account_writes_account_changed_with_its_groups(
    world: SqlSource, db: SqlWriter
) -> None:
    mark = world.max_outbox_id()
    db.create_account(id=12, name="n", platform="anthropic", type="oauth", group_ids=[2, 1])
    assert only_event(world, mark) == ("account_changed", 12, None, {"group_ids": [1, 2]})

    mark = world.max_outbox_id()
    db.create_account(id=13, name="m", platform="anthropic", type="oauth")
    assert only_event(world, mark) == ("account_changed", 13, None, {"group_ids": []})


def test_update_account_writes_account_changed_and_returns_the_revision(
    world: SqlSource, db: SqlWriter
) -> None:
    mark, before = world.max_outbox_id(), revision(world, 10)

    updated = db.update_account(10, status="disabled", rate_limit_reset_at=NOW)

    assert only_event(world, mark) == ("account_changed", 10, None, {"group_ids": [1, 2]})
    assert updated.revision == before + 1 == revision(world, 10)
    assert updated.rate_limit_reset_at == NOW


def test_delete_account_is_soft_and_writes_account_changed(world: SqlSource, db: SqlWriter) -> None:
    mark = world.max_outbox_id()

    assert db.delete_account(10) is True

    assert only_event(world, mark) == ("account_changed", 10, None, {"group_ids": [1, 2]})
    deleted = "SELECT COUNT(*) FROM accounts WHERE id = 10 AND deleted_at IS NOT NULL"
    assert sql(world, deleted) == [(1,)]
    assert world.get_accounts([10]) == {}
    assert world.deleted_revisions([10, 11, 999]) == {10: revision(world, 10)}
    mark = world.max_outbox_id()
    assert db.delete_account(10) is False  # already gone: no second event
    assert events_after(world, mark) == []


def test_set_account_groups_names_old_and_new_groups(world: SqlSource, db: SqlWriter) -> None:
    mark = world.max_outbox_id()
    account = db.set_account_groups(10, {2: 1, 3: 7})
    assert only_event(world, mark) == ("account_groups_changed", 10, None, {"group_ids": [1, 2, 3]})
    assert account.group_ids == (2, 3)
    assert sql(
        world,
        "SELECT group_id, priority FROM account_groups WHERE account_id = 10 ORDER BY group_id",
    ) == [(2, 1), (3, 7)]


def test_joining_a_first_or_leaving_a_last_group_names_group_zero(
    world: SqlSource, db: SqlWriter
) -> None:
    mark = world.max_outbox_id()
    db.set_account_groups(11, [1])
    assert only_event(world, mark)[3] == {"group_ids": [0, 1]}

    mark = world.max_outbox_id()
    db.set_account_groups(11, {})
    assert only_event(world, mark)[3] == {"group_ids": [0, 1]}


def test_create_group_writes_group_changed_with_its_platform(
    world: SqlSource, db: SqlWriter
) -> None:
    mark = world.max_outbox_id()
    group = db.create_group("four", "gemini")
    assert only_event(world, mark) == ("group_changed", None, group.id, {"platforms": ["gemini"]})


def test_update_group_writes_group_changed_with_old_and_new_platforms(
    world: SqlSource, db: SqlWriter
) -> None:
    group = db.create_group("four", "gemini")
    mark = world.max_outbox_id()
    changed = db.update_group(group.id, platform="openai", status="disabled")
    assert only_event(world, mark) == (
        "group_changed",
        None,
        group.id,
        {"platforms": ["gemini", "openai"]},
    )
    assert (changed.platform, changed.status) == ("openai", "disabled")


def test_bulk_update_writes_one_event_per_changed_account(world: SqlSource, db: SqlWriter) -> None:
    db.create_account(id=12, name="x", platform="openai", type="apikey", group_ids=[3])
    db.delete_account(12)
    mark = world.max_outbox_id()

    changed = db.bulk_update_accounts([11, 10, 12, 99], schedulable=False)

    assert changed == 2
    facts = [(e.event_type, e.account_id, e.payload) for e in events_after(world, mark)]
    assert facts == [
        ("account_changed", 10, {"group_ids": [1, 2]}),
        ("account_changed", 11, {"group_ids": []}),
    ]
    assert world.get_accounts([10, 11])[10].schedulable is False
    mark = world.max_outbox_id()
    assert db.bulk_update_accounts([99], priority=1) == 0
    assert events_after(world, mark) == []


def test_request_full_rebuild_writes_a_full_rebuild_event(world: SqlSource, db: SqlWriter) -> None:
    mark = world.max_outbox_id()
    event_id = db.request_full_rebuild()
    assert only_event(world, mark) == ("full_rebuild", None, None, {})
    assert event_id == mark + 1


def test_a_last_used_event_carries_unix_seconds_and_sets_the_times(
    world: SqlSource, db: SqlWriter
) -> None:
    mark = world.max_outbox_id()
    db.record_last_used_event({10: NOW, 11: NOW + timedelta(milliseconds=1500)})
    stamp = NOW.timestamp()
    assert only_event(world, mark) == (
        "account_last_used",
        None,
        None,
        {"last_used": {"10": stamp, "11": stamp + 1.5}},
    )
    assert world.get_accounts([11])[11].last_used_at == NOW + timedelta(milliseconds=1500)


def test_no_last_use_writes_no_event(world: SqlSource, db: SqlWriter) -> None:
    assert db.record_last_used_event({}) is None


# -- a failing change writes no event ------------------------------------------------
def assert_nothing_written(source: SqlSource, mark: int, rev_10: int) -> None:
    assert events_after(source, mark) == []
    assert revision(source, 10) == rev_10


def test_invalid_values_roll_back_with_no_event(world: SqlSource, db: SqlWriter) -> None:
    mark, rev = world.max_outbox_id(), revision(world, 10)

    with pytest.raises(ValidationError, match="status"):
        db.update_account(10, status="asleep")
    with pytest.raises(ValidationError, match="platform"):
        db.create_account(id=20, name="x", platform="Not A Platform", type="oauth")
    with pytest.raises(ValidationError, match="status"):
        db.bulk_update_accounts([10, 11], status="asleep")

    assert_nothing_written(world, mark, rev)
    assert world.get_accounts([10, 20]).keys() == {10}
    assert world.get_accounts([10])[10].status == "active"


def test_unknown_names_and_ids_raise_with_no_event(world: SqlSource, db: SqlWriter) -> None:
    mark, rev = world.max_outbox_id(), revision(world, 10)

    with pytest.raises(ValueError, match=r"unknown account field\(s\) \['colour', 'size'\]"):
        db.update_account(10, colour="red", size=3)
    with pytest.raises(ValueError, match=r"unknown account field\(s\) \['revision'\]"):
        db.bulk_update_accounts([10], revision=99)
    with pytest.raises(ValueError, match=r"unknown group field\(s\) \['colour'\]"):
        db.update_group(1, colour="red")
    with pytest.raises(ValueError, match=r"unknown group id\(s\) \[77\]"):
        db.set_account_groups(10, {1: 1, 77: 1})
    with pytest.raises(AccountNotFound, match="account 99"):
        db.update_account(99, priority=1)
    with pytest.raises(AccountNotFound, match="account 99"):
        db.set_account_groups(99, [1])
    with pytest.raises(AccountNotFound, match="account 99"):
        db.delete_account(99)
    with pytest.raises(GroupNotFound, match="group 99"):
        db.update_group(99, name="x")
    with pytest.raises(ValueError, match="create_account needs"):
        db.create_account(name="x")

    assert_nothing_written(world, mark, rev)
    assert world.get_accounts([10])[10].group_ids == (1, 2)


@contextmanager
def outbox_refusing_writes(source: SqlSource) -> Iterator[None]:
    """A real database fault: inserts into the outbox fail until the block ends."""
    if source.engine.dialect.name == "sqlite":
        create = [
            "CREATE TRIGGER outbox_down BEFORE INSERT ON scheduler_outbox "
            "BEGIN SELECT RAISE(ABORT, 'outbox down'); END"
        ]
        drop = ["DROP TRIGGER outbox_down"]
    else:
        create = [
            "CREATE FUNCTION outbox_down() RETURNS trigger AS $$ BEGIN "
            "RAISE EXCEPTION 'outbox down'; END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER outbox_down BEFORE INSERT ON scheduler_outbox "
            "FOR EACH ROW EXECUTE FUNCTION outbox_down()",
        ]
        drop = ["DROP TRIGGER outbox_down ON scheduler_outbox", "DROP FUNCTION outbox_down()"]
    for statement in create:
        sql(source, statement)
    try:
        yield
    finally:
        for statement in drop:
            sql(source, statement)


def test_a_failing_outbox_write_rolls_the_change_back(world: SqlSource, db: SqlWriter) -> None:
    mark, rev = world.max_outbox_id(), revision(world, 10)

    with outbox_refusing_writes(world):
        with pytest.raises(sa.exc.DBAPIError, match="outbox down"):
            db.update_account(10, priority=1)
        with pytest.raises(sa.exc.DBAPIError, match="outbox down"):
            db.set_account_groups(10, [3])
        with pytest.raises(sa.exc.DBAPIError, match="outbox down"):
            db.create_account(id=30, name="x", platform="openai", type="apikey")

    assert_nothing_written(world, mark, rev)
    account = world.get_accounts([10, 30])
    assert account.keys() == {10}
    assert (account[10].priority, account[10].group_ids) == (50, (1, 2))


# -- reading the outbox --------------------------------------------------------------
def test_outbox_after_is_ordered_and_limited(source: SqlSource, db: SqlWriter) -> None:
    ids = [db.request_full_rebuild() for _ in range(7)]

    assert [e.id for e in source.outbox_after(0, 3)] == ids[:3]
    assert [e.id for e in source.outbox_after(ids[2], 3)] == ids[3:6]
    assert [e.id for e in source.outbox_after(ids[5], 100)] == ids[6:]
    assert source.outbox_after(ids[6], 100) == []
    assert source.max_outbox_id() == ids[6]
    with pytest.raises(ValueError, match="invalid outbox limit 0"):
        source.outbox_after(0, 0)


def test_outbox_by_ids_returns_the_committed_ones_in_order(
    source: SqlSource, db: SqlWriter
) -> None:
    ids = [db.request_full_rebuild() for _ in range(4)]

    found = source.outbox_by_ids([ids[3], 999, ids[0], ids[3], ids[2]])

    assert [e.id for e in found] == [ids[0], ids[2], ids[3]]
    assert source.outbox_by_ids([]) == []
    assert found[0].event_type == OutboxEventType.FULL_REBUILD
    assert found[0].created_at.tzinfo is UTC


def test_events_written_by_another_application_are_read(source: SqlSource) -> None:
    sql(
        source,
        "INSERT INTO scheduler_outbox (event_type, account_id) VALUES ('account_changed', 5)",
    )
    sql(source, "INSERT INTO scheduler_outbox (event_type, payload) VALUES ('custom', '[1, 2]')")
    with source.engine.begin() as conn:
        conn.execute(
            scheduler_outbox.insert().values(
                event_type="group_changed", group_id=3, payload={"platforms": ["openai"]}
            )
        )

    events = source.outbox_after(0, 10)

    assert [(e.event_type, e.account_id, e.group_id, e.payload) for e in events] == [
        ("account_changed", 5, None, {}),
        ("custom", None, None, {}),  # not an object: read as empty, with a warning
        ("group_changed", None, 3, {"platforms": ["openai"]}),
    ]
