"""Process-wide objects, built on first use: the settings, the cache and the source.

Web apps and workers share them per process. A forked worker child builds its own
(connections must not cross a fork); tests and tools point everything elsewhere with
:func:`reset`.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable
from typing import Any, cast

from celery.signals import worker_process_init

from cache import NearCache, RedisSchedulerCache, SchedulerBucket
from tasks import buckets
from tasks.celery import app, configure
from tasks.connections import cache_options, mask_url
from tasks.settings import Settings, get_settings
from tasks.source.protocol import Source

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_settings: Settings | None = None
_cache: RedisSchedulerCache | None = None
_web_cache: RedisSchedulerCache | None = None
_source: Source | None = None
_near: NearCache | None = None


def settings() -> Settings:
    """The settings in force: those given to :func:`reset`, else the environment's."""
    return _settings or get_settings()


def get_cache() -> RedisSchedulerCache:
    """The process's cache client, connected on first use."""
    global _cache
    if _cache is None:
        with _lock:
            if _cache is None:
                s = settings()
                _cache = RedisSchedulerCache.from_url(
                    s.redis_url,
                    snapshot_grace_seconds=s.snapshot_grace_seconds,
                    **cache_options(s),
                )
                logger.debug("cache at %s", mask_url(s.redis_url))
    return _cache


def get_web_cache() -> RedisSchedulerCache:
    """The cache client of the web calls (reads, last use, rebuild requests): as the web
    role (``SCHED_WEB_REDIS_URL``) when one is set, else :func:`get_cache` itself."""
    global _web_cache
    s = settings()
    if s.effective_web_redis_url == s.redis_url:
        return get_cache()
    if _web_cache is None:
        with _lock:
            if _web_cache is None:
                _web_cache = RedisSchedulerCache.from_url(
                    s.effective_web_redis_url,
                    snapshot_grace_seconds=s.snapshot_grace_seconds,
                    **cache_options(s),
                )
                logger.debug("web cache at %s", mask_url(s.effective_web_redis_url))
    return _web_cache


def get_near_cache() -> NearCache | None:
    """The process's near cache over :func:`get_cache`, built on first use; None when
    ``SCHED_NEAR_CACHE`` is false. It starts its background thread on its first read
    and again in a forked child, which starts with nothing held."""
    global _near
    if _near is None:
        s = settings()
        if not s.near_cache:
            return None
        cache = get_web_cache()
        with _lock:
            if _near is None:
                _near = NearCache(
                    cache,
                    max_buckets=s.near_cache_buckets,
                    max_accounts=s.near_cache_accounts,
                    max_decoded=s.near_cache_decoded,
                )
    return _near


def get_source() -> Source:
    """The process's source database, built on first use."""
    global _source
    if _source is None:
        with _lock:
            if _source is None:
                _source = build_source(settings())
    return _source


def build_source(s: Settings) -> Source:
    """A new source for ``s``: the process's own is :func:`get_source`; a thread that
    must not share it (the worker's outbox watcher) builds its own."""
    if s.source_factory:
        return cast(Source, load_factory(s.source_factory)(s))
    from tasks.source.reader import SqlSource

    logger.debug("source at %s", mask_url(s.database_url))
    return SqlSource.from_settings(s)


def load_factory(path: str) -> Callable[[Settings], Any]:
    """The callable named ``"package.module:name"``."""
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"invalid source_factory {path!r}: expected 'package.module:callable'")
    factory = getattr(importlib.import_module(module_name), attribute, None)
    if not callable(factory):
        raise ValueError(f"invalid source_factory {path!r}: {attribute!r} is not callable")
    return cast(Callable[[Settings], Any], factory)


def reset(new_settings: Settings | None = None) -> None:
    """Drop the cache (and its near cache), the source and the broker connections of
    this process.

    With ``new_settings`` they are rebuilt from those from now on; without, from the
    environment, read again.
    """
    global _settings
    get_settings.cache_clear()
    _settings = new_settings
    _forget_connections()
    # Sends from now on go through the broker of the settings in force: the app read
    # its configuration once, at start.
    configure(app, settings())


def _forget_connections() -> None:
    global _cache, _web_cache, _source, _near
    with _lock:
        near, _near = _near, None
        cache, _cache = _cache, None
        web_cache, _web_cache = _web_cache, None
        source, _source = _source, None
    if near is not None:
        near.close()
    for held in (cache, web_cache):
        if held is not None:
            held.client.close()
    close = getattr(source, "close", None)
    if callable(close):
        close()


@worker_process_init.connect  # type: ignore[untyped-decorator]
def _fresh_in_worker_child(**_: Any) -> None:
    """A pool child must not use connections it inherited from its parent."""
    global _cache, _web_cache, _source, _near
    _cache = None
    _web_cache = None
    _source = None
    _near = None


def default_buckets(source: Source | None = None) -> list[SchedulerBucket]:
    """The buckets kept warm (:func:`tasks.buckets.warm_buckets`), from the source's
    active groups."""
    groups = (source or get_source()).active_groups()
    return buckets.warm_buckets(((group.id, group.platform) for group in groups), settings())
