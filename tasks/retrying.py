"""The retry policy of tasks whose Redis or database may be briefly unavailable."""

from __future__ import annotations

from celery import Task

from cache import CacheUnavailable
from tasks import runtime
from tasks.db import SourceUnavailable

# Failures worth retrying: the server may be back in a moment. Anything else (a
# malformed argument, a missing schema) fails at once.
TRANSIENT = (CacheUnavailable, SourceUnavailable)


class RetryingTask(Task):  # type: ignore[misc]
    """Base for tasks (``@app.task(base=RetryingTask)``) that retry on :data:`TRANSIENT`
    failures with jittered exponential backoff.

    The bounds come from the settings in force when the task is first used, not at
    import: importing ``tasks`` reads no settings, so a tool can report a malformed
    ``SCHED_*`` value itself.
    """

    autoretry_for = TRANSIENT
    retry_backoff = True
    retry_jitter = True

    @property
    def retry_backoff_max(self) -> int:
        return runtime.settings().retry_backoff_max_seconds

    @property
    def max_retries(self) -> int:
        return runtime.settings().task_max_retries
