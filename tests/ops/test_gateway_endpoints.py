"""The example gateway's endpoints, in process against real servers: both ways of
picking (the index, and the scan GATEWAY_PICK=scan keeps for comparison) answer the
least recently used account of the best tier; health says 503 in one JSON line when
Redis is down; admin needs its token."""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import ModuleType

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from cache import Account, RedisSchedulerCache, SchedulerBucket
from tasks import runtime
from tasks.settings import Settings
from tasks.source import SqlWriter
from tasks.web import aio
from tests.processes import REPO, settings_from_env
from tests.support import free_port

TOKEN = "s3cret-admin-token"


def load_gateway(pick: str = "index") -> Iterator[ModuleType]:
    """The example imported afresh with ``GATEWAY_PICK=pick`` (its routes follow it)."""
    sys.path.insert(0, str(REPO / "examples"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GATEWAY_PICK", pick)
        sys.modules.pop("gateway", None)
        try:
            yield importlib.import_module("gateway")
        finally:
            sys.modules.pop("gateway", None)
            sys.path.remove(str(REPO / "examples"))


@pytest.fixture
def gateway() -> Iterator[ModuleType]:
    yield from load_gateway()


@pytest.fixture
def client(gateway: ModuleType) -> TestClient:
    # No `with`: the lifespan's discovery of a running system is not for this test.
    return TestClient(gateway.app, raise_server_exceptions=False)


@pytest.mark.parametrize("mode", ["index", "scan"])
def test_both_ways_of_picking_answer_the_least_recently_used_of_the_best_tier(
    task_cache: RedisSchedulerCache, mode: str
) -> None:
    for gateway in load_gateway(mode):
        assert gateway.pick_mode == mode
        least_recently_used_of_the_best_tier(gateway, task_cache, mode)


def least_recently_used_of_the_best_tier(
    gateway: ModuleType, task_cache: RedisSchedulerCache, mode: str
) -> None:
    bucket = SchedulerBucket.parse("0:openai:single")
    hour_ago = datetime.now(UTC) - timedelta(hours=1)

    def account(account_id: int, priority: int, used_minutes_before: int) -> Account:
        used = hour_ago - timedelta(minutes=used_minutes_before)
        return Account(
            id=account_id,
            name=f"a{account_id}",
            platform="openai",
            type="apikey",
            priority=priority,
            last_used_at=used,
        )

    # 1 is the least recently used but of a worse priority; 4 is excluded by the request.
    accounts = [account(1, 9, 50), account(2, 1, 1), account(3, 1, 10), account(4, 1, 20)]
    task_cache.set_snapshot(bucket, accounts, task_cache.reserve_version(bucket))

    async def requests() -> tuple[list[httpx.Response], httpx.Response]:
        # One event loop for every request, as a uvicorn worker has (the TestClient
        # runs each request outside a `with` in a loop of its own).
        transport = httpx.ASGITransport(app=gateway.app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
                query: dict[str, int | str | list[int]] = {
                    "group": 0,
                    "platform": "openai",
                    "exclude": [4],
                }
                picks = [await http.get("/pick", params=query) for _ in range(3)]
                unknown = await http.get("/pick", params={"group": 0, "platform": "nosuch"})
        finally:
            await aio.aclose()
        return picks, unknown

    picks, unknown = asyncio.run(requests())
    for reply in picks:
        assert reply.status_code == 200, (mode, reply.text)
        assert reply.json()["bucket"] == str(bucket) and "credentials" not in reply.json()
    # The oldest of the tier, then the other (the first was just used), then round again.
    assert [reply.json()["id"] for reply in picks] == [3, 2, 3], mode
    assert unknown.status_code == 400, (mode, unknown.text)


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ({"platform": "openai"}, "group: missing"),
        (
            {"group": -1, "platform": "openai"},
            "group: an integer from 0 to 9223372036854775807, got '-1'",
        ),
        ({"group": "x" * 5000, "platform": "openai"}, "group: an integer"),
        ({"group": 2**63, "platform": "openai"}, "got '9223372036854775808'"),
        ({"group": 0}, "platform: missing"),
        ({"group": 0, "platform": "p" * 65}, "platform: 1 to 64 characters"),
        ({"group": 0, "platform": "openai", "force": "maybe"}, "force: a boolean"),
        ({"group": 0, "platform": "openai", "exclude": ["1", "two"]}, "exclude: an integer"),
        ({"group": 0, "platform": "openai", "exclude": list(range(101))}, "at most 100"),
    ],
)
def test_a_bad_pick_query_is_422_naming_the_bad_value(
    client: TestClient, configured: Settings, query: dict[str, object], named: str
) -> None:
    reply = client.get("/pick", params=query)
    assert reply.status_code == 422, reply.text
    assert reply.headers["content-type"] == "application/json"
    assert named in reply.json()["detail"]
    assert len(reply.text) < 300  # a 5,000-character value is cut


def test_a_pick_query_takes_force_and_exclude_as_fastapi_did(
    client: TestClient, configured: Settings, task_cache: RedisSchedulerCache
) -> None:
    forced = SchedulerBucket.parse("0:openai:forced")
    accounts = [Account(id=i, name=f"a{i}", platform="openai", type="apikey") for i in (1, 2, 3)]
    task_cache.set_snapshot(forced, accounts, task_cache.reserve_version(forced))
    query = {"group": 0, "platform": "openai", "force": "Yes", "exclude": [1, 3], "other": "x"}
    reply = client.get("/pick", params=query)
    assert reply.status_code == 200, reply.text
    assert reply.json()["id"] == 2 and reply.json()["bucket"] == "0:openai:forced"
    reply = client.get("/pick", params={**query, "exclude": [1, 2, 3]})
    assert reply.status_code == 503
    assert reply.json() == {"detail": "no schedulable openai account in group 0"}


def test_the_way_of_picking_is_read_from_gateway_pick(
    gateway: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert gateway.GatewaySettings().pick == "index"
    monkeypatch.setenv("GATEWAY_PICK", "scan")
    assert gateway.GatewaySettings().pick == "scan"
    monkeypatch.setenv("GATEWAY_PICK", "fast")
    with pytest.raises(ValidationError):
        gateway.GatewaySettings()


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


@pytest.mark.parametrize("mode", ["index", "scan"])
def test_pick_is_described_in_the_openapi_page_either_way(mode: str) -> None:
    for gateway in load_gateway(mode):
        schema = TestClient(gateway.app).get("/openapi.json").json()
        operation = schema["paths"]["/pick"]["get"]
        names = {parameter["name"] for parameter in operation["parameters"]}
        assert names == {"group", "platform", "force", "exclude"}
        assert "Picked" in schema["components"]["schemas"]
        assert "/admin/accounts/{account_id}" in schema["paths"]
