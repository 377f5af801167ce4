"""The layout's import rules, checked in fresh interpreters: what each package may load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def loaded_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    return set(out.stdout.split())


def packages(modules: set[str]) -> set[str]:
    return {name.split(".")[0] for name in modules}


def test_the_cache_imports_nothing_of_the_tasks_or_celery() -> None:
    loaded = packages(loaded_after("import cache"))
    assert not loaded & {"tasks", "celery", "kombu", "sqlalchemy"}


@pytest.mark.parametrize(
    "statement",
    [
        "from tasks.source import Source, SourceError, SourceUnavailable",
        "from tasks.source import SqlSource, SqlWriter",
        "import tasks.buckets, tasks.settings, tasks.stats, tasks.connections",
    ],
)
def test_the_source_the_rules_and_the_settings_load_no_celery(statement: str) -> None:
    assert not packages(loaded_after(statement)) & {"celery", "kombu"}


def test_the_source_protocol_and_its_errors_load_no_sql() -> None:
    loaded = packages(loaded_after("from tasks.source import Source, SourceUnavailable"))
    assert "sqlalchemy" not in loaded


def test_the_web_api_does_not_load_the_worker_tasks() -> None:
    loaded = loaded_after("from tasks import list_schedulable, record_last_used, request_rebuild")
    assert not {m for m in loaded if m.startswith("tasks.worker")}


WORKER_MODULES = (
    "tasks.celery, tasks.worker.rebuild, tasks.worker.outbox, tasks.worker.outbox_plan, "
    "tasks.worker.prune, tasks.worker.last_used, tasks.worker.retry, tasks.worker.consumer"
)


def test_the_worker_loads_nothing_of_the_web_package() -> None:
    # A worker process must not build the web side's objects (nor register their hooks).
    loaded = loaded_after(f"import {WORKER_MODULES}")
    assert {m for m in loaded if m.startswith("tasks.worker.")}, "the worker modules loaded"
    assert not {m for m in loaded if m == "tasks.web" or m.startswith("tasks.web.")}


# Records who registers fork and exit hooks while the statement runs.
SPY_ON_HOOKS = """
import atexit, os, sys
hooks = []
def spy(real):
    def register(*args, **kwargs):
        hooks.append(sys._getframe(1).f_globals.get("__name__", "?"))
        return real(*args, **kwargs)
    return register
os.register_at_fork = spy(os.register_at_fork)
atexit.register = spy(atexit.register)
"""


@pytest.mark.parametrize(
    "statement",
    [
        "import tasks.web",
        "from tasks import list_schedulable, record_last_used, request_rebuild",
        f"import {WORKER_MODULES}",
    ],
)
def test_importing_builds_no_batcher_and_registers_no_hook(statement: str) -> None:
    code = (
        f"{SPY_ON_HOOKS}\n{statement}\n"
        "import tasks.web.last_used as last_used\n"
        "print(last_used._default is None, *[h for h in hooks if h.split('.')[0] == 'tasks'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["True"]


def test_the_first_use_builds_the_batcher_and_registers_its_hooks() -> None:
    # The spy sees the hooks: the test above would not pass for want of seeing them.
    code = (
        f"{SPY_ON_HOOKS}\n"
        "from tasks.web.last_used import default_batcher\n"
        "assert default_batcher() is default_batcher()\n"
        "print(*sorted(set(hooks) & {'tasks.web.last_used'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["tasks.web.last_used"]


def test_the_stable_surface_imports() -> None:
    loaded_after(
        "from tasks import app, list_schedulable, record_last_used, request_rebuild\n"
        "from tasks.source import SqlSource\n"
        "from tasks.settings import Settings\n"
        "from tasks.runtime import get_cache, get_source, reset, settings"
    )


def test_at_most_seven_modules_directly_in_tasks() -> None:
    modules = {p.name for p in (REPO / "tasks").glob("*.py")} - {"__init__.py", "__main__.py"}
    assert len(modules) <= 7, sorted(modules)
