"""A careless user's command lines: every command and subcommand of the real app, walked from
its click tree, refuses an unknown option, a missing argument and a value that is not a number
or a duration with one line on stderr and exit 2, never a traceback. In-process through
``main()`` (the real entry point's code) for speed, plus a few real ``python -m hinotori`` runs."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import typer.main

from hinotori.cli import render
from hinotori.cli.app import app, is_click_error, main

ROOT = Path(__file__).resolve().parents[2]
# Options whose values the CLI parses itself (hinotori.cli.options): "abc" is none of them.
PARSED_METAVARS = {"DURATION", "MOMENT", "RELEASE", "STRATEGY", "FORMAT"}


def walk(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    subcommands = getattr(command, "commands", None)
    if subcommands is None:
        yield path, command
        return
    for name, sub in subcommands.items():
        yield from walk(sub, (*path, name))


COMMANDS = list(walk(typer.main.get_command(app)))


def base_type(command: Any, name: str) -> type | None:
    """The Python type a parameter is declared with (int for `limit: Annotated[int, …]`)."""
    hints = typing.get_type_hints(inspect.unwrap(command.callback), include_extras=True)
    hint = hints.get(name)
    while typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if args and len(args) == 1:  # X | None
        hint = args[0]
    return hint if isinstance(hint, type) else None


def arguments(command: Any) -> list[Any]:
    return [p for p in command.params if p.param_type_name == "argument" and p.required]


def placeholders(command: Any) -> list[str]:
    """A valid value for each required argument, so only the option under test is wrong."""
    return ["1" if base_type(command, p.name) is int else "web" for p in arguments(command)]


def checked_values() -> Iterator[tuple[tuple[str, ...], str]]:
    """(command line, the parameter it gets wrong) for every int, float or parsed option."""
    for path, command in COMMANDS:
        for p in command.params:
            parsed = getattr(p, "metavar", None) in PARSED_METAVARS
            if not parsed and base_type(command, p.name) not in (int, float):
                continue
            if p.param_type_name == "argument" and not p.required:
                # An optional argument comes after the required ones (`lab up COUNT`): the bad
                # value must be given, or the command would run for real.
                yield (*path, *placeholders(command), "abc"), p.name
            elif p.param_type_name == "argument":
                line = [*path, *["abc" if a is p else v for a, v in
                                 zip(arguments(command), placeholders(command), strict=True)]]
                yield tuple(line), p.name
            else:
                yield (*path, *placeholders(command), p.opts[0], "abc"), p.opts[0]


def run(argv: tuple[str, ...], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["hinotori", *argv])
    with pytest.raises(SystemExit) as exit_:
        main()
    out, err = capsys.readouterr()
    code = exit_.value.code
    return (code if isinstance(code, int) else 1), out, err


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(autouse=True)
def nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No spec here: a command that wrongly got past its parsing fails on that, not on a project.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")


def test_the_walk_sees_every_command_and_subcommand() -> None:
    paths = {" ".join(p) for p, _ in COMMANDS}
    assert {"deploy", "logs", "chaos", "image inspect", "image diff", "deployment show",
            "checks generate", "history"} <= paths and len(paths) >= 31


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=" ".join)
def test_an_unknown_option_is_one_line_and_exit_2(path: tuple[str, ...], capsys: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = run((*path, "--bogus-option"), capsys, monkeypatch)
    line = one_line(err)
    assert code == 2 and "--bogus-option" in line and f"{' '.join(path)} --help" in line


@pytest.mark.parametrize("path", [p for p, c in COMMANDS if arguments(c)], ids=" ".join)
def test_a_missing_argument_is_one_line_and_exit_2(path: tuple[str, ...], capsys: Any,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = run(path, capsys, monkeypatch)
    assert code == 2 and "Missing argument" in one_line(err)


CHECKED = list(checked_values())


def test_the_value_checks_cover_numbers_durations_and_moments() -> None:
    lines = {" ".join(argv) for argv, _ in CHECKED}
    for expected in ("logs --limit abc", "chaos web --probability abc",
                     "chaos web --interval abc", "deploy web --lock-wait abc",
                     "deployment show abc", "audit --until abc", "metrics web --step abc",
                     "deploy web --strategy abc", "verify web --retry-timeout abc"):
        assert expected in lines


@pytest.mark.parametrize(("argv", "name"), CHECKED, ids=[" ".join(a) for a, _ in CHECKED])
def test_a_value_that_is_not_one_is_one_line_and_exit_2(argv: tuple[str, ...], name: str,
                                                       capsys: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = run(argv, capsys, monkeypatch)
    line = one_line(err)
    assert code == 2 and f"Invalid value for '{name}'" in line, line


@pytest.mark.parametrize(("argv", "option"), [
    (("chaos", "web", "--probability", "5"), "--probability"),
    (("deployment", "show", "99999999999999999999"), "number"),
    (("deploy", "web", "--release", "v99999999999999999999"), "--release"),
    (("logs", "--limit", "99999999999999999999"), "--limit"),
    (("deploy", "web", "--lock-wait", "forever"), "--lock-wait"),
    (("audit", "--until", "garbage"), "--until"),
    (("logs", "--since", "garbage"), "--since"),
    (("metrics", "web", "--since", "garbage"), "--since"),
])
def test_out_of_range_and_garbage_name_their_option(argv: tuple[str, ...], option: str,
                                                    capsys: Any,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = run(argv, capsys, monkeypatch)
    assert code == 2 and f"Invalid value for '{option}'" in one_line(err)


def test_no_arguments_show_the_help(capsys: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    for argv in ((), ("image",)):
        code, out, err = run(argv, capsys, monkeypatch)
        assert code == 2 and "Usage:" in out and "Traceback" not in out + err


def test_a_user_error_in_a_command_still_prints_as_one(capsys: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = run(("status",), capsys, monkeypatch)  # no spec here: a SpecError
    assert code == 2 and err.startswith("error:") and "Traceback" not in err


def test_clicks_own_exceptions_are_shown_the_same_way(capsys: Any) -> None:
    """Older Typer releases raise click's exceptions, newer ones their bundled copy: main()
    recognises both by what they do, not by class."""
    command = click.Command("deploy")
    ctx = click.Context(command, info_name="hinotori deploy")
    for error in (click.exceptions.NoSuchOption("--bogus", ctx=ctx),
                  click.BadParameter("not a number", ctx=ctx, param_hint="'--limit'")):
        assert is_click_error(error)
        assert render.print_usage_error(error) == 2
        line = one_line(capsys.readouterr().err)
        assert line.startswith("error: ") and "(see `hinotori deploy --help`)" in line
    assert is_click_error(typer.BadParameter("x"))
    assert not is_click_error(ValueError("x")) and not is_click_error(KeyError("exit_code"))


@pytest.mark.parametrize("argv", [("deploy",), ("deploy", "web", "--bogus"),
                                  ("chaos", "web", "--probability", "5")], ids=" ".join)
def test_the_real_entry_point(argv: tuple[str, ...], tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "hinotori", *argv], capture_output=True,
                            text=True, cwd=tmp_path, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"})
    assert result.returncode == 2 and result.stdout == ""
    assert one_line(result.stderr).startswith("error: ")


def help_rows(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
              *argv: str) -> dict[str, tuple[str, str]]:
    """{command: (panel, its line)} from `hinotori … --help` in 200 columns."""
    code, text, _ = run((*argv, "--help"), capsys, monkeypatch)
    assert code == 0
    rows: dict[str, tuple[str, str]] = {}
    panel, last = "", ""
    for line in text.splitlines():
        if line.startswith("╭─"):
            panel = line.strip("╭─╮ ").split(" ─")[0]
        elif line.startswith("│ ") and panel not in ("Options", "Arguments"):
            cells = line.strip("│ ").split(None, 1)
            if line.startswith("│  ") and last:  # a wrapped line: marked on the row above
                rows[last] = (panel, f"{rows[last][1]} ¶ {line.strip('│ ')}")
            elif cells:
                last = cells[0]
                rows[last] = (panel, " ".join(cells[1].split()) if len(cells) > 1 else "")
    return rows


def docstring_line(command: Any) -> str:
    doc = command.callback.__doc__ if command.callback else command.help
    return " ".join(inspect.cleandoc(doc or "").split("\n\n")[0].split())


def test_help_groups_every_command_in_a_panel_with_a_whole_sentence(
        capsys: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    root = typer.main.get_command(app)
    rows = help_rows(capsys, monkeypatch)
    visible = {name for name, c in root.commands.items() if not c.hidden}
    assert set(rows) == visible and "history" not in rows
    panels = {panel for panel, _ in rows.values()}
    assert "Commands" not in panels and {"Lifecycle", "Canary", "Observe", "Images",
                                         "Burn"} <= panels
    assert rows["deploy"][0] == "Lifecycle" and rows["promote"][0] == "Canary"
    assert rows["chaos"][0] == "Burn" and rows["gc"][0] == "Images"
    for name in visible:
        command = root.commands[name]
        line = rows[name][1]
        expected = docstring_line(command) if not hasattr(command, "commands") else \
            " ".join((command.help or "").split())
        # One line each in 200 columns: a docstring's line break would show as a row cut
        # mid-sentence ("… hosts and" ¶ "router keep serving …").
        assert "¶" not in line and line == expected and line.endswith("."), (name, line)


def test_a_subgroups_lines_are_whole_and_keep_their_brackets(
        capsys: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = help_rows(capsys, monkeypatch, "checks")
    assert rows["generate"][1].startswith("Print starter [[services.NAME.checks]] tables")
    assert rows["generate"][1].endswith("processes and health endpoint.")
