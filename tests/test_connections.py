"""Connection settings for the three Redis topologies, checked before anything connects."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cache.connect import parse_sentinel_url
from tasks.connections import (
    broker_ssl_options,
    broker_transport_options,
    mask_url,
    redis_client_options,
)
from tasks.settings import Settings

SENTINELS = "sentinel://:s3cret@10.0.0.1:26379;sentinel://10.0.0.2:26380/2"


def test_a_cluster_needs_a_broker_of_its_own() -> None:
    with pytest.raises(ValidationError, match="SCHED_BROKER_URL"):
        Settings(redis_cluster=True, redis_url="redis://10.0.0.1:7000")


def test_a_cluster_with_its_own_broker_is_accepted() -> None:
    settings = Settings(redis_cluster=True, broker_url="amqp://guest:guest@127.0.0.1//")
    assert settings.effective_broker_url.startswith("amqp://")


def test_a_sentinel_url_needs_the_master_name() -> None:
    with pytest.raises(ValidationError, match="SCHED_REDIS_SENTINEL_MASTER"):
        Settings(redis_url=SENTINELS)


def test_the_sentinel_url_gives_every_sentinel_and_the_masters_password_and_db() -> None:
    nodes, options = parse_sentinel_url(SENTINELS)
    assert nodes == [("10.0.0.1", 26379), ("10.0.0.2", 26380)]
    assert options == {"password": "s3cret", "db": 2}


def test_a_malformed_sentinel_part_is_named_without_its_password() -> None:
    with pytest.raises(ValueError, match="redis://") as caught:
        parse_sentinel_url("sentinel://h:1;redis://:pw@h2:2")
    assert "pw" not in str(caught.value)


def test_a_sentinel_broker_gets_the_master_name_and_the_sentinels_password() -> None:
    settings = Settings(
        redis_url=SENTINELS, redis_sentinel_master="main", redis_sentinel_password="sp"
    )
    options = broker_transport_options(settings)
    assert options["master_name"] == "main"
    assert options["sentinel_kwargs"] == {"password": "sp"}
    assert options["visibility_timeout"] == settings.visibility_timeout_seconds


def test_sentinel_tls_verifies_the_master_and_the_broker() -> None:
    settings = Settings(redis_url=SENTINELS, redis_sentinel_master="m", redis_sentinel_tls=True)
    assert redis_client_options(settings)["ssl"] is True
    assert redis_client_options(settings)["ssl_cert_reqs"] == "required"
    assert broker_ssl_options(settings) is not None


def test_every_sentinel_password_is_masked() -> None:
    masked = mask_url("sentinel://:one@h1:26379;sentinel://:two@h2:26379")
    assert "one" not in masked and "two" not in masked
    assert masked.count("***") == 2
