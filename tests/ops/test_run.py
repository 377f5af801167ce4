"""``sched run`` as ``make run`` starts it: demo data, worker with beat, Flower, metrics;
stopped by Ctrl-C in its terminal, in the background by SIGTERM to its process group or
by ``sched stop``; found by the commands of a second terminal."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import signal
import subprocess
import sys
import termios
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

import httpx
import pytest

from cache import RedisSchedulerCache
from tests.processes import REPO, child_env, wait_for
from tests.support import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

DEFAULT_BUCKETS = 21  # 10 of group 0 + the 4 demo groups' (3 + 3 + 2 + 3)
SEEDED_EVENTS = 304  # 4 groups + 300 accounts


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthcheck", timeout=2).text == "OK"
    except httpx.HTTPError:
        return False


def _gone(pid: int) -> bool:
    """No such process, or one that has exited and waits for its parent (a zombie)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True
    return state == "Z"


def test_run_shows_snapshots_within_a_minute_and_stops_cleanly(
    redis_url: str, redis_client: Any, tmp_path: Path
) -> None:
    cache = RedisSchedulerCache(redis_client)
    port, metrics_port = free_port(), free_port()
    out = tmp_path / "run.out"
    started = time.monotonic()
    with out.open("wb") as sink:
        process = subprocess.Popen(
            [
                sys.executable,
                *("-m", "tasks", "run"),
                *("--flower-port", str(port), "--metrics-port", str(metrics_port)),
            ],
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
        wait_for(lambda: _healthy(base), timeout=60, what="Flower")
        # Started once the worker answered a ping, Flower's own first look finds it:
        # no refresh asked for.
        workers = wait_for(
            lambda: httpx.get(
                f"{base}/api/workers", auth=("admin", "change-me"), timeout=10
            ).json(),
            timeout=15,
            what="the worker in Flower without a refresh",
        )
        assert any(name.startswith("sched-run-") for name in workers)
        for path in ("/api/workers", "/metrics"):
            assert httpx.get(f"{base}{path}", timeout=10).status_code == 401, path
        flower_metrics = httpx.get(f"{base}/metrics", auth=("admin", "change-me"), timeout=10)
        assert flower_metrics.status_code == 200

        ours = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10)
        assert ours.status_code == 200 and "sched_buckets_active" in ours.text

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
    assert f"Metrics: http://127.0.0.1:{metrics_port}/metrics" in text
    assert "password 'change-me'" in text
    assert "Traceback" not in text
    assert "stopped everything `sched run` started." in text
    pids = [int(pid) for pid in re.findall(r"(?:worker|flower) \(pid (\d+)\) stopped", text)]
    assert len(pids) == 2, text[-2000:]
    assert all(_gone(pid) for pid in pids)


