"""The ``sched`` commands that serve: Flower, the metrics, and ``sched run``."""

from __future__ import annotations

import os
import signal
import time
from contextlib import suppress

import click

from tasks import runtime
from tasks.ops.reach import stop_on_ctrl_c, use_cache, use_running_system, use_source

_CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.command(context_settings=_CONTEXT)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    metavar="PORT",
    help="Port to listen on [default: SCHED_FLOWER_PORT].",
)
@click.option(
    "--address",
    default="127.0.0.1",
    show_default=True,
    metavar="ADDRESS",
    help="Address to listen on (0.0.0.0 in a container).",
)
def flower(port: int | None, address: str) -> None:
    """Run Flower, the Celery monitor, with basic auth from SCHED_FLOWER_USER and
    SCHED_FLOWER_PASSWORD (the password never appears on a command line)."""
    from tasks.ops.commands import run_flower

    use_running_system(required=False)
    run_flower(runtime.settings(), port=port, address=address)


@click.command(
    context_settings=_CONTEXT,
    epilog="\b\nExamples:\n  sched metrics | grep sched_outbox\n"
    "  sched metrics --serve --port 9808",
)
@click.option("--serve", is_flag=True, help="Serve them at /metrics until stopped.")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    metavar="PORT",
    help="With --serve: port to listen on [default: SCHED_METRICS_PORT].",
)
@click.option(
    "--address",
    default="127.0.0.1",
    show_default=True,
    metavar="ADDRESS",
    help="With --serve: address to listen on; beyond 127.0.0.1 needs SCHED_METRICS_USER "
    "and SCHED_METRICS_PASSWORD (basic auth).",
)
def metrics(serve: bool, port: int | None, address: str) -> None:
    """Prometheus metrics: buckets, outbox lag and gaps, last-used backlog, the tasks'
    counters and the broker's queue lengths, in the text exposition format.

    The figures are those of `sched status`, read at every scrape. Basic auth when
    SCHED_METRICS_USER and SCHED_METRICS_PASSWORD are set. --port and --address
    without --serve are refused.
    """
    from tasks.ops import metrics as exported
    from tasks.ops.errors import scrub

    ctx = click.get_current_context()
    if not serve:
        # Silently printing once where the operator asked for a port would hide the typo.
        given = [
            f"--{name}"
            for name in ("port", "address")
            if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
        ]
        if given:
            raise click.UsageError(f"{' and '.join(given)} only apply with --serve")
    use_running_system(required=True)
    settings = runtime.settings()
    registry = exported.registry_for(exported.SystemCollector(use_cache(), use_source(), settings))
    if not serve:
        click.echo(exported.exposition(registry), nl=False)
        return
    exported.check_exposure(settings, address)
    port = port or settings.metrics_port
    try:
        server = exported.MetricsServer(
            (address, port), registry, exported.credentials(settings), scrub=scrub
        )
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {address}:{port}: {exc.strerror}") from exc
    auth = "basic auth" if exported.credentials(settings) else "no auth"
    click.echo(f"metrics at {server.url} ({auth}); Ctrl-C stops", err=True)
    with stop_on_ctrl_c(), server:
        server.serve_forever()


@click.command(context_settings=_CONTEXT)
@click.option(
    "--demo/--no-demo",
    default=None,
    help="Seed the demo data set and run the demo driver "
    "[default: only when SCHED_DATABASE_URL is unset].",
)
@click.option(
    "--flower-port",
    type=click.IntRange(1, 65535),
    default=None,
    metavar="PORT",
    help="Flower's port [default: SCHED_FLOWER_PORT if free, else any free port].",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    default=None,
    metavar="PORT",
    help="Port of the metrics [default: SCHED_METRICS_PORT if free, else any free port].",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 64),
    default=2,
    show_default=True,
    metavar="N",
    help="Worker processes.",
)
def run(
    demo: bool | None, flower_port: int | None, metrics_port: int | None, concurrency: int
) -> None:
    """Run the system here: a worker with beat, Flower, the metrics, and a live view
    (Ctrl-C or SIGTERM stops it).

    Without SCHED_DATABASE_URL it uses the SQLite file sched.sqlite3 in this directory
    and fills it with the demo data set, then changes and uses accounts the way admins
    and a gateway would, so the view shows snapshots being rebuilt. Logs go to .run/,
    with system.json, by which `sched status` and the other commands in a second
    terminal find this system.
    """
    from tasks.ops.runner import RunOptions, run_system
    from tasks.ops.system import run_dir

    settings = runtime.settings()
    use_cache()  # a malformed or unreachable Redis is reported before anything starts
    if demo is None:
        demo = "database_url" not in settings.model_fields_set
    options = RunOptions(
        demo=demo,
        flower_port=flower_port,
        metrics_port=metrics_port,
        concurrency=concurrency,
        run_dir=run_dir(settings),
    )
    run_system(settings, options)


@click.command(context_settings=_CONTEXT)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    metavar="SECONDS",
    help="How long to wait for it to have stopped everything.",
)
def stop(timeout: float) -> None:
    """Stop the system `sched run` (`make run`) runs, found by its .run/system.json as the
    other commands find it: SIGTERM to `sched run`, which stops what it started, then
    wait until it has. Works whatever started it: a terminal, `setsid -f`, a script.
    """
    from tasks.ops import system
    from tasks.ops.errors import NoSystem

    settings = runtime.settings()
    found = system.find(settings)
    if found is None:
        raise NoSystem(
            f"no running system found (no live system.json in "
            f"{system.where_to_look(settings)}): nothing to stop"
        )
    click.echo(f"stopping {found.describe()} ...", err=True)
    with suppress(ProcessLookupError):  # it ended meanwhile
        os.kill(found.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while system.alive(found.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if system.alive(found.pid):
        raise click.ClickException(
            f"sched run (pid {found.pid}) still runs {timeout:g}s after SIGTERM: see "
            f"{os.path.join(found.directory, system.RUN_DIR_NAME, 'sched-run.log')}"
        )
    click.echo(f"stopped the system of {found.directory} (pid {found.pid})")
