"""Changes written by any application, in plain SQL on the driver's own connection,
write their outbox event by trigger: exactly one per row change that matters."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tasks.source import SqlSource, SqlWriter
from tasks.source.capture import close_capture, open_capture
from tests.source.helpers import events_after, sql

Facts = tuple[str, int | None, int | None, dict[str, Any]]


@pytest.fixture
def world(source: SqlSource, db: SqlWriter) -> SqlSource:
    db.create_group("one", "anthropic", id=1)
    db.create_group("two", "openai", id=2)
    db.create_account(id=10, name="grouped", platform="anthropic", type="oauth", group_ids=[1])
    db.create_account(id=11, name="loose", platform="openai", type="apikey")
    return source


def plain(source: SqlSource, statement: str) -> list[Facts]:
    """Run ``statement`` on a driver connection, as another application would, and
    return the events it wrote."""
    mark = source.max_outbox_id()
    raw = source.engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute(statement)
        cursor.close()
        raw.commit()
    finally:
        raw.close()
    return [(e.event_type, e.account_id, e.group_id, e.payload) for e in events_after(source, mark)]


@pytest.mark.parametrize(
    "assignment",
    [
        "status = 'disabled'",
        "schedulable = false",
        "priority = 1",
        "platform = 'gemini'",
        "concurrency = 9",
        "rate_limited_at = '2030-01-01 00:00:00'",
        "rate_limit_reset_at = '2030-01-01 00:00:00'",
        "overload_until = '2030-01-01 00:00:00'",
        "temp_unschedulable_until = '2030-01-01 00:00:00'",
        "temp_unschedulable_reason = 'x'",
        "session_window_end = '2030-01-01 00:00:00'",
        "expires_at = '2030-01-01 00:00:00', auto_pause_on_expired = true",
        "deleted_at = '2030-01-01 00:00:00'",
    ],
)
def test_a_plain_update_of_a_scheduling_column_writes_one_event(
    world: SqlSource, assignment: str
) -> None:
    events = plain(world, f"UPDATE accounts SET {assignment} WHERE id = 10")

    assert events == [("account_changed", 10, None, {"group_ids": [1]})]


def test_last_used_only_and_no_op_updates_write_nothing(world: SqlSource) -> None:
    assert plain(world, "UPDATE accounts SET last_used_at = '2030-01-01 00:00:00'") == []
    assert plain(world, "UPDATE accounts SET priority = priority, status = status") == []


def test_plain_insert_and_hard_delete_of_an_account_write_one_event_each(
    world: SqlSource,
) -> None:
    inserted = plain(
        world, "INSERT INTO accounts (id, name, platform, type) VALUES (12, 'n', 'openai', 'x')"
    )
    deleted = plain(world, "DELETE FROM accounts WHERE id = 10")

    assert inserted == [("account_changed", 12, None, {"group_ids": []})]
    # Named before its memberships go with it; they write nothing more.
    assert deleted == [("account_changed", 10, None, {"group_ids": [1]})]


def test_membership_changes_name_the_groups_and_group_zero_at_the_edges(
    world: SqlSource,
) -> None:
    first = "INSERT INTO account_groups (account_id, group_id) VALUES (11, 2)"
    assert plain(world, first) == [("account_groups_changed", 11, None, {"group_ids": [0, 2]})]
    second = "INSERT INTO account_groups (account_id, group_id) VALUES (11, 1)"
    # Every group it is in: their snapshots carry its payload, and its group ids.
    assert plain(world, second) == [("account_groups_changed", 11, None, {"group_ids": [1, 2]})]
    moved = "UPDATE account_groups SET priority = 3 WHERE account_id = 11 AND group_id = 1"
    assert plain(world, moved) == [("account_groups_changed", 11, None, {"group_ids": [1, 2]})]
    assert plain(world, "UPDATE account_groups SET priority = 3 WHERE group_id = 1") == [
        ("account_groups_changed", 10, None, {"group_ids": [1]})
    ]
    left = "DELETE FROM account_groups WHERE account_id = 11 AND group_id = 1"
    assert plain(world, left) == [("account_groups_changed", 11, None, {"group_ids": [1, 2]})]
    last = "DELETE FROM account_groups WHERE account_id = 11"
    assert plain(world, last) == [("account_groups_changed", 11, None, {"group_ids": [0, 2]})]


def test_several_memberships_in_one_statement_name_group_zero(world: SqlSource) -> None:
    events = plain(
        world, "INSERT INTO account_groups (account_id, group_id) VALUES (11, 1), (11, 2)"
    )

    # PostgreSQL: one event for the statement; SQLite: one per row.
    assert {e[0] for e in events} == {"account_groups_changed"}
    assert {e[1] for e in events} == {11}
    assert set().union(*(e[3]["group_ids"] for e in events)) == {0, 1, 2}


def test_group_changes_that_matter_write_one_event(world: SqlSource) -> None:
    created = plain(world, "INSERT INTO groups (id, name, platform) VALUES (5, 'g', 'gemini')")
    assert created == [("group_changed", None, 5, {"platforms": ["gemini"]})]
    assert plain(world, "UPDATE groups SET name = 'renamed' WHERE id = 5") == []
    disabled = plain(world, "UPDATE groups SET status = 'disabled' WHERE id = 5")
    assert disabled == [("group_changed", None, 5, {"platforms": ["gemini"]})]
    moved = plain(world, "UPDATE groups SET platform = 'openai' WHERE id = 5")
    assert moved == [("group_changed", None, 5, {"platforms": ["gemini", "openai"]})]
    deleted = plain(world, "DELETE FROM groups WHERE id = 5")
    assert deleted == [("group_changed", None, 5, {"platforms": ["openai"]})]


def test_a_helper_change_leaves_no_marker_behind(world: SqlSource, db: SqlWriter) -> None:
    db.set_account_groups(10, {2: 1})
    with pytest.raises(ValueError, match="unknown group"):
        db.set_account_groups(10, [77])

    assert sql(world, "SELECT count(*) FROM scheduler_outbox_open") == [(0,)]
    # A plain change after it is its own event, not merged into the helper's.
    assert len(plain(world, "UPDATE accounts SET priority = 2 WHERE id = 10")) == 1


@pytest.fixture
def pg_world(pg_url: str) -> Iterator[SqlSource]:
    from tasks.source.schema import init_schema

    source = SqlSource(init_schema(pg_url))
    db = SqlWriter(source)
    db.create_account(id=10, name="a", platform="openai", type="apikey")
    db.create_account(id=11, name="b", platform="openai", type="apikey")
    try:
        yield source
    finally:
        source.close()


def test_a_concurrent_plain_change_never_merges_into_an_open_helper_change(
    pg_world: SqlSource,
) -> None:
    """tx A (one event per account) changes 10 and stays open; tx B, plain SQL, changes
    11 and commits; A then changes 11 too. Each transaction keeps its own events."""
    mark = pg_world.max_outbox_id()
    with pg_world.engine.connect() as a, a.begin():
        open_capture(a)
        a.exec_driver_sql("UPDATE accounts SET priority = 1 WHERE id = 10")
        assert plain(pg_world, "UPDATE accounts SET priority = 2 WHERE id = 11") == [
            ("account_changed", 11, None, {"group_ids": []})
        ]
        a.exec_driver_sql("UPDATE accounts SET priority = 3 WHERE id = 11")
        a.exec_driver_sql("UPDATE accounts SET concurrency = 1 WHERE id = 10")
        close_capture(a)

    events = [(e.account_id, e.payload) for e in events_after(pg_world, mark)]
    assert sorted(events, key=lambda e: e[0] or 0) == [
        (10, {"group_ids": []}),
        (11, {"group_ids": []}),
        (11, {"group_ids": []}),
    ]


def test_helpers_call_on_commit_once_per_committed_change(source: SqlSource) -> None:
    commits: list[int] = []
    db = SqlWriter(source, on_commit=lambda: commits.append(source.max_outbox_id()))

    group = db.create_group("g", "openai")
    account = db.create_account(name="a", platform="openai", type="apikey", group_ids=[group.id])
    db.update_account(account.id, priority=1)
    with pytest.raises(ValueError, match="unknown group"):
        db.set_account_groups(account.id, [999])

    # Called after the commit: the change's event is visible to a poll it sends.
    assert len(commits) == 3 and commits[-1] == source.max_outbox_id()