def _processes() -> dict[int, tuple[int, int]]:
    """Every process: pid -> (parent pid, process group)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        found[int(stat.parent.name)] = (int(fields[1]), int(fields[2]))
    return found


def _family(group: int) -> set[int]:
    """The processes of process group ``group`` and all their descendants."""
    table = _processes()
    family = {pid for pid, (_, pgid) in table.items() if pgid == group}
    grown = True
    while grown:
        more = {pid for pid, (ppid, _) in table.items() if ppid in family} - family
        family |= more
        grown = bool(more)
    return family


def _sched(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``sched ARGS`` from a second shell in the checkout: no SCHED_* variable at all."""
    return subprocess.run(
        [sys.executable, "-m", "tasks", *args],
        cwd=cwd,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_make_run_in_the_background_serves_a_second_shell_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    """What `make run &` does: a private Redis on a random port, found by the second
    shell through .run/system.json; SIGTERM to the process group stops everything."""
    from prometheus_client.parser import text_string_to_metric_families

    out = tmp_path / "run.out"
    with out.open("wb") as sink:
        process = subprocess.Popen(
            [str(REPO / "scripts" / "with-redis.sh"), sys.executable, "-m", "tasks.ops.cli", "run"],
            cwd=tmp_path,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # as `setsid make run &`: SIGINT is not for it
        )
    found_by = tmp_path / ".run" / "system.json"
    family: set[int] = set()
    try:

        def active() -> dict[str, Any] | None:
            if process.poll() is not None:
                pytest.fail(f"make run exited early:\n{out.read_text()}")
            if not found_by.exists():
                return None
            status = _sched("status", "--json", cwd=tmp_path)
            assert status.returncode == 0, status.stderr
            report: dict[str, Any] = json.loads(status.stdout)
            return report if any(b["active_version"] for b in report["buckets"]) else None

        report = wait_for(active, timeout=90, what="active buckets through `sched status`")
        assert report["redis_url"] == json.loads(found_by.read_text())["redis_url"]

        expected = {
            "sched_buckets_active",
            "sched_bucket_age_seconds",
            "sched_bucket_accounts",
            "sched_outbox_lag_events",
            "sched_outbox_gaps",
            "sched_last_used_pending",
            "sched_rebuilds_total",
            "sched_rebuild_duration_seconds",  # once a worker built a snapshot
            "sched_queue_length",
        }

        def every_series() -> subprocess.CompletedProcess[str] | None:
            metrics = _sched("metrics", cwd=tmp_path)
            assert metrics.returncode == 0, metrics.stderr
            names = {
                sample.name
                for family_ in text_string_to_metric_families(metrics.stdout)
                for sample in family_.samples
            }
            return metrics if expected <= names else None

        metrics = wait_for(every_series, timeout=60, what="every series in `sched metrics`")
        assert "reading the system `sched run` runs in" in metrics.stderr
        assert "sched_buckets_active 0.0" not in metrics.stdout

        flower = json.loads(found_by.read_text())["flower_url"]
        wait_for(lambda: _healthy(flower), timeout=60, what="Flower")
        assert httpx.get(f"{flower}/metrics", timeout=10).status_code == 401

        family = _family(process.pid)
        stopped_at = time.monotonic()
        os.killpg(process.pid, signal.SIGTERM)
        wait_for(
            lambda: all(_gone(pid) for pid in family),
            timeout=10,
            what=f"every process of the run to end after SIGTERM: {sorted(family)}",
        )
        print(f"everything stopped {time.monotonic() - stopped_at:.1f}s after SIGTERM")
        # A clean stop is a success: with-redis.sh exits with sched run's status.
        assert process.wait(5) == 0
    finally:
        if process.poll() is None or not all(_gone(pid) for pid in family):
            for pid in family:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
    assert not found_by.exists()
    text = out.read_text()
    assert "stopped everything `sched run` started." in text, text[-2000:]
    assert "Traceback" not in text


class InteractiveShell:
    """``bash -i`` on a terminal of its own (a pty it controls), as a user types into:
    job control is on, so a background job leads a process group of its own."""

    def __init__(self, cwd: Path) -> None:
        self.master, slave = os.openpty()
        self.process = subprocess.Popen(
            ["bash", "--norc", "--noprofile", "-i"],
            cwd=cwd,
            env={**child_env(), "PS1": "$ "},
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
            # The pty becomes the new session's controlling terminal.
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
        )
        os.close(slave)
        self.seen = b""

    def run(self, line: str, timeout: float = 90) -> str:
        """Type ``line`` and return its output once its exit status is printed."""
        marker = f"status-{time.monotonic_ns()}"
        os.write(self.master, f"{line}; echo {marker}=$?\n".encode())
        deadline = time.monotonic() + timeout
        start = len(self.seen)
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.5)
            if ready:
                self.seen += os.read(self.master, 65536)
            # The echoed line shows "=$?": only the printed status has digits.
            if re.search(rf"{marker}=\d+".encode(), self.seen[start:]):
                return self.seen[start:].decode(errors="replace")
        raise AssertionError(f"no answer to {line!r}:\n{self.seen[start:].decode()}")

    def close(self) -> None:
        with suppress(OSError):
            os.write(self.master, b"exit\n")
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        os.close(self.master)


def _status_of(output: str) -> int:
    return int(re.findall(r"status-\d+=(\d+)", output)[-1])


def _session(sid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def test_the_background_recipe_works_typed_into_an_interactive_shell(tmp_path: Path) -> None:
    """`setsid -f make run > run.log 2>&1 < /dev/null`, later `sched stop`: typed into an
    interactive shell (where `setsid make run &` forks, and $! names a process that is
    gone), the run detaches, and `sched stop` stops all of it, private Redis included,
    with a clean exit status."""
    run = (
        f"{REPO / 'scripts' / 'with-redis.sh'} {sys.executable} -m tasks.ops.cli run "
        f"--no-demo --flower-port {free_port()} --metrics-port {free_port()}"
    )
    shell = InteractiveShell(tmp_path)
    found_by = tmp_path / ".run" / "system.json"
    sid = None
    try:
        # The exit status is written down to see it: `setsid -f` does not wait for it.
        started = shell.run(
            f"setsid -f bash -c '{run}; echo $? > exit-status' > run.log 2>&1 < /dev/null"
        )
        assert _status_of(started) == 0, started
        wait_for(found_by.exists, timeout=90, what="system.json of the detached run")
        pid = json.loads(found_by.read_text())["pid"]
        sid = os.getsid(pid)
        assert sid != os.getsid(shell.process.pid)  # detached from the shell's terminal
        session = _session(sid)
        assert len(session) >= 3, session  # bash, redis-server, sched run, its children

        stopped = shell.run(f"{sys.executable} -m tasks stop")
        assert _status_of(stopped) == 0, stopped
        assert f"(pid {pid})" in stopped
        wait_for(lambda: not _session(sid or 0), timeout=30, what="every process of the run")
        wait_for((tmp_path / "exit-status").exists, timeout=10, what="the run's exit status")
        assert (tmp_path / "exit-status").read_text().strip() == "0"
        log = (tmp_path / "run.log").read_text()
        assert "stopped everything `sched run` started." in log, log[-2000:]
        assert "Traceback" not in log

        nothing = shell.run(f"{sys.executable} -m tasks stop")
        assert _status_of(nothing) == 1
        assert "nothing to stop" in nothing
    finally:
        shell.close()
        for pid_ in _session(sid) if sid else set():
            with suppress(ProcessLookupError):
                os.kill(pid_, signal.SIGKILL)
