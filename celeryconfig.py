"""Celery settings (lowercase), filled from the one settings object (``SCHED_*``).

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
coalesced requests; ``poll_outbox`` and ``flush_last_used`` run under named locks.
Each tick also expires after its interval, so ticks queued behind a stopped worker do
not pile up.
"""

from __future__ import annotations

from kombu.entity import Exchange, Queue

from tasks import connections
from tasks.celery import DEFAULT_QUEUE, QUEUES, TASK_QUEUES
from tasks.settings import get_settings

_settings = get_settings()

broker_url = _settings.effective_broker_url
broker_connection_retry_on_startup = True
broker_transport_options = connections.broker_transport_options(_settings)
# rediss:// and amqps:// only: kombu would otherwise reject a rediss:// URL or, in newer
# releases, connect without verifying the server, which then sees the broker password.
# Verification is always required, against SCHED_TLS_CA_FILE or the system CAs.
_broker_ssl = connections.broker_ssl_options(_settings)
if _broker_ssl is not None:
    broker_use_ssl = _broker_ssl
# No result backend: callers learn outcomes from the snapshot itself, and Flower from
# task events.
task_ignore_result = True

# JSON only on the wire.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
event_serializer = "json"

# A task is acknowledged after it ran; a worker that dies mid-task gives it back.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
# Reconnects to a lost broker within a quarter second of its return, not Celery's 2-4 s.
worker_consumer = "tasks.worker.consumer:Consumer"
# On a lost broker connection the broker redelivers unacknowledged messages anyway:
# cancel their runs instead of letting them finish as duplicates.
worker_cancel_long_running_tasks_on_connection_loss = True

task_time_limit = _settings.rebuild_time_limit_seconds
task_soft_time_limit = max(1, _settings.rebuild_time_limit_seconds - 2)

# One direct exchange per queue: a message reaches exactly the queue it is routed to.
task_queues = [Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES]
task_default_queue = DEFAULT_QUEUE
task_routes = {task: {"queue": queue} for task, queue in TASK_QUEUES.items()}
task_default_exchange = DEFAULT_QUEUE
task_default_routing_key = DEFAULT_QUEUE

# Every task visible in Flower, from sending to its end.
worker_send_task_events = True
task_send_sent_event = True

beat_schedule = {
    "refresh-buckets": {
        "task": "tasks.refresh_buckets",
        "schedule": _settings.refresh_interval_seconds,
        "options": {"expires": _settings.refresh_interval_seconds},
    },
    "poll-outbox": {
        "task": "tasks.poll_outbox",
        "schedule": _settings.outbox_interval_seconds,
        "options": {"expires": max(_settings.outbox_interval_seconds * 5, 5.0)},
    },
    # Hourly: a day's retention needs no finer grain, and each run deletes in batches.
    "prune-outbox": {
        "task": "tasks.prune_outbox",
        "schedule": 3600.0,
        "options": {"expires": 3600.0},
    },
    "flush-last-used": {
        "task": "tasks.flush_last_used",
        "schedule": _settings.last_used_db_flush_seconds,
        "options": {"expires": _settings.last_used_db_flush_seconds},
    },
}
