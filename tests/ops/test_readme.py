"""The README stays true: its configuration table matches the settings object."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tasks.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def _section(title: str) -> str:
    text = README.read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def _table_rows(section: str) -> dict[str, str]:
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`SCHED_"):
            rows[cells[0].strip("`")] = cells[1]
    return rows


def _default(name: str) -> Any:
    field = Settings.model_fields[name]
    return field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]


def _matches(cell: str, default: Any) -> bool:
    if default is None:
        return cell == "(unset)"
    value = cell.strip("`")
    if isinstance(default, bool):
        return value == str(default).lower()
    if isinstance(default, int | float):
        return float(value) == float(default)
    if isinstance(default, list):
        return sorted(value.split(",")) == sorted(default)
    return bool(value == str(default))


def test_readme_starts_with_the_two_commands() -> None:
    head = README.read_text()[:400]
    assert head.index("make run") < head.index("make test")


def test_configuration_table_lists_every_setting_with_its_default() -> None:
    rows = _table_rows(_section("Configuration"))
    expected = {f"SCHED_{name.upper()}": name for name in Settings.model_fields}
    missing = sorted(set(expected) - set(rows))
    extra = sorted(set(rows) - set(expected))
    assert not missing, f"README configuration table lacks {missing}"
    assert not extra, f"README lists settings that do not exist: {extra}"
    wrong = {
        env: (rows[env], _default(name))
        for env, name in expected.items()
        if not _matches(rows[env], _default(name))
    }
    assert not wrong, f"README defaults differ from Settings (readme, actual): {wrong}"


@pytest.mark.parametrize("word", ["web app", "Redis", "worker", "beat", "Flower", "database"])
def test_diagram_shows_every_piece(word: str) -> None:
    diagrams = re.findall(r"```\n(.*?)```", _section("What it is"), re.DOTALL)
    assert diagrams and word in diagrams[0]


def test_operating_notes_and_placeholders_exist() -> None:
    notes = _section("Operating notes")
    for topic in ("Sizing", "noeviction", "appendonly", "Several workers and beats"):
        assert topic in notes
    assert _section("Benchmarks").strip()
    assert _section("Cache design").strip()
