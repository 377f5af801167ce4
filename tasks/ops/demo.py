"""The demo: a seeded data set and a driver that keeps changing and using it.

``sched demo seed`` writes the data set; ``sched run`` writes it into the default SQLite
file when no database is configured, then runs :class:`DemoDriver` next to the worker so
that the live view has something to show: accounts rate-limited and coming back,
admins switching accounts off and on, and gateway-like picks touching accounts.
Every change goes through the source's write helpers, so it reaches the cache the way
a real change does: through the outbox.
"""

from __future__ import annotations

import logging
import random
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from cache import Account

logger = logging.getLogger(__name__)

# How many accounts of each platform the demo holds: a few hundred in all, most in the
# platforms that serve traffic, some donors for the mixed buckets.
DEMO_PLATFORM_SIZES: Mapping[str, int] = {
    "anthropic": 120,
    "openai": 80,
    "gemini": 60,
    "antigravity": 40,
}
# (name, platform) of each demo group; group ids are the source's.
DEMO_GROUPS: Sequence[tuple[str, str]] = (
    ("anthropic-team", "anthropic"),
    ("anthropic-batch", "anthropic"),
    ("gpt-team", "openai"),
    ("gemini-research", "gemini"),
)
_TYPES = ("oauth", "setup-token", "apikey", "upstream")


class DemoSource(Protocol):
    """The write helpers of the SQL source that the demo uses."""

    def create_group(self, *, name: str, platform: str, status: str = "active") -> Any: ...

    def create_account(self, **fields: Any) -> Account:
        """Insert an account; ``group_ids`` maps group id to membership priority."""
        ...

    def update_account(self, account_id: int, **changes: Any) -> Account: ...

    def bulk_update_accounts(self, account_ids: Iterable[int], **changes: Any) -> Any: ...


@dataclass(frozen=True)
class SeedSummary:
    groups: int
    accounts: int
    rate_limited: int
    unschedulable: int


def _group_id(created: Any) -> int:
    # create_group returns a Group model; tolerate a bare id as well.
    return int(getattr(created, "id", created))


def seed_demo(
    source: DemoSource,
    *,
    now: datetime | None = None,
    seed: int = 7,
    scale: float = 1.0,
) -> SeedSummary:
    """Write the demo groups and accounts; returns what was written.

    About a tenth of the accounts are rate-limited with windows ending within the next
    minute (so the live view shows them coming back), a few are overloaded, disabled,
    in error or switched off by an admin. ``scale`` multiplies the account counts.
    """
    if scale <= 0:
        raise ValueError(f"demo scale must be > 0, got {scale}")
    now = now or datetime.now(UTC)
    rng = random.Random(seed)
    groups_by_platform: dict[str, list[int]] = {}
    for name, platform in DEMO_GROUPS:
        gid = _group_id(source.create_group(name=name, platform=platform, status="active"))
        groups_by_platform.setdefault(platform, []).append(gid)
    mixing_groups = groups_by_platform.get("anthropic", []) + groups_by_platform.get("gemini", [])

    accounts = rate_limited = unschedulable = 0
    for platform, size in DEMO_PLATFORM_SIZES.items():
        for n in range(1, max(1, round(size * scale)) + 1):
            fields = _account_fields(rng, platform, n, now)
            groups = _memberships(rng, platform, groups_by_platform, mixing_groups)
            source.create_account(**fields, group_ids=groups)
            accounts += 1
            rate_limited += fields.get("rate_limit_reset_at") is not None
            unschedulable += not fields["schedulable"] or fields["status"] != "active"
    logger.info("demo seeded: %d groups, %d accounts", len(DEMO_GROUPS), accounts)
    return SeedSummary(len(DEMO_GROUPS), accounts, rate_limited, unschedulable)


def _account_fields(rng: random.Random, platform: str, n: int, now: datetime) -> dict[str, Any]:
    roll = rng.random()
    fields: dict[str, Any] = {
        "name": f"{platform}-{n:03d}",
        "platform": platform,
        "type": rng.choice(_TYPES),
        "status": "active",
        "schedulable": True,
        "priority": rng.choice((10, 50, 50, 50, 90)),
        "concurrency": rng.choice((1, 3, 5, 10)),
        # A secret the cache must keep out of Redis next to configuration it may cache.
        "credentials": {
            "api_key": f"sk-demo-{platform}-{n:03d}",
            "base_url": "https://upstream.invalid",
        },
        "extra": {},
    }
    if platform == "antigravity":
        fields["extra"] = {"mixed_scheduling": rng.random() < 0.6}
    if roll < 0.10:
        fields["rate_limited_at"] = now
        fields["rate_limit_reset_at"] = now + timedelta(seconds=rng.uniform(10, 60))
    elif roll < 0.13:
        fields["overload_until"] = now + timedelta(seconds=rng.uniform(5, 45))
    elif roll < 0.16:
        fields["status"] = rng.choice(("disabled", "error"))
    elif roll < 0.18:
        fields["schedulable"] = False
    return fields


