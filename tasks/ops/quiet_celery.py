"""``python -m tasks.ops.quiet_celery ARGS``: ``celery ARGS`` without a log line per task.

``sched run`` starts its worker through this. At INFO, Celery logs every task received
and succeeded and beat every task it sends: with the outbox polled every second, about
100 KB a minute of lines that say nothing went wrong. Those three loggers keep their
warnings; everything else logs at the level given (the worker's "ready." line, which
``sched run`` waits for, and the tasks' own lines).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import signals
from celery.__main__ import main

# Per-task chatter: "Task ... received", "Task ... succeeded in", "Sending due task".
QUIET_LOGGERS = ("celery.worker.strategy", "celery.app.trace", "celery.beat")


def _quiet(**_: Any) -> None:
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


signals.after_setup_logger.connect(_quiet, weak=False)


if __name__ == "__main__":
    main()
