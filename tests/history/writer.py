"""The writer of a recorded history: random changes through the source's write helpers
(disable/enable, schedulable off/on, priority, group moves, deletes, re-creates), each
recorded with the account's committed state once its transaction returned."""

from __future__ import annotations

import random
import time
from typing import Any

from cache import Account
from tasks.source import SqlSource, SqlWriter
from tests.history.record import Recorder

PLATFORM = "openai"
# Weights of the changes; a delete is rarer, and the population is topped up by
# re-creates whenever a delete has thinned it.
CHANGES = {"status": 25, "schedulable": 20, "priority": 20, "groups": 25, "delete": 2}


class ChangeWriter:
    """Changes to the accounts of ``groups``, at most ``population`` alive at once."""

    def __init__(
        self,
        source: SqlSource,
        recorder: Recorder,
        groups: list[int],
        population: int,
        seed: int = 1,
    ) -> None:
        self.db = SqlWriter(source)
        self.source = source
        self.recorder = recorder
        self.groups = groups
        self.population = population
        self.random = random.Random(seed)
        self.alive: dict[int, Account] = {}
        self.created = 0

    def seed(self) -> list[int]:
        """Create the population; returns the ids."""
        while len(self.alive) < self.population:
            self.create()
        return sorted(self.alive)

    def adopt(self, account_ids: list[int]) -> None:
        """Take over accounts created by another process (the seed)."""
        self.alive = self.source.get_accounts(account_ids)
        self.created = len(account_ids)

    def step(self) -> None:
        """One random change, recorded; a failure is recorded and the run goes on."""
        try:
            if len(self.alive) < self.population and self.random.random() < 0.5:
                self.create()
                return
            kind = self.random.choices(list(CHANGES), weights=list(CHANGES.values()))[0]
            account_id = self.random.choice(sorted(self.alive))
            self.change(kind, self.alive[account_id])
        except Exception as exc:
            self.recorder.error(exc)

    def create(self) -> None:
        self.created += 1
        t0 = time.time()
        account = self.db.create_account(
            name=f"history-{self.created}",
            platform=PLATFORM,
            type="apikey",
            priority=self.random.randint(0, 9),
            group_ids=self._some_groups(),
        )
        self._record("create", t0, account)

    def change(self, kind: str, account: Account) -> None:
        t0 = time.time()
        if kind == "delete":
            self.db.delete_account(account.id)
            t = time.time()
            del self.alive[account.id]
            revision = self.source.deleted_revisions([account.id])[account.id]
            self._record("delete", t0, account, t=t, rev=revision, deleted=True)
            return
        changes: dict[str, Any]
        if kind == "status":
            changes = {"status": "disabled" if account.status == "active" else "active"}
        elif kind == "schedulable":
            changes = {"schedulable": not account.schedulable}
        elif kind == "priority":
            changes = {"priority": (account.priority + self.random.randint(1, 9)) % 10}
        else:
            changed = self.db.set_account_groups(account.id, self._some_groups())
            self._record("groups", t0, changed)
            return
        self._record(kind, t0, self.db.update_account(account.id, **changes))

    def _some_groups(self) -> list[int]:
        # None (the "no group" bucket), one group, or two.
        return sorted(self.random.sample(self.groups, self.random.choice([0, 1, 1, 2])))

    def _record(self, kind: str, t0: float, account: Account, **state: Any) -> None:
        t = state.pop("t", time.time())
        if not state.get("deleted"):
            self.alive[account.id] = account
        self.recorder.write(
            "commit",
            t0=t0,
            t=t,
            kind=kind,
            id=account.id,
            rev=state.get("rev", account.revision),
            status=str(account.status),
            schedulable=account.schedulable,
            groups=list(account.group_ids),
            priority=account.priority,
            deleted=state.get("deleted", False),
        )
