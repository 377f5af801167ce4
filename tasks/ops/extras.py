"""Commands whose optional dependencies are not installed fail in one line naming the
extra to install, instead of a traceback ending in ``ModuleNotFoundError``."""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable, Iterable
from typing import Any

import click

from tasks.ops.errors import EXIT_UNREACHABLE

DISTRIBUTION = "sched-cache"

# Top-level module -> the extra of pyproject.toml that brings it.
EXTRA_OF_MODULE = {
    "flower": "flower",
    "tornado": "flower",
    "psycopg": "postgres",
    "psycopg_binary": "postgres",
    "fastapi": "web",
    "uvicorn": "web",
}


class MissingExtra(click.ClickException):
    """An optional dependency of the command is not installed."""

    exit_code = EXIT_UNREACHABLE

    def __init__(self, module: str, extra: str, what: str) -> None:
        super().__init__(
            f"{what} needs the [{extra}] extra ({module} is not installed): "
            f"pip install '{DISTRIBUTION}[{extra}]'"
        )


def missing_module(modules: Iterable[str]) -> str | None:
    """The first of ``modules`` that cannot be imported, else None."""
    for name in modules:
        try:
            if importlib.util.find_spec(name) is None:
                return name
        except (ImportError, ValueError):
            return name
    return None


def requires_extra(extra: str, *modules: str) -> Callable[[click.Command], click.Command]:
    """Make ``command`` check, before it runs, that ``extra``'s ``modules`` import."""

    def wrap(command: click.Command) -> click.Command:
        callback = command.callback
        if callback is None:
            return command

        @functools.wraps(callback)
        def checked(*args: Any, **kwargs: Any) -> Any:
            module = missing_module(modules)
            if module is not None:
                raise MissingExtra(module, extra, f"`sched {command.name}`")
            return callback(*args, **kwargs)

        command.callback = checked
        return command

    return wrap


def as_missing_extra(exc: ModuleNotFoundError) -> MissingExtra | None:
    """``exc`` as the extra to install, when the module that is missing belongs to one."""
    top = (exc.name or "").partition(".")[0]
    extra = EXTRA_OF_MODULE.get(top)
    return None if extra is None else MissingExtra(top, extra, "this command")
