"""The processes of a recorded history, each run as
``python -m tests.history.actors <role> ...`` with the system's ``SCHED_*`` environment:

- ``writer``: changes at a steady rate (:class:`tests.history.writer.ChangeWriter`).
- ``reader``: ``list_schedulable`` over the groups in turn, near cache as configured,
  every call recorded with what it returned.
- ``toucher``: reads a group, picks its least recently used account as a gateway
  would, and records a use of it through ``record_last_used``, with strictly
  increasing times.

Each waits for ``--start`` (wall-clock seconds), works until ``--until`` and writes its
own JSONL file (:mod:`tests.history.record`).
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from pathlib import Path

from tasks import list_schedulable, record_last_used, runtime
from tasks.source import SqlSource
from tests.history.record import Recorder
from tests.history.writer import PLATFORM, ChangeWriter


def seconds(at: datetime | None) -> float | None:
    return None if at is None else at.timestamp()


def wait_until(start: float) -> None:
    delay = start - time.time()
    if delay > 0:
        time.sleep(delay)


def run_writer(args: argparse.Namespace, recorder: Recorder) -> None:
    state = json.loads(Path(args.state).read_text())
    source = SqlSource.from_settings(runtime.settings())
    writer = ChangeWriter(source, recorder, state["groups"], len(state["accounts"]), args.seed)
    writer.adopt(state["accounts"])
    wait_until(args.start)
    n = 0
    while time.time() < args.until:
        writer.step()
        n += 1
        # A steady rate from the start, not from each change: a slow commit is caught up.
        wait_until(args.start + n / args.rate)
    source.close()


def run_reader(args: argparse.Namespace, recorder: Recorder) -> None:
    groups = [int(g) for g in args.groups.split(",")]
    wait_until(args.start)
    while time.time() < args.until:
        for group in groups:
            t0 = time.time()
            try:
                accounts = list_schedulable(group, PLATFORM)
            except Exception as exc:
                recorder.error(exc)
                time.sleep(0.05)
                continue
            recorder.write(
                "read",
                t0=t0,
                t=time.time(),
                group=group,
                accounts=[
                    [a.id, a.revision, seconds(a.last_used_at), list(a.group_ids)] for a in accounts
                ],
            )
            time.sleep(args.interval)


def run_toucher(args: argparse.Namespace, recorder: Recorder) -> None:
    groups = [int(g) for g in args.groups.split(",")]
    wait_until(args.start)
    last = 0.0
    n = 0
    while time.time() < args.until:
        n += 1
        try:
            accounts = list_schedulable(groups[n % len(groups)], PLATFORM)
        except Exception as exc:
            recorder.error(exc)
            time.sleep(0.05)
            continue
        if accounts:
            oldest = min(accounts, key=lambda a: (seconds(a.last_used_at) or 0.0, a.id))
            # Strictly increasing, at the microsecond the stores keep.
            last = max(round(time.time(), 6), round(last + 1e-6, 6))
            at = datetime.fromtimestamp(last, UTC)
            record_last_used(oldest.id, at)
            recorder.write("touch", t=time.time(), id=oldest.id, at=at.timestamp())
        time.sleep(args.interval)


ROLES = {"writer": run_writer, "reader": run_reader, "toucher": run_toucher}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.history.actors")
    parser.add_argument("role", choices=sorted(ROLES))
    parser.add_argument("--name", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--start", type=float, required=True)
    parser.add_argument("--until", type=float, required=True)
    parser.add_argument("--groups", default="0")
    parser.add_argument("--interval", type=float, default=0.005)
    parser.add_argument("--rate", type=float, default=30.0)
    parser.add_argument("--state", default="")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with Recorder(Path(args.out), args.name) as recorder:
        ROLES[args.role](args, recorder)
    # The last touches leave with the batcher's flush at exit.


if __name__ == "__main__":
    main()
