"""The capture triggers (:mod:`tasks.source.capture`) in PostgreSQL's words.

Row triggers run after the whole statement here, so a membership count read by one
already counts every row of its statement: memberships inserted or deleted are
captured by statement triggers over their transition tables instead, one event per
account and statement, and "its first group" means "no membership but the ones this
statement inserted".
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from tasks.source.capture import ACCOUNT_CHANGED, GROUP_CHANGED, GROUP_COLUMNS, GROUPS_CHANGED

# Writes ``p_account``'s event naming ``p_groups``, or merges them into the event it
# already has in this transaction when the transaction asked for that (the marker).
# ``p_fresh``: the account row was inserted by this change.
_CAPTURE_ACCOUNT = """
CREATE OR REPLACE FUNCTION sched_capture_account(
    p_kind text, p_account bigint, p_groups bigint[], p_fresh boolean DEFAULT false)
RETURNS void AS $$
DECLARE
    pending bigint;
    is_fresh boolean;
    written bigint;
BEGIN
    SELECT o.event_id, o.fresh INTO pending, is_fresh
      FROM scheduler_outbox_open o WHERE o.account_id = p_account;
    IF pending IS NOT NULL THEN
        UPDATE scheduler_outbox e
           SET payload = jsonb_build_object('group_ids', to_jsonb(ARRAY(
               SELECT DISTINCT g FROM (
                   SELECT jsonb_array_elements_text(e.payload -> 'group_ids')::bigint AS g
                   UNION ALL SELECT unnest(p_groups)) merged
                WHERE g <> 0 OR NOT is_fresh
               UNION SELECT 0 WHERE is_fresh AND NOT EXISTS (
                   SELECT 1 FROM account_groups m WHERE m.account_id = p_account)
               ORDER BY 1)))
         WHERE e.id = pending;
        RETURN;
    END IF;
    INSERT INTO scheduler_outbox (event_type, account_id, payload)
    VALUES (p_kind, p_account, jsonb_build_object('group_ids', to_jsonb(ARRAY(
        SELECT DISTINCT g FROM unnest(p_groups) g ORDER BY g))))
    RETURNING id INTO written;
    IF EXISTS (SELECT 1 FROM scheduler_outbox_open o WHERE o.account_id IS NULL) THEN
        INSERT INTO scheduler_outbox_open (account_id, event_id, fresh)
        VALUES (p_account, written, p_fresh);
    END IF;
END
$$ LANGUAGE plpgsql"""

_ACCOUNTS = f"""
CREATE OR REPLACE FUNCTION accounts_capture() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        -- Before the delete: its memberships still name its groups.
        PERFORM sched_capture_account('{ACCOUNT_CHANGED}', OLD.id,
            ARRAY(SELECT m.group_id FROM account_groups m WHERE m.account_id = OLD.id));
        RETURN OLD;
    END IF;
    PERFORM sched_capture_account('{ACCOUNT_CHANGED}', NEW.id,
        ARRAY(SELECT m.group_id FROM account_groups m WHERE m.account_id = NEW.id),
        TG_OP = 'INSERT');
    RETURN NEW;
END
$$ LANGUAGE plpgsql"""

# Every group the account is in: their snapshots carry its payload, so each is rebuilt
# when its group ids change.
_MEMBERS = "ARRAY(SELECT m.group_id FROM account_groups m WHERE m.account_id = {account})"

_MEMBERS_INSERTED = f"""
CREATE OR REPLACE FUNCTION account_groups_capture_insert() RETURNS trigger AS $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT i.account_id, array_agg(i.group_id) AS joined, count(*) AS n
               FROM inserted i GROUP BY i.account_id ORDER BY i.account_id LOOP
        PERFORM sched_capture_account('{GROUPS_CHANGED}', r.account_id, r.joined
            || {_MEMBERS.format(account="r.account_id")} ||
            CASE WHEN (SELECT count(*) FROM account_groups m WHERE m.account_id = r.account_id)
                      = r.n THEN ARRAY[0::bigint] ELSE '{{}}'::bigint[] END);
    END LOOP;
    RETURN NULL;
END
$$ LANGUAGE plpgsql"""

# Memberships deleted with their account (a hard delete) are covered by its event.
_MEMBERS_DELETED = f"""
CREATE OR REPLACE FUNCTION account_groups_capture_delete() RETURNS trigger AS $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT d.account_id, array_agg(d.group_id) AS left_groups
               FROM deleted d
              WHERE EXISTS (SELECT 1 FROM accounts a WHERE a.id = d.account_id)
              GROUP BY d.account_id ORDER BY d.account_id LOOP
        PERFORM sched_capture_account('{GROUPS_CHANGED}', r.account_id, r.left_groups
            || {_MEMBERS.format(account="r.account_id")} ||
            CASE WHEN EXISTS (SELECT 1 FROM account_groups m WHERE m.account_id = r.account_id)
                 THEN '{{}}'::bigint[] ELSE ARRAY[0::bigint] END);
    END LOOP;
    RETURN NULL;
