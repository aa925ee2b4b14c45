"""`hinotori logs` against a logs.db, no controller: filters, --json, errors with hints.
The command is a plain Typer function; here it runs in a one-command app of its own."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from hinotori.cli.logcmds import logs
from hinotori.cli.options import moment, release
from hinotori.observe.logs import LogsError, LogStore, logs_db
from tests.support import put

app = typer.Typer()
app.command()(logs)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "hinotori.toml").write_text('[services.web]\ncommand = ["python3", "app.py"]\n')
    return tmp_path


def fill(project: Path) -> None:
    store = LogStore(logs_db(project / ".hinotori"))
    now = time.time()
    put(store, "web-old", ["v1 started", "v1 error: boom"], release=1, ts=now - 3600)
    put(store, "web-new", ["v2 started", "v2 serving"], release=2, ts=now - 5)
    put(store, "db-1", ["db ready"], service="db", ts=now - 5)
    store.close()


def cli(project: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, [*args, "--spec", str(project)])
    if isinstance(result.exception, LogsError):
        return result.exit_code, str(result.exception)
    return result.exit_code, result.stdout


def test_lines_of_every_service_oldest_first(project: Path) -> None:
    fill(project)
    code, out = cli(project)
    assert code == 0
    assert [ln.split(" | ", 1)[1] for ln in out.splitlines()] == [
        "v1 started", "v1 error: boom", "v2 started", "v2 serving", "db ready"]
    assert " web v1 web-old stdout | " in out.splitlines()[0]


def test_filters(project: Path) -> None:
    fill(project)
    assert cli(project, "web", "--release", "v1")[1].count("\n") == 2
    assert "v2 serving" in cli(project, "--host", "web-new")[1]
    assert cli(project, "--since", "10m")[1].count("\n") == 3  # web-old's lines are an hour old
    assert cli(project, "--grep", "BOOM")[1].count("\n") == 1
    assert cli(project, "web", "--limit", "1")[1].strip().endswith("v2 serving")


def test_json(project: Path) -> None:
    fill(project)
    rows = json.loads(cli(project, "db", "--json")[1])
    assert rows == [{**rows[0], "service": "db", "release": 1, "host": "db-1",
                     "source": "stdout", "offset": 0, "line": "db ready"}]


def test_no_logs_db_yet_says_what_to_do(project: Path) -> None:
    code, text = cli(project)
    assert code != 0 and "no logs yet" in text and "hinotori up" in text


def test_bad_release_and_since_are_usage_errors(project: Path) -> None:
    assert release("v12") == 12 and release("3") == 3
    with pytest.raises(ValueError, match="not a release"):
        release("latest")
    assert time.time() - 660 < moment("10m") < time.time() - 540
    assert moment("1764000000") == 1764000000.0
    with pytest.raises(ValueError, match="neither a duration"):
        moment("yesterday")
    # Refused while the command line is read: exit 2, before logs.db is even looked for.
    for option, bad in (("--release", "latest"), ("--since", "yesterday")):
        result = CliRunner().invoke(app, [option, bad, "--spec", str(project)])
        assert result.exit_code == 2 and option in result.output, result.output
