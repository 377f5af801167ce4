"""Asking for a rebuild, from a web process: :func:`request_rebuild` of
:mod:`tasks.requests`, where workers and tools ask too."""

from tasks.requests import REBUILD_TASK, request_rebuild, send_rebuild

__all__ = ["REBUILD_TASK", "request_rebuild", "send_rebuild"]
