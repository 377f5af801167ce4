"""The capture triggers (:mod:`tasks.source.capture`) in SQLite's words.

SQLite triggers are plain statement lists: "merge into the transaction's event, else
write one" is an UPDATE and an INSERT with opposite conditions. Row triggers fire as
each row changes, so a membership count seen by one is the count after that row.
"""

from __future__ import annotations

from collections.abc import Sequence

from tasks.source.capture import ACCOUNT_CHANGED, GROUP_CHANGED, GROUP_COLUMNS, GROUPS_CHANGED

_SQLITE_ARRAY = (
    "json((SELECT json_group_array(g) FROM (SELECT DISTINCT g FROM ({rows}) ORDER BY g)))"
)


def _sqlite_account_event(kind: str, account: str, groups: str, *, fresh: bool = False) -> str:
    """Trigger statements writing (or merging into) ``account``'s event, naming the
    groups the ``groups`` query returns (a column ``g``); ``fresh``: the account row
    was inserted by this change."""
    pending = f"SELECT event_id FROM scheduler_outbox_open WHERE account_id = {account}"
    is_fresh = f"(SELECT fresh FROM scheduler_outbox_open WHERE account_id = {account})"
    merged = _SQLITE_ARRAY.format(
        rows=f"SELECT g FROM (SELECT value AS g FROM json_each(scheduler_outbox.payload,"
        f" '$.group_ids') UNION ALL {groups}) WHERE g <> 0 OR NOT {is_fresh}"
        f" UNION ALL SELECT 0 AS g WHERE {is_fresh} AND NOT EXISTS ({_members(account)})"
    )
    fresh_rows = _SQLITE_ARRAY.format(rows=groups)
    # Single writer: the highest outbox id is the row this trigger just wrote.
    return f"""
        UPDATE scheduler_outbox SET payload = json_object('group_ids', {merged})
         WHERE id = ({pending});
        INSERT INTO scheduler_outbox (event_type, account_id, payload)
        SELECT '{kind}', {account}, json_object('group_ids', {fresh_rows})
         WHERE NOT EXISTS ({pending});
        INSERT INTO scheduler_outbox_open (account_id, event_id, fresh)
        SELECT {account}, (SELECT max(id) FROM scheduler_outbox), {int(fresh)}
         WHERE EXISTS (SELECT 1 FROM scheduler_outbox_open WHERE account_id IS NULL)
           AND NOT EXISTS ({pending});"""


def _members(account: str) -> str:
    return f"SELECT group_id AS g FROM account_groups WHERE account_id = {account}"


def _joined(account: str, group: str) -> str:
    # Every group it is in (their snapshots carry its payload), and group 0 too when
    # this is its only group now: it left the "no group" buckets.
    return (
        f"{_members(account)} UNION ALL SELECT {group} AS g UNION ALL SELECT 0 AS g"
        f" WHERE (SELECT count(*) FROM account_groups WHERE account_id = {account}) = 1"
    )


def _left(account: str, group: str) -> str:
    return (
        f"{_members(account)} UNION ALL SELECT {group} AS g UNION ALL SELECT 0 AS g"
        f" WHERE NOT EXISTS (SELECT 1 FROM account_groups WHERE account_id = {account})"
    )


def _sqlite_trigger(name: str, event: str, body: str, when: str = "") -> list[str]:
    condition = f" WHEN {when}" if when else ""
    return [
        f"DROP TRIGGER IF EXISTS {name}",
        f"CREATE TRIGGER {name} {event} FOR EACH ROW{condition} BEGIN {body} END",
    ]


def sqlite_capture_triggers(columns: Sequence[str]) -> list[str]:
    """``columns``: the account columns whose change is an event."""
    changed = " OR ".join(f"NEW.{c} IS NOT OLD.{c}" for c in columns)
    watched = ", ".join(columns)
    exists = "EXISTS (SELECT 1 FROM accounts WHERE id = {})"
    same_account = "NEW.account_id = OLD.account_id"
    platforms = (
        "json((SELECT json_group_array(p) FROM (SELECT DISTINCT p FROM"
        " (SELECT {} AS p UNION ALL SELECT {} AS p) WHERE p IS NOT NULL ORDER BY p)))"
    )

    def group_event(row: str, old: str, new: str) -> str:
        return f"""INSERT INTO scheduler_outbox (event_type, group_id, payload)
            VALUES ('{GROUP_CHANGED}', {row}.id,
                    json_object('platforms', {platforms.format(old, new)}));"""

    return [
        *_sqlite_trigger(
            "accounts_capture_insert",
            "AFTER INSERT ON accounts",
            _sqlite_account_event(ACCOUNT_CHANGED, "NEW.id", _members("NEW.id"), fresh=True),
        ),
        *_sqlite_trigger(
            "accounts_capture_update",
            f"AFTER UPDATE OF {watched} ON accounts",
            _sqlite_account_event(ACCOUNT_CHANGED, "NEW.id", _members("NEW.id")),
            when=changed,
        ),
        # Before: the memberships are still there to name the account's groups.
        *_sqlite_trigger(
            "accounts_capture_delete",
            "BEFORE DELETE ON accounts",
            _sqlite_account_event(ACCOUNT_CHANGED, "OLD.id", _members("OLD.id")),
        ),
        *_sqlite_trigger(
            "account_groups_capture_insert",
            "AFTER INSERT ON account_groups",
            _sqlite_account_event(
                GROUPS_CHANGED, "NEW.account_id", _joined("NEW.account_id", "NEW.group_id")
            ),
        ),
        *_sqlite_trigger(
            "account_groups_capture_delete",
            "AFTER DELETE ON account_groups",
            _sqlite_account_event(
                GROUPS_CHANGED, "OLD.account_id", _left("OLD.account_id", "OLD.group_id")
            ),
            # Deleted with its account (a hard delete): the account's event covers it.
            when=exists.format("OLD.account_id"),
        ),
        *_sqlite_trigger(
            "account_groups_capture_update",
            "AFTER UPDATE ON account_groups",
            _sqlite_account_event(
                GROUPS_CHANGED,
                "NEW.account_id",
                f"{_members('NEW.account_id')} UNION ALL SELECT OLD.group_id AS g",
            ),
            when=f"{same_account} AND (NEW.group_id IS NOT OLD.group_id"
            " OR NEW.priority IS NOT OLD.priority)",
        ),
        # A membership moved to another account: it left one and joined the other.
        *_sqlite_trigger(
            "account_groups_capture_move",
            "AFTER UPDATE ON account_groups",
            _sqlite_account_event(
                GROUPS_CHANGED, "OLD.account_id", _left("OLD.account_id", "OLD.group_id")
            )
            + _sqlite_account_event(
                GROUPS_CHANGED, "NEW.account_id", _joined("NEW.account_id", "NEW.group_id")
            ),
            when=f"NOT ({same_account})",
        ),
        *_sqlite_trigger(
            "groups_capture_insert",
            "AFTER INSERT ON groups",
            group_event("NEW", "NEW.platform", "NEW.platform"),
        ),
        *_sqlite_trigger(
            "groups_capture_update",
            f"AFTER UPDATE OF {', '.join(GROUP_COLUMNS)} ON groups",
            group_event("NEW", "OLD.platform", "NEW.platform"),
            when=" OR ".join(f"NEW.{c} IS NOT OLD.{c}" for c in GROUP_COLUMNS),
        ),
        *_sqlite_trigger(
            "groups_capture_delete",
            "AFTER DELETE ON groups",
            group_event("OLD", "OLD.platform", "OLD.platform"),
        ),
    ]
