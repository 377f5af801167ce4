"""The Celery application (``celery -A tasks worker`` / ``beat``) and its configuration.

Every Celery setting is derived from one :class:`~tasks.settings.Settings` by
:func:`celery_config`: ``celeryconfig`` calls it with the environment's settings, and
:func:`configure` with any other (a test, a tool, :func:`tasks.runtime.reset`), so an
app built from any settings behaves as a deployment with those settings would.

How the time numbers relate (defaults in brackets)::

    soft time limit [18 s] < hard time limit [rebuild_time_limit_seconds, 20 s]
                           < bucket lock TTL [lock_ttl_seconds, 30 s]
    hard time limit + longest retry countdown [retry_backoff_max_seconds, 60 s]
                           < visibility timeout [visibility_timeout_seconds, 300 s]

- A rebuild is killed before its bucket lock expires, so a live rebuild always holds
  its lock and two rebuilds of one bucket never overlap.
- With late acknowledgement a message stays unacknowledged while it waits for a retry
  countdown and while it runs; the Redis broker delivers an unacknowledged message
  again after the visibility timeout, so the timeout must exceed the longest wait plus
  run, or a task still alive would run twice. It is also how long a message of a
  worker that died as a whole waits before another worker gets it.

Two beat processes do not double the work: every periodic task is safe to run twice.
``refresh_buckets`` holds a named lock for most of its interval and its rebuilds are
coalesced requests; ``poll_outbox``, ``prune_outbox`` and ``flush_last_used`` run under
named locks. Each tick also expires after its interval, so ticks queued behind a
stopped worker do not pile up.
"""

from __future__ import annotations

from contextlib import suppress
from typing import Any

from celery import Celery
from kombu.entity import Exchange, Queue

from tasks import connections
from tasks.settings import Settings

# The queue of each task (the names are the stable surface deployments route by).
TASK_QUEUES = {
    "tasks.rebuild_bucket": "rebuild",
    "tasks.refresh_buckets": "rebuild",
    "tasks.poll_outbox": "outbox",
    "tasks.prune_outbox": "outbox",
    "tasks.flush_last_used": "last_used",
    "tasks.update_last_used": "last_used",
}
# Every queue, in the order a worker of the whole system consumes them.
QUEUES = tuple(dict.fromkeys(TASK_QUEUES.values()))
DEFAULT_QUEUE = TASK_QUEUES["tasks.rebuild_bucket"]

# The outbox is pruned at least hourly (each run deletes in batches, so a day's
# retention needs no finer grain) and at least twice per retention window, so a
# short retention is honoured too: an applied row is gone at most 1.5 retention
# windows after it was written, plus the run's own time.
PRUNE_MAX_INTERVAL_SECONDS = 3600.0
PRUNE_MIN_INTERVAL_SECONDS = 1.0


def prune_interval(retention_seconds: float) -> float:
    """Seconds between two outbox prunes for a retention of ``retention_seconds``
    (0, which keeps every row, prunes nothing: hourly is as good as never)."""
    if retention_seconds <= 0:
        return PRUNE_MAX_INTERVAL_SECONDS
    return min(PRUNE_MAX_INTERVAL_SECONDS, max(PRUNE_MIN_INTERVAL_SECONDS, retention_seconds / 2))


def celery_config(settings: Settings) -> dict[str, Any]:
    """Every Celery setting (lowercase names) for ``settings``."""
    config: dict[str, Any] = {
        "broker_url": settings.effective_broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": connections.broker_transport_options(settings),
        # rediss:// and amqps:// only: kombu would otherwise reject a rediss:// URL or,
        # in newer releases, connect without verifying the server, which then sees the
        # broker password. Verification is always required, against SCHED_TLS_CA_FILE
        # or the system CAs. False for a plain broker: TLS options of other settings
        # must not carry over to it.
        "broker_use_ssl": connections.broker_ssl_options(settings) or False,
        # No result backend: callers learn outcomes from the snapshot itself, and
        # Flower from task events.
        "task_ignore_result": True,
        # JSON only on the wire.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "event_serializer": "json",
        # A task is acknowledged after it ran; a worker that dies mid-task gives it back.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # Reconnects to a lost broker within a second of its return (a quarter second
        # at first), not Celery's 2-4 s and more.
        "worker_consumer": "tasks.worker.consumer:Consumer",
        # On a lost broker connection the broker redelivers unacknowledged messages
        # anyway: cancel their runs instead of letting them finish as duplicates.
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "task_time_limit": settings.rebuild_time_limit_seconds,
        "task_soft_time_limit": max(1, settings.rebuild_time_limit_seconds - 2),
        # One direct exchange per queue: a message reaches exactly the queue it is
        # routed to.
        "task_queues": [_queue(name) for name in QUEUES],
        "task_default_queue": DEFAULT_QUEUE,
        "task_routes": {task: {"queue": queue} for task, queue in TASK_QUEUES.items()},
        "task_default_exchange": DEFAULT_QUEUE,
        "task_default_routing_key": DEFAULT_QUEUE,
        # Every task visible in Flower, from sending to its end.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "beat_schedule": beat_schedule(settings),
    }
    return config


def _queue(name: str) -> Queue:
    return Queue(name, Exchange(name, type="direct"), routing_key=name)  # type: ignore[no-untyped-call]


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """The periodic tasks, each expiring after its interval."""
    from tasks.worker.schedules import WhenPending, last_use_pending

    prune_every = prune_interval(settings.outbox_retention_seconds)
    return {
        "refresh-buckets": {
            "task": "tasks.refresh_buckets",
            "schedule": settings.refresh_interval_seconds,
            "options": {"expires": settings.refresh_interval_seconds},
        },
        "poll-outbox": {
            "task": "tasks.poll_outbox",
            "schedule": settings.outbox_poll_seconds,
            "options": {"expires": max(settings.outbox_poll_seconds * 5, 5.0)},
        },
        "prune-outbox": {
            "task": "tasks.prune_outbox",
            "schedule": prune_every,
            "options": {"expires": prune_every},
        },
        "flush-last-used": {
            "task": "tasks.flush_last_used",
            # Sent only when last-use times are pending: idle, a tick costs one read.
            "schedule": WhenPending(settings.last_used_db_flush_seconds, last_use_pending),
            "options": {"expires": settings.last_used_db_flush_seconds},
        },
    }


def configure(celery_app: Celery, settings: Settings) -> None:
    """Point ``celery_app`` at ``settings`` from now on: its configuration, and the
    broker connections and producers it holds, which were built from the old one.

    The old connection pool is let go, not closed: kombu shares pools between equal
    URLs, and going back to one must work. ``amqp`` and ``control`` are Celery's cached
    properties (queues, routes, producer pools): deleted, they are built again from the
    new configuration on next use.
    """
    celery_app.config_from_object(celery_config(settings), force=True)
    celery_app.close()
    for derived in ("amqp", "control"):
        with suppress(AttributeError):
            delattr(celery_app, derived)


app = Celery(
    "tasks",
    include=[
        "tasks.worker.rebuild",
        "tasks.worker.outbox",
        "tasks.worker.prune",
        "tasks.worker.last_used",
        "tasks.worker.listener",
        "tasks.worker.watcher",
    ],
)
# Read on first use, not at import: importing the app reads no settings, so a tool can
# report a malformed SCHED_* value itself.
app.config_from_object("celeryconfig")
