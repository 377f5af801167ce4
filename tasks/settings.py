"""The one settings object: every ``SCHED_*`` environment variable, read at the edge."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Self

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from cache.codec import DEFAULT_CACHED_CREDENTIALS
from cache.connect import is_sentinel_url
from cache.keys import NEAR_ACCOUNTS_MAX, NEAR_BUCKETS_MAX, NEAR_DECODED_MAX


def _split(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


CsvList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    """Configuration of the cache, the workers, beat and the tools around them."""

    model_config = SettingsConfigDict(env_prefix="SCHED_", extra="ignore")

    # -- where things are ------------------------------------------------------------
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="one server, a Cluster node (redis_cluster) or sentinel://h:26379;sentinel://...",
    )
    broker_url: str | None = Field(default=None, description="defaults to redis_url")
    # Least privilege: each kind of process may talk to Redis as its own ACL user
    # (docs/security.md). redis_url is the workers' (and beat's); unset, the others
    # use it too. Any of them may carry user:password, masked wherever shown.
    web_redis_url: str | None = Field(
        default=None, description="the web processes' Redis (ACL role 'web'); defaults to redis_url"
    )
    web_broker_url: str | None = Field(
        default=None,
        description="the broker web processes send rebuilds through; defaults to broker_url, "
        "or to web_redis_url when the broker is the cache's Redis",
    )
    ops_redis_url: str | None = Field(
        default=None,
        description="the sched command's Redis (ACL role 'ops'), default redis_url",
    )
    redis_cluster: bool = Field(
        default=False, description="redis_url names a seed node of a Redis Cluster"
    )
    redis_sentinel_master: str | None = Field(
        default=None, description="the master's name, with a sentinel:// redis_url"
    )
    redis_sentinel_password: str | None = Field(
        default=None, description="the sentinels' own password, if they require one"
    )
    redis_sentinel_tls: bool = Field(
        default=False, description="TLS to the sentinels and the master they name"
    )
    database_url: str = "sqlite:///sched.sqlite3"
    tls_ca_file: str | None = Field(
        default=None,
        description="CA bundle that verifies rediss:// and amqps:// servers; unset: system CAs",
    )
    tls_cert_file: str | None = Field(
        default=None, description="client certificate, for servers that require one"
    )
    tls_key_file: str | None = Field(
        default=None, description="private key of tls_cert_file, unless that file holds it"
    )

    # -- the cache -------------------------------------------------------------------
    key_prefix: str = "sched"
    snapshot_grace_seconds: int = Field(default=60, ge=1)
    cached_credentials: CsvList = Field(default_factory=lambda: sorted(DEFAULT_CACHED_CREDENTIALS))

    # Web processes keep the buckets they read in memory while Redis confirms them
    # (pushes on every change, a check every half second); false reads Redis on every
    # list_schedulable. The bounds, least recently read buckets dropped first: buckets
    # held, accounts held over all of them (about 800 bytes each), and accounts kept
    # decoded (about 3 KB each; the other buckets build each account as it is read).
    near_cache: bool = True
    near_cache_buckets: int = Field(default=NEAR_BUCKETS_MAX, ge=1)
    near_cache_accounts: int = Field(default=NEAR_ACCOUNTS_MAX, ge=1)
    near_cache_decoded: int = Field(default=NEAR_DECODED_MAX, ge=0)

    # -- rebuilds --------------------------------------------------------------------
    # The longest a rebuild holds its bucket's lock (renewed while it runs); a holder
    # that died (a killed worker, a failover) frees the bucket within a 3 s lease.
    lock_ttl_seconds: int = Field(default=30, ge=2)
    rebuild_time_limit_seconds: int = Field(default=20, ge=1)
    refresh_interval_seconds: float = Field(default=300.0, gt=0)
    # A bucket's next rebuild starts at least this long after its last one was written;
    # the first after a quiet spell starts at once. Requests meanwhile coalesce into
    # that next rebuild, so a burst costs one or two rebuilds, not one per request.
    rebuild_min_interval_seconds: float = Field(default=0.25, ge=0)
    platforms: CsvList = Field(
        default_factory=lambda: ["anthropic", "openai", "gemini", "antigravity"]
    )
    mixed_platforms: CsvList = Field(default_factory=lambda: ["anthropic", "gemini"])
    mixed_donor_platform: str = "antigravity"
    # Where bucket accounts are read from: "module:callable" taking the Settings and
    # returning a Source; unset means the SQL source at database_url.
    source_factory: str | None = None

    # -- retries and redelivery ------------------------------------------------------
    # A task whose Redis or database is unavailable retries with exponential backoff
    # (1 s, 2 s, 4 s ... capped, jittered); after the last retry it fails and logs, and
    # the next request or refresh of its bucket tries again.
    task_max_retries: int = Field(default=10, ge=0)
    retry_backoff_max_seconds: int = Field(default=60, ge=1)
    # Redis broker only: a message not acknowledged this long is delivered again. With
    # late acks a message stays unacknowledged while it waits for a retry countdown and
    # while it runs, so this must exceed both (checked below).
    visibility_timeout_seconds: int = Field(default=300, ge=1)

    # -- outbox ----------------------------------------------------------------------
    outbox_interval_seconds: float = Field(default=1.0, gt=0)
    outbox_batch_size: int = Field(default=200, ge=1)
    outbox_gap_timeout_seconds: float = Field(default=60.0, gt=0)
    # Applied outbox rows older than this are deleted (tasks.prune_outbox); 0 keeps all.
    outbox_retention_seconds: float = Field(default=86_400.0, ge=0)
    # Wake-up on commit. PostgreSQL: the outbox trigger NOTIFYs this channel and a
    # listener in each worker sends a poll at once. SQLite, which has no notifications:
    # a watcher in each worker reads the outbox's highest id every outbox_watch_seconds
    # and sends a poll when it moved. Polls then run from beat only every
    # outbox_backstop_seconds, the bound on a change whose wake-up was lost; while a
    # listener is not connected (or a watcher cannot read) it polls every
    # outbox_interval_seconds itself. Off: beat polls every outbox_interval_seconds.
    outbox_wakeup: bool = True
    outbox_notify_channel: str = Field(default="sched_outbox", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    outbox_backstop_seconds: float = Field(default=10.0, gt=0)
    # Wake-ups within this long of a sent poll coalesce into one more poll at its end.
    outbox_wakeup_window_seconds: float = Field(default=0.1, gt=0)
    # SQLite: a read of the local file, a few microseconds; a change waits half of it on
    # average before its poll is sent. 0: no watcher (beat polls every
    # outbox_interval_seconds, as with the wake-ups off).
    outbox_watch_seconds: float = Field(default=0.2, ge=0)

    # -- last used -------------------------------------------------------------------
    last_used_cache_flush_seconds: float = Field(default=0.5, gt=0)
    last_used_db_flush_seconds: float = Field(default=10.0, gt=0)

    # -- fallback reads on a miss ----------------------------------------------------
    fallback_enabled: bool = True
    fallback_per_second: float = Field(default=5.0, gt=0)
    # False under a web role that may not write snapshots: a miss then answers from the
    # source without writing, and the rebuild it requests writes the snapshot.
    fallback_writes: bool = True
    # A miss on a group the source does not know answers empty and registers nothing;
    # each web process remembers such ids this long, at most this many of them.
    unknown_group_ttl_seconds: float = Field(default=30.0, gt=0)
    unknown_groups_max: int = Field(default=100_000, ge=1)

    # -- operations ------------------------------------------------------------------
    flower_user: str = "admin"
    flower_password: str = "change-me"
    flower_port: int = 5555
    # Our own Prometheus exposition (`sched metrics --serve`). Basic auth when both are
    # set (serving checks they come together); without them it only listens on a loopback
    # address.
    metrics_user: str | None = None
    metrics_password: str | None = None
    metrics_port: int = Field(default=9808, ge=1, le=65535)
    # Where `sched run` keeps its logs and system.json, the file by which the other
    # commands find the running system; unset: .run in the directory it starts in (and
    # the commands look in the current directory, its parents and the checkout).
    run_dir: str | None = None

    _split_lists = field_validator(
        "cached_credentials", "platforms", "mixed_platforms", mode="before"
    )(_split)

    @field_validator(
        "tls_ca_file",
        "tls_cert_file",
        "tls_key_file",
        "redis_sentinel_master",
        "redis_sentinel_password",
        "web_redis_url",
        "web_broker_url",
        "ops_redis_url",
        "metrics_user",
        "metrics_password",
        "run_dir",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # Compose files and shells pass "VAR=" for a variable they leave unset.
        return None if value == "" else value

    @field_validator("tls_ca_file", "tls_cert_file", "tls_key_file")
    @classmethod
    def _file_exists(cls, value: str | None, info: ValidationInfo) -> str | None:
        # Checked at start: otherwise the first connection fails, deep in a TLS
        # handshake, with a message that names neither the file nor the setting.
        if value is not None and not Path(value).is_file():
            raise ValueError(f"{info.field_name}: no such file {value!r}")
        return value

    @model_validator(mode="after")
    def _key_goes_with_a_certificate(self) -> Self:
        if self.tls_key_file and not self.tls_cert_file:
            raise ValueError(
                "SCHED_TLS_KEY_FILE is set without SCHED_TLS_CERT_FILE, the certificate it "
                "belongs to"
            )
        return self

    @model_validator(mode="after")
    def _a_topology_the_clients_support(self) -> Self:
        sentinel = is_sentinel_url(self.redis_url)
        if self.redis_cluster and sentinel:
            raise ValueError(
                "SCHED_REDIS_CLUSTER=true needs a cluster node's URL in SCHED_REDIS_URL, "
                "not sentinel://"
            )
        if self.redis_cluster and not self.broker_url:
            # Celery's Redis transport has no cluster support: its queues would land on
            # whichever node the URL names and fail on MOVED.
            raise ValueError(
                "SCHED_REDIS_CLUSTER=true needs its own SCHED_BROKER_URL: Celery's "
                "Redis transport cannot use a Redis Cluster (use RabbitMQ, or a plain Redis)"
            )
        if sentinel and not self.redis_sentinel_master:
            raise ValueError("a sentinel:// SCHED_REDIS_URL needs SCHED_REDIS_SENTINEL_MASTER")
        if self.broker_url and is_sentinel_url(self.broker_url) and not self.redis_sentinel_master:
            raise ValueError("a sentinel:// SCHED_BROKER_URL needs SCHED_REDIS_SENTINEL_MASTER")
        return self

    @model_validator(mode="after")
    def _time_limits_fit_the_lock(self) -> Self:
        if self.rebuild_time_limit_seconds >= self.lock_ttl_seconds:
            raise ValueError(
                f"SCHED_REBUILD_TIME_LIMIT_SECONDS ({self.rebuild_time_limit_seconds}) must be "
                f"below SCHED_LOCK_TTL_SECONDS ({self.lock_ttl_seconds}) so a live rebuild keeps "
                "its lock"
            )
        return self

    @model_validator(mode="after")
    def _redelivery_after_the_longest_wait(self) -> Self:
        longest = self.rebuild_time_limit_seconds + self.retry_backoff_max_seconds
        if self.visibility_timeout_seconds <= longest:
            raise ValueError(
                f"SCHED_VISIBILITY_TIMEOUT_SECONDS ({self.visibility_timeout_seconds}) must exceed "
                "SCHED_REBUILD_TIME_LIMIT_SECONDS + SCHED_RETRY_BACKOFF_MAX_SECONDS "
                f"({longest}), or a "
                "task that is still waiting or running would be delivered a second time"
            )
        return self

    @property
    def wakes_on_commit(self) -> bool:
        """Whether commits wake the pollers (PostgreSQL's NOTIFY), so beat only backs up."""
        return self.outbox_wakeup and self.database_url.startswith("postgresql")

    @property
    def watches_outbox(self) -> bool:
        """Whether a watcher in each worker reads the (SQLite) outbox's end for changes."""
        return (
            self.outbox_wakeup
            and self.outbox_watch_seconds > 0
            and self.database_url.startswith("sqlite")
        )

    @property
    def outbox_poll_seconds(self) -> float:
        """Seconds between two beat-driven outbox polls."""
        woken = self.wakes_on_commit or self.watches_outbox
        return self.outbox_backstop_seconds if woken else self.outbox_interval_seconds

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def effective_web_redis_url(self) -> str:
        return self.web_redis_url or self.redis_url

    @property
    def effective_web_broker_url(self) -> str:
        """A broker of its own, else the shared broker, else (the broker being the
        cache's Redis) the web role's Redis URL: a web process never holds the
        workers' password."""
        return self.web_broker_url or self.broker_url or self.effective_web_redis_url

    @property
    def effective_ops_redis_url(self) -> str:
        return self.ops_redis_url or self.redis_url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read from the environment once."""
    return Settings()