END
$$ LANGUAGE plpgsql"""

# A membership moved to another account names group 0 on both sides: whether either
# account is left with no group, or joined its first, is not known row by row here,
# and a spare rebuild is cheap where a missed one is not.
_MEMBERS_UPDATED = f"""
CREATE OR REPLACE FUNCTION account_groups_capture_update() RETURNS trigger AS $$
BEGIN
    IF NEW.account_id = OLD.account_id THEN
        PERFORM sched_capture_account('{GROUPS_CHANGED}', NEW.account_id,
            ARRAY[OLD.group_id] || {_MEMBERS.format(account="NEW.account_id")});
    ELSE
        PERFORM sched_capture_account('{GROUPS_CHANGED}', OLD.account_id,
            ARRAY[OLD.group_id, 0] || {_MEMBERS.format(account="OLD.account_id")});
        PERFORM sched_capture_account('{GROUPS_CHANGED}', NEW.account_id,
            ARRAY[0::bigint] || {_MEMBERS.format(account="NEW.account_id")});
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql"""

_GROUPS = f"""
CREATE OR REPLACE FUNCTION groups_capture() RETURNS trigger AS $$
DECLARE
    platforms text[];
    changed bigint;
BEGIN
    IF TG_OP = 'INSERT' THEN
        platforms := ARRAY[NEW.platform];
        changed := NEW.id;
    ELSIF TG_OP = 'DELETE' THEN
        platforms := ARRAY[OLD.platform];
        changed := OLD.id;
    ELSE
        platforms := ARRAY[OLD.platform, NEW.platform];
        changed := NEW.id;
    END IF;
    INSERT INTO scheduler_outbox (event_type, group_id, payload)
    VALUES ('{GROUP_CHANGED}', changed, jsonb_build_object('platforms', to_jsonb(ARRAY(
        SELECT DISTINCT p FROM unnest(platforms) p WHERE p IS NOT NULL ORDER BY p))));
    RETURN NULL;
END
$$ LANGUAGE plpgsql"""


# The channel a committed outbox insert notifies (SCHED_OUTBOX_NOTIFY_CHANNEL).
DEFAULT_NOTIFY_CHANNEL = "sched_outbox"
_CHANNEL = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def postgres_notify_trigger(channel: str) -> list[str]:
    """NOTIFY ``channel`` once per statement that inserts outbox rows: delivered at
    commit, never for a rollback, and PostgreSQL folds a transaction's equal
    notifications into one."""
    if not _CHANNEL.match(channel):
        raise ValueError(
            f"invalid notify channel {channel[:80]!r}: expected lowercase letters, digits"
            " and _, at most 63, not starting with a digit"
        )
    return [
        f"""CREATE OR REPLACE FUNCTION scheduler_outbox_notify() RETURNS trigger AS $$
        BEGIN
            PERFORM pg_notify('{channel}', '');
            RETURN NULL;
        END
        $$ LANGUAGE plpgsql""",
        *_trigger(
            "scheduler_outbox_notify",
            "scheduler_outbox",
            "AFTER INSERT ON scheduler_outbox FOR EACH STATEMENT"
            " EXECUTE FUNCTION scheduler_outbox_notify()",
        ),
    ]


def _trigger(name: str, table: str, definition: str) -> list[str]:
    return [f"DROP TRIGGER IF EXISTS {name} ON {table}", f"CREATE TRIGGER {name} {definition}"]


def postgres_capture_triggers(columns: Sequence[str]) -> list[str]:
    """``columns``: the account columns whose change is an event."""
    new = ", ".join(f"NEW.{c}" for c in columns)
    old = ", ".join(f"OLD.{c}" for c in columns)
    group_changed = " OR ".join(f"NEW.{c} IS DISTINCT FROM OLD.{c}" for c in GROUP_COLUMNS)
    return [
        _CAPTURE_ACCOUNT,
        _ACCOUNTS,
        _MEMBERS_INSERTED,
        _MEMBERS_DELETED,
        _MEMBERS_UPDATED,
        _GROUPS,
        *_trigger(
            "accounts_capture",
            "accounts",
            "AFTER INSERT ON accounts FOR EACH ROW EXECUTE FUNCTION accounts_capture()",
        ),
        *_trigger(
            "accounts_capture_update",
            "accounts",
            f"AFTER UPDATE OF {', '.join(columns)} ON accounts FOR EACH ROW"
            f" WHEN (ROW({new}) IS DISTINCT FROM ROW({old}))"
            " EXECUTE FUNCTION accounts_capture()",
        ),
        *_trigger(
            "accounts_capture_delete",
            "accounts",
            "BEFORE DELETE ON accounts FOR EACH ROW EXECUTE FUNCTION accounts_capture()",
        ),
        *_trigger(
            "account_groups_capture_insert",
            "account_groups",
            "AFTER INSERT ON account_groups REFERENCING NEW TABLE AS inserted"
            " FOR EACH STATEMENT EXECUTE FUNCTION account_groups_capture_insert()",
        ),
        *_trigger(
            "account_groups_capture_delete",
            "account_groups",
            "AFTER DELETE ON account_groups REFERENCING OLD TABLE AS deleted"
            " FOR EACH STATEMENT EXECUTE FUNCTION account_groups_capture_delete()",
        ),
        *_trigger(
            "account_groups_capture_update",
            "account_groups",
            "AFTER UPDATE ON account_groups FOR EACH ROW WHEN (NEW.* IS DISTINCT FROM OLD.*)"
            " EXECUTE FUNCTION account_groups_capture_update()",
        ),
        *_trigger(
            "groups_capture",
            "groups",
            "AFTER INSERT OR DELETE ON groups FOR EACH ROW EXECUTE FUNCTION groups_capture()",
        ),
        *_trigger(
            "groups_capture_update",
            "groups",
            f"AFTER UPDATE OF {', '.join(GROUP_COLUMNS)} ON groups FOR EACH ROW"
            f" WHEN ({group_changed}) EXECUTE FUNCTION groups_capture()",
        ),
    ]
