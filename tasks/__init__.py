"""Celery tasks that keep the scheduling cache fresh, and the API web apps call.

``celery -A tasks worker`` and ``celery -A tasks beat`` find :data:`app` here; web apps
use ``from tasks import list_schedulable, record_last_used, request_rebuild`` (asyncio
apps ``list_schedulable_async``), and ``pick`` / ``pick_async`` for the account to use.

The names load on first use, so that importing a part that needs no Celery (the source
package, the bucket rules, the settings) does not build the Celery app.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tasks.celery import app
    from tasks.web import (
        list_schedulable,
        list_schedulable_async,
        mark_unschedulable,
        mark_unschedulable_async,
        pick,
        pick_async,
        record_last_used,
        request_rebuild,
    )

__all__ = [
    "app",
    "list_schedulable",
    "list_schedulable_async",
    "mark_unschedulable",
    "mark_unschedulable_async",
    "pick",
    "pick_async",
    "record_last_used",
    "request_rebuild",
]

_HOMES = {
    "app": "tasks.celery",
    "list_schedulable": "tasks.web",
    "list_schedulable_async": "tasks.web",
    "mark_unschedulable": "tasks.web",
    "mark_unschedulable_async": "tasks.web",
    "pick": "tasks.web",
    "pick_async": "tasks.web",
    "record_last_used": "tasks.web",
    "request_rebuild": "tasks.web",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        import importlib

        value = getattr(importlib.import_module(_HOMES[name]), name)
        # Found once: a gateway calling ``tasks.pick`` per request pays no look-up after.
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
