"""The example gateway end to end: uvicorn, a real worker, Redis, SQLite, concurrent picks."""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from cache import SchedulerBucket
from tasks import runtime
from tasks.source import SqlSource, SqlWriter
from tasks.web.requests import request_rebuild
from tests.processes import REPO, Service, WorkerProcess, wait_for
from tests.support import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

BUCKET = SchedulerBucket.parse("0:openai:single")
ADMIN_TOKEN = "gateway-test-token"


@pytest.fixture
def gateway(ops_env: dict[str, str], worker: WorkerProcess, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    service = Service(
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
            "--log-level",
            "warning",
        ],
        {**ops_env, "GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN},
        tmp_path / "gateway.log",
    ).start()
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if not service.alive():
            pytest.fail(f"the gateway exited:\n{service.log_tail()}")
        try:
            return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, timeout=60, what="the gateway")
        yield base
    finally:
        service.stop()


def _pick(client: httpx.Client) -> int:
    reply = client.get("/pick", params={"group": 0, "platform": "openai"})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert "credentials" not in body
    return int(body["id"])


def test_picks_spread_by_last_use_and_a_disabled_account_stops_at_once(
    gateway: str, source: SqlSource, worker: WorkerProcess, db: SqlWriter
) -> None:
    cache = runtime.get_cache()
    tier = [
        db.create_account(name=f"best-{n}", platform="openai", type="apikey", priority=50).id
        for n in range(10)
    ]
    spare = [
        db.create_account(name=f"spare-{n}", platform="openai", type="apikey", priority=90).id
        for n in range(2)
    ]
    request_rebuild(BUCKET)
    wait_for(lambda: cache.bucket_info(BUCKET).account_count == 12, what="the first snapshot")

    # 100 picks, 10 at a time: each of the best-priority accounts gets its share.
    with httpx.Client(base_url=gateway, timeout=30) as client, ThreadPoolExecutor(10) as pool:
        counts = Counter(pool.map(lambda _: _pick(client), range(100)))
    assert set(counts) == set(tier), counts
    assert max(counts.values()) - min(counts.values()) <= 1, counts

    # The touches reach the cache (batched), so every process sees the same order.
    def touched() -> bool:
        snapshot = cache.get_snapshot(BUCKET) or []
        used = {a.id for a in snapshot if a.last_used_at is not None}
        return used == set(tier)

    wait_for(touched, timeout=10, what="last-use times of the picked accounts in the cache")
    assert not any(a.last_used_at for a in (cache.get_snapshot(BUCKET) or []) if a.id in spare)

    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=gateway, timeout=30, headers=admin) as client:
        # Make one account the only one of the best priority: every pick is it...
        target = tier[3]
        assert client.post(f"/admin/accounts/{target}", json={"priority": 1}).status_code == 200
        wait_for(
            lambda: all(_pick(client) == target for _ in range(5)),
            timeout=10,
            what="the promoted account to be picked",
        )
        # ... until an admin disables it: then it is never picked again, within a second.
        reply = client.post(f"/admin/accounts/{target}", json={"status": "disabled"})
        disabled_at = time.monotonic()
        assert reply.status_code == 200, reply.text
        assert "0:openai:single" in reply.json()["rebuilds_requested"]
        while _pick(client) == target:
            assert time.monotonic() - disabled_at < 1.0, "still picked a second after disabling"
        took = time.monotonic() - disabled_at
        assert all(_pick(client) != target for _ in range(30))
        print(f"disabled account stopped being picked after {took * 1000:.0f} ms")

        missing = client.post("/admin/accounts/999999", json={"status": "disabled"})
        assert missing.status_code == 404
        assert client.post(f"/admin/accounts/{target}", json={"status": "gone"}).status_code == 422
        assert client.get("/pick", params={"group": -1, "platform": "openai"}).status_code == 422
        assert client.get("/pick", params={"group": 0, "platform": "Bad:Name"}).status_code == 400
        unknown = client.get("/pick", params={"group": 0, "platform": "nosuch"})
        assert unknown.status_code == 400, unknown.text
        assert "unknown platform 'nosuch'" in unknown.json()["detail"]
        assert "anthropic, openai, gemini, antigravity" in unknown.json()["detail"]
