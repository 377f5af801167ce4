"""The example gateway's health and admin endpoints, in process against real servers:
health says 503 in one JSON line when Redis is down; admin needs its token."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Iterator
from types import ModuleType

import pytest
from fastapi.testclient import TestClient

from tasks import runtime
from tasks.settings import Settings
from tasks.source import SqlWriter
from tests.processes import REPO, settings_from_env
from tests.support import free_port

TOKEN = "s3cret-admin-token"


@pytest.fixture
def gateway() -> Iterator[ModuleType]:
    sys.path.insert(0, str(REPO / "examples"))
    try:
        yield importlib.import_module("gateway")
    finally:
        sys.path.remove(str(REPO / "examples"))


@pytest.fixture
def client(gateway: ModuleType) -> TestClient:
    # No `with`: the lifespan's discovery of a running system is not for this test.
    return TestClient(gateway.app, raise_server_exceptions=False)


def test_health_is_ok_with_redis(client: TestClient, configured: Settings) -> None:
    reply = client.get("/healthz")
    assert reply.status_code == 200 and reply.json() == {"status": "ok"}


def test_health_is_503_with_a_one_line_reason_when_redis_is_down(
    client: TestClient, configured: Settings, sqlite_url: str
) -> None:
    down = f"redis://:hunter22@127.0.0.1:{free_port()}/0"
    runtime.reset(settings_from_env({"SCHED_REDIS_URL": down, "SCHED_DATABASE_URL": sqlite_url}))
    reply = client.get("/healthz")
    assert reply.status_code == 503, reply.text
    assert reply.headers["content-type"] == "application/json"
    body = reply.json()
    assert body["status"] == "unavailable"
    assert body["reason"].startswith("redis: ") and "\n" not in body["reason"]
    assert "Traceback" not in reply.text and "hunter22" not in reply.text
    assert len(json.dumps(body)) < 400


def test_admin_is_refused_while_no_token_is_set(
    client: TestClient, configured: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GATEWAY_ADMIN_TOKEN", raising=False)
    reply = client.post("/admin/accounts/1", json={"status": "disabled"})
    assert reply.status_code == 403
    assert "set GATEWAY_ADMIN_TOKEN" in reply.json()["detail"]
    given = client.post(
        "/admin/accounts/1", json={"status": "disabled"}, headers={"Authorization": "Bearer x"}
    )
    assert given.status_code == 403


def test_admin_needs_the_token(
    client: TestClient, configured: Settings, db: SqlWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", TOKEN)
    account = db.create_account(name="a", platform="openai", type="apikey")
    url = f"/admin/accounts/{account.id}"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        reply = client.post(url, json={"status": "disabled"}, headers=headers)
        assert reply.status_code == 401, (headers, reply.text)
        assert reply.headers["www-authenticate"] == "Bearer"
    reply = client.post(
        url, json={"status": "disabled"}, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert reply.status_code == 200, reply.text
    assert "0:openai:single" in reply.json()["rebuilds_requested"]


def test_admin_is_labelled_an_example(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/admin/accounts/{account_id}"]
    assert operation["post"]["tags"] == ["example only"]
    assert "Example" in operation["post"]["summary"]
