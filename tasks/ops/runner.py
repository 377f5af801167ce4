"""``sched run``: a worker with beat, Flower, the metrics and a live view, stopped
together on Ctrl-C or SIGTERM.

While it runs, ``<run dir>/system.json`` tells the other commands where it is
(:mod:`tasks.ops.system`). Flower starts once the worker answers a ping: a Flower
started beside the worker asks for workers before there is one, and shows none.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import IO, Any

from rich.console import Console, Group, RenderableType
from rich.text import Text

from tasks.celery import QUEUES
from tasks.connections import mask_url
from tasks.ops.errors import one_line
from tasks.settings import Settings

logger = logging.getLogger(__name__)

# A worker finishing its running tasks gets this long after SIGTERM (a rebuild is
# killed by its own time limit well before), then it and its pool are killed.
STOP_TIMEOUT_SECONDS = 25.0


@dataclass(frozen=True)
class RunOptions:
    demo: bool
    flower_port: int | None = None
    metrics_port: int | None = None
    concurrency: int = 2
    run_dir: Path = Path(".run")
    refresh_seconds: float = 1.0


@dataclass
class Child:
    """A service process of ours, in a session of its own so that the terminal's
    Ctrl-C reaches only ``sched run``, which then stops the children in order."""

    name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        # One log per run, the previous run's kept beside it: appending across runs grew
        # the file without end and mixed the runs.
        with suppress(FileNotFoundError):
            self.log_path.replace(self.log_path.with_name(self.log_path.name + ".1"))
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def exit_status(self) -> int | None:
        return self.process.poll() if self.process is not None else None

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> str:
        """Stop it (SIGTERM, then SIGKILL to its whole session) and say how it went."""
        process = self.process
        if process is None:
            return f"{self.name} was not started"
        try:
            if process.poll() is not None:
                status = process.returncode
                return f"{self.name} (pid {process.pid}) had exited with status {status}"
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
                how = "stopped"
            except subprocess.TimeoutExpired:
                how = f"killed after {timeout:.0f}s"
            # Pool children or an embedded beat left behind share the session id.
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
            return f"{self.name} (pid {process.pid}) {how}"
        finally:
            if self._log is not None:
                self._log.close()


def _die_with_parent() -> None:
    """In the child: get SIGTERM should ``sched run`` itself be killed outright, so a
    `kill -9` or a closed terminal leaves no worker behind (Linux's PR_SET_PDEATHSIG)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM, 0, 0, 0)


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        # As Flower (tornado) binds: connections of an earlier run lingering in
        # TIME_WAIT do not make the port busy.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def choose_port(settings: Settings, requested: int | None, service: str = "flower") -> int:
    """The requested or configured port of ``service`` (flower, metrics); the default
    one only if free, else any free one."""
    from tasks.ops.commands import BadSetting

    field = f"{service}_port"
    default = int(getattr(settings, field))
    explicit = requested or (default if field in settings.model_fields_set else None)
    if explicit is not None:
        if not port_is_free(explicit):
            name = service.capitalize() if service == "flower" else service.title()
            raise BadSetting(
                f"{name} port {explicit} is in use: pick another with --{service}-port"
            )
        return explicit
    return default if port_is_free(default) else free_port()


def choose_flower_port(settings: Settings, requested: int | None) -> int:
    return choose_port(settings, requested, "flower")


def http_ok(url: str, timeout: float = 0.3) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:  # our own Flower only
            return int(reply.status) == 200
    except (OSError, urllib.error.URLError):
        return False


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@dataclass
class _Services:
    settings: Settings
    options: RunOptions
    database_url: str
    flower_port: int
    worker: Child
    flower: Child
    metrics_url: str
    flower_ready: bool = False
    worker_ready: bool = False

    @property
    def flower_url(self) -> str:
        return f"http://127.0.0.1:{self.flower_port}"

    def _state(self, child: Child, ready: bool) -> Text:
        if child.process is None:
            return Text("waiting for the worker", style="yellow")
        status = child.exit_status()
        if status is not None:
            return Text(f"exited ({status}): see {child.log_path}", style="bold red")
        if ready:
            return Text(f"ready (pid {child.pid})", style="green")
        return Text(f"starting (pid {child.pid})", style="yellow")

    def start_flower_once_the_worker_answers(self) -> None:
        """Start Flower the first time the worker answers a ping (see the module doc)."""
        if self.flower.process is not None or self.worker.exit_status() is not None:
            return
        if not _log_says_ready(self.worker.log_path):  # cheap, before a broadcast
            return
        if worker_answers(_node_name()):
            self.worker_ready = True
            self.flower.start()
            logger.info("worker answers: Flower started (pid %s)", self.flower.pid)

    def header(self) -> list[RenderableType]:
        self.start_flower_once_the_worker_answers()
        if not self.flower_ready and self.flower.process is not None:
            self.flower_ready = http_ok(f"{self.flower_url}/healthcheck")
        s = self.settings
        # Four lines of at most 80 columns: the view must fit an 80x24 terminal.
        return [
            Text.assemble(
                ("flower   ", "bold"),
                (self.flower_url, "cyan underline"),
                f"  {s.flower_user} / {s.flower_password}  ",
                self._state(self.flower, self.flower_ready),
            ),
            Text.assemble(
                ("worker   ", "bold"),
                self._state(self.worker, self.worker_ready),
                f"  beat embedded, {self.options.concurrency} processes",
            ),
            Text.assemble(
                ("metrics  ", "bold"),
                (self.metrics_url, "cyan underline"),
                f"  logs {_short_path(self.options.run_dir)}/",
                ("  Ctrl-C stops everything", "dim"),
            ),
            Text.assemble(
                ("servers  ", "bold"),
                f"redis {mask_url(s.redis_url)}  database {_short(self.database_url)}",
            ),
        ]


def _short_path(path: Path) -> str:
    """``path`` relative to the current directory when inside it."""
    try:
        return str(path.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _short(database_url: str) -> str:
    """The database as briefly as it is unambiguous: a SQLite file here by its path."""
    from tasks.ops.system import sqlite_file

    path = sqlite_file(database_url)
    if path is not None:
        shown = _short_path(path)
        if shown != str(path):
            return f"{shown} (SQLite)"
    return mask_url(database_url)


def _log_says_ready(path: Path) -> bool:
    try:
        with path.open("rb") as log:
            return b" ready." in log.read()
    except OSError:
        return False


def _node_name() -> str:
    return f"sched-run-{os.getpid()}@{socket.gethostname()}"


def worker_answers(node: str, timeout: float = 0.5) -> bool:
    from tasks.celery import app

    try:
        return bool(app.control.ping(destination=[node], timeout=timeout))
    except Exception as exc:  # the broker not answering yet either: next frame
        logger.info("ping of %s failed: %s", node, exc)
        return False


def run_system(settings: Settings, options: RunOptions) -> None:
    """Start everything, show the live view until Ctrl-C or SIGTERM, then stop everything."""
    from tasks.ops import system
    from tasks.ops.commands import account_ids, count_accounts, seed_database
    from tasks.runtime import default_buckets, get_cache
    from tasks.source import SqlSource
    from tasks.source.schema import init_schema

    console = Console(emoji=False, highlight=False, markup=False)
    cache = get_cache()
    cache.ping()  # fail before starting anything when Redis is not there
    port = choose_port(settings, options.flower_port, "flower")
    metrics_port = choose_port(settings, options.metrics_port, "metrics")
    database_url = system.absolute_database_url(settings.database_url)
    init_schema(settings.database_url, notify_channel=settings.outbox_notify_channel).dispose()
    if options.demo and count_accounts(settings.database_url) == 0:
        console.print(f"seeding the demo data set into {mask_url(database_url)} ...")
        summary = seed_database(settings)
        console.print(f"  {summary.groups} groups, {summary.accounts} accounts")
    source = SqlSource.from_settings(settings)
    options.run_dir.mkdir(parents=True, exist_ok=True)
    _log_to_file(options.run_dir / "sched-run.log")
    metrics = _metrics_server(settings, cache, source, metrics_port)
    services = _Services(
        settings=settings,
        options=options,
        database_url=database_url,
        flower_port=port,
        worker=Child("worker", _worker_argv(options), options.run_dir / "worker.log"),
        flower=Child("flower", _flower_argv(port), options.run_dir / "flower.log"),
        metrics_url=metrics.url,
    )
    stop_signals = (signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in stop_signals}
    driver: Any = None
    found_by: Path | None = None
    try:
        services.worker.start()
        metrics.serve_in_thread()
        found_by = system.write(
            options.run_dir,
            system.RunningSystem(
                pid=os.getpid(),
                directory=str(Path.cwd()),
                started_at=datetime.now(UTC),
                redis_url=settings.redis_url,
                broker_url=settings.broker_url,
                database_url=database_url,
                flower_url=services.flower_url,
                metrics_url=metrics.url,
            ),
        )
        # soft_wrap: one line each, also in a log file (Rich assumes 80 columns there).
        console.print(
            f"Flower: {services.flower_url}  (user {settings.flower_user!r}, "
            f"password {settings.flower_password!r}; starts once the worker answers)",
            soft_wrap=True,
        )
        auth = "basic auth" if _metrics_credentials(settings) else "no auth, this machine only"
        console.print(f"Metrics: {metrics.url}  ({auth})", soft_wrap=True)
        console.print(f"Other commands find this system by {found_by}", soft_wrap=True)
        _kick_rebuilds(default_buckets(source))
        if options.demo:
            driver = _start_driver(source, account_ids(settings.database_url))
        _live(console, services, cache, source, driver, options)
    except KeyboardInterrupt:
        pass
    finally:
        # A second SIGTERM is usual (one to the process group, one passed on by
        # scripts/with-redis.sh): it must not cut the stop short, and fail a clean stop.
        for sig in stop_signals:
            signal.signal(sig, signal.SIG_IGN)
        console.print("\nstopping ...")
        if found_by is not None:
            system.remove(found_by, os.getpid())
        if driver is not None:
            driver.stop()
            console.print(f"  demo driver stopped ({driver.changes} changes, {driver.picks} picks)")
        metrics.shutdown()
        metrics.server_close()
        console.print("  metrics stopped")
        for child in (services.flower, services.worker):
            console.print(f"  {child.stop()}")
        source.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        console.print("stopped everything `sched run` started.")


def _metrics_credentials(settings: Settings) -> tuple[str, str] | None:
    from tasks.ops.metrics import credentials

    return credentials(settings)


def _metrics_server(settings: Settings, cache: Any, source: Any, port: int) -> Any:
    """The metrics of ``sched metrics --serve``, served by this process on 127.0.0.1."""
    from tasks.ops import metrics
    from tasks.ops.errors import scrub

    registry = metrics.registry_for(metrics.SystemCollector(cache, source, settings))
    return metrics.MetricsServer(
        ("127.0.0.1", port), registry, metrics.credentials(settings), scrub=scrub
    )


def _log_to_file(path: Path) -> None:
    """This process's own log lines go to a file: on the terminal they would tear the
    live view (and at Ctrl-C, ``make run``'s Redis stops first, which they would report)."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(min(root.level, logging.INFO) if root.level else logging.INFO)


def _worker_argv(options: RunOptions) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tasks.ops.quiet_celery",
        "-A",
        "tasks",
        "worker",
        "-B",
        "-Q",
        ",".join(QUEUES),
        "-c",
        str(options.concurrency),
        "-n",
        _node_name(),
        "-s",
        str(options.run_dir / "celerybeat-schedule"),
        "--loglevel=INFO",
    ]


def _flower_argv(port: int) -> list[str]:
    # Through `sched flower`, which reads the credentials from the settings itself.
    return [sys.executable, "-m", "tasks", "flower", "--port", str(port), "--address", "127.0.0.1"]


def _kick_rebuilds(buckets: list[Any]) -> None:
    """Queue the first rebuilds now: beat's first refresh is a whole interval away."""
    from tasks.requests import request_rebuild

    for bucket in buckets:
        request_rebuild(bucket)


def _start_driver(source: Any, ids: list[int]) -> Any:
    from tasks.ops.demo import DemoDriver
    from tasks.runtime import default_buckets
    from tasks.source import SqlWriter
    from tasks.web import list_schedulable, record_last_used

    # The (group, platform) pairs requests name: those of the buckets kept warm.
    pairs = sorted({(bucket.group_id, bucket.platform) for bucket in default_buckets(source)})
    driver = DemoDriver(
        source=SqlWriter(source),
        account_ids=ids,
        buckets=pairs,
        list_schedulable=lambda group_id, platform: list_schedulable(group_id, platform),
        touch=lambda account_id: record_last_used(account_id),
    )
    driver.start()
    return driver


def _live(
    console: Console, services: _Services, cache: Any, source: Any, driver: Any, options: RunOptions
) -> None:
    from tasks.ops.live import render_report, run_live
    from tasks.ops.status import system_status

    def frame(height: int) -> RenderableType:
        header = services.header()
        footer: list[RenderableType] = []
        if driver is not None:
            footer.append(
                Text.assemble(
                    ("demo driver ", "bold"),
                    f"{driver.changes} changes, {driver.picks} picks, "
                    f"{driver.errors} errors; latest:",
                )
            )
            footer += [Text(f"  {line}", style="dim") for line in list(driver.log)[-4:]]
        try:
            report = system_status(cache, source, services.settings)
        except Exception as exc:  # the view outlives a Redis or database blip
            reason = one_line(f"{type(exc).__name__}: {exc}", 300)
            return Group(*header, Text(f"status unavailable: {reason}", style="red"))
        return render_report(
            report, header=header, footer=footer, height=height, width=console.size.width
        )

    run_live(frame, console=console, refresh_seconds=options.refresh_seconds)
