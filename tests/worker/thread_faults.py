"""Faults a test injects into the threads of a live worker.

A worker started with ``-I tests.worker.thread_faults`` runs, in its main process, a
thread that takes orders from the list :data:`ORDERS` in the worker's Redis:

- ``kill:<thread name>``: the thread of that name dies (``SystemExit`` raised in it, as
  an unexpected error would end it); the worker itself lives on.
- ``stick:watcher``: the outbox watcher's next read of the source never returns.

Each order done is answered on :data:`DONE` with the order itself.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any, cast

import redis
from celery import signals

ORDERS = "test:thread-faults"
DONE = "test:thread-faults:done"


def kill_thread(name: str) -> None:
    thread = next(t for t in threading.enumerate() if t.name == name)
    assert thread.ident is not None
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread.ident), ctypes.py_object(SystemExit)
    )
    thread.join(10)
    if thread.is_alive():
        raise RuntimeError(f"thread {name} still alive")


def stick_watcher() -> None:
    from tasks.worker import watcher

    assert watcher._watcher is not None, "no watcher in this worker"
    never = threading.Event()

    def read_end() -> int:
        never.wait()
        return 0

    watcher._watcher.read_end = read_end


def _serve(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    while True:
        reply = client.blpop([ORDERS], timeout=1)
        if reply is None:
            continue
        order = cast(bytes, reply[1]).decode()
        what, _, name = order.partition(":")
        if what == "kill":
            kill_thread(name)
        elif what == "stick":
            stick_watcher()
        client.rpush(DONE, order)


def _start(**_: Any) -> None:
    from tasks.runtime import settings

    threading.Thread(
        target=_serve, args=(settings().redis_url,), name="test-thread-faults", daemon=True
    ).start()


signals.worker_ready.connect(_start, weak=False)


def order(client: redis.Redis, what: str, timeout: float = 15) -> None:
    """Give a worker started with this module an order; returns once it is done."""
    client.rpush(ORDERS, what)
    reply = client.blpop([DONE], timeout=timeout)
    assert reply is not None and cast(bytes, reply[1]).decode() == what, f"order {what!r} not done"
