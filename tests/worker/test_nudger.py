"""The poll nudger: a burst of nudges costs few polls, and the last nudge is always
followed by a poll sent after it."""

from __future__ import annotations

import threading
import time

from tasks.worker.wakeup import PollNudger
from tests.processes import wait_for


def test_a_burst_costs_two_polls_and_the_last_nudge_is_covered() -> None:
    sends: list[float] = []
    first = threading.Event()

    def send() -> None:
        sends.append(time.monotonic())
        first.set()

    nudger = PollNudger(0.3, send=send)
    nudger.nudge()
    first.wait(5)
    last_nudge = 0.0
    for _ in range(200):
        nudger.nudge()
        last_nudge = time.monotonic()
    wait_for(lambda: len(sends) >= 2, what="the trailing poll")
    time.sleep(0.5)

    assert len(sends) == 2
    assert sends[-1] >= last_nudge


def test_a_failing_send_does_not_stop_later_polls() -> None:
    calls: list[int] = []

    def send() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("broker down")

    nudger = PollNudger(0.05, send=send)
    nudger.nudge()
    wait_for(lambda: calls, what="the first send")
    nudger.nudge()
    wait_for(lambda: len(calls) == 2, what="the second send")
    assert nudger.sent == 1
