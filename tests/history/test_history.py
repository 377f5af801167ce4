"""The whole system under load and faults, recorded and checked afterwards: two workers
(beat in one), a writer, three readers and two touchers for about 30 s, through a worker
SIGKILL, a worker paused, a FLUSHALL and Redis restarted empty.

The history stays in the test's tmp dir; its path and the checker's summary are printed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.source.schema import init_schema
from tests.history.checker import check_file
from tests.history.harness import Plan, Run
from tests.support import RedisServer, TestServers, postgres_schema_or_skip, sqlite_url_in

pytestmark = pytest.mark.slow


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, test_servers: TestServers
) -> Iterator[str]:
    if request.param == "sqlite":
        url = sqlite_url_in(tmp_path)
        init_schema(url).dispose()
        yield url
        return
    with postgres_schema_or_skip(test_servers) as url:
        init_schema(url).dispose()
        yield url


def test_a_recorded_history_under_faults_meets_the_targets(
    private_redis: RedisServer, database_url: str, tmp_path: Path
) -> None:
    plan = Plan()
    history = Run(plan, tmp_path, database_url, private_redis).execute()
    report = check_file(history)
    print(report.format())
    print(f"history: {history}")

    # The run itself did what it was meant to: enough of everything to judge.
    assert report.figures["faults"] == len(plan.faults), f"history: {history}"
    assert int(report.figures["commits"] or 0) > plan.seconds * plan.writes_per_second / 2
    assert int(report.figures["observations"] or 0) > 10_000
    assert int(report.figures["touches"] or 0) > 100
    violations = report.violations()
    assert not violations, f"history {history}:\n{report.format()}"
