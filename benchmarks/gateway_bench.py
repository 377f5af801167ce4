"""The example gateway under HTTP load: picks per second and latency percentiles
measured by ``wrk``, each app served by several uvicorn worker processes.

- The near cache against the same app reading Redis on every request
  (``SCHED_NEAR_CACHE=false``), over one 1000-account bucket.
- The gateway now against the gateway before the pick API, at 1,000 and 100,000
  accounts. Now: ``pick_async`` from a plain Starlette route (the example's default),
  served by uvicorn on httptools and uvloop (installed with the ``web`` extra). Before:
  ``GATEWAY_PICK=scan`` (the whole list and two ``min()`` scans a request, from a
  FastAPI route with a response model) on h11 and asyncio's own loop, what uvicorn used
  before the ``web`` extra installed httptools and uvloop. And the scan on the new
  server stack, to show what the pick alone is worth.

Everything listens on 127.0.0.1, every wrk run is bounded in time and everything
started is stopped. wrk (``apt-get install -y wrk``) is installed from Debian's packages
when it is missing and this is root; else the suite says in one line why it skips.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import redis

from benchmarks.cache_bench import BUCKET, realistic_accounts
from benchmarks.harness import REPO, BenchServers, bench_servers, wait_until
from benchmarks.near_bench import server_cpu
from cache import RedisSchedulerCache
from tasks import list_schedulable
from tasks.source.schema import init_schema
from tests.support import free_port

WEB_PROCESSES = 2
CONNECTIONS = 32
SECONDS = 10
# Bucket sizes of the pick-against-scan runs.
PICK_SIZES = (1_000, 100_000)
# A request slower than this is a timeout to wrk (its default, 2 s, would drop the
# scan's slow requests at 100,000 accounts from its percentiles).
WRK_TIMEOUT = "10s"
PATH = f"/pick?group={BUCKET.group_id}&platform={BUCKET.platform}"


@dataclass(frozen=True)
class Load:
    picks_per_second: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    redis_cpu_us_per_pick: float
    timeouts: int = 0
    p90_ms: float = 0.0


def find_wrk() -> tuple[str | None, str]:
    """wrk's path, installed from Debian's packages if missing and root; else None and
    the reason."""
    found = shutil.which("wrk")
    if found:
        return found, ""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None, "wrk is not installed (apt-get install wrk, as root)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "wrk"]
    # Without package lists the install fails: fetch them once and try again.
    for command in (install, ["apt-get", "update"], install):
        subprocess.run(command, env=env, capture_output=True, check=False, timeout=300)
        if shutil.which("wrk"):
            break
    found = shutil.which("wrk")
    return found, "" if found else "apt-get install wrk failed"


# uvicorn's HTTP parser and event loop: its own choice (httptools and uvloop, when
# installed), or the pure-Python ones it falls back to without them.
FAST_STACK = ("--http", "auto", "--loop", "auto")
PLAIN_STACK = ("--http", "h11", "--loop", "asyncio")


@contextmanager
def gateway(
    servers: BenchServers,
    near_cache: bool,
    pick: str = "index",
    stack: tuple[str, ...] = FAST_STACK,
) -> Iterator[str]:
    """The example gateway under uvicorn with WEB_PROCESSES workers, picking the
    ``pick`` way (GATEWAY_PICK) on ``stack``; its base URL."""
    port = free_port()
    env = {**servers.env, "SCHED_NEAR_CACHE": str(near_cache).lower(), "GATEWAY_PICK": pick}
    log = servers.workdir / f"gateway-{port}.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "gateway:app",
                "--app-dir",
                str(REPO / "examples"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                str(WEB_PROCESSES),
                "--log-level",
                "warning",
                "--no-access-log",
                *stack,
            ],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"the gateway exited at start:\n{log.read_text()[-2000:]}")
            try:
                return httpx.get(f"{base}{PATH}", timeout=30).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, "the gateway to serve picks", every=0.1)
        yield base
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def parse_ms(value: str) -> float:
    """A wrk duration (``812.00us``, ``44.07ms``, ``1.20s``, ``1.02m``) in milliseconds."""
    found = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
    if found is None:
        raise ValueError(f"not a wrk duration: {value!r}")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[found.group(2)]
    return float(found.group(1)) * scale


def percentile_ms(out: str, percent: int) -> float:
    """A percentile of wrk's "Latency Distribution" (each on a line of its own: the
    "+/- Stdev" column above it also ends in a percent sign)."""
    found = re.search(rf"^\s*{percent}%\s+(\S+)\s*$", out, re.M)
    if found is None:
        raise ValueError(f"no {percent}% latency in wrk's output: {out[-500:]!r}")
    return parse_ms(found.group(1))


def load(wrk: str, base: str, client: redis.Redis, warmup_seconds: int = 2) -> Load:
    """wrk against ``base`` for SECONDS, after a warm-up that reaches every process."""
    subprocess.run(
        [wrk, "-t2", f"-c{CONNECTIONS}", f"-d{warmup_seconds}s", f"{base}{PATH}"],
        capture_output=True,
        check=True,
        timeout=60,
    )
    cpu = server_cpu(client)
    done = subprocess.run(
        [
            wrk,
            "-t2",
            f"-c{CONNECTIONS}",
            f"-d{SECONDS}s",
            "--timeout",
            WRK_TIMEOUT,
            "--latency",
            f"{base}{PATH}",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=SECONDS + 60,
    )
    used = server_cpu(client) - cpu
    out = done.stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    timeouts = re.search(r"Socket errors:.*timeout (\d+)", out)
    return Load(
        picks_per_second=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        p50_ms=percentile_ms(out, 50),
        p99_ms=percentile_ms(out, 99),
        requests=requests,
        errors=int(errors.group(1)) if errors else 0,
        redis_cpu_us_per_pick=used / max(requests, 1) * 1e6,
        timeouts=int(timeouts.group(1)) if timeouts else 0,
        p90_ms=percentile_ms(out, 90),
    )


# The ways pick_against_scan loads: (GATEWAY_PICK, uvicorn's stack, label).
WAYS = {
    "now": ("index", FAST_STACK, "now: pick API"),
    "before": ("scan", PLAIN_STACK, "before: scan"),
    "scan": ("scan", FAST_STACK, "scan, new stack"),
}


def pick_against_scan(wrk: str, servers: BenchServers, client: redis.Redis) -> None:
    """The gateway now against the gateway before the pick API, at each of PICK_SIZES."""
    cache = RedisSchedulerCache(client)
    lines = [
        f"GET {PATH}, the gateway now (pick_async, Starlette route, httptools + uvloop) "
        f"against before (GATEWAY_PICK=scan: FastAPI route, list + two min() scans, "
        f"h11 + asyncio): uvicorn --workers {WEB_PROCESSES}, wrk -t2 -c{CONNECTIONS} "
        f"-d{SECONDS}s --timeout {WRK_TIMEOUT}, near cache on, same run"
    ]
    print(lines[0], flush=True)
    for size in PICK_SIZES:
        cache.set_snapshot(BUCKET, realistic_accounts(size), cache.reserve_version(BUCKET))
        # Long enough for every worker's first read of the bucket (seconds at 100,000).
        warmup = 2 if size <= 10_000 else 8
        results: dict[str, Load] = {}
        for way in ("before", "now", "scan"):
            pick, stack, _ = WAYS[way]
            with gateway(servers, near_cache=True, pick=pick, stack=stack) as base:
                results[way] = load(wrk, base, client, warmup_seconds=warmup)
        for way in ("now", "before", "scan"):
            figures = results[way]
            lines.append(
                f"  {size:>7,} accounts  {WAYS[way][2]:<17} {figures.picks_per_second:8.0f} "
                f"picks/s   p50 {figures.p50_ms:8.2f} ms   p90 {figures.p90_ms:8.2f} ms   "
                f"p99 {figures.p99_ms:8.2f} ms   ({figures.requests} requests, "
                f"{figures.errors} not 2xx, {figures.timeouts} timed out)"
            )
        now, before, scan = results["now"], results["before"], results["scan"]
        lines.append(
            f"  {size:>7,} accounts  now / before: {against(now, before)};"
            f" now / the scan on the same stack: {against(now, scan)}"
        )
        print("\n".join(lines[-4:]), flush=True)


def against(ours: Load, baseline: Load) -> str:
    """Ours against a baseline: picks a second, p50 and p99; a baseline that completed
    no request in the run (each takes longer than wrk's timeout) has no ratio."""
    if baseline.requests - baseline.errors <= 0 or baseline.picks_per_second <= 0:
        return f"the baseline completed no pick in {SECONDS} s"
    return (
        f"{ours.picks_per_second / baseline.picks_per_second:.1f}x picks/s,"
        f" p50 {baseline.p50_ms / ours.p50_ms:.1f}x lower,"
        f" p99 {baseline.p99_ms / ours.p99_ms:.1f}x lower"
    )


def ratio(ours: float, baseline: float) -> str:
    """``ours / baseline`` as ``"3.1x"``, or n/a when the baseline is 0."""
    return f"{ours / baseline:.1f}x" if baseline > 0 else "n/a (baseline 0)"


def activate_in_turn(url: str, rounds: int, go: Any, out: Any) -> None:
    """Another process: at each word, write a version renaming account 1, and say when
    its activation began (the write's last step; what comes before is the writer's)."""
    cache = RedisSchedulerCache.from_url(url)
    activate = cache.snapshots._activation
    began: list[float] = []

    def timed(*args: Any) -> Any:
        began.append(time.time())
        return activate(*args)

    cache.snapshots._activation = timed  # type: ignore[method-assign,assignment]
    accounts = realistic_accounts(1000)
    for n in range(rounds):
        go.get(timeout=30)
        renamed = [accounts[0].model_copy(update={"name": f"round-{n}"}), *accounts[1:]]
        cache.set_snapshot(BUCKET, renamed, cache.reserve_version(BUCKET))
        out.put(began[-1])


def activation_seen(url: str, rounds: int = 100) -> list[float]:
    """Milliseconds from another process's activation of a new version to the first
    ``list_schedulable`` of this one (a request every half millisecond) that serves it."""
    group, platform = BUCKET.group_id, BUCKET.platform
    list_schedulable(group, platform)
    time.sleep(0.3)  # subscribed
    context = multiprocessing.get_context("spawn")
    go, out = context.Queue(), context.Queue()
    writer = context.Process(target=activate_in_turn, args=(url, rounds, go, out))
    writer.start()
    seen = []
    try:
        for n in range(rounds):
            go.put(n)
            began = out.get(timeout=30)
            while list_schedulable(group, platform)[0].name != f"round-{n}":
                time.sleep(0.0005)
            seen.append((time.time() - began) * 1000)
    finally:
        writer.join(timeout=30)
        if writer.is_alive():
            writer.kill()
    return sorted(seen)


def main() -> None:
    wrk, reason = find_wrk()
    if wrk is None:
        print(f"skipped: {reason}")
        return
    with bench_servers("gateway") as servers:
        init_schema(servers.database_url).dispose()
        client = redis.Redis.from_url(servers.redis_url)
        cache = RedisSchedulerCache(client)
        cache.set_snapshot(BUCKET, realistic_accounts(1000), cache.reserve_version(BUCKET))
        results: dict[bool, Load] = {}
        for near_cache in (False, True):
            with gateway(servers, near_cache) as base:
                results[near_cache] = load(wrk, base, client)
        near_against_redis(results[True], results[False])
        seen = activation_seen(servers.redis_url)
        p99 = seen[min(len(seen) - 1, int(len(seen) * 0.99))]
        print(
            f"another process's new version served by list_schedulable: median "
            f"{statistics.median(seen):.1f} ms, p99 {p99:.1f} ms ({len(seen)} versions; "
            f"target p99 <= 50 ms: {'met' if p99 <= 50 else 'MISSED'})",
            flush=True,
        )
        pick_against_scan(wrk, servers, client)
        client.close()
    print("  target: at 1,000 accounts the gateway now serves >= 3x before's picks/s", flush=True)


def near_against_redis(near: Load, plain: Load) -> None:
    print(
        f"GET {PATH} on a 1000-account bucket: uvicorn --workers {WEB_PROCESSES}, "
        f"wrk -t2 -c{CONNECTIONS} -d{SECONDS}s, all on this machine"
    )
    for name, figures in (("near cache", near), ("Redis every request", plain)):
        print(
            f"  {name:<22} {figures.picks_per_second:9.0f} picks/s   "
            f"p50 {figures.p50_ms:7.2f} ms   p99 {figures.p99_ms:7.2f} ms   "
            f"Redis CPU {figures.redis_cpu_us_per_pick:7.1f} µs/pick   "
            f"({figures.requests} requests, {figures.errors} not 2xx)"
        )
    print(
        f"  near / every request: {ratio(near.picks_per_second, plain.picks_per_second)} "
        f"picks/s, p99 {ratio(plain.p99_ms, near.p99_ms)} lower, Redis CPU per pick "
        f"{plain.redis_cpu_us_per_pick / max(near.redis_cpu_us_per_pick, 0.001):.0f}x lower",
        flush=True,
    )
