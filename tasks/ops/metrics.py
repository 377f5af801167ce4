"""Prometheus metrics of the system: ``sched metrics`` prints them, ``--serve`` serves them.

Every figure but the queue lengths comes from :func:`tasks.ops.status.system_status`,
the report ``sched status`` and the live view show, so the three never disagree. The
counters are the ones the tasks keep in the stats hash (:data:`tasks.stats.COUNTERS`),
each as ``sched_<name>_total``. Everything is read at scrape time: no state here.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from cache import RedisSchedulerCache
from tasks import stats
from tasks.ops.errors import one_line
from tasks.ops.status import StatusReport, StatusSource, system_status
from tasks.settings import Settings

logger = logging.getLogger(__name__)

PATH = "/metrics"
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


def queue_lengths(queues: tuple[str, ...]) -> dict[str, int]:
    """Messages waiting in each of ``queues`` on the broker (Redis or RabbitMQ).

    A passive declare asks the broker without creating anything; a queue no worker has
    declared yet holds nothing.
    """
    from tasks.celery import app

    lengths: dict[str, int] = {}
    with app.connection_for_read(connect_timeout=3) as conn:
        conn.ensure_connection(max_retries=1)
        channel = conn.channel()
        try:
            for name in queues:
                try:
                    _, count, _ = channel.queue_declare(queue=name, passive=True)
                except conn.channel_errors:
                    # RabbitMQ closes the channel of a failed passive declare.
                    count = 0
                    channel.close()
                    channel = conn.channel()
                lengths[name] = int(count)
        finally:
            channel.close()
    return lengths


def _broker_queue_lengths() -> dict[str, int]:
    from tasks.celery import QUEUES

    return queue_lengths(tuple(QUEUES))


class SystemCollector:
    """A prometheus_client collector reading the system at every scrape."""

    def __init__(
        self,
        cache: RedisSchedulerCache,
        source: StatusSource,
        settings: Settings,
        *,
        queues: Callable[[], Mapping[str, int]] | None = _broker_queue_lengths,
    ) -> None:
        self.cache = cache
        self.source = source
        self.settings = settings
        self.queues = queues

    def collect(self) -> Iterator[Metric]:
        report = system_status(self.cache, self.source, self.settings)
        yield from status_metrics(report)
        if self.queues is not None:
            yield from self._queue_metrics()

    def _queue_metrics(self) -> Iterator[Metric]:
        assert self.queues is not None
        reachable = GaugeMetricFamily(
            "sched_broker_up", "1 if the broker answered the queue-length query, else 0"
        )
        try:
            lengths = self.queues()
        except Exception as exc:  # a scrape reports the broker down, it does not fail
            logger.warning("queue lengths unavailable: %s", one_line(str(exc), 300))
            reachable.add_metric([], 0)
            yield reachable
            return
        reachable.add_metric([], 1)
        yield reachable
        gauge = GaugeMetricFamily(
            "sched_queue_length", "messages waiting in a broker queue", labels=["queue"]
        )
        for name, length in sorted(lengths.items()):
            gauge.add_metric([name], length)
        yield gauge


def status_metrics(report: StatusReport) -> Iterator[Metric]:
    """The report as metric families."""
    active = [row for row in report.buckets if row.active_version is not None]
    yield GaugeMetricFamily(
        "sched_buckets_active", "buckets with an active snapshot", value=len(active)
    )
    yield GaugeMetricFamily(
        "sched_buckets", "buckets known: registered or kept warm", value=len(report.buckets)
    )
    per_bucket = {
        "sched_bucket_age_seconds": "seconds since the active snapshot was built",
        "sched_bucket_accounts": "accounts in the active snapshot",
        "sched_bucket_schedulable_accounts": "accounts of the snapshot schedulable now",
        "sched_bucket_version": "active snapshot version",
        "sched_rebuild_duration_seconds": "duration of the rebuild that built the snapshot",
    }
    families = {
        name: GaugeMetricFamily(name, text, labels=["bucket"]) for name, text in per_bucket.items()
    }
    for row in active:
        values = {
            "sched_bucket_age_seconds": row.age_seconds,
            "sched_bucket_accounts": row.account_count,
            "sched_bucket_schedulable_accounts": row.schedulable_now,
            "sched_bucket_version": row.active_version,
            "sched_rebuild_duration_seconds": None
            if row.rebuild_ms is None
            else row.rebuild_ms / 1000,
        }
        for name, value in values.items():
            if value is not None:
                families[name].add_metric([row.bucket], float(value))
    yield from families.values()

    out = report.outbox
    yield GaugeMetricFamily(
        "sched_outbox_lag_events",
        "outbox events in the database not yet applied to the cache",
        value=out.lag or 0,
    )
    yield GaugeMetricFamily(
        "sched_outbox_gaps", "outbox ids skipped over, still awaited", value=out.gaps
    )
    yield GaugeMetricFamily(
        "sched_outbox_watermark", "last outbox id applied to the cache", value=out.watermark
    )
    yield GaugeMetricFamily(
        "sched_outbox_oldest_gap_seconds",
        "age of the oldest awaited outbox gap, 0 without gaps",
        value=out.oldest_gap_seconds or 0,
    )
    if out.rows is not None:
        yield GaugeMetricFamily(
            "sched_outbox_rows", "rows kept in the outbox table", value=out.rows
        )
        yield GaugeMetricFamily(
            "sched_outbox_oldest_row_age_seconds",
            "age of the oldest outbox row (retention deletes applied rows past it), 0 when empty",
            value=out.oldest_row_age_seconds or 0,
        )
    yield GaugeMetricFamily(
        "sched_last_used_pending",
        "last-use times in Redis not yet written to the database",
        value=report.last_used.pending_db_writes,
    )
    for name in stats.COUNTERS:
        raw = report.stats.get(name, 0)
        value = float(raw) if isinstance(raw, int | float) else 0.0
        yield CounterMetricFamily(
            f"sched_{name}", f"{name.replace('_', ' ')}, as counted by the tasks", value=value
        )


def registry_for(collector: SystemCollector) -> CollectorRegistry:
    """A registry of ``collector`` alone: no process metrics of whoever serves it."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def exposition(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


