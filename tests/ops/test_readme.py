"""The README stays true and in its order: what it is, the two commands and the
two-terminal workflow first; the configuration table matches the settings object."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tasks.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"
OPERATING = README.parent / "docs" / "operating.md"


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
    head = README.read_text()[:1000]
    assert head.index("make run") < head.index("make test")


def test_the_first_screen_shows_the_two_terminal_workflow() -> None:
    first_screen = "\n".join(README.read_text().splitlines()[:40])
    assert first_screen.index("make test") < first_screen.index(".venv/bin/sched status")
    assert ".venv/bin/sched metrics" in first_screen
    assert "/api/workers" in first_screen
    assert "\n## " in first_screen  # and the next section starts within it


def test_sections_come_in_order_with_the_benchmarks_last() -> None:
    titles = re.findall(r"^## (.+)$", README.read_text(), re.MULTILINE)
    assert titles == [
        "Running it",
        "The command line",
        "Configuration",
        "Operating notes",
        "Design",
        "Benchmarks",
    ]
    benchmarks = _section("Benchmarks")
    assert "make bench" in benchmarks
    assert "== cache ==" not in benchmarks  # figures as a table; the full output is make bench's


def test_every_command_is_in_the_command_table() -> None:
    from click import Group

    from tasks.ops.cli import cli

    # A command documented in docs/operating.md counts too (the README is being
    # split into docs/).
    table = _section("The command line") + OPERATING.read_text()
    for name, command in cli.commands.items():
        words = (
            [f"{name} {sub}" for sub in command.commands] if isinstance(command, Group) else [name]
        )
        for word in words:
            assert f"`sched {word}" in table, word


def test_background_stop_is_explained() -> None:
    text = OPERATING.read_text()
    assert "setsid -f make run" in text and "sched stop" in text


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
    diagrams = re.findall(r"```\n(.*?)```", _section("Design"), re.DOTALL)
    assert diagrams and word in diagrams[0]


def test_operating_notes_and_placeholders_exist() -> None:
    notes = _section("Operating notes")
    for topic in ("Sizing", "noeviction", "appendonly", "Several workers and beats", "Faults"):
        assert topic in notes
    for series in ("sched_buckets_active", "sched_outbox_lag_events", "sched_queue_length"):
        assert series in notes
    assert _section("Benchmarks").strip()
    assert "### The cache" in _section("Design")
