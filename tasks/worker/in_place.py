"""One account's change applied in place to the active versions of its buckets.

A rebuild of a 100,000-account bucket costs Redis about 0.6 s of CPU, so one account
hitting a rate limit must not cost one. An outbox event about an account is applied to
the active version of every bucket concerned, by kind of change:

- payload, a rate limit or another time window: the patch (cache/patches.py), one
  push per bucket;
- it left a bucket (membership, platform, a status or an expiry that makes it no
  candidate, a donor that stopped opting in) or was deleted: the same patch marks its
  entry removed ('-'), readers skip it, as a rebuild would have left it out;
- it joined a bucket (or came back: a status, a membership), or its place in the
  order may have moved (a priority, a membership): put before the account that follows
  it, as the source says
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
from tasks.buckets import Rules, account_buckets, donor_opts_in, member_buckets
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
        warm = set(warm)
        single = {i: a for i, a in current.items() if i not in bulk}
        touching = Counter(b for a in single.values() for b in member_buckets(a, self.rules))
        crowded = {b for b, n in touching.items() if n > PLACE_LIMIT} & warm
        applied.rebuild |= crowded
        for account_id, groups in sorted(hints.items()):
            old = self._cached(account_id)
            new = current.get(account_id)
            if account_id in bulk:
                applied.rebuild |= account_buckets(old, new, groups=groups, rules=self.rules)
            if new is None:
                self.cache.delete_account(account_id, tombstones.get(account_id))
                continue
            if account_id in bulk:
                self.cache.change_account(new, member_buckets(new, self.rules))
                continue
            self._change(old, new, account_id in regrouped, warm - crowded, now, applied)
        return applied

    def _change(
        self,
        old: Account | None,
        new: Account,
        regrouped: bool,
        placeable: set[SchedulerBucket],
        now: datetime,
        applied: Applied,
    ) -> None:
        """Patch ``new`` everywhere it is listed, remove it where it left or is no
        candidate, and place it where it joined or may have moved."""
        # Where it is a candidate: elsewhere a version that lists it marks it removed,
        # as a rebuild would leave it out (a status, an expiry, a donor's opt-out).
        belongs = {b for b in member_buckets(new, self.rules) if self._candidate(new, b, now)}
        candidates = belongs & placeable
        if order_may_have_moved(old, new, regrouped):
            moving = candidates
        else:
            # Back from a removal: its id kept a place that others' moves did not respect.
            moving = {b for b in candidates if old is None or not self._candidate(old, b, now)}
        # Even when the cache holds this revision already: a rebuild may have stored it
        # (patching no other bucket's versions), or a poll killed between storing and
        # placing. Patching and placing again change nothing where the revision is in.
        # The patch reaches every bucket in one round trip, before any placement: a
        # reader never sees the new revision in one bucket and an older one in another
        # for longer than that (a move is two pushes, the patch's and the placement's).
        reach = self.cache.change_account(new, belongs)
        if reach is None:
            return  # a newer revision is cached: its own event placed it
        # Removed from a bucket whose newer version may have read it as a member.
        applied.rebuild |= reach.racing - belongs
        for bucket in sorted(candidates, key=str):
            if bucket in reach.listed and bucket not in moving:
                continue  # patched in place
            placement = self._place(bucket, new)
            if placement is None:
                applied.rebuild.add(bucket)
                continue
            status, in_order = placement
            applied.placed += status in (Place.PLACED, Place.APPENDED)
            if not in_order:
                applied.rebuild.add(bucket)

    def _place(self, bucket: SchedulerBucket, account: Account) -> tuple[Place | None, bool] | None:
        """Put ``account`` in place in ``bucket``: (what the placement did, None when
        not attempted; whether the bucket is in order without a rebuild), or None when
        the source cannot say the order."""
        if not isinstance(self.source, KnowsOrder):
            return None
        followers = self.source.followers(bucket, account.id, FOLLOWERS)
        if followers is None:
            # Not a candidate of the bucket any more: the change that made it so has an
            # event of its own, which removes it.
            return None, True
        placement = self.cache.place_account(bucket, account, followers)
        if placement.racing:
            logger.info(
                "bucket %s: account %d placed in v%d while a newer version was being "
                "built from an older read; rebuilding it",
                bucket,
                account.id,
                placement.version,
            )
            return placement.status, False
        if placement.status is Place.IDLE:
            return None, False  # never built: a rebuild builds it with the account in
        in_order = placement.status is not Place.APPENDED or not followers
        return placement.status, in_order

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
