"""Subprocesses of a test: services and ``celery -A tasks worker``, each with a log file.

- ``wait_for``: polls a condition with a generous deadline.
- ``child_env`` / ``settings_from_env``: a subprocess's environment, and the Settings it
  reads from it.
- ``Service``: any subprocess of a test, stopped for sure; ``WorkerProcess``: a Celery
  worker, started once it answers a ping through the broker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from contextlib import suppress
from pathlib import Path
from typing import Self, TypeVar

import pytest

from tasks.celery import app
from tasks.settings import Settings

REPO = Path(__file__).resolve().parents[1]
QUEUES = "rebuild,outbox,last_used"
# Generous: two shared cores, and other suites may run at the same time.
READY_TIMEOUT = 60.0
DEFAULT_TIMEOUT = 30.0

T = TypeVar("T")


def wait_for(
    condition: Callable[[], T | None],
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def settings_from_env(env: Mapping[str, str]) -> Settings:
    """The Settings a process with ``env`` reads, without changing this process's env."""
    prefix = "SCHED_"
    fields = Settings.model_fields
    values = {
        key[len(prefix) :].lower(): value
        for key, value in env.items()
        if key.startswith(prefix) and key[len(prefix) :].lower() in fields
    }
    return Settings.model_validate(values)


def child_env(**sched: str) -> dict[str, str]:
    """This environment without any SCHED_* of the caller's, plus ``sched``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHED_")}
    # A fixed width: CLI tables and help lay out the same on every terminal and in CI.
    env.update(PYTHONUNBUFFERED="1", COLUMNS="160", **sched)
    return env


class Service:
    """A subprocess of a test, in its own session, logging to a file; stopped for sure."""

    def __init__(
        self, argv: list[str], env: Mapping[str, str], log_path: Path, cwd: Path = REPO
    ) -> None:
        self.argv = argv
        self.env = dict(env)
        self.log_path = log_path
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def start(self) -> Self:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the process and everything it started at once, as a crash would."""
        if self.process is None:
            return
        # The whole group: children (a worker's pool) outlive a parent that died first.
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM; SIGKILL for whatever of its group is left after ``timeout``."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout)
        self.kill()

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return "(no log)"


class WorkerProcess(Service):
    """One ``celery -A tasks worker`` subprocess of a test."""

    def __init__(
        self,
        env: Mapping[str, str],
        log_dir: Path,
        *,
        queues: str = QUEUES,
        concurrency: int = 2,
        pool: str = "prefork",
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.name = f"test-{uuid.uuid4().hex[:10]}@localhost"
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tasks",
            "worker",
            "-Q",
            queues,
            "-c",
            str(concurrency),
            "-P",
            pool,
            "-n",
            self.name,
            "-l",
            "info",
            "--without-gossip",
            "--without-mingle",
            *extra_args,
        ]
        super().__init__(argv, env, log_dir / f"{self.name.split('@')[0]}.log")

    def start(self, timeout: float = READY_TIMEOUT) -> Self:
        super().start()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Until the worker answers a ping through the broker."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise RuntimeError(f"worker {self.name} exited at start:\n{self.log_tail()}")
            try:
                if app.control.ping(destination=[self.name], timeout=0.5):
                    return
            except Exception:  # the broker may not answer yet either
                time.sleep(0.2)
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"worker {self.name} not ready in {timeout} s:\n{self.log_tail()}"
                )

    def children(self) -> list[int]:
        """The pool processes (prefork children) of the worker."""
        path = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        try:
            return [int(pid) for pid in path.read_text().split()]
        except FileNotFoundError:
            return []
