"""The Celery application: ``celery -A tasks worker`` and ``celery -A tasks beat``.

Settings come from ``celeryconfig`` (filled from the ``SCHED_*`` environment); the task
modules are listed here so that a worker registers every task at start.
"""

from __future__ import annotations

from celery import Celery

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

app = Celery(
    "tasks",
    include=[
        "tasks.worker.rebuild",
        "tasks.worker.outbox",
        "tasks.worker.prune",
        "tasks.worker.last_used",
    ],
)
app.config_from_object("celeryconfig")
