"""How the commands find the system ``sched run`` is running: its ``system.json``.

``sched run`` writes the URLs it runs on to ``<run dir>/system.json`` and removes the
file when it stops. A command given no ``SCHED_*`` URL reads that file, so a second
terminal talks to the running system without copying a private Redis's random port.
It looks in ``SCHED_RUN_DIR`` if set, else in ``.run/`` of the current directory, of
its parents, and of the checkout the command runs from. A file whose process is gone
(a ``sched run`` killed outright) is ignored.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, ValidationError

from tasks.connections import mask_url
from tasks.settings import Settings

logger = logging.getLogger(__name__)

FILE_NAME = "system.json"
RUN_DIR_NAME = ".run"
# The settings that name servers: any of them set means "this system", not discovery.
URL_SETTINGS = ("redis_url", "broker_url", "database_url")
# The checkout this code runs from (an editable install): where `make run` writes.
CHECKOUT = Path(__file__).resolve().parents[2]


class RunningSystem(BaseModel):
    """What ``sched run`` tells the other commands about itself."""

    model_config = ConfigDict(frozen=True)

    pid: int
    directory: str
    started_at: datetime
    redis_url: str
    broker_url: str | None
    database_url: str
    flower_url: str | None = None
    metrics_url: str | None = None

    def settings(self) -> Settings:
        """The environment's settings, with the servers of this system."""
        urls = {"redis_url": self.redis_url, "database_url": self.database_url}
        if self.broker_url:
            urls["broker_url"] = self.broker_url
        return Settings(**urls)  # type: ignore[arg-type]

    def describe(self) -> str:
        """One line naming the system, passwords masked."""
        return (
            f"the system `sched run` runs in {self.directory} (pid {self.pid}): "
            f"redis {mask_url(self.redis_url)}, database {mask_url(self.database_url)}"
        )


def urls_given(settings: Settings) -> bool:
    return any(name in settings.model_fields_set for name in URL_SETTINGS)


def run_dir(settings: Settings, cwd: Path | None = None) -> Path:
    """Where ``sched run`` started in ``cwd`` keeps its files, as an absolute path."""
    base = cwd or Path.cwd()
    return (base / (settings.run_dir or RUN_DIR_NAME)).absolute()


def write(directory: Path, system: RunningSystem) -> Path:
    """Write ``system.json`` into ``directory``, readable by its owner only (a URL may
    hold a password), atomically (a reader never sees half a file)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / FILE_NAME
    partial = directory / f".{FILE_NAME}.{os.getpid()}"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(system.model_dump_json(indent=2))
    partial.replace(path)
    return path


def remove(path: Path, pid: int) -> None:
    """Remove ``path`` if it is still the file of process ``pid``."""
    found = _read(path)
    if found is not None and found.pid == pid:
        path.unlink(missing_ok=True)


def candidates(settings: Settings, cwd: Path | None = None) -> Iterator[Path]:
    """The files to try, in order."""
    if settings.run_dir:
        yield run_dir(settings, cwd) / FILE_NAME
        return
    here = (cwd or Path.cwd()).absolute()
    for directory in (here, *here.parents):
        yield directory / RUN_DIR_NAME / FILE_NAME
    yield CHECKOUT / RUN_DIR_NAME / FILE_NAME


def find(settings: Settings, cwd: Path | None = None) -> RunningSystem | None:
    """The first live system of :func:`candidates`; None when none runs."""
    for path in candidates(settings, cwd):
        system = _read(path)
        if system is not None and alive(system.pid):
            return system
        if system is not None:
            logger.info("ignoring %s: process %d is gone", path, system.pid)
    return None


def where_to_look(settings: Settings, cwd: Path | None = None) -> str:
    if settings.run_dir:
        return str(run_dir(settings, cwd))
    return f"{RUN_DIR_NAME}/ here, in a parent directory or in {CHECKOUT}"


def _read(path: Path) -> RunningSystem | None:
    try:
        return RunningSystem.model_validate(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, ValidationError) as exc:
        logger.warning("ignoring %s: %s", path, exc)
        return None


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a zombie counts until its parent reaps it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def sqlite_file(database_url: str, cwd: Path | None = None) -> Path | None:
    """The absolute path of a SQLite database file URL; None for any other database."""
    try:
        url = sa.make_url(database_url)
    except sa.exc.ArgumentError:
        return None
    if url.get_backend_name() != "sqlite" or not url.database:
        return None
    if url.database == ":memory:" or url.database.startswith("file:"):
        return None
    path = Path(url.database)
    return path if path.is_absolute() else (cwd or Path.cwd()) / path


def absolute_database_url(database_url: str, cwd: Path | None = None) -> str:
    """``database_url`` with a relative SQLite path made absolute; others unchanged."""
    path = sqlite_file(database_url, cwd)
    if path is None or Path(sa.make_url(database_url).database or "").is_absolute():
        return database_url
    return sa.make_url(database_url).set(database=str(path)).render_as_string(hide_password=False)
