"""Triggers that write the outbox row of every change that matters for scheduling.

Whatever writes the source (the write helpers, an admin UI, ``UPDATE accounts SET
status = 'disabled' WHERE id = 133`` in a SQL shell), the trigger writes the event in
the same transaction, so the change reaches the cache without waiting for the next
full refresh. What each row change writes:

- ``accounts`` insert, update of any column the cached account carries (all but
  ``last_used_at``, the per-request touch, and the trigger-kept ``revision`` and
  ``updated_at``), soft or hard delete: ``account_changed`` with the account's groups.
- ``account_groups`` insert, update, delete: ``account_groups_changed`` naming the
  groups left and joined, plus group 0 when the account joins its first group or leaves
  its last (that moves it into or out of the "no group" buckets). A membership deleted
  by its account's hard delete writes nothing more: the account's event covers it.
- ``groups`` insert, delete, update of ``platform`` or ``status``: ``group_changed``
  with the old and new platform. A renamed group schedules as before: no event.

One change of several rows (an account created with its groups, memberships replaced)
would write one event per row. The write helpers open their transaction with
:func:`open_capture`: while its marker row is in ``scheduler_outbox_open``, an account's
second event in the transaction merges its groups into the first instead. The marker
and the ids it collects are deleted before the commit (:func:`close_capture`), so other
transactions never see them: no committed event is ever merged into.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tasks.source.protocol import OutboxEventType

ACCOUNT_CHANGED = OutboxEventType.ACCOUNT_CHANGED.value
GROUPS_CHANGED = OutboxEventType.ACCOUNT_GROUPS_CHANGED.value
GROUP_CHANGED = OutboxEventType.GROUP_CHANGED.value
# Group columns whose change moves accounts between buckets.
GROUP_COLUMNS = ("platform", "status")


def open_capture(conn: Connection) -> None:
    """From now until :func:`close_capture`, one event per account in this transaction."""
    conn.execute(sa.text("INSERT INTO scheduler_outbox_open (account_id) VALUES (NULL)"))


def close_capture(conn: Connection) -> None:
    """Forget this transaction's events (call before its commit)."""
    conn.execute(sa.text("DELETE FROM scheduler_outbox_open"))
