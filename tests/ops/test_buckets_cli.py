"""``sched buckets retire``: an operator retires a bucket by hand."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cache import RedisSchedulerCache, SchedulerBucket
from tasks.settings import Settings
from tasks.source import SqlWriter

MADE_UP = SchedulerBucket.parse("123456789:gemini:mixed")


def test_retire_stops_serving_and_unregisters_a_bucket(
    run_cli: Callable[..., Any], configured: Settings, task_cache: RedisSchedulerCache
) -> None:
    task_cache.set_snapshot(MADE_UP, [])
    default = SchedulerBucket.parse("0:openai:single")
    task_cache.set_snapshot(default, [])

    result = run_cli("buckets", "retire", str(MADE_UP), str(default))

    assert result.code == 0, result.err
    assert f"{MADE_UP}: retired\n" in result.out
    assert f"{default}: retired (a default bucket" in result.out
    assert task_cache.list_buckets() == []
    assert task_cache.get_snapshot(MADE_UP) is None


def test_retire_of_an_unknown_bucket_is_exit_3_and_bad_input_exit_2(
    run_cli: Callable[..., Any], db: SqlWriter
) -> None:
    result = run_cli("buckets", "retire", "5:openai:single")
    assert result.code == 3
    assert "5:openai:single" in result.err
    result = run_cli("buckets", "retire", "5:openai:sideways")
    assert result.code == 2
    assert "sideways" in result.err


def test_the_operator_url_is_used_when_set(
    run_cli: Callable[..., Any], ops_env: dict[str, str], task_cache: RedisSchedulerCache
) -> None:
    task_cache.set_snapshot(MADE_UP, [])
    env = {**ops_env, "SCHED_OPS_REDIS_URL": "redis://127.0.0.1:1/0"}
    result = run_cli("buckets", "retire", str(MADE_UP), env=env)
    assert result.code == 1
    assert "127.0.0.1:1" in result.err
    assert task_cache.list_buckets() == [MADE_UP]
