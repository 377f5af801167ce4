"""The one retry policy of the tasks: which failures are worth another try, and when.

Every task, and every fallback inside one (the outbox's one-by-one pass, the last-use
flush's row-by-row write), asks :func:`is_transient`; nothing else decides.

A failure is *transient* when the servers may be fine again in a moment: Redis
unreachable, loading, read-only after a failover, out of memory or busy
(:class:`cache.CacheUnavailable`); the source database unreachable
(:class:`~tasks.source.errors.SourceUnavailable`); a broker that cannot take a message;
a singleton job's lock taken over (:class:`LockLost`). Everything else is a bug or bad
data, which no retry fixes: a script that raised an error, a value the database
refuses, a corrupt key or payload, a missing schema, a ``TypeError``. Retrying those
only delays the failure by minutes of backoff and hides it; they fail at once, logged
with the task, the script and the key where known.
"""

from __future__ import annotations

import logging
import random
from typing import Any

from celery import Task
from celery.exceptions import Retry
from kombu.exceptions import OperationalError as BrokerError
from redis.exceptions import (
    ClusterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)

from cache import CacheError, CacheUnavailable, brief
from tasks import runtime
from tasks.source.errors import SourceUnavailable

logger = logging.getLogger(__name__)

# Redis replies that mean "not now" rather than "never": a replica, a server loading
# its data set, out of memory, running a long script, a cluster in a failover. redis-py
# raises some as classes of their own (dropping the word), the others as ResponseError.
OUTAGE_REPLIES = ("READONLY", "LOADING", "BUSY", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "OOM")
OUTAGE_ERRORS = (ReadOnlyError, OutOfMemoryError, TryAgainError, ClusterDownError)


class LockLost(Exception):
    """A singleton job's lock expired and another run holds it: stop, that run carries on."""


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` says "try again later" (an outage) rather than "this is wrong"
    (a bug or bad data)."""
    if isinstance(exc, (CacheUnavailable, SourceUnavailable, BrokerError, LockLost)):
        return True
    if isinstance(exc, CacheError):
        # A cache that does not yet report every outage reply as CacheUnavailable:
        # judged by the Redis reply it was raised from.
        return _outage_reply(exc.__cause__)
    return False


def _outage_reply(cause: BaseException | None) -> bool:
    if isinstance(cause, OUTAGE_ERRORS):
        return True
    if not isinstance(cause, ResponseError):
        return False
    words = str(cause).split(maxsplit=1)
    return bool(words) and words[0] in OUTAGE_REPLIES


def describe(exc: BaseException) -> str:
    """``exc`` for a log line, with the script and the key it names, when it does."""
    where = [
        f"{name} {brief(value, 120)}"
        for name in ("script", "key")
        if (value := getattr(exc, name, None)) is not None
    ]
    text = f"{type(exc).__name__}: {brief(str(exc), 500)}"
    return f"{text} ({', '.join(where)})" if where else text


def backoff(retries: int, cap: float) -> float:
    """Seconds before retry number ``retries + 1``: doubling from 1 s up to ``cap``, with
    jitter so that tasks failing together do not retry together."""
    return float(random.uniform(0.5, 1.0) * min(cap, 2.0**retries))


class RetryingTask(Task):  # type: ignore[misc]
    """Base of every task: retries :func:`is_transient` failures with :func:`backoff`,
    at most ``task_max_retries`` times, then fails with the last error. Any other
    failure fails at once, with a warning that names it as not retried.

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
            if self.request.called_directly:
                raise
            if not is_transient(exc):
                logger.warning(
                    "%s, not retried (a bug or bad data, not an outage): %s",
                    self.failure_note.format(name=self.name),
                    describe(exc),
                )
                raise
            countdown = backoff(self.request.retries, runtime.settings().retry_backoff_max_seconds)
            logger.warning(
                "%s; retry %d of %s in %.1fs: %s",
                self.failure_note.format(name=self.name),
                self.request.retries + 1, self.max_retries, countdown, exc,
            )  # fmt: skip
            raise self.retry(exc=exc, countdown=countdown) from exc
