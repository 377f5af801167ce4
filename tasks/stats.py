"""The names of the figures the background work keeps in the cache's stats hash.

Written by the tasks and the web reader with ``cache.record_stats``, read by ``sched
status``, the live view and the metrics. Counters only grow; values are the latest seen.
"""

from __future__ import annotations

from typing import Final

# -- counters: rebuilds ------------------------------------------------------------------
REBUILDS: Final = "rebuilds"
REBUILDS_SKIPPED: Final = "rebuilds_skipped"  # every request was covered by a finished run
REBUILDS_SUPERSEDED: Final = "rebuilds_superseded"  # a newer read won the activation
REBUILDS_LOCK_BUSY: Final = "rebuilds_lock_busy"
REBUILDS_DEFERRED: Final = "rebuilds_deferred"  # too soon after the last write
REBUILDS_FAILED: Final = "rebuilds_failed"
REBUILD_REQUESTS_SENT: Final = "rebuild_requests_sent"
REBUILD_REQUESTS_REQUEUED: Final = "rebuild_requests_requeued"
REFRESH_RUNS: Final = "refresh_runs"
REFRESH_SKIPPED: Final = "refresh_skipped"
BUCKETS_RETIRED: Final = "buckets_retired"
FALLBACK_READS: Final = "fallback_reads"
SNAPSHOT_MISSES: Final = "snapshot_misses"  # reads that found no usable snapshot
CACHE_READ_ERRORS: Final = "cache_read_errors"  # reads that failed on a corrupt key
KEYS_REPAIRED: Final = "keys_repaired"  # keys of the wrong type deleted by a write

# -- counters: outbox ----------------------------------------------------------------------
OUTBOX_POLLS: Final = "outbox_polls"
OUTBOX_BATCHES: Final = "outbox_batches"
OUTBOX_EVENTS_APPLIED: Final = "outbox_events_applied"
OUTBOX_EVENTS_MALFORMED: Final = "outbox_events_malformed"
OUTBOX_EVENTS_FAILED: Final = "outbox_events_failed"
OUTBOX_GAPS_RECORDED: Final = "outbox_gaps_recorded"
OUTBOX_GAPS_RESOLVED: Final = "outbox_gaps_resolved"
OUTBOX_GAPS_GIVEN_UP: Final = "outbox_gaps_given_up"
OUTBOX_REBUILDS_REQUESTED: Final = "outbox_rebuilds_requested"
OUTBOX_ACCOUNTS_PLACED: Final = "outbox_accounts_placed"  # inserted or moved, no rebuild
OUTBOX_ROWS_PRUNED: Final = "outbox_rows_pruned"

STATE_REESTABLISHED: Final = "state_reestablished"  # Redis lost its state: all rebuilt

# -- counters: last use --------------------------------------------------------------------
LAST_USED_DB_FLUSHES: Final = "last_used_db_flushes"
LAST_USED_DB_ROWS: Final = "last_used_db_rows"
LAST_USED_DROPPED: Final = "last_used_dropped"  # entries the database refused

# -- values ---------------------------------------------------------------------------------
LAST_REBUILD_BUCKET: Final = "last_rebuild_bucket"
LAST_REBUILD_MS: Final = "last_rebuild_ms"
LAST_REBUILD_AT: Final = "last_rebuild_at"  # unix seconds, when its version became active
LAST_REFRESH_AT: Final = "last_refresh_at"  # unix seconds
OUTBOX_WATERMARK: Final = "outbox_watermark"
OUTBOX_LAST_POLL_AT: Final = "outbox_last_poll_at"  # ISO 8601
OUTBOX_LAG: Final = "outbox_lag"  # events in the source beyond the watermark
LAST_USED_DB_FLUSH_AT: Final = "last_used_db_flush_at"  # ISO 8601
LAST_REESTABLISHED_AT: Final = "last_reestablished_at"  # unix seconds

COUNTERS: Final = (
    REBUILDS, REBUILDS_SKIPPED, REBUILDS_SUPERSEDED, REBUILDS_LOCK_BUSY, REBUILDS_DEFERRED,
    REBUILDS_FAILED, REBUILD_REQUESTS_SENT, REBUILD_REQUESTS_REQUEUED, REFRESH_RUNS,
    REFRESH_SKIPPED, BUCKETS_RETIRED, FALLBACK_READS, SNAPSHOT_MISSES, CACHE_READ_ERRORS,
    KEYS_REPAIRED, OUTBOX_POLLS, OUTBOX_BATCHES,
    OUTBOX_EVENTS_APPLIED, OUTBOX_EVENTS_MALFORMED, OUTBOX_EVENTS_FAILED,
    OUTBOX_GAPS_RECORDED, OUTBOX_GAPS_RESOLVED, OUTBOX_GAPS_GIVEN_UP,
    OUTBOX_REBUILDS_REQUESTED, OUTBOX_ACCOUNTS_PLACED, OUTBOX_ROWS_PRUNED, STATE_REESTABLISHED,
    LAST_USED_DB_FLUSHES, LAST_USED_DB_ROWS, LAST_USED_DROPPED,
)  # fmt: skip
