"""Spec errors name the file, the line and the key; good specs load with their defaults."""

from __future__ import annotations

import pytest

from hinotori.errors import SpecError
from hinotori.spec import load_spec, parse_spec
from hinotori.spec.locate import key_lines
from tests.support import spec_error

GOOD = """\
[project]
name = "shop"

[router]
listen = "127.0.0.1:8080"

[services.web]
command = ["python3", "app.py"]
replicas = 3
health = { path = "/healthz", interval = "500ms", timeout = "2s" }
keep_previous = "10m"

[services.web.image]
steps = [
  { run = "echo hi" },
  { run = ["touch", "x"], env = { A = "1" } },
]
"""


def test_good_spec_loads_with_durations_in_seconds() -> None:
    spec = parse_spec(GOOD)
    web = spec.services["web"]
    assert web.replicas == 3
    assert web.health.interval == 0.5
    assert web.keep_previous == 600
    assert web.drain == 10  # default
    assert web.health.check().path == "/healthz"
    assert web.release_config({"X": "1"}).env == {"X": "1"}
    assert web.image.steps[1].run == ["touch", "x"]


def test_unknown_key_names_file_line_and_key() -> None:
    e = spec_error(GOOD.replace("replicas = 3", "replicaz = 3"))
    assert (e.file, e.line, e.key) == ("hinotori.toml", 9, "services.web.replicaz")
    assert "unknown key" in str(e)


def test_wrong_type_names_line_and_key() -> None:
    e = spec_error(GOOD.replace("replicas = 3", 'replicas = "three"'))
    assert (e.line, e.key) == (9, "services.web.replicas")


def test_bad_duration_inside_inline_table() -> None:
    e = spec_error(GOOD.replace('"500ms"', '"5 parsecs"'))
    assert (e.line, e.key) == (10, "services.web.health.interval")
    assert "invalid duration" in str(e)


def test_duration_must_be_a_string() -> None:
    e = spec_error(GOOD.replace('keep_previous = "10m"', "keep_previous = 600"))
    assert (e.line, e.key) == (11, "services.web.keep_previous")


def test_error_inside_array_of_inline_tables() -> None:
    e = spec_error(GOOD.replace('env = { A = "1" }', 'envy = { A = "1" }'))
    assert (e.line, e.key) == (16, "services.web.image.steps.1.envy")


def test_missing_required_key_points_at_its_table() -> None:
    e = spec_error(GOOD.replace('command = ["python3", "app.py"]\n', ""))
    assert e.key == "services.web.command" and e.line == 7


def test_toml_syntax_error_has_line() -> None:
    e = spec_error(GOOD.replace("[router]", "[router"))
    assert e.line == 4 and "TOML syntax" in str(e)


def test_all_problems_are_listed() -> None:
    e = spec_error(GOOD.replace("replicas = 3", "replicas = 0\nwat = 1"))
    assert "also:" in str(e)


def test_overlapping_routes_are_refused() -> None:
    text = GOOD + '\n[services.api]\ncommand = ["x"]\n'
    assert "match the same requests" in str(spec_error(text))
    parse_spec(text + 'path_prefix = "/api"\n')


def test_missing_file_says_what_to_do(tmp_path) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path)
    assert "hinotori init" in str(info.value)


def test_locator_ignores_keys_inside_strings_and_comments() -> None:
    lines = key_lines('a = "b = 1"  # c = 2\n[t]\n"quoted.key" = 1\nx.y = """\nz = 3\n"""\nw = 1\n')
    assert lines[("a",)] == 1
    assert ("b",) not in lines and ("c",) not in lines and ("t", "z") not in lines
    assert lines[("t", "quoted.key")] == 3
    assert lines[("t", "x", "y")] == 4
    assert lines[("t", "w")] == 7
