"""A spec file that is wrong in any way ends in a SpecError naming the file (and line and key
where known) and exit code 2: never a traceback, never a value silently converted."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hinotori.errors import SpecError
from hinotori.health import probe
from hinotori.model import HealthCheck
from hinotori.spec import load_spec, parse_spec
from hinotori.spec.read import MAX_SPEC_BYTES

ROOT = Path(__file__).resolve().parents[2]
SPEC = """\
[project]
name = "shop"

[services.web]
command = ["python3", "app.py"]
replicas = 2
health = { path = "/healthz", status = 200 }
strategy = { kind = "canary", steps = [50, 100], sticky = true, analysis = { max_p99_ratio = 1.5 } }

[services.web.image]
context = "."

[[services.web.checks]]
http = "/healthz"
status = 200
"""
# Line numbers in SPEC, for the assertions below.
REPLICAS, HEALTH, STRATEGY, CONTEXT, HTTP = 6, 7, 8, 11, 14


def write(tmp_path: Path, content: str | bytes, name: str = "hinotori.toml") -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def load_error(path: Path) -> SpecError:
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.file == str(path) and str(info.value).startswith(str(path))
    return info.value


def parse_error(text: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        parse_spec(text, file="hinotori.toml")
    return info.value


# -- files that are not a spec ---------------------------------------------------------------

def test_not_utf8_names_its_line(tmp_path: Path) -> None:
    e = load_error(write(tmp_path, SPEC.encode().replace(b'"shop"', b'"sh\xffp"')))
    assert e.line == 2 and "not UTF-8" in str(e) and "0xff" in str(e)


def test_a_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    assert load_spec(write(tmp_path, b"\xef\xbb\xbf" + SPEC.encode())).spec.project.name == "shop"


def test_five_thousand_nested_brackets(tmp_path: Path) -> None:
    e = load_error(write(tmp_path, SPEC + "a = " + "[" * 5000 + "]" * 5000 + "\n"))
    assert e.line == 16 and "nested more than 100 deep" in str(e)
    e = load_error(write(tmp_path, SPEC + "a = " + "{ a = " * 5000 + "1" + " }" * 5000))
    assert e.line == 16


def test_deep_but_bounded_nesting_is_a_located_type_error() -> None:
    e = parse_error(SPEC.replace('replicas = 2', "replicas = " + "[" * 99 + "]" * 99))
    assert (e.line, e.key) == (REPLICAS, "services.web.replicas")


def test_long_dotted_keys(tmp_path: Path) -> None:
    """50,000 parts took tomllib 100 s: refused before parsing, at their line."""
    e = load_error(write(tmp_path, SPEC + "a" + ".a" * 50_000 + " = 1\n"))
    assert e.line == 16 and "more than 64 dotted parts" in str(e)
    e = load_error(write(tmp_path, "[" + ".".join(['"q"'] * 100) + "]\n" + SPEC))
    assert e.line == 1 and "dotted parts" in str(e)
    e = load_error(write(tmp_path, "a" + ".a" * 63 + " = 1\n" + SPEC))
    assert (e.line, e.key) == (1, "a") and "unknown key" in str(e)


def test_spec_file_that_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "hinotori.toml").mkdir()
    e = load_error(tmp_path / "hinotori.toml")
    assert "directory" in str(e)
    with pytest.raises(SpecError, match="directory"):
        load_spec(tmp_path)  # the project directory whose spec is a directory


def test_missing_empty_and_nul(tmp_path: Path) -> None:
    assert "no spec file here" in str(load_error(tmp_path / "nope.toml"))
    assert "no spec file here" in str(load_error(write(tmp_path, "x", "f") / "hinotori.toml"))
    assert "empty" in str(load_error(write(tmp_path, "# nothing but a comment\n\n")))
    e = load_error(write(tmp_path, SPEC.replace('"shop"', '"sh\0p"')))
    assert e.line == 2 and "\\x00" in str(e)
    e = load_error(write(tmp_path, SPEC.replace('"python3"', '"py\\u0000"')))
    assert (e.line, e.key) == (5, "services.web.command.0") and "NUL" in str(e)


def test_huge_file_is_refused_before_parsing(tmp_path: Path) -> None:
    e = load_error(write(tmp_path, SPEC + "# padding\n" * (MAX_SPEC_BYTES // 10)))
    assert "larger than 1 MiB" in str(e)
    load_spec(write(tmp_path, SPEC + "#" * (MAX_SPEC_BYTES - len(SPEC) - 1) + "\n"))


def test_a_fifo_is_not_read(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "hinotori.toml")  # opening it would block until a writer came
    assert "not a regular file" in str(load_error(tmp_path / "hinotori.toml"))


def test_numbers_too_large_for_toml(tmp_path: Path) -> None:
    e = load_error(write(tmp_path, SPEC.replace("replicas = 2", f"replicas = {2**63}")))
    assert (e.line, e.key) == (REPLICAS, "services.web.replicas") and "64-bit" in str(e)
    e = load_error(write(tmp_path, SPEC.replace("replicas = 2", "replicas = " + "9" * 5000)))
    assert "too large" in str(e)


# -- types are the documented ones ------------------------------------------------------------

@pytest.mark.parametrize(("old", "new", "line", "key", "said"), [
    ("replicas = 2", 'replicas = "3"', REPLICAS, "services.web.replicas",
     'expected an integer, got a string ("3"): write it without quotes'),
    ("replicas = 2", "replicas = true", REPLICAS, "services.web.replicas",
     "expected an integer, got a boolean (true)"),
    ("replicas = 2", "replicas = 2.0", REPLICAS, "services.web.replicas",
     "expected an integer, got a float (2.0)"),
    ("status = 200 }", 'status = "200" }', HEALTH, "services.web.health.status",
     "expected an integer"),
    ("sticky = true", 'sticky = "true"', STRATEGY, "services.web.strategy.sticky",
     "expected true or false"),
    ("sticky = true", "sticky = 1", STRATEGY, "services.web.strategy.sticky",
     "expected true or false, got an integer (1)"),
    ("max_p99_ratio = 1.5", "max_p99_ratio = true", STRATEGY,
     "services.web.strategy.analysis.max_p99_ratio", "expected a number"),
    ("max_p99_ratio = 1.5", "max_p99_ratio = nan", STRATEGY,
     "services.web.strategy.analysis.max_p99_ratio", "finite number"),
    ("steps = [50, 100]", 'steps = [50, "100"]', STRATEGY, "services.web.strategy.steps.1",
     "expected an integer"),
    ('command = ["python3", "app.py"]', 'command = "python3 app.py"', 5, "services.web.command",
     "expected an array, got a string"),
    ('name = "shop"', "name = 1979-05-27", 2, "project.name", "got a date"),
    ("status = 200\n", 'status = "200"\n', HTTP + 1, "services.web.checks.0.status",
     "expected an integer"),
])
def test_wrong_toml_type(old: str, new: str, line: int, key: str, said: str) -> None:
    e = parse_error(SPEC.replace(old, new, 1))
    assert (e.file, e.line, e.key) == ("hinotori.toml", line, key)
    assert said in str(e)


def test_a_float_key_takes_an_integer_and_hours_an_array() -> None:
    spec = parse_spec(SPEC.replace("max_p99_ratio = 1.5", "max_p99_ratio = 2")
                      + '\n[services.web.chaos]\nhours = [8, 18]\n')
    web = spec.services["web"]
    assert web.strategy.analysis.max_p99_ratio == 2.0  # type: ignore[union-attr]
    assert web.chaos is not None and web.chaos.hours == (8, 18)


# -- values that would reach a request line, or files outside the project --------------------

@pytest.mark.parametrize(("old", "new", "line", "key"), [
    ('path = "/healthz"', 'path = "/healthz\\r\\nX-Evil: 1"', HEALTH, "services.web.health.path"),
    ('path = "/healthz"', 'path = "/health z"', HEALTH, "services.web.health.path"),
    ('path = "/healthz"', 'path = "healthz"', HEALTH, "services.web.health.path"),
    ("replicas = 2", 'replicas = 2\npath_prefix = "/a\\tb"', REPLICAS + 1,
     "services.web.path_prefix"),
    ("replicas = 2", 'replicas = 2\nhosts = ["ok.example", "evil\\r\\n.example"]', REPLICAS + 1,
     "services.web.hosts.1"),
    ('http = "/healthz"', 'http = "/healthz\\nX: 1"', HTTP, "services.web.checks.0.http"),
])
def test_request_line_values_are_visible_ascii(old: str, new: str, line: int, key: str) -> None:
    e = parse_error(SPEC.replace(old, new, 1))
    assert (e.line, e.key) == (line, key)
    assert "visible ASCII" in str(e) or "start with '/'" in str(e)


def test_probe_refuses_a_path_with_control_characters() -> None:
    """Defence in depth: even a HealthCheck built without the spec never sends CR/LF."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    try:
        address = f"127.0.0.1:{server.getsockname()[1]}"
        result = asyncio.run(probe(address, HealthCheck(path="/x\r\nHost: evil")))
        assert not result.ok and "refused to send" in result.detail
        with pytest.raises(TimeoutError):
            server.accept()  # nothing connected
    finally:
        server.close()


