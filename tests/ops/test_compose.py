"""docker-compose.yml and the Dockerfile, checked without a container engine.

Every service command must be one that works outside compose: a ``sched`` command the
CLI knows, or ``celery -A tasks`` with options Celery accepts and queues the app routes.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from celery.bin.celery import celery as celery_cli
from click.testing import CliRunner

import celeryconfig
from tasks.celery import QUEUES, app
from tasks.ops.cli import cli
from tasks.settings import Settings
from tests.processes import REPO

COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
PYTHON_SERVICES = ("db-init", "worker", "beat", "flower", "metrics")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def _services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services = compose["services"]
    assert isinstance(services, dict)
    return services


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def test_every_service_is_there(compose: dict[str, Any]) -> None:
    assert set(_services(compose)) >= {"redis", "postgres", *PYTHON_SERVICES}


def test_redis_never_evicts_and_keeps_its_data(compose: dict[str, Any]) -> None:
    redis = _services(compose)["redis"]
    command = [str(part) for part in redis["command"]]
    assert command[0] == "redis-server"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(str(v).endswith(":/data") for v in redis["volumes"])
    assert "redis-cli" in " ".join(redis["healthcheck"]["test"])


def test_postgres_has_a_healthcheck_and_a_volume(compose: dict[str, Any]) -> None:
    postgres = _services(compose)["postgres"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert any("/var/lib/postgresql/data" in str(v) for v in postgres["volumes"])


def test_python_services_share_the_one_image(compose: dict[str, Any]) -> None:
    for name in PYTHON_SERVICES:
        service = _services(compose)[name]
        assert service.get("build") == ".", name
        assert service.get("image") == "sched-cache:latest", name


def test_workers_start_after_the_schema_exists(compose: dict[str, Any]) -> None:
    services = _services(compose)
    assert services["db-init"]["command"] == ["sched", "db", "init"]
    assert services["db-init"]["restart"] == "no"
    assert services["db-init"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("worker", "beat", "flower"):
        depends = services[name]["depends_on"]
        assert depends["db-init"]["condition"] == "service_completed_successfully", name
        assert depends["redis"]["condition"] == "service_healthy", name


def test_sched_commands_exist_in_the_cli(compose: dict[str, Any]) -> None:
    runner = CliRunner()
    seen = 0
    for name, service in _services(compose).items():
        command = [str(part) for part in service.get("command") or []]
        if command[:1] != ["sched"]:
            continue
        seen += 1
        # --help after the real arguments: Click still parses (and rejects) every
        # option name, so a misspelt option or command fails here.
        result = runner.invoke(cli, [*command[1:], "--help"], prog_name="sched")
        assert result.exit_code == 0, (name, result.output)
        assert result.output.startswith(f"Usage: sched {' '.join(_words(command[1:]))}"), name
    assert seen >= 2


def _words(args: list[str]) -> list[str]:
    words = []
    for arg in args:
        if arg.startswith("-"):
            break
        words.append(arg)
    return words


def test_celery_commands_name_the_app_and_its_queues(compose: dict[str, Any]) -> None:
    routed = {queue.name for queue in app.conf.task_queues}
    assert routed == set(QUEUES)
    runner = CliRunner()
    kinds = set()
    for name, service in _services(compose).items():
        command = [str(part) for part in service.get("command") or []]
        if command[:1] != ["celery"]:
            continue
        assert command[1:3] == ["-A", "tasks"], name
        kind = command[3]
        kinds.add(kind)
        if "-Q" in command:
            queues = set(command[command.index("-Q") + 1].split(","))
            assert queues == routed, (name, queues)
        result = runner.invoke(celery_cli, [*command[1:], "--help"])
        assert result.exit_code == 0, (name, result.output)
    assert kinds == {"worker", "beat"}


def test_every_sched_variable_is_a_setting(compose: dict[str, Any]) -> None:
    known = {f"SCHED_{name.upper()}" for name in Settings.model_fields}
    text = COMPOSE.read_text() + DOCKERFILE.read_text()
    used = set(re.findall(r"\bSCHED_[A-Z0-9_]+", text))
    for service in _services(compose).values():
        used |= {key for key in _env(service) if key.startswith("SCHED_")}
    assert used, "no SCHED_ variable at all?"
    assert used <= known, used - known


def test_flower_has_basic_auth_from_the_environment(compose: dict[str, Any]) -> None:
    flower = _services(compose)["flower"]
    assert flower["command"][:2] == ["sched", "flower"]
    env = _env(flower)
    assert env["SCHED_FLOWER_USER"]
    # No default password: compose refuses to start without one.
    assert re.fullmatch(r"\$\{SCHED_FLOWER_PASSWORD:\?[^}]+\}", env["SCHED_FLOWER_PASSWORD"])
    assert "password" not in " ".join(flower["command"]).lower()
    assert flower["healthcheck"]["test"]


def test_no_pickle_anywhere() -> None:
    for path in (COMPOSE, DOCKERFILE, REPO / "celeryconfig.py"):
        assert "pickle" not in path.read_text().lower(), path
    assert celeryconfig.accept_content == ["json"]


def test_dockerfile_installs_the_project_with_its_service_extras() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.1[1-9]", text, re.MULTILINE)
    assert "COPY celeryconfig.py" in text
    assert re.search(r'pip install --no-deps [^\n]*"\.\[[^\]]*postgres[^\]]*flower[^\]]*\]"', text)
    assert re.search(r"^USER (?!root)", text, re.MULTILINE)


def test_dockerfile_installs_the_lock_and_nothing_unlocked() -> None:
    """Every pip install in the image is hash-checked or takes no dependencies, and
    the exported file holds every service extra pinned."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    installs = re.findall(r"pip install [^\n&]*", text)
    assert installs
    for line in installs:
        assert "--require-hashes" in line or "--no-deps" in line, line
    image = (REPO / "requirements" / "image.txt").read_text()
    assert "-r requirements/image.txt" in text
    for name in ("celery", "redis", "psycopg", "psycopg-binary", "flower", "sqlalchemy"):
        assert re.search(rf"^{name}==[0-9][^ ]* ", image, re.MULTILINE | re.IGNORECASE), name
    assert "--hash=sha256:" in image


