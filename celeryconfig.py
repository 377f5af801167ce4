"""Celery settings (lowercase), filled from the one settings object (``SCHED_*``).

``celery -A tasks`` reads this module through :data:`tasks.celery.app`; every value
comes from :func:`tasks.celery.celery_config`, which documents them.
"""

from __future__ import annotations

from typing import Any

from tasks.celery import celery_config
from tasks.settings import get_settings

globals().update(celery_config(get_settings()))

# Declared for type checkers only; the values are the ones set just above.
accept_content: list[str]
beat_schedule: dict[str, dict[str, Any]]