def test_context_outside_the_project_needs_allow(tmp_path: Path) -> None:
    project = tmp_path / "a" / "b"
    project.mkdir(parents=True)
    for context in ("../..", str(tmp_path), "sub/../../.."):
        e = load_error(write(project, SPEC.replace('context = "."', f'context = "{context}"')))
        assert (e.line, e.key) == (CONTEXT, "services.web.image.context")
        assert "allow_outside_context = true" in str(e)
    (project / "link").symlink_to(tmp_path)
    e = load_error(write(project, SPEC.replace('context = "."', 'context = "link"')))
    assert e.key == "services.web.image.context"
    allowed = SPEC.replace('context = "."', 'context = "../.."\nallow_outside_context = true')
    assert load_spec(write(project, allowed)).spec.services["web"].image.context == "../.."
    inside = SPEC.replace('context = "."', f'context = "{project}/src"')
    load_spec(write(project, inside))  # absolute, but inside the project


@pytest.mark.parametrize(("listen", "warned"), [
    ("0.0.0.0:7000", True), ("[::]:7000", True), ("192.0.2.1:7000", True),
    ("controller.example:7000", True), ("127.0.0.1:0", False), ("127.1.2.3:7000", False),
    ("localhost:7000", False), ("[::1]:7000", False)])