def _memberships(
    rng: random.Random,
    platform: str,
    groups_by_platform: Mapping[str, list[int]],
    mixing_groups: Sequence[int],
) -> dict[int, int]:
    """Most accounts join a group or two of their platform; some stay in group 0."""
    if rng.random() < 0.2:
        return {}
    pool = list(groups_by_platform.get(platform, ()))
    if platform == "antigravity":
        pool = list(mixing_groups)
    if not pool:
        return {}
    chosen = rng.sample(pool, k=min(len(pool), rng.choice((1, 1, 2))))
    return {gid: rng.choice((1, 5, 10)) for gid in chosen}


# -- the driver ---------------------------------------------------------------------


def least_recently_used(accounts: Sequence[Account]) -> Account | None:
    """The gateway's pick: the best priority first, then the least recently used."""
    epoch = datetime.min.replace(tzinfo=UTC)
    return min(
        accounts,
        key=lambda a: (a.priority, a.last_used_at or epoch, a.id),
        default=None,
    )


Picker = Callable[[int, str], Sequence[Account]]
Toucher = Callable[[int], None]


@dataclass
class DemoDriver:
    """A background thread that changes accounts and uses them like a gateway would.

    ``list_schedulable(group_id, platform)`` and ``touch(account_id)`` are the web-app
    helpers of the tasks package; they are passed in so the driver stays testable.
    """

    source: DemoSource
    account_ids: Sequence[int]
    buckets: Sequence[tuple[int, str]]
    list_schedulable: Picker
    touch: Toucher
    interval_seconds: float = 1.0
    picks_per_tick: int = 20
    seed: int | None = None
    log: deque[str] = field(default_factory=lambda: deque(maxlen=6))
    changes: int = 0
    picks: int = 0
    errors: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        if self.interval_seconds <= 0:
            raise ValueError(f"driver interval must be > 0 seconds, got {self.interval_seconds}")
        self._rng = random.Random(self.seed)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="demo-driver", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_seconds):
            try:
                self.step(datetime.now(UTC))
            except Exception as exc:  # the demo must outlive a Redis or database blip
                self.errors += 1
                self._note(f"error: {type(exc).__name__}: {exc}")
                logger.warning("demo driver step failed: %s", exc)

    def step(self, now: datetime) -> None:
        """One tick: one account change, then a burst of picks."""
        if self.account_ids:
            self._note(self._change(self._rng.choice(self.account_ids), now))
            self.changes += 1
        for _ in range(self.picks_per_tick if self.buckets else 0):
            group_id, platform = self._rng.choice(self.buckets)
            picked = least_recently_used(self.list_schedulable(group_id, platform))
            if picked is not None:
                self.touch(picked.id)
                self.picks += 1

    def _change(self, account_id: int, now: datetime) -> str:
        roll = self._rng.random()
        if roll < 0.4:
            seconds = self._rng.randint(5, 40)
            until = now + timedelta(seconds=seconds)
            self.source.update_account(account_id, rate_limited_at=now, rate_limit_reset_at=until)
            return f"rate-limited #{account_id} for {seconds}s"
        if roll < 0.55:
            seconds = self._rng.randint(3, 20)
            self.source.update_account(account_id, overload_until=now + timedelta(seconds=seconds))
            return f"overloaded #{account_id} for {seconds}s"
        if roll < 0.7:
            schedulable = self._rng.random() < 0.5
            self.source.update_account(account_id, schedulable=schedulable)
            return f"admin switched #{account_id} {'on' if schedulable else 'off'}"
        if roll < 0.8:
            status = self._rng.choice(("active", "active", "disabled"))
            self.source.update_account(account_id, status=status)
            return f"status of #{account_id} -> {status}"
        if roll < 0.9:
            priority = self._rng.choice((10, 50, 90))
            self.source.update_account(account_id, priority=priority)
            return f"priority of #{account_id} -> {priority}"
        ids = self._rng.sample(list(self.account_ids), k=min(10, len(self.account_ids)))
        self.source.bulk_update_accounts(ids, schedulable=True, status="active")
        return f"bulk re-enabled {len(ids)} accounts"

    def _note(self, text: str) -> None:
        self.log.append(f"{datetime.now(UTC):%H:%M:%S} {text}")