class MetricsServer(ThreadingHTTPServer):
    """``GET /metrics`` with basic auth when ``credentials`` are given."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        registry: CollectorRegistry,
        credentials: tuple[str, str] | None,
        scrub: Callable[[str], str] = lambda text: text,
    ) -> None:
        super().__init__(address, _Handler)
        self.registry = registry
        self.credentials = credentials
        self.scrub = scrub

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        shown = f"[{host!s}]" if ":" in str(host) else str(host)
        return f"http://{shown}:{port}{PATH}"

    def authorized(self, header: str | None) -> bool:
        if self.credentials is None:
            return True
        scheme, _, encoded = (header or "").partition(" ")
        if scheme != "Basic":
            return False
        try:
            given = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        user, password = self.credentials
        return hmac.compare_digest(given, f"{user}:{password}".encode())

    def serve_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="sched-metrics", daemon=True)
        thread.start()
        return thread


class _Handler(BaseHTTPRequestHandler):
    server: MetricsServer

    def do_GET(self) -> None:
        if self.path.split("?")[0] not in (PATH, "/"):
            self._reply(404, b"not found: metrics are at /metrics\n")
            return
        if not self.server.authorized(self.headers.get("Authorization")):
            self._reply(401, b"unauthorized\n", {"WWW-Authenticate": 'Basic realm="sched"'})
            return
        try:
            body = generate_latest(self.server.registry)
        except Exception as exc:  # Redis or the database down: say so, keep serving
            message = self.server.scrub(one_line(f"{type(exc).__name__}: {exc}", 300))
            self._reply(503, f"metrics unavailable: {message}\n".encode())
            return
        self._reply(200, body, {"Content-Type": CONTENT_TYPE_LATEST})

    def _reply(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in {"Content-Type": "text/plain; charset=utf-8", **(headers or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("metrics %s: " + format, self.address_string(), *args)


def credentials(settings: Settings) -> tuple[str, str] | None:
    """The basic-auth pair of the served metrics; None when neither is set.

    Checked here, where the metrics are served, not in the settings: printing them
    once (`sched metrics`) needs no credentials, and a half-set pair must not stop it.
    """
    from tasks.ops.commands import BadSetting

    user, password = settings.metrics_user, settings.metrics_password
    if bool(user) != bool(password):
        given, missing = (
            ("SCHED_METRICS_USER", "SCHED_METRICS_PASSWORD")
            if user
            else ("SCHED_METRICS_PASSWORD", "SCHED_METRICS_USER")
        )
        raise BadSetting(
            f"{given} is set without {missing}: set both for basic auth on the served "
            "metrics, or neither"
        )
    if user and password:
        return user, password
    return None


def check_exposure(settings: Settings, address: str) -> None:
    """Refuse to serve beyond this machine without credentials."""
    from tasks.ops.commands import BadSetting

    if address not in LOOPBACK and credentials(settings) is None:
        raise BadSetting(
            f"metrics on {address} need basic auth: set SCHED_METRICS_USER and "
            "SCHED_METRICS_PASSWORD, or listen on 127.0.0.1"
        )
