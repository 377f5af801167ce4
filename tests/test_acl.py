"""The Redis ACL roles of docs/security.md, loaded as written into a private server: the
web role does every documented web call and is refused every write it must not make."""

from __future__ import annotations

import asyncio
import re
import shlex
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from cache import Account, CacheError, NearCache, RedisSchedulerCache, SchedulerBucket
from tasks import runtime
from tasks.settings import Settings
from tasks.source import SqlSource
from tasks.web import reader
from tests.support import RedisServer, seed_group

DOC = Path(__file__).resolve().parent.parent / "docs" / "security.md"


def documented_acl_lines() -> list[list[str]]:
    block = re.search(r"```redis-acl\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert block is not None, "docs/security.md has no redis-acl block"
    return [shlex.split(line) for line in block.group(1).splitlines() if line.strip()]


def role_url(server: RedisServer, role: str) -> str:
    return f"redis://sched-{role}:change-me-{role}@127.0.0.1:{server.port}/0"


@pytest.fixture
def acl_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    admin = redis.Redis(port=server.port)
    try:
        for words in documented_acl_lines():
            admin.execute_command(*words)  # type: ignore[no-untyped-call]
        yield server
    finally:
        admin.close()
        server.close()


@pytest.fixture
def as_web(acl_server: RedisServer, sqlite_url: str) -> Iterator[Settings]:
    """This process as a web app under the web role; workers under theirs."""
    settings = Settings(
        redis_url=role_url(acl_server, "worker"),
        web_redis_url=role_url(acl_server, "web"),
        database_url=sqlite_url,
        fallback_writes=False,
    )
    runtime.reset(settings)
    reader._limiter = None
    reader._known = None
    try:
        yield settings
    finally:
        runtime.reset()
        reader._known = None


def test_every_documented_web_call_works_under_the_web_role(
    as_web: Settings, acl_server: RedisServer
) -> None:
    from tasks import list_schedulable, list_schedulable_async, record_last_used, request_rebuild
    from tasks.web.last_used import default_batcher

    source = runtime.get_source()
    assert isinstance(source, SqlSource)
    group = seed_group(source, accounts=2)
    bucket = SchedulerBucket(group.id, "openai", "single")
    admin = redis.Redis(port=acl_server.port)

    # A miss: answered from the source, nothing written, a rebuild asked for (through
    # the broker, as the web user).
    assert len(list_schedulable(group.id, "openai")) == 2
    assert admin.llen("rebuild") == 1
    assert not admin.exists(f"sched:{{{bucket}}}:meta")

    # The worker writes the snapshot; the web reads it (near cache, pushes) and notes uses.
    worker = RedisSchedulerCache.from_url(as_web.redis_url)
    worker.set_snapshot(bucket, source.accounts_for_bucket(bucket, _now()))
    accounts = list_schedulable(group.id, "openai")
    assert len(accounts) == 2
    assert len(asyncio.run(_read_async(list_schedulable_async, group.id))) == 2
    record_last_used(accounts[0].id)
    assert default_batcher().flush() == 1
    assert admin.hlen("sched:{shared}:last_used:pending") == 1
    assert request_rebuild(SchedulerBucket(group.id, "openai", "forced")) is True
    assert admin.llen("rebuild") == 2


async def _read_async(read: object, group_id: int) -> list[object]:
    from tasks.web.aio import aclose

    try:
        return await read(group_id, "openai")  # type: ignore[operator, no-any-return]
    finally:
        await aclose()


def _now() -> datetime:
    return datetime.now(UTC)


def test_the_web_role_is_refused_snapshots_locks_and_the_outbox(acl_server: RedisServer) -> None:
    bucket = SchedulerBucket(7, "openai", "single")
    worker = RedisSchedulerCache.from_url(role_url(acl_server, "worker"))
    worker.set_snapshot(bucket, [])
    web = RedisSchedulerCache.from_url(role_url(acl_server, "web"))
    raw = web.client
    keys = web.keys

    refused: dict[str, Callable[[], object]] = {
        "set_snapshot": lambda: web.set_snapshot(bucket, []),
        "reserve_version": lambda: web.reserve_version(bucket),
        "bucket lock": lambda: web.try_lock_bucket(bucket, 30),
        "named lock": lambda: web.try_lock("outbox-poller", 30),
        "outbox position": lambda: web.advance_outbox(99),
        "retire": lambda: web.retire_bucket(bucket),
    }
    for call in refused.values():
        with pytest.raises(CacheError, match=r"NOPERM|no permissions|can.t"):
            call()
    for command in [
        ("HSET", keys.meta(bucket), "active", "99"),
        ("RPUSH", keys.snapshot(bucket, 1), "1"),
        ("HSET", keys.payloads(bucket, 1), "1", "{}"),
        ("SET", keys.lock(bucket), "mine"),
        ("SET", keys.outbox_watermark, "99"),
        ("SET", keys.epoch, "x"),
        ("SADD", keys.registry, "1:openai:single"),
        ("PUBLISH", keys.changes_channel, f"{bucket} 99 99"),
        ("FLUSHALL",),
        ("EVAL", "return 1", "0"),
    ]:
        with pytest.raises(redis.exceptions.NoPermissionError):
            raw.execute_command(*command)  # type: ignore[no-untyped-call]
    # A script the web user loads writes nothing its plain commands could not.
    sha = raw.script_load("return redis.call('HSET', KEYS[1], 'active', '99')")
    with pytest.raises(redis.exceptions.ResponseError, match=r"permission|NOPERM|access"):
        raw.evalsha(sha, 1, keys.meta(bucket))
    assert worker.bucket_info(bucket).active_version == 1


def test_the_web_roles_near_cache_applies_a_pushed_change_of_one_account(
    acl_server: RedisServer,
) -> None:
    bucket = SchedulerBucket(7, "openai", "single")
    written = [Account(id=i, name=f"a{i}", platform="openai", type="apikey") for i in (1, 2, 3)]
    worker = RedisSchedulerCache.from_url(role_url(acl_server, "worker"))
    worker.set_snapshot(bucket, written)
    near = NearCache(
        RedisSchedulerCache.from_url(role_url(acl_server, "web")), check_seconds=5, trust_seconds=10
    )
    admin = redis.Redis(port=acl_server.port)
    try:
        assert near.get_snapshot(bucket) == written
        deadline = time.monotonic() + 3
        while int(admin.pubsub_numsub(worker.keys.changes_channel)[0][1]) < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        # A writer's change of account 2 (the one-account announce, by the admin here).
        changed = written[1].model_copy(update={"name": "renamed", "revision": 2})
        payload, digest = worker.reader.codec.encode(changed)
        keys, version = worker.keys, 1
        admin.hset(keys.entries(bucket, version), "2", f"{digest}/2")
        admin.hset(keys.payloads(bucket, version), "2", payload)
        gen = admin.hincrby(keys.meta(bucket), "gen", 1)
        admin.publish(keys.changes_channel, f"{bucket} {version} {gen} 2")
        while near.state.patches < 1:
            assert time.monotonic() < deadline, "the patch was not applied"
            time.sleep(0.01)
        assert [a.name for a in near.get_snapshot(bucket) or []] == ["a1", "renamed", "a3"]
        assert near.state.reads == 1
    finally:
        near.close()
        admin.close()


def test_the_operator_role_retires_and_reads_but_does_not_administer(
    acl_server: RedisServer,
) -> None:
    bucket = SchedulerBucket(7, "openai", "single")
    RedisSchedulerCache.from_url(role_url(acl_server, "worker")).set_snapshot(bucket, [])
    ops = RedisSchedulerCache.from_url(role_url(acl_server, "ops"))
    assert ops.list_buckets() == [bucket]
    assert ops.retire_bucket(bucket)
    assert ops.list_buckets() == []
    with pytest.raises(redis.exceptions.NoPermissionError):
        ops.client.flushall()


def test_role_urls_default_to_the_workers_and_a_web_process_never_needs_its_password() -> None:
    plain = Settings(redis_url="redis://w:pw@h/0")
    assert plain.effective_web_redis_url == plain.effective_ops_redis_url == "redis://w:pw@h/0"
    assert plain.effective_web_broker_url == "redis://w:pw@h/0"
    web = Settings(redis_url="redis://w:pw@h/0", web_redis_url="redis://web:x@h/0")
    assert web.effective_web_broker_url == "redis://web:x@h/0"  # not the workers' broker
    amqp = web.model_copy(update={"broker_url": "amqp://b:y@q//"})
    assert amqp.effective_web_broker_url == "amqp://b:y@q//"
    assert Settings(web_redis_url="").web_redis_url is None  # "VAR=" means unset


def test_a_worker_under_the_worker_role_rebuilds_follows_the_outbox_and_flushes(
    acl_server: RedisServer, sqlite_url: str, tmp_path: Path
) -> None:
    """A real worker, broker and cache both under ``sched-worker`` as documented: it
    rebuilds, applies an outbox change and flushes last uses, and Redis refused it
    nothing (no NOPERM in its log)."""
    from tasks.celery import app
    from tasks.requests import request_rebuild
    from tasks.source import SqlWriter
    from tests.processes import WorkerProcess, child_env, wait_for

    worker_url = role_url(acl_server, "worker")
    settings = Settings(redis_url=worker_url, database_url=sqlite_url)
    runtime.reset(settings)
    worker: WorkerProcess | None = None
    try:
        source = runtime.get_source()
        assert isinstance(source, SqlSource)
        group = seed_group(source, accounts=2)
        bucket = SchedulerBucket(group.id, "openai", "single")
        env = child_env(SCHED_REDIS_URL=worker_url, SCHED_DATABASE_URL=sqlite_url)
        worker = WorkerProcess(env, tmp_path).start()
        cache = runtime.get_cache()

        assert request_rebuild(bucket)
        wait_for(lambda: cache.get_snapshot(bucket), what="the rebuild under the worker role")
        first = (cache.get_snapshot(bucket) or [])[0]

        SqlWriter(source).update_account(first.id, schedulable=False)
        app.send_task("tasks.poll_outbox")

        def applied() -> bool:
            held = {a.id: a for a in cache.get_snapshot(bucket) or []}
            return first.id not in held or not held[first.id].schedulable

        wait_for(applied, what="the outbox change under the worker role")

        used = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
        cache.update_last_used({first.id: used}, record_pending=True)
        app.send_task("tasks.flush_last_used")

        def flushed() -> bool:
            stored = source.get_accounts([first.id])[first.id].last_used_at
            return stored is not None and stored >= used

        wait_for(flushed, what="the last-use flush under the worker role")
        assert "NOPERM" not in worker.log_tail(200_000)
    finally:
        if worker is not None:
            worker.kill()
        runtime.reset()
