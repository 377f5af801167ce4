"""Celery tasks that keep the scheduling cache fresh, and helpers for web apps.

``celery -A tasks worker`` and ``celery -A tasks beat`` find :data:`app` here.
"""

from tasks.app import app
from tasks.lastused import record_last_used
from tasks.reader import list_schedulable
from tasks.rebuild import request_rebuild

__all__ = ["app", "list_schedulable", "record_last_used", "request_rebuild"]
