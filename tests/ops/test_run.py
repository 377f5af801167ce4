"""``sched run`` as ``make run`` starts it: demo data, worker with beat, Flower, Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from cache import RedisSchedulerCache
from tests.processes import child_env, wait_for
from tests.support import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

DEFAULT_BUCKETS = 21  # 10 of group 0 + the 4 demo groups' (3 + 3 + 2 + 3)
SEEDED_EVENTS = 304  # 4 groups + 300 accounts


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_run_shows_snapshots_within_a_minute_and_stops_cleanly(
    redis_url: str, redis_client: Any, tmp_path: Path
) -> None:
    cache = RedisSchedulerCache(redis_client)
    port = free_port()
    out = tmp_path / "run.out"
    started = time.monotonic()
    with out.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "tasks", "run", "--flower-port", str(port)],
            cwd=tmp_path,
            env=child_env(SCHED_REDIS_URL=redis_url),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:

        def active() -> int:
            if process.poll() is not None:
                pytest.fail(f"sched run exited early:\n{out.read_text()}")
            return sum(
                1 for b in cache.list_buckets() if cache.bucket_info(b).active_version is not None
            )

        wait_for(active, timeout=60, what="the first active snapshot")
        first = time.monotonic() - started
        wait_for(lambda: active() >= DEFAULT_BUCKETS, timeout=60, what="every default bucket")
        every = time.monotonic() - started
        print(f"first snapshot after {first:.1f}s, all {DEFAULT_BUCKETS} after {every:.1f}s")
        assert (tmp_path / "sched.sqlite3").exists()

        # The demo driver's changes go through the outbox, which beat's poller applies,
        # and its picks reach the cache and, in a batch, the database.
        wait_for(
            lambda: cache.get_outbox_watermark() > SEEDED_EVENTS + 3,
            timeout=60,
            what="demo changes applied from the outbox",
        )
        wait_for(
            lambda: int(cache.stats().get("last_used_db_flushes", 0)) >= 1,
            timeout=60,
            what="a last-used flush to the database",
        )

        base = f"http://127.0.0.1:{port}"
        workers = wait_for(
            lambda: httpx.get(
                f"{base}/api/workers",
                auth=("admin", "change-me"),
                params={"refresh": "true"},
                timeout=10,
            ).json(),
            timeout=60,
            what="the worker in Flower",
        )
        assert any(name.startswith("sched-run-") for name in workers)
        assert httpx.get(f"{base}/api/workers", timeout=10).status_code == 401

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.terminate()  # sched run stops its children on SIGTERM too
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
    text = out.read_text()
    assert f"Flower: http://127.0.0.1:{port}" in text
    assert "password 'change-me'" in text
    assert "Traceback" not in text
    assert "stopped everything `sched run` started." in text
    pids = [int(pid) for pid in re.findall(r"(?:worker|flower) \(pid (\d+)\) stopped", text)]
    assert len(pids) == 2, text[-2000:]
    assert all(_gone(pid) for pid in pids)
