"""Which buckets exist, which one a request reads, and which accounts fill it.

A bucket is ``(group, platform, mode)``. Every platform is read in ``single`` and
``forced`` mode; a *mixed* platform (``SCHED_MIXED_PLATFORMS``) is also read in ``mixed``
mode, whose bucket adds the accounts of the *donor* platform
(``SCHED_MIXED_DONOR_PLATFORM``) that opt in. Group 0 holds the accounts in no group.

Every rule of that paragraph is written here once; the settings say which platforms
play which part. Nothing here imports Celery or SQL, so the source, the tasks, the web
reader and the tools all ask this module.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from cache import Account, InvalidBucket, SchedulerBucket, SchedulerMode, brief

logger = logging.getLogger(__name__)


class Rules(Protocol):
    """The settings the rules read: :class:`tasks.settings.Settings` is one."""

    @property
    def platforms(self) -> Sequence[str]: ...

    @property
    def mixed_platforms(self) -> Collection[str]: ...

    @property
    def mixed_donor_platform(self) -> str: ...


@dataclass(frozen=True, slots=True)
class BucketRules:
    """The rules' settings on their own, for code that has no :class:`Settings`."""

    platforms: tuple[str, ...] = ()
    mixed_platforms: frozenset[str] = frozenset()
    mixed_donor_platform: str = ""


class UnknownPlatform(InvalidBucket):
    """A platform that is not configured (``SCHED_PLATFORMS``)."""


def sort_key(bucket: SchedulerBucket) -> tuple[int, str, str]:
    """The order buckets are listed and worked through in: group, platform, mode."""
    return (bucket.group_id, bucket.platform, bucket.mode.value)


def in_order(buckets: Iterable[SchedulerBucket]) -> list[SchedulerBucket]:
    return sorted(set(buckets), key=sort_key)


def check_platform(platform: str, rules: Rules) -> str:
    """``platform`` if it is configured; else :class:`UnknownPlatform` naming both."""
    if platform not in rules.platforms:
        raise UnknownPlatform(
            f"unknown platform {brief(platform, 64)}: configured are {', '.join(rules.platforms)}"
        )
    return platform


def modes_for(platform: str, rules: Rules) -> list[SchedulerMode]:
    """The modes a platform is read in."""
    modes = [SchedulerMode.SINGLE, SchedulerMode.FORCED]
    if platform in rules.mixed_platforms:
        modes.append(SchedulerMode.MIXED)
    return modes


def bucket_for(group_id: int, platform: str, has_force: bool, rules: Rules) -> SchedulerBucket:
    """The bucket a request for ``(group_id, platform)`` reads."""
    if has_force:
        mode = SchedulerMode.FORCED
    elif platform in rules.mixed_platforms:
        mode = SchedulerMode.MIXED
    else:
        mode = SchedulerMode.SINGLE
    return SchedulerBucket(group_id, platform, mode)


def platforms_read(bucket: SchedulerBucket, rules: Rules) -> list[str]:
    """The platforms whose accounts fill ``bucket``: its own, and the donor's for a
    mixed bucket of a mixed platform (donor accounts must also opt in)."""
    donor = rules.mixed_donor_platform
    if (
        bucket.mode is SchedulerMode.MIXED
        and bucket.platform in rules.mixed_platforms
        and bucket.platform != donor
    ):
        return [bucket.platform, donor]
    return [bucket.platform]


def donor_opts_in(extra: object) -> bool:
    """Whether a donor account joins mixed buckets: its ``extra.mixed_scheduling`` is
    strictly the JSON value true, as the original's ``extra["mixed_scheduling"].(bool)``."""
    return isinstance(extra, dict) and extra.get("mixed_scheduling") is True


def platform_buckets(group_id: int, platform: str, rules: Rules) -> list[SchedulerBucket]:
    """The buckets an account of ``platform`` in ``group_id`` can be in: its platform's,
    plus the mixed buckets it is a donor to."""
    buckets = [SchedulerBucket(group_id, platform, mode) for mode in modes_for(platform, rules)]
    if platform == rules.mixed_donor_platform:
        buckets += [
            SchedulerBucket(group_id, mixing, SchedulerMode.MIXED)
            for mixing in rules.mixed_platforms
            if mixing != platform
        ]
    return buckets


def account_buckets(
    *accounts: Account | None, rules: Rules, groups: Iterable[int] | None = None
) -> set[SchedulerBucket]:
    """The buckets that can list any of ``accounts`` (an account before and after a
    change, say; None for one that does not exist): each one's platform in ``groups``,
    or in every group any of them is in (no group is group 0), in every mode it is read
    in, plus the mixed buckets a donor platform's account joins.

    With ``groups`` and no account (one neither cached nor in the source), every
    platform: any bucket of those groups may list it.
    """
    known = [account for account in accounts if account is not None]
    platforms = {account.platform for account in known}
    if groups is None:
        groups = {group for account in known for group in (account.group_ids or (0,))}
    elif not platforms:
        platforms = set(rules.platforms)
    return {
        bucket
        for platform in platforms
        for group in groups
        for bucket in platform_buckets(group, platform, rules)
    }


def member_buckets(account: Account, rules: Rules) -> set[SchedulerBucket]:
    """The buckets ``account`` belongs to now: its platform's in its groups, and the
    mixed buckets it is a donor to when it opts in."""
    return {
        bucket
        for bucket in account_buckets(account, rules=rules)
        if bucket.platform == account.platform or donor_opts_in(account.extra)
    }


def belongs_in(bucket: SchedulerBucket, rules: Rules) -> Callable[[Account], bool]:
    """Whether an account, as it is now, belongs in ``bucket`` (:func:`member_buckets`).
    A rebuild passes this to ``set_snapshot``, so a change read after the rebuild's own
    read never puts an account back into a bucket it has left."""
    return lambda account: bucket in member_buckets(account, rules)


def warm_buckets(groups: Iterable[tuple[int, str]], rules: Rules) -> list[SchedulerBucket]:
    """The buckets kept warm: group 0 for every platform, and each ``(group, platform)``
    of the active groups, in every mode its platform is read in."""
    pairs = [(0, platform) for platform in rules.platforms]
    pairs += [(group_id, platform) for group_id, platform in groups if group_id > 0]
    buckets: set[SchedulerBucket] = set()
    for group_id, platform in pairs:
        try:
            check_platform(platform, rules)
            buckets.update(
                SchedulerBucket(group_id, platform, mode) for mode in modes_for(platform, rules)
            )
        except InvalidBucket as exc:
            # One bad row in the groups table must not stop every other refresh.
            logger.warning("group %s has no usable platform: %s", group_id, exc)
    return in_order(buckets)
