"""``sched``: the operator's command line (also ``python -m tasks``).

Exit status: 0 done, 1 a server could not be reached or the work failed, 2 malformed
input (arguments or ``SCHED_*`` settings), 3 the bucket has no active snapshot.
Errors are one line on stderr; tracebacks are for bugs only.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import NoReturn

import click

from cache import SchedulerBucket
from tasks import runtime
from tasks.connections import mask_url
from tasks.ops import services
from tasks.ops.buckets import buckets
from tasks.ops.errors import NoSnapshot, SchedGroup
from tasks.ops.extras import as_missing_extra, requires_extra
from tasks.ops.reach import stop_on_ctrl_c, use_cache, use_running_system, use_source

logger = logging.getLogger(__name__)

_CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _known_bucket(raw: str) -> SchedulerBucket:
    """``raw`` parsed, of a configured platform: a bucket no rebuild could ever fill is
    refused here, before any command suggests rebuilding it."""
    from tasks.buckets import check_platform

    bucket = SchedulerBucket.parse(raw)
    check_platform(bucket.platform, runtime.settings())
    return bucket


@click.group(cls=SchedGroup, context_settings=_CONTEXT)
@click.option("-v", "--verbose", count=True, help="Log more: -v for info, -vv for debug.")
def cli(verbose: int) -> None:
    """Operate the scheduling cache: status, snapshots, rebuilds, metrics, the database,
    the demo.

    Configuration comes from SCHED_* environment variables (docs/configuration.md); the
    commands read Redis at SCHED_REDIS_URL and the database at SCHED_DATABASE_URL.
    With neither set, they read the system `sched run` (`make run`) is running, found
    by its .run/system.json here, in a parent directory or in the checkout.
    Exit status: 0 done, 1 unreachable server or failure, 2 malformed input,
    3 no active snapshot.
    """
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


# -- status and snapshots -------------------------------------------------------------


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
def status(as_json: bool) -> None:
    """Buckets (active version, accounts, age, last rebuild), outbox lag, last-used flushes.

    Reads Redis and the database: the same figures as the live view of `sched run`
    and `sched metrics`.
    """
    from tasks.ops.live import plain_console, render_report
    from tasks.ops.status import system_status

    use_running_system(required=True)
    report = system_status(use_cache(), use_source(), runtime.settings())
    if as_json:
        click.echo(report.model_dump_json(indent=2))
        return
    plain_console().print(render_report(report))


@cli.command(
    epilog="\b\nExamples:\n  sched snapshot 0:openai:single\n"
    "  sched snapshot 12:anthropic:mixed --json"
)
@click.argument("bucket")
@click.option("--json", "as_json", is_flag=True, help="Print the accounts as JSON.")
def snapshot(bucket: str, as_json: bool) -> None:
    """The accounts of BUCKET's active snapshot, in scheduling order.

    BUCKET is '<group_id>:<platform>:<mode>', e.g. 0:anthropic:single. Each account
    shows whether it is schedulable now and, when held back by a rate limit,
    overload or temporary block, until when.
    """
    from tasks.ops.commands import print_snapshot

    parsed = _known_bucket(bucket)
    use_running_system(required=True)
    cache = use_cache()
    accounts = cache.get_snapshot(parsed)
    info = cache.bucket_info(parsed)
    if accounts is None and info.active_version is not None and info.account_count == 0:
        # A read treats an empty snapshot as a miss (the gateway falls back); here it is
        # what it is: a built version with no account, as `status` and `rebuild` say.
        accounts = []
    if accounts is None:
        state = (
            f"has an active snapshot v{info.active_version} that cannot be read whole "
            "(an account's payload is missing)"
            if info.active_version is not None
            else "has no active snapshot (not built yet, or retired)"
        )
        raise NoSnapshot(f"bucket {parsed} {state}: try `sched rebuild {parsed}`")
    print_snapshot(info, accounts, datetime.now(UTC), as_json=as_json)


@cli.command(
    epilog="\b\nExamples:\n  sched rebuild 0:anthropic:single --wait 10\n  sched rebuild --all"
)
@click.argument("bucket", required=False)
@click.option("--all", "all_buckets", is_flag=True, help="Every registered and default bucket.")
@click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=None,
    metavar="SECONDS",
    help="Wait up to SECONDS for the new snapshot to be active (needs a worker).",
)
def rebuild(bucket: str | None, all_buckets: bool, wait: float | None) -> None:
    """Ask the workers to rebuild BUCKET, or --all buckets.

    Requests coalesce: a bucket that already has a rebuild queued is not queued twice,
    and its queued rebuild covers this request.
    """
    if (bucket is None) == (not all_buckets):
        raise click.UsageError("give either BUCKET or --all, not both or neither")
    from tasks.requests import request_rebuild

    use_running_system(required=True)
    cache = use_cache()
    if all_buckets:
        from tasks.runtime import default_buckets

        targets = sorted(
            {*cache.list_buckets(), *default_buckets(use_source())},
            key=lambda b: (b.group_id, b.platform, b.mode.value),
        )
    else:
        targets = [_known_bucket(bucket or "")]
    before = {b: cache.bucket_info(b).active_version or 0 for b in targets}
    for target in targets:
        sent = request_rebuild(target)
        what = "rebuild queued" if sent else "rebuild already queued (coalesced)"
        click.echo(f"{target}: {what}")
    if wait is None:
        return
    deadline = time.monotonic() + wait
    waiting = set(targets)
    while waiting and time.monotonic() < deadline:
        waiting = {b for b in waiting if (cache.bucket_info(b).active_version or 0) <= before[b]}
        if waiting:
            time.sleep(0.05)
    if waiting:
        raise click.ClickException(
            f"{len(waiting)} of {len(targets)} bucket(s) not rebuilt within {wait:g}s "
            f"(e.g. {min(waiting, key=str)}): is a worker consuming the 'rebuild' queue?"
        )
    for target in targets:
        info = cache.bucket_info(target)
        click.echo(f"{target}: v{info.active_version} active, {info.account_count} accounts")


# -- database and demo ----------------------------------------------------------------


@cli.command()
def env() -> None:
    """Shell lines that point your own program at the system: SCHED_REDIS_URL and
    SCHED_DATABASE_URL (and SCHED_BROKER_URL when set) of the one `sched run` runs,
    or of the environment.

    \b
    Example:
      eval "$(.venv/bin/sched env)"; python my_gateway.py
    """
    import shlex

    from tasks.ops.system import absolute_database_url

    use_running_system(required=True)
    settings = runtime.settings()
    values = {
        "SCHED_REDIS_URL": settings.redis_url,
        "SCHED_DATABASE_URL": absolute_database_url(settings.database_url),
    }
    if settings.broker_url:
        values["SCHED_BROKER_URL"] = settings.broker_url
    for name, value in values.items():
        click.echo(f"export {name}={shlex.quote(value)}")


@cli.group(context_settings=_CONTEXT)
def db() -> None:
    """The source database at SCHED_DATABASE_URL."""


@db.command("init")
def db_init() -> None:
    """Create the tables, indexes and triggers; safe to run again."""
    from tasks.ops.system import absolute_database_url
    from tasks.source.schema import init_schema

    use_running_system(required=False)
    settings = runtime.settings()
    init_schema(settings.database_url, notify_channel=settings.outbox_notify_channel).dispose()
    click.echo(f"schema ready in {mask_url(absolute_database_url(settings.database_url))}")


@cli.group(context_settings=_CONTEXT)
def demo() -> None:
    """The demo data set."""


@demo.command("seed")
@click.option(
    "--scale",
    type=click.FloatRange(min=0.01, max=100),
    default=1.0,
    show_default=True,
    metavar="FACTOR",
    help="Multiply the number of demo accounts (about 300 at 1.0).",
)
@click.option(
    "--seed",
    "rng_seed",
    type=int,
    default=7,
    show_default=True,
    metavar="N",
    help="Random seed: the same seed gives the same data set.",
)
@click.option("--force", is_flag=True, help="Add the data set even if accounts exist.")
def demo_seed(scale: float, rng_seed: int, force: bool) -> None:
    """Create the schema if needed and write the demo groups and accounts.

    A database that already has accounts is left alone unless --force is given.
    """
    from tasks.ops.commands import count_accounts, seed_database
    from tasks.ops.system import absolute_database_url

    use_running_system(required=False)
    settings = runtime.settings()
    where = mask_url(absolute_database_url(settings.database_url))
    existing = count_accounts(settings.database_url)
    if existing and not force:
        click.echo(f"{where} already has {existing} accounts: not seeding (--force adds more)")
        return
    summary = seed_database(settings, scale=scale, seed=rng_seed)
    click.echo(
        f"seeded {where}: {summary.groups} groups, {summary.accounts} accounts "
        f"({summary.rate_limited} rate-limited, {summary.unschedulable} disabled or switched off)"
    )


# -- outbox ---------------------------------------------------------------------------


@cli.group(context_settings=_CONTEXT)
def outbox() -> None:
    """The scheduler outbox: changes waiting to reach the cache."""


@outbox.command("tail", epilog="\b\nExamples:\n  sched outbox tail -n 50\n  sched outbox tail -f")
@click.option(
    "-n",
    "--limit",
    type=click.IntRange(min=1, max=10_000),
    default=20,
    show_default=True,
    metavar="N",
    help="How many of the newest events to show.",
)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new events until Ctrl-C.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=1.0,
    show_default=True,
    metavar="SECONDS",
    help="With --follow: how often to look for new events.",
)
def outbox_tail(limit: int, follow: bool, interval: float) -> None:
    """The newest outbox events, marked applied, pending or gap (not applied yet,
    skipped over while its transaction was open).

    With --follow, an event shown pending or gap is shown again, on a new line, when
    its state changes: a line per event per state it reaches.
    """
    from tasks.ops.commands import OutboxFollower, event_header

    use_running_system(required=True)
    cache = use_cache()
    source = use_source()
    newest = source.max_outbox_id()
    click.echo(event_header())
    follower = OutboxFollower(cache, after=max(0, newest - limit))
    for line in follower.lines(source.outbox_after(follower.last, limit)):
        click.echo(line)
    if not follow:
        return
    follower.last = max(follower.last, newest)
    with stop_on_ctrl_c():
        while True:
            time.sleep(interval)
            for line in follower.lines(source.outbox_after(follower.last, 500)):
                click.echo(line)


# Both serve Flower: without the [flower] extra they say so before starting anything.
for _command in (
    requires_extra("flower", "flower", "tornado")(services.flower),
    services.metrics,
    requires_extra("flower", "flower", "tornado")(services.run),
    services.stop,
    buckets,
):
    cli.add_command(_command)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Console entry point (``sched``)."""
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="sched")
    except ModuleNotFoundError as exc:
        missing = as_missing_extra(exc)
        if missing is None:
            raise
        click.echo(f"sched: error: {missing.format_message()}", err=True)
        sys.exit(missing.exit_code)
    raise AssertionError("unreachable: click's main exits")  # pragma: no cover


if __name__ == "__main__":
    main()
