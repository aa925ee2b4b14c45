"""`hinotori metrics` with no controller: it reads .hinotori/metrics.db, draws five charts in
100 columns (one marker per release without colour), and refuses bad options with exit 2."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from hinotori.cli.metricscmd import charts, metrics
from hinotori.observe.metrics import MetricsStore, metrics_db
from tests.support import point

app = typer.Typer()
app.command()(metrics)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "hinotori.toml").write_text('[services.web]\ncommand = ["python3", "app.py"]\n')
    store = MetricsStore(metrics_db(tmp_path / ".hinotori"))
    now = time.time()
    store.write_sample([point(now - 600 + 10 * i, release=1, requests=100) for i in range(30)]
                       + [point(now - 300 + 10 * i, release=2, requests=50, s5=5)
                          for i in range(25)], {}, now)
    store.close()
    return tmp_path


def run(project: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, [*args, "--spec", str(project)])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return getattr(result.exception, "exit_code", 1), str(result.exception)
    return result.exit_code, result.stdout


def test_json_from_the_file_when_no_controller_runs(project: Path) -> None:
    code, out = run(project, "web", "--since", "1h", "--json")
    assert code == 0
    data = json.loads(out)
    assert {r["release"]: r["requests"] for r in data["releases"]} == {1: 3000, 2: 1250}
    code, out = run(project, "web", "--release", "v2", "--since", "1h", "--json")
    assert {p["release"] for p in json.loads(out)["points"]} == {2}


def test_charts_fit_100_columns_and_tell_releases_apart(project: Path) -> None:
    code, out = run(project, "web", "--since", "15m")
    assert code == 0
    for title in ("requests / s", "error rate", "p99 latency", "CPU", "memory"):
        assert title in out
    assert max(len(line) for line in out.splitlines()) <= 100
    assert "\x1b[" not in out  # not a terminal: no colour codes
    assert "v1" in out and "v2" in out and "10.00%" in out  # v2's error rate in the table


def test_without_colour_each_release_has_its_own_marker() -> None:
    now = time.time()
    data = {"since": now - 60, "until": now, "step": 10, "points": [
        {"t": now - 50 + 10 * i, "release": r, "rps": 1.0 * r, "error_rate": 0.0,
         "p99_ms": 5.0, "cpu": 1.0, "memory_bytes": 1 << 20} for r in (1, 2) for i in range(5)]}
    text = charts(data, width=80, color=False)
    legend = [line for line in text.splitlines() if " v1" in line or " v2" in line][:2]
    assert len(legend) == 2 and legend[0].split("┤")[1][:3] != legend[1].split("┤")[1][:3]


@pytest.mark.parametrize("args", [("web", "--since", "soon"), ("web", "--release", "latest"),
                                  ("web", "--step", "often")])
def test_bad_arguments_exit_2_naming_the_option(project: Path, args: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*args, "--spec", str(project)])
    assert result.exit_code == 2 and f"Invalid value for '{args[1]}'" in result.output


def test_an_unknown_service_is_named(project: Path) -> None:
    code, out = run(project, "nosuch")
    assert code == 1 and "no service 'nosuch'" in out and "web" in out
