"""What one account's change costs Redis, against a full rebuild of its bucket.

For 1,000, 10,000 and 100,000 accounts in one bucket (group 0, openai; a private
redis-server, a SQLite source): the server's CPU (INFO ``used_cpu_user +
used_cpu_sys``, before and after) and the longest single command (SLOWLOG, threshold 0)
of a full rebuild of the bucket (reserve, read the source, write; the accounts and the
index already cached, as for the periodic refresh), and of each kind of change made in
the source and applied by one outbox poll, per change:

- payload: a rate limit noted on an account in the middle of the order (the patch);
- insert: a new account whose place is near the end (LINSERT walks ~90% of the list);
- move: an account near the end changing priority (LREM and LINSERT, ~90% each);
- removal: an account joining a group, which takes it out of group 0 (the patch, '-');
- deletion: an account deleted (the patch, '-').

A change is the whole poll: reading the outbox position, the account's payload, the
scripts for both buckets the account is in (single and forced, both built), moving the
watermark, the stats. Two ratios: to one bucket's rebuild (conservative: the change did
the work in two buckets), and to the rebuilds of both, which is what a change cost before
(a rebuild of every bucket the account was or is in).

    python -m benchmarks.change_cost [--sizes 1000,10000,100000] [--repeat 20]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from benchmarks.harness import bench_servers
from cache import RedisSchedulerCache, SchedulerBucket
from tasks.settings import Settings
from tasks.source import SqlSource, SqlWriter
from tasks.source.schema import accounts, init_schema
from tasks.worker.outbox import OutboxPoller

SIZES = (1_000, 10_000, 100_000)
REPEAT = 20
BUCKETS = (SchedulerBucket.parse("0:openai:single"), SchedulerBucket.parse("0:openai:forced"))
# Priorities 0..9, ten accounts of each id range per level: the order is (priority, id).
LEVELS = 10
NOW = datetime.now(UTC)


class Server:
    """The private server's CPU and longest command between two calls."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        client.config_set("slowlog-max-len", 1_000_000)
        client.config_set("slowlog-log-slower-than", 0)

    def cpu(self) -> float:
        info: dict[str, Any] = self.client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def measure(
        self, action: Callable[[], object], times: int = 1, warmup: int = 0
    ) -> tuple[float, int, str]:
        """(CPU ms per call, longest command in µs, its name) of ``action`` ``times``
        times, after ``warmup`` calls not counted (a script's first call loads it)."""
        for _ in range(warmup):
            action()
        self.client.slowlog_reset()
        before = self.cpu()
        for _ in range(times):
            action()
        spent = (self.cpu() - before) * 1000 / times
        entries = [e for e in self.client.slowlog_get(1_000_000) if _not_ours(e)]
        longest = max(entries, key=lambda e: e["duration"], default=None)
        if longest is None:
            return spent, 0, "-"
        return spent, int(longest["duration"]), _name(longest["command"])


def _not_ours(entry: dict[str, Any]) -> bool:
    command = entry["command"]
    text = command.decode(errors="replace") if isinstance(command, bytes) else str(command)
    return not text.upper().startswith(("SLOWLOG", "INFO", "CONFIG"))


def _name(command: bytes | str) -> str:
    text = command.decode(errors="replace") if isinstance(command, bytes) else str(command)
    return text.split(" ")[0].upper()


