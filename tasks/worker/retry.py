"""The one retry policy of the tasks: which failures are worth another try, and when.

A failure is *transient* when the servers may be fine again in a moment: Redis or the
database unreachable, a Redis that refuses writes (a replica, out of memory), a broker
that cannot take a message, a singleton job's lock taken over. Anything that says the
input is bad (``ValueError`` and its kin) fails at once: no retry can fix it.
"""

from __future__ import annotations

import logging
import random
from typing import Any

from celery import Task
from celery.exceptions import Retry
from kombu.exceptions import OperationalError as BrokerError

from cache import CacheError
from tasks import runtime
from tasks.source.errors import SourceError

logger = logging.getLogger(__name__)


class LockLost(Exception):
    """A singleton job's lock expired and another run holds it: stop, that run carries on."""


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` says "try again later" rather than "this input is bad"."""
    if isinstance(exc, (BrokerError, LockLost)):
        return True
    if isinstance(exc, (CacheError, SourceError)):
        # A cache or database failure is the server's, unless it refused the value.
        return not isinstance(exc, (ValueError, LookupError))
    return False


def backoff(retries: int, cap: float) -> float:
    """Seconds before retry number ``retries + 1``: doubling from 1 s up to ``cap``, with
    jitter so that tasks failing together do not retry together."""
    return float(random.uniform(0.5, 1.0) * min(cap, 2.0**retries))


class RetryingTask(Task):  # type: ignore[misc]
    """Base of every task: retries :func:`is_transient` failures with :func:`backoff`,
    at most ``task_max_retries`` times, then fails with the last error.

    The bounds come from the settings in force when the task is first used, not at
    import: importing ``tasks`` reads no settings, so a tool can report a malformed
    ``SCHED_*`` value itself.
    """

    # How a retried failure begins its log line; a task may say what a failure left.
    failure_note = "{name} failed"

    @property
    def max_retries(self) -> int:
        return runtime.settings().task_max_retries

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except Retry:
            raise
        except Exception as exc:
            if not is_transient(exc) or self.request.called_directly:
                raise
            countdown = backoff(self.request.retries, runtime.settings().retry_backoff_max_seconds)
            logger.warning(
                "%s; retry %d of %s in %.1fs: %s",
                self.failure_note.format(name=self.name),
                self.request.retries + 1, self.max_retries, countdown, exc,
            )  # fmt: skip
            raise self.retry(exc=exc, countdown=countdown) from exc
