"""Connection URLs and their options: passwords masked for display, and the TLS options a
``rediss://`` or ``amqps://`` URL needs.

The server's certificate is always verified: against ``tls_ca_file`` when set, else
against the system CAs. A client certificate is sent only when one is configured.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from cache.connect import is_sentinel_url
from tasks.settings import Settings

MASK = "***"
# Query parameters some clients accept in place of the userinfo password.
_SECRET_PARAMS = frozenset({"password", "passwd", "pass"})


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, for messages, logs and views.

    Works for ``redis://``, ``rediss://``, ``amqp://``, SQLAlchemy URLs such as
    ``postgresql+psycopg://`` and leaves ``sqlite:///path`` as it is. A string that
    does not parse as a URL is masked whole rather than risk printing a secret. Sentinel
    lists (``sentinel://...;sentinel://...``) are masked part by part.
    """
    if ";" in url and is_sentinel_url(url):
        return ";".join(mask_url(part) for part in url.split(";"))
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    masked = url
    if "@" in parts.netloc:
        userinfo, _, hostinfo = parts.netloc.rpartition("@")
        user, has_password, _ = userinfo.partition(":")
        if has_password:
            # Rebuilt by replacement: urlunsplit would drop the '//' of 'sqlite:///x'.
            masked = masked.replace(parts.netloc, f"{user}:{MASK}@{hostinfo}", 1)
    if parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        if any(key.lower() in _SECRET_PARAMS for key, _ in pairs):
            query = urlencode(
                [(k, MASK if k.lower() in _SECRET_PARAMS else v) for k, v in pairs], safe="*"
            )
            masked = masked.replace(f"?{parts.query}", f"?{query}", 1)
    return masked


def _scheme(url: str) -> str:
    return urlsplit(url).scheme.lower()


def redis_client_options(settings: Settings) -> dict[str, Any]:
    """Client options for the cache's Redis (``cache.connect``); empty unless TLS."""
    if is_sentinel_url(settings.redis_url):
        if not settings.redis_sentinel_tls:
            return {}
        options: dict[str, Any] = {"ssl": True, "ssl_cert_reqs": "required"}
    elif _scheme(settings.redis_url) == "rediss":
        options = {"ssl_cert_reqs": "required"}
    else:
        return {}
    if settings.tls_ca_file:
        options["ssl_ca_certs"] = settings.tls_ca_file
    if settings.tls_cert_file:
        options["ssl_certfile"] = settings.tls_cert_file
    if settings.tls_key_file:
        options["ssl_keyfile"] = settings.tls_key_file
    return options


def cache_options(settings: Settings) -> dict[str, Any]:
    """What the cache's ``from_url`` (sync and asyncio alike) takes from the settings
    besides the URL: its topology, TLS files, key prefix and allowed credentials."""
    return {
        "client_options": redis_client_options(settings),
        "cluster": settings.redis_cluster,
        "sentinel_master": settings.redis_sentinel_master,
        "sentinel_password": settings.redis_sentinel_password,
        "prefix": settings.key_prefix,
        "cached_credentials": settings.cached_credentials,
    }


def broker_ssl_options(settings: Settings) -> dict[str, Any] | None:
    """Celery's ``broker_use_ssl`` for the broker URL in force; None for a plain one.

    kombu either refuses a ``rediss://`` URL without ``ssl_cert_reqs`` or, in newer
    releases, falls back to ``CERT_NONE`` with only a log line: an unverified server
    that would see the broker password. The two transports name the same options
    differently: redis-py takes ``ssl_*``, py-amqp the ``ssl`` module's own names.
    """
    url = settings.effective_broker_url
    scheme = _scheme(url)
    files = (settings.tls_ca_file, settings.tls_cert_file, settings.tls_key_file)
    if scheme == "rediss" or (is_sentinel_url(url) and settings.redis_sentinel_tls):
        names = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
        options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    elif scheme == "amqps":
        names = ("ca_certs", "certfile", "keyfile")
        # server_hostname None: kombu fills in the URL's host, so py-amqp checks that
        # the certificate names it; without the key it checks no name at all.
        options = {"cert_reqs": ssl.CERT_REQUIRED, "server_hostname": None}
    else:
        return None
    options.update({name: path for name, path in zip(names, files, strict=True) if path})
    return options


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    """Celery's ``broker_transport_options``: the visibility timeout, and for a
    ``sentinel://`` broker the master's name and the sentinels' password."""
    options: dict[str, Any] = {"visibility_timeout": settings.visibility_timeout_seconds}
    if is_sentinel_url(settings.effective_broker_url):
        options["master_name"] = settings.redis_sentinel_master
        if settings.redis_sentinel_password:
            options["sentinel_kwargs"] = {"password": settings.redis_sentinel_password}
    return options


def as_operator(settings: Settings) -> Settings:
    """The settings a ``sched`` command runs with: every Redis call (and a broker that
    is the cache's Redis) as the operator role, ``SCHED_OPS_REDIS_URL``, when one is set.
    Unset, ``settings`` themselves."""
    ops = settings.ops_redis_url
    if not ops or ops == settings.redis_url:
        return settings
    return settings.model_copy(update={"redis_url": ops, "web_redis_url": ops})
