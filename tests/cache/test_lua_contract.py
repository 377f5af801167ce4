"""What every script must be: keys only from KEYS, shared text in the prelude."""

from __future__ import annotations

import re

import pytest

from cache.scripts import PRELUDE, SCRIPT_NAMES, load_source

# Commands whose first argument is not a key.
NOT_KEYED = {"PUBLISH"}
# Commands whose every argument is a key.
ALL_KEYS = {"DEL", "UNLINK", "EXISTS"}
CALL = re.compile(r"redis\.p?call\(\s*'(\w+)'\s*(?:,\s*([^,)]+(?:\([^)]*\))?))?([^)]*)\)")
KEY = re.compile(r"KEYS\[(\d+|i|k|k \+ 1)\]")


def _calls(source: str) -> list[tuple[str, str, str]]:
    return [
        (m.group(1).upper(), (m.group(2) or "").strip(), m.group(3)) for m in CALL.finditer(source)
    ]


@pytest.mark.parametrize("name", [*SCRIPT_NAMES, PRELUDE])
def test_every_key_a_script_touches_arrives_in_keys(name: str) -> None:
    source = load_source(name)
    for command, first, rest in _calls(source):
        if command in NOT_KEYED:
            continue
        assert ".." not in first, f"{name}: {command} on a key built by concatenation"
        assert "ARGV" not in first, f"{name}: {command} on a key taken from ARGV"
        if name != PRELUDE:  # the prelude's functions get keys their callers pass
            assert KEY.fullmatch(first), f"{name}: {command} {first} is not from KEYS"
        if command in ALL_KEYS:
            for other in filter(None, (a.strip() for a in rest.split(","))):
                assert KEY.fullmatch(other), f"{name}: {command} {other} is not from KEYS"


def test_the_contract_check_catches_a_key_built_from_argv() -> None:
    bad = "local v = ARGV[1]\nredis.call('HGET', ARGV[2] .. v, 'x')\n"
    ((command, first, _),) = _calls(bad)
    assert command == "HGET" and (".." in first or "ARGV" in first)


def test_shared_lua_is_written_once() -> None:
    for name in SCRIPT_NAMES:
        source = load_source(name)
        assert "string.gmatch(joined" not in source, f"{name}: split is the prelude's"
        assert "local function" not in source, f"{name}: shared functions go in the prelude"
