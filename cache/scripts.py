"""Loads the Lua scripts shipped in ``cache/lua`` and registers them on a client.

Each script is sent with ``cache/lua/prelude.lua`` before it: the rules every script
shares (splitting joined arguments, the version floor, the change announcement) are
written once. A prelude rather than a Redis 7 function library: a script is still one
EVALSHA that redis-py reloads by itself after a restart, a failover or SCRIPT FLUSH,
whereas a function library must be loaded on every master by hand before the first
call, and again whenever a server comes back without it.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Generic, Literal, TypeVar, get_args, overload

import redis
import redis.asyncio
from redis.commands.core import AsyncScript, Script

ScriptName = Literal[
    "read_snapshot",
    "stage_snapshot",
    "activate_snapshot",
    "patch_account",
    "place_account",
    "note_listing",
    "index_accounts",
    "unindex_accounts",
    "drop_staged",
    "reindex_account",
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
    "extend_rebuild_lease",
    "reclaim_rebuild",
    "due_rebuild_leases",
    "release_rebuild_lease",
    "reestablish",
    "forget_payload",
    "repair_types",
]
SCRIPT_NAMES: tuple[ScriptName, ...] = get_args(ScriptName)
PRELUDE = "prelude"

AnyScript = TypeVar("AnyScript", Script, AsyncScript)

_SHA = re.compile(r"\b[0-9a-f]{40}\b")


def _read(name: str) -> str:
    return resources.files("cache").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


def load_source(name: str) -> str:
    """The text of ``cache/lua/<name>.lua``, as written (without the prelude)."""
    return _read(name)


def full_source(name: str) -> str:
    """What the server runs for ``name``: the prelude, then the script."""
    return f"{_read(PRELUDE)}\n{_read(name)}"


# Script digests -> names: an error reply names the script by its digest only.
_NAMES_BY_SHA: dict[str, str] = {}


def script_named_in(message: str) -> str | None:
    """The name of the script whose digest ``message`` (an error reply) holds, if any."""
    for sha in _SHA.findall(message):
        name = _NAMES_BY_SHA.get(sha)
        if name is not None:
            return name
    return None


class Scripts(Generic[AnyScript]):
    """One registered script per Lua file, over a sync or an asyncio client.

    redis-py sends EVALSHA and falls back to EVAL on NOSCRIPT, so a ``SCRIPT FLUSH`` or a
    restarted server costs one extra round trip, never an error.
    """

    @overload
    def __init__(self: Scripts[Script], client: redis.Redis) -> None: ...
    @overload
    def __init__(self: Scripts[AsyncScript], client: redis.asyncio.Redis) -> None: ...
    def __init__(self, client: redis.Redis | redis.asyncio.Redis) -> None:
        self._scripts = {name: client.register_script(full_source(name)) for name in SCRIPT_NAMES}
        for name, script in self._scripts.items():
            _NAMES_BY_SHA[script.sha] = name

    def __getitem__(self, name: ScriptName) -> AnyScript:
        return self._scripts[name]  # type: ignore[return-value]
