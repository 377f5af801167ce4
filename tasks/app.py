"""The Celery application: ``celery -A tasks worker`` and ``celery -A tasks beat``.

Settings come from ``celeryconfig`` (filled from the ``SCHED_*`` environment); the task
modules are listed here so that a worker registers every task at start.
"""

from __future__ import annotations

from celery import Celery

app = Celery("tasks", include=["tasks.rebuild", "tasks.outbox", "tasks.lastused"])
app.config_from_object("celeryconfig")
