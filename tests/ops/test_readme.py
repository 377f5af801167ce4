"""The README teaches in its first screen and stays short; the docs stay true: every
command, every setting and every public web name documented, every relative link and
anchor resolving."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import pytest

import tasks
from tasks.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]


def _doc(name: str) -> str:
    return (DOCS / name).read_text()


def _section(text: str, title: str, level: str = "##") -> str:
    """The text under heading ``title`` up to the next heading of its level or above;
    lines in code blocks (a ``# comment``) are never headings."""
    lines = text.splitlines(keepends=True)
    inside, fenced, found = False, False, []
    for line in lines:
        if line.startswith("```"):
            fenced = not fenced
        heading = not fenced and re.match(r"(#{1,6}) ", line)
        if heading and inside and len(heading.group(1)) <= len(level):
            break
        if inside:
            found.append(line)
        if heading and line.rstrip("\n") == f"{level} {title}":
            inside = True
    assert inside, f"no '{level} {title}' section"
    return "".join(found)


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


# -- the README ------------------------------------------------------------------------


def test_readme_starts_with_the_two_commands() -> None:
    text = README.read_text()
    first_block = re.search(r"```sh\n(.*?)```", text, re.DOTALL)
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines()]
    assert commands[:2] == ["make run", "make test"]
    assert text.index("make run") < text.index("make test") < 1000


def test_the_readme_is_short() -> None:
    assert len(README.read_text().splitlines()) <= 150


def test_the_first_screen_shows_the_two_terminal_workflow() -> None:
    first_screen = "\n".join(README.read_text().splitlines()[:40])
    assert first_screen.index("make test") < first_screen.index(".venv/bin/sched status")
    assert ".venv/bin/sched metrics" in first_screen
    assert "/api/workers" in first_screen
    assert "\n## " in first_screen  # and the next section starts within it


def test_the_readme_shows_a_gateway_call_in_about_ten_lines() -> None:
    gateway = _section(README.read_text(), "Using it from a gateway")
    blocks = re.findall(r"```python\n(.*?)```", gateway, re.DOTALL)
    assert blocks, "no Python example"
    code = [line for line in blocks[0].splitlines() if line.strip()]
    assert len(code) <= 12
    assert "list_schedulable(" in blocks[0] and "pick(" in blocks[0]
    compile(blocks[0], "README.md", "exec")
    assert "sched env" in gateway and "pip install" in gateway


def test_the_readme_states_the_demo_groups_as_the_demo_seeds_them() -> None:
    from tasks.ops.demo import DEMO_GROUPS

    text = README.read_text()
    assert f"groups 1-{len(DEMO_GROUPS)}" in text and "group 0" in text
    for name, platform in DEMO_GROUPS:
        assert f"`{name}`" in text and platform in text


def test_the_readme_points_to_every_doc() -> None:
    text = README.read_text()
    for page in ("install", "running", "configuration", "source", "api", "operations"):
        assert f"docs/{page}.md" in text, page
    assert "docs/index.md" in text


# "(it was 300 s)", "it was the visibility timeout", "with the earlier decode".
HISTORY = r"\bit was (?:up to |the )?\d|\bit was (?:the|up to)\b|\b(?:the|an) earlier\b"


def test_no_history_in_the_tables() -> None:
    for page in PAGES:
        for line in page.read_text().splitlines():
            if line.startswith("|"):
                assert not re.search(HISTORY, line), (page.name, line)


# -- the docs --------------------------------------------------------------------------


def test_every_command_is_in_the_command_table() -> None:
    from click import Group

    from tasks.ops.cli import cli

    table = _section(_doc("running.md"), "The command line")
    for name, command in cli.commands.items():
        words = (
            [f"{name} {sub}" for sub in command.commands] if isinstance(command, Group) else [name]
        )
        for word in words:
            assert f"`sched {word}" in table, word


def test_background_stop_is_explained() -> None:
    running = _section(_doc("running.md"), "In the background")
    assert "setsid -f make run" in running and "sched stop" in running


def test_configuration_table_lists_every_setting_with_its_default() -> None:
    rows = _table_rows(_doc("configuration.md"))
    expected = {f"SCHED_{name.upper()}": name for name in Settings.model_fields}
    missing = sorted(set(expected) - set(rows))
    extra = sorted(set(rows) - set(expected))
    assert not missing, f"the configuration table lacks {missing}"
    assert not extra, f"the configuration table lists settings that do not exist: {extra}"
    wrong = {
        env: (rows[env], _default(name))
        for env, name in expected.items()
        if not _matches(rows[env], _default(name))
    }
    assert not wrong, f"documented defaults differ from Settings (doc, actual): {wrong}"


@pytest.mark.parametrize("word", ["web app", "Redis", "worker", "beat", "Flower", "database"])
def test_diagram_shows_every_piece(word: str) -> None:
    diagrams = re.findall(r"```\n(.*?)```", _section(_doc("design.md"), "How it works"), re.DOTALL)
    assert diagrams and word in diagrams[0]


def test_operating_notes_and_benchmarks_exist() -> None:
    notes = _doc("operations.md")
    for topic in ("Sizing", "noeviction", "appendonly", "Several workers and beats", "Faults"):
        assert topic in notes
    for series in ("sched_buckets_active", "sched_outbox_lag_events", "sched_queue_length"):
        assert series in notes
    assert "make bench" in _doc("benchmarks.md")
    assert "== cache ==" not in _doc("benchmarks.md")  # a table; the full output is make bench's
    assert "## The cache" in _doc("design.md")
    # The original is introduced before anything is compared with it.
    design = _doc("design.md")
    assert design.index("## The original") < design.index("different from the original")


def test_every_public_web_name_is_documented_with_its_parameters() -> None:
    api = _doc("api.md")
    for name in tasks.__all__:
        section = _section(api, f"`{name}`")
        value = getattr(tasks, name)
        if inspect.isfunction(value):
            assert f"def {name}(" in section, name
            for parameter in inspect.signature(value).parameters:
                assert parameter in section, (name, parameter)
            assert "Raises" in section or "raises" in section, name
            assert "Cost" in section or "cost" in section, name


def test_the_api_reference_explains_the_bucket_model() -> None:
    buckets = _section(_doc("api.md"), "Buckets")
    for word in ("Group 0", "single", "mixed", "forced", "has_force", "donor"):
        assert word in buckets, word


def test_every_extra_is_documented() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    install = _doc("install.md")
    for extra in extras:
        assert f"`[{extra}]`" in install, extra


# -- links -----------------------------------------------------------------------------


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    anchors = set()
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def _links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"\]\(([^)\s]+)\)", text)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    broken = []
    for link in _links(page):
        if re.match(r"[a-z]+:", link):
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists() or (
            anchor and (target.suffix != ".md" or anchor not in _anchors(target))
        ):
            broken.append(link)
    assert not broken, f"{page.name}: broken links {broken}"