def test_metrics_are_served_with_basic_auth_from_the_environment(compose: dict[str, Any]) -> None:
    metrics = _services(compose)["metrics"]
    command = [str(part) for part in metrics["command"]]
    assert command[:3] == ["sched", "metrics", "--serve"]
    # Listening beyond the container's loopback: `sched metrics` refuses without auth.
    assert command[command.index("--address") + 1] == "0.0.0.0"
    env = _env(metrics)
    assert env["SCHED_METRICS_USER"]
    assert re.fullmatch(r"\$\{SCHED_METRICS_PASSWORD:\?[^}]+\}", env["SCHED_METRICS_PASSWORD"])
    assert all(str(port).startswith("127.0.0.1:") for port in metrics["ports"])


def test_the_dashboard_charts_only_series_we_export() -> None:
    from tasks.ops.metrics import status_metrics
    from tasks.ops.status import LastUsedStatus, OutboxStatus, StatusReport

    report = StatusReport(
        generated_at=datetime.now(UTC),
        redis_url="redis://x",
        buckets=[],
        outbox=OutboxStatus(
            watermark=0,
            newest_id=0,
            lag=0,
            gaps=0,
            oldest_gap_seconds=None,
            events_applied=None,
            last_poll_at=None,
        ),
        last_used=LastUsedStatus(
            pending_db_writes=0, db_flushes=None, db_rows_written=None, last_db_flush_at=None
        ),
        rebuilds=None,
        stats={},
    )
    exported = {
        family.name + ("_total" if family.type == "counter" else "")
        for family in status_metrics(report)
    } | {"sched_queue_length", "sched_broker_up"}
    dashboard = json.loads((REPO / "dashboards" / "sched.json").read_text())
    charted = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bsched_[a-z_]+", target["expr"])
    }
    assert charted, "no series in the dashboard?"
    assert charted <= exported, charted - exported


def test_redis_and_postgres_are_reachable_from_this_machine_only(compose: dict[str, Any]) -> None:
    services = _services(compose)
    for name, inside in (("redis", "6379"), ("postgres", "5432")):
        ports = [str(port) for port in services[name]["ports"]]
        assert ports, name
        for port in ports:
            host, _, container = port.rpartition(":")
            assert host.startswith("127.0.0.1:"), (name, port)
            assert container == inside, (name, port)


def test_the_demo_profile_seeds_once_the_schema_exists(compose: dict[str, Any]) -> None:
    seed = _services(compose)["seed"]
    assert seed["command"] == ["sched", "demo", "seed"]
    assert seed["restart"] == "no"
    assert seed["profiles"] == ["demo"]  # never into a database by default
    assert seed["depends_on"]["db-init"]["condition"] == "service_completed_successfully"
    assert "--profile demo" in COMPOSE.read_text()


def _shell_words(test: list[str]) -> list[str]:
    """A healthcheck's command as compose hands it to the container: ``$$`` is ``$``."""
    import shlex

    assert test[0] in ("CMD", "CMD-SHELL"), test
    words = shlex.split(test[1]) if test[0] == "CMD-SHELL" else test[1:]
    return [word.replace("$$", "$") for word in words]


def test_the_worker_is_healthy_while_it_answers_a_ping(compose: dict[str, Any]) -> None:
    check = _services(compose)["worker"]["healthcheck"]
    words = _shell_words(check["test"])
    assert words[:5] == ["celery", "-A", "tasks", "inspect", "ping"]
    # Its own node only (Celery names it celery@<hostname>), not any worker's answer.
    assert words[words.index("--destination") + 1] == "celery@$HOSTNAME"
    result = CliRunner().invoke(celery_cli, [*words[1:], "--help"])
    assert result.exit_code == 0, result.output
    timeout = float(words[words.index("--timeout") + 1])
    assert timeout < _seconds(check["timeout"])
    assert check["start_period"]


def _seconds(value: str) -> float:
    assert value.endswith("s"), value
    return float(value[:-1])


def test_beat_is_healthy_while_its_schedule_file_is_fresh(
    compose: dict[str, Any], tmp_path: Any
) -> None:
    import os
    import subprocess
    import sys
    import time

    beat = _services(compose)["beat"]
    command = [str(part) for part in beat["command"]]
    schedule = command[command.index("--schedule") + 1]
    test = beat["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    assert f"{schedule}*" in test[3]
    # The check itself, run here against a file of this test's.
    script = test[3].replace(schedule, str(tmp_path / "celerybeat-schedule"))

    def healthy() -> bool:
        return subprocess.run([sys.executable, "-c", script], timeout=30).returncode == 0

    assert not healthy()  # no file: beat never synced
    written = tmp_path / "celerybeat-schedule.db"
    written.write_bytes(b"")
    assert healthy()
    stale = time.time() - 600
    os.utime(written, (stale, stale))
    assert not healthy()
