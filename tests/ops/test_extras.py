"""A command whose optional dependencies are missing names the extra to install, in one
line, instead of a traceback. The missing modules are simulated in a subprocess by an
import blocker placed first on ``sys.meta_path``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tasks.ops.errors import EXIT_UNREACHABLE, EXIT_USAGE
from tasks.ops.extras import EXTRA_OF_MODULE, as_missing_extra
from tests.processes import child_env

pytestmark = pytest.mark.timeout(120)

BLOCKED_RUN = """
import sys

BLOCKED = set(sys.argv[1].split(","))


class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, Blocker())
from tasks.ops.cli import main

main(sys.argv[2:])
"""


def _sched_without(
    modules: str, *args: str, cwd: Path, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCKED_RUN, modules, *args],
        cwd=cwd,
        env=child_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def _one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.mark.parametrize("command", ["flower", "run"])
def test_flower_commands_without_the_flower_extra_say_what_to_install(
    command: str, tmp_path: Path
) -> None:
    done = _sched_without("flower,tornado", command, cwd=tmp_path)
    line = _one_line(done)
    assert line.startswith("sched: error: "), line
    assert "pip install 'sched-cache[flower]'" in line and f"sched {command}" in line
    assert done.returncode == EXIT_UNREACHABLE
    assert list(tmp_path.iterdir()) == []  # nothing was started, nothing written


def test_a_postgres_url_without_the_postgres_extra_says_what_to_install(
    tmp_path: Path,
) -> None:
    url = "postgresql+psycopg://app:s3cret@127.0.0.1:5432/sched"
    done = _sched_without(
        "psycopg,psycopg_binary", "outbox", "tail", cwd=tmp_path, SCHED_DATABASE_URL=url
    )
    line = _one_line(done)
    assert "pip install 'sched-cache[postgres]'" in line, line
    assert "s3cret" not in line
    assert done.returncode == EXIT_USAGE


def test_commands_that_need_no_extra_still_work_without_them(tmp_path: Path) -> None:
    done = _sched_without(",".join(EXTRA_OF_MODULE), "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "flower" in done.stdout


def test_a_missing_module_of_an_extra_maps_to_that_extra_and_others_do_not() -> None:
    missing = as_missing_extra(ModuleNotFoundError("No module named 'uvicorn'", name="uvicorn"))
    assert missing is not None and "'sched-cache[web]'" in missing.format_message()
    assert as_missing_extra(ModuleNotFoundError("x", name="tornado.web")) is not None
    assert as_missing_extra(ModuleNotFoundError("x", name="no_such_thing")) is None
