"""Loads the Lua scripts shipped in ``cache/lua`` and registers them on a client."""

from __future__ import annotations

from importlib import resources
from typing import Any

import redis
import redis.asyncio

SCRIPT_NAMES = (
    "read_snapshot",
    "stage_snapshot",
    "activate_snapshot",
    "patch_account",
    "store_accounts",
    "set_account",
    "delete_account",
    "update_last_used",
    "ack_last_used",
    "lock",
    "unlock",
    "advance_watermark",
    "retire_bucket",
    "request_rebuild",
    "begin_rebuild",
    "finish_rebuild",
    "reestablish",
    "forget_payload",
    "repair_types",
)


def load_source(name: str) -> str:
    """The text of ``cache/lua/<name>.lua``."""
    return resources.files("cache").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


class Scripts:
    """One registered :class:`redis.commands.core.Script` per Lua file.

    redis-py sends EVALSHA and falls back to EVAL on NOSCRIPT, so a ``SCRIPT FLUSH`` or a
    restarted server costs one extra round trip, never an error.
    """

    def __init__(self, client: redis.Redis | redis.asyncio.Redis) -> None:
        self._scripts = {name: client.register_script(load_source(name)) for name in SCRIPT_NAMES}

    def __getitem__(self, name: str) -> Any:
        return self._scripts[name]
