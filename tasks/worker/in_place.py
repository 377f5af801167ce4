"""One account's change applied in place to the active versions of its buckets.

A rebuild of a 100,000-account bucket costs Redis about 0.6 s of CPU, so one account
hitting a rate limit must not cost one. An outbox event about an account is applied to
the active version of every bucket concerned, by kind of change:

- payload or schedulability: the patch (cache/patches.py), one push per bucket;
- it left a bucket (membership, platform, a donor that stopped opting in) or was
  deleted: the same patch marks its entry removed ('-'), readers skip it;
- it joined a bucket, or its place in the order may have moved (a priority, a
  membership): put before the account that follows it, as the source says
  (:class:`KnowsOrder`), by cache/placements.py, one push naming the account.

A bucket is still rebuilt when the change cannot be trusted to stay in place:

- a writer had reserved a newer version than the active one when the change was made:
  it may have read the source before the change, and its version would activate
  without it::

      rebuild:  reserve v6 .. read (account not in B yet) .................. activate v6
      poller:                               insert account into v5 (active)
      without the request, v6 serves B without the account until the next refresh;
      with it, the rebuild that follows reads the change (coalesced with v6's own);

- none of the followers is listed (appended last: the rebuild restores the order),
  or the bucket has no active version yet, or the source cannot say the order;
- more than :data:`PLACE_LIMIT` accounts of one batch go in place into one bucket, and
  bulk events: one rebuild costs less than that many placements.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from cache import Account, Clock, CorruptPayload, Place, RedisSchedulerCache, SchedulerBucket
from tasks.buckets import Rules, account_buckets, donor_opts_in
from tasks.source.protocol import KnowsOrder, Source

logger = logging.getLogger(__name__)

# Accounts of one batch put in place into one bucket at most; a batch that changes more
# of a bucket (a script, an import) rebuilds it: each placement walks the bucket's list.
PLACE_LIMIT = 64
# Followers asked of the source for a placement: the snapshot also leaves out what SQL
# cannot see (paused for expiry, a donor that does not opt in) and what this batch has
# not placed yet, so the first of a few that the version lists is the place.
FOLLOWERS = 8


@dataclass
class Applied:
    """What applying a batch's account changes left to do, and did."""

    rebuild: set[SchedulerBucket] = field(default_factory=set)
    placed: int = 0


def member_buckets(account: Account, rules: Rules) -> set[SchedulerBucket]:
    """The buckets ``account`` belongs to now: its platform's in its groups, and the
    mixed buckets it is a donor to when it opts in."""
    return {
        bucket
        for bucket in account_buckets(account, rules=rules)
        if bucket.platform == account.platform or donor_opts_in(account.extra)
    }


def order_may_have_moved(old: Account | None, new: Account, regrouped: bool) -> bool:
    """Whether ``new`` may stand elsewhere in its buckets' order than ``old`` did: a
    priority or a membership changed, or what was cached cannot tell (unknown, not
    older than ``new``: a rebuild stored it, maybe after a move)."""
    if old is None or regrouped or old.revision is None or new.revision is None:
        return True
    if old.revision >= new.revision:
        return True
    return old.priority != new.priority or old.group_ids != new.group_ids


class InPlace:
    """Applies account changes to the active versions of their buckets."""

    def __init__(
        self, cache: RedisSchedulerCache, source: Source, rules: Rules, clock: Clock
    ) -> None:
        self.cache = cache
        self.source = source
        self.rules = rules
        self.clock = clock

    def apply(
        self,
        hints: Mapping[int, frozenset[int] | None],
        *,
        bulk: Collection[int],
        regrouped: Collection[int],
        warm: Collection[SchedulerBucket],
    ) -> Applied:
        """Refresh or forget each account of ``hints`` (id -> groups its event named,
        None for every one); returns the buckets to rebuild. Accounts in ``bulk`` are
        refreshed and their buckets rebuilt, as every change used to be."""
        current = self.source.get_accounts(sorted(hints))
        gone = [account_id for account_id in hints if account_id not in current]
        # The deletion's revision makes the tombstone hold even when the cache never saw
        # the account (a rebuild that read it just before may be about to write it).
        tombstones = self.source.deleted_revisions(gone) if gone else {}
        applied = Applied()
        now = self.clock()
        places: list[tuple[SchedulerBucket, Account]] = []
        for account_id, groups in sorted(hints.items()):
            old = self._cached(account_id)
            new = current.get(account_id)
            touched = account_buckets(old, new, groups=groups, rules=self.rules)
            if account_id in bulk:
                applied.rebuild |= touched
            if new is None:
                self.cache.delete_account(account_id, tombstones.get(account_id))
                continue
            belongs = member_buckets(new, self.rules)
            # Even when the cache holds this revision already: a rebuild may have stored
            # it (patching no other bucket's versions), or a poll killed between storing
            # and placing. Patching again changes nothing where the revision is in.
            reach = self.cache.change_account(new, belongs)
            if reach is None or account_id in bulk:
                continue  # a newer revision is cached: its own event placed it
            # Removed from a bucket whose newer version may have read it as a member.
            applied.rebuild |= reach.racing - belongs
            moved = order_may_have_moved(old, new, account_id in regrouped)
            for bucket in belongs & set(warm):
                if not self._candidate(new, bucket, now):
                    continue  # a patched entry readers skip; never inserted
                if bucket not in reach.listed or moved:
                    places.append((bucket, new))
        crowded = {b for b, n in Counter(b for b, _ in places).items() if n > PLACE_LIMIT}
        applied.rebuild |= crowded
        for bucket, account in places:
            if bucket in crowded:
                continue
            placed, in_order = self._place(bucket, account)
            applied.placed += placed
            if not in_order:
                applied.rebuild.add(bucket)
        return applied

    def _place(self, bucket: SchedulerBucket, account: Account) -> tuple[bool, bool]:
        """Put ``account`` in place in ``bucket``: (whether it was placed, whether the
        bucket is in order without a rebuild)."""
        if not isinstance(self.source, KnowsOrder):
            return False, False
        followers = self.source.followers(bucket, account.id, FOLLOWERS)
        if followers is None:
            # Not a candidate of the bucket any more: the change that made it so has an
            # event of its own, which removes it.
            return False, True
        placement = self.cache.place_account(bucket, account, followers)
        placed = placement.status in (Place.PLACED, Place.APPENDED)
        if placement.racing:
            logger.info(
                "bucket %s: account %d placed in v%d while a newer version was being "
                "built from an older read; rebuilding it",
                bucket,
                account.id,
                placement.version,
            )
            return placed, False
        if placement.status is Place.IDLE:
            return False, False  # never built: a rebuild builds it with the account in
        return placed, placement.status is not Place.APPENDED or not followers

    @staticmethod
    def _candidate(account: Account, bucket: SchedulerBucket, now: datetime) -> bool:
        return account.is_candidate(now) and (
            account.platform == bucket.platform or donor_opts_in(account.extra)
        )

    def _cached(self, account_id: int) -> Account | None:
        try:
            return self.cache.get_account(account_id)
        except CorruptPayload as exc:
            logger.warning(
                "account %d: cached payload unreadable, replacing it: %s", account_id, exc
            )
            return None