def test_non_loopback_controller_listen_is_warned_about(tmp_path: Path, listen: str,
                                                        warned: bool) -> None:
    loaded = load_spec(write(tmp_path, f'[controller]\nlisten = "{listen}"\n\n' + SPEC))
    assert bool(loaded.warnings) == warned
    if warned:
        assert loaded.warnings[0].startswith(f"{tmp_path / 'hinotori.toml'}:2: controller.listen")


# -- the CLI ---------------------------------------------------------------------------------

def test_up_prints_the_listen_warning_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from hinotori.cli import controlcmds

    started = []
    monkeypatch.setattr(controlcmds, "_start_detached", started.append)
    controlcmds.up(write(tmp_path, f'[controller]\nlisten = "0.0.0.0:7000"\n\n{SPEC}'), True)
    err = capsys.readouterr().err
    assert len(started) == 1 and err.count("warning:") == 1
    assert ":2: controller.listen: 0.0.0.0:7000 is not a loopback address" in err


@pytest.mark.parametrize(("content", "where"), [
    (SPEC.replace("replicas = 2", 'replicas = "3"').encode(),
     f":{REPLICAS}: services.web.replicas: expected an integer"),
    (b"[project]\nname = \"\xc3\x28\"\n", ":2: not UTF-8"),
])
def test_cli_exits_2_without_a_traceback(tmp_path: Path, content: bytes, where: str) -> None:
    path = write(tmp_path, content)
    done = subprocess.run([sys.executable, "-m", "hinotori", "status", "--spec", str(path)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "300"})
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and f"{path}{where}" in done.stderr
