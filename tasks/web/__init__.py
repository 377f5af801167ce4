"""What runs inside a web process: reading a bucket (threaded or asyncio), picking an
account from it, noting uses, asking for rebuilds.

None of it imports the worker's task code; rebuilds are sent by task name.
"""

from tasks.web.aio import list_schedulable_async
from tasks.web.last_used import LastUsedBatcher, record_last_used
from tasks.web.marks import mark_unschedulable, mark_unschedulable_async
from tasks.web.picks import pick, pick_async
from tasks.web.reader import list_schedulable
from tasks.web.requests import request_rebuild

__all__ = [
    "LastUsedBatcher",
    "list_schedulable",
    "list_schedulable_async",
    "mark_unschedulable",
    "mark_unschedulable_async",
    "pick",
    "pick_async",
    "record_last_used",
    "request_rebuild",
]
