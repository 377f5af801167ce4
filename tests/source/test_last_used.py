"""update_last_used: one batch, forward only, no revision, no outbox event."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from tasks.source import SqlSource, SqlWriter
from tasks.source.schema import accounts
from tests.source.helpers import revision

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def last_used(source: SqlSource, account_id: int) -> datetime | None:
    return source.get_accounts([account_id])[account_id].last_used_at


@pytest.fixture
def three(source: SqlSource, db: SqlWriter) -> SqlSource:
    for account_id in (1, 2, 3):
        db.create_account(id=account_id, name=f"a{account_id}", platform="openai", type="apikey")
    return source


def test_times_only_move_forward(three: SqlSource) -> None:
    assert three.update_last_used({1: T0, 2: T0}) == 2

    moved = three.update_last_used(
        {1: T0 - timedelta(seconds=1), 2: T0 + timedelta(microseconds=1)}
    )

    assert moved == 1
    assert last_used(three, 1) == T0
    assert last_used(three, 2) == T0 + timedelta(microseconds=1)
    assert three.update_last_used({1: T0}) == 0  # the same time is no move either


def test_no_revision_and_no_outbox_event(three: SqlSource) -> None:
    revisions = [revision(three, i) for i in (1, 2, 3)]
    mark = three.max_outbox_id()

    three.update_last_used({1: T0, 2: T0, 3: T0})
    three.update_last_used({1: T0 + timedelta(hours=1)})

    assert [revision(three, i) for i in (1, 2, 3)] == revisions
    assert three.max_outbox_id() == mark


def test_unknown_ids_are_ignored(three: SqlSource) -> None:
    assert three.update_last_used({99: T0, 3: T0}) == 1
    assert last_used(three, 3) == T0


def test_json_keys_are_accepted(three: SqlSource) -> None:
    assert three.update_last_used({"3": T0}) == 1  # type: ignore[dict-item]
    assert last_used(three, 3) == T0


def test_an_empty_update_writes_nothing(three: SqlSource) -> None:
    assert three.update_last_used({}) == 0


def test_naive_and_other_zones_are_compared_as_utc(three: SqlSource) -> None:
    three.update_last_used({1: T0})
    east = (T0 - timedelta(minutes=1)).astimezone(timezone(timedelta(hours=9)))

    assert three.update_last_used({1: east}) == 0  # earlier, whatever its zone says
    assert three.update_last_used({1: datetime(2030, 1, 1, 12, 0, 1)}) == 1  # naive is UTC
    assert last_used(three, 1) == T0 + timedelta(seconds=1)


@pytest.mark.parametrize("bad", [{0: T0}, {True: T0}, {"x": T0}, {1: "2030-01-01"}, {1: None}])
def test_bad_input_names_the_value(three: SqlSource, bad: dict[object, object]) -> None:
    with pytest.raises(ValueError, match="invalid"):
        three.update_last_used(bad)  # type: ignore[arg-type]


def test_a_large_batch(three: SqlSource) -> None:
    with three.engine.begin() as conn:
        conn.execute(
            accounts.insert(),
            [
                {"id": i, "name": f"a{i}", "platform": "openai", "type": "apikey"}
                for i in range(4, 1201)
            ],
        )
    batch = {i: T0 + timedelta(milliseconds=i) for i in range(1, 1201)}

    assert three.update_last_used(batch) == 1200
    assert last_used(three, 1200) == T0 + timedelta(milliseconds=1200)
