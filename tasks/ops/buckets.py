"""``sched buckets``: the bucket registry, by hand.

The refresh retires a bucket whose group is gone or inactive, at its next run (every
``SCHED_REFRESH_INTERVAL_SECONDS``); ``sched buckets retire`` does it now, for a bucket
an operator knows should not be served (made up by a caller, say).
"""

from __future__ import annotations

import click

from cache import SchedulerBucket
from tasks.ops.errors import NoSnapshot
from tasks.ops.reach import use_cache, use_running_system, use_source


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def buckets() -> None:
    """The registered buckets: those the refresh keeps rebuilding."""


@buckets.command("retire", epilog="\b\nExamples:\n  sched buckets retire 123456789:gemini:mixed")
@click.argument("bucket", nargs=-1, required=True)
def retire(bucket: tuple[str, ...]) -> None:
    """Stop serving and refreshing each BUCKET ('<group_id>:<platform>:<mode>').

    Readers miss from now on; the last snapshot expires after the grace period, as a
    replaced one does. A bucket of a group the source still knows is built again by
    its next read or refresh: deactivate the group to keep it away. Exit status 3 when
    a bucket was neither registered nor active.
    """
    from tasks.runtime import default_buckets

    parsed = [SchedulerBucket.parse(raw) for raw in bucket]  # all checked before any work
    use_running_system(required=True)
    cache = use_cache()
    unknown = [b for b in parsed if not cache.retire_bucket(b)]
    retired = [b for b in parsed if b not in unknown]
    if retired:
        warm = set(default_buckets(use_source()))
        for done in retired:
            again = " (a default bucket: the next refresh builds it again)" if done in warm else ""
            click.echo(f"{done}: retired{again}")
    if unknown:
        raise NoSnapshot(
            f"not registered nor active, nothing to retire: {', '.join(map(str, unknown))}"
        )