def seed(source: SqlSource, count: int) -> None:
    """``count`` openai accounts in no group, priority by id range (LEVELS levels)."""
    per_level = count // LEVELS
    rows = [
        {
            "id": i,
            "name": f"openai-{i:06d}",
            "platform": "openai",
            "type": "apikey",
            "priority": min((i - 1) // per_level, LEVELS - 1),
            "credentials": {"base_url": "https://upstream.example", "api_key": "secret"},
            "extra": {"max_sessions": 8},
        }
        for i in range(1, count + 1)
    ]
    with source.engine.begin() as conn:
        for first in range(0, count, 5_000):
            conn.execute(accounts.insert(), rows[first : first + 5_000])


def rebuild(cache: RedisSchedulerCache, source: SqlSource, bucket: SchedulerBucket) -> None:
    version = cache.reserve_version(bucket)
    cache.set_snapshot(bucket, source.accounts_for_bucket(bucket, datetime.now(UTC)), version)


def bench_size(count: int, repeat: int, lines: list[str]) -> None:
    with bench_servers("change") as servers:
        client = redis.Redis.from_url(servers.redis_url)
        init_schema(servers.database_url).dispose()
        source = SqlSource(servers.database_url)
        db = SqlWriter(source)
        cache = RedisSchedulerCache(client)
        seed(source, count)
        hidden = db.create_group("hidden", "openai", status="disabled")
        cache.reestablish(None, source.max_outbox_id())
        for bucket in BUCKETS:
            rebuild(cache, source, bucket)
        requested: list[SchedulerBucket] = []

        def request(bucket: SchedulerBucket) -> bool:
            requested.append(bucket)
            return True

        poller = OutboxPoller(
            cache,
            source,
            config=Settings(redis_url=servers.redis_url, database_url=servers.database_url),
            request_rebuild=request,
            refresh_all=lambda: None,
        )
        server = Server(client)
        version = cache.bucket_info(BUCKETS[0]).active_version
        per_level = count // LEVELS

        started = time.perf_counter()
        full = server.measure(lambda: rebuild(cache, source, BUCKETS[0]))
        rebuild_wall = time.perf_counter() - started
        version = cache.bucket_info(BUCKETS[0]).active_version
        idle = server.measure(poller.poll_batch, repeat)

        picks = iter(range(count // 2, count))  # 3 x (repeat + 1) of them
        moving = count - per_level // 2  # in the last level, mid-way

        def payload() -> None:
            db.update_account(next(picks), rate_limit_reset_at=NOW + timedelta(minutes=5))
            poller.poll_batch()

        def insert() -> None:
            db.create_account(name="new", platform="openai", type="apikey", priority=LEVELS - 2)
            poller.poll_batch()

        flips = iter(range(repeat * 2 + 2))

        def move() -> None:
            db.update_account(moving, priority=LEVELS - 2 + next(flips) % 2)
            poller.poll_batch()

        def removal() -> None:
            db.set_account_groups(next(picks), {hidden.id: 1})
            poller.poll_batch()

        def deletion() -> None:
            db.delete_account(next(picks))
            poller.poll_batch()

        results = {
            name: server.measure(action, repeat, warmup=1)
            for name, action in (
                ("payload change", payload),
                ("insert", insert),
                ("move", move),
                ("removal (joins a group)", removal),
                ("deletion", deletion),
            )
        }
        assert cache.bucket_info(BUCKETS[0]).active_version == version, "a rebuild ran"
        served = [a.id for a in cache.get_snapshot(BUCKETS[0]) or [] if a.is_candidate(NOW)]
        truth = [a.id for a in source.accounts_for_bucket(BUCKETS[0], NOW)]
        cpu, longest, command = full
        lines.append(
            f"{count:,} accounts in {BUCKETS[0]} (Redis server CPU per operation; longest "
            f"single command; ratio to the rebuild; {repeat} changes of each kind)"
        )
        lines.append(
            f"  {'full rebuild (baseline)':<26} {cpu:9.3f} ms CPU   longest {longest:6d} µs"
            f" ({command})   {rebuild_wall:5.1f} s wall"
        )
        cpu_idle, longest_idle, _ = idle
        lines.append(
            f"  {'empty poll (overhead)':<26} {cpu_idle:9.3f} ms CPU   longest {longest_idle:6d} µs"
        )
        # The change reaches both buckets; what it replaces is a rebuild of each.
        replaced = cpu * len(BUCKETS)
        for name, (spent, longest, command) in results.items():
            ratio = spent / cpu if cpu else float("inf")
            fair = spent / replaced if replaced else float("inf")
            lines.append(
                f"  {name:<26} {spent:9.3f} ms CPU   longest {longest:6d} µs ({command:<7})"
                f"   1/{1 / ratio if ratio else float('inf'):,.0f} of one rebuild,"
                f" 1/{1 / fair if fair else float('inf'):,.0f} of the {len(BUCKETS)} it replaces"
            )
        lines.append(
            f"  rebuilds asked for: {len(requested)}; order served == source: {served == truth}"
        )
        client.close()
        source.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.change_cost")
    parser.add_argument("--sizes", default=",".join(str(s) for s in SIZES))
    parser.add_argument("--repeat", type=int, default=REPEAT)
    args = parser.parse_args(argv or [])
    for count in (int(s) for s in args.sizes.split(",")):
        lines: list[str] = []
        bench_size(count, args.repeat, lines)
        print("\n".join(lines), flush=True)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
