"""How ``sched`` fails: one line on stderr and an exit status an operator can act on.

0 done, 1 a server could not be reached or the work failed, 2 malformed input
(arguments or ``SCHED_*`` settings), 3 the bucket has no active snapshot. Anything not
listed here is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click
from pydantic import ValidationError

from cache import CacheError, CacheUnavailable, InvalidBucket
from tasks import runtime
from tasks.connections import mask_url
from tasks.settings import Settings

EXIT_UNREACHABLE = 1
EXIT_USAGE = 2
EXIT_NO_SNAPSHOT = 3


class NoSnapshot(click.ClickException):
    exit_code = EXIT_NO_SNAPSHOT


class NoSystem(click.ClickException):
    """No server named and no running system found."""

    exit_code = EXIT_UNREACHABLE


class NoDatabase(click.ClickException):
    """The SQLite file to read does not exist (and is not created by reading it)."""

    exit_code = EXIT_UNREACHABLE


def one_line(text: str, limit: int = 400) -> str:
    """``text`` on one line, cut to ``limit`` characters: fit for a terminal's last line."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _settings_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    if not first["loc"]:  # a rule across settings: its message names them
        return f"invalid settings: {first['msg']}{more}"
    name = "SCHED_" + "_".join(str(part) for part in first["loc"]).upper()
    return f"invalid setting {name}={first.get('input')!r}: {first['msg']}{more}"


def _scrub(text: str, urls: Sequence[str]) -> str:
    """``text`` with the password of any of ``urls`` masked, should a driver echo it."""
    for url in urls:
        masked = mask_url(url)
        if masked != url:
            text = text.replace(url, masked)
        _, _, rest = url.partition("://")
        userinfo = rest.rpartition("@")[0]
        password = userinfo.partition(":")[2]
        if len(password) >= 3:
            text = text.replace(password, "***")
    return text


def _failure(exc: BaseException) -> tuple[int, str] | None:
    """Exit status and one-line message for an error the user can act on, else None."""
    from kombu.exceptions import OperationalError as BrokerError
    from sqlalchemy.exc import ArgumentError as BadDatabaseUrl

    from tasks.ops.commands import BadSetting
    from tasks.source.errors import InvalidDatabaseUrl, SourceError, SourceUnavailable

    if isinstance(exc, click.UsageError):
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        return EXIT_USAGE, f"{exc.format_message()}{hint}"
    if isinstance(exc, click.ClickException):
        return exc.exit_code, exc.format_message()
    if isinstance(exc, ValidationError) and exc.title == Settings.__name__:
        return EXIT_USAGE, _settings_error(exc)
    if isinstance(exc, InvalidBucket | BadSetting):
        return EXIT_USAGE, str(exc)
    try:
        settings: Settings | None = runtime.settings()
    except ValidationError:
        settings = None
    if isinstance(exc, InvalidDatabaseUrl | BadDatabaseUrl):
        url = mask_url(settings.database_url) if settings else "?"
        return EXIT_USAGE, f"invalid SCHED_DATABASE_URL {url!r}: {exc.__cause__ or exc}"
    if isinstance(exc, CacheUnavailable):
        url = mask_url(settings.redis_url) if settings else "SCHED_REDIS_URL"
        return EXIT_UNREACHABLE, f"cannot reach Redis at {url}: {exc.__cause__ or exc}"
    if isinstance(exc, SourceUnavailable):
        return EXIT_UNREACHABLE, str(exc)
    if isinstance(exc, BrokerError):
        url = mask_url(settings.effective_broker_url) if settings else "SCHED_BROKER_URL"
        return EXIT_UNREACHABLE, f"cannot reach the broker at {url}: {exc}"
    if isinstance(exc, SourceError | CacheError):
        return EXIT_UNREACHABLE, str(exc)
    return None


class SchedGroup(click.Group):
    """A group whose errors are one line, with the exit statuses of the module doc."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            status = super().main(args, prog_name, complete_var, False, **extra)
        except click.Abort:
            click.echo("aborted", err=True)
            sys.exit(130)
        except Exception as exc:
            failure = _failure(exc)
            if failure is None:
                raise
            code, message = failure
            urls = _known_urls()
            click.echo(f"sched: error: {one_line(_scrub(message, urls))}", err=True)
            sys.exit(code)
        sys.exit(status if isinstance(status, int) else 0)


def scrub(text: str) -> str:
    """``text`` with the password of every configured URL masked."""
    return _scrub(text, _known_urls())


def _known_urls() -> list[str]:
    try:
        s = runtime.settings()
    except ValidationError:
        return []
    return [s.redis_url, s.effective_broker_url, s.database_url]
