"""Every command starts by importing hinotori.cli.app (Typer needs every command's signature),
so what that import pulls in is paid by `hinotori bake` as much as by `hinotori logs`. The heavy
stacks a command uses are imported inside it; this keeps them from creeping back to the top."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hinotori import cli
from hinotori.spec.read import SPEC_FILE

# Imported only by the commands that need them (see the comments at their lazy imports).
NOT_AT_START = ("httpx", "asyncio", "docker", "requests", "fastapi", "uvicorn",
                "hinotori.observe.logs", "hinotori.observe.metrics", "hinotori.observe.drift",
                "hinotori.controller.daemon", "hinotori.controller.serve", "hinotori.health",
                "hinotori.verify.survey",
                # the spec's models (pydantic's schema building is ~130 ms) and what loads them
                "pydantic", "hinotori.spec.schema", "hinotori.spec.load", "hinotori.project",
                "hinotori.controller.client", "hinotori.releases", "hinotori.store",
                "hinotori.bake", "hinotori.verify", "hinotori.providers.registry", "hinotori.model")


def heavy_modules_loaded(*imports: str) -> list[str]:
    """Which of NOT_AT_START a fresh interpreter holds after importing ``imports``."""
    code = (f"import json, sys\nfor name in {list(imports)!r}: __import__(name)\n"
            f"print(json.dumps([m for m in {list(NOT_AT_START)!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out)


def test_cli_start_up_imports_no_heavy_stack() -> None:
    assert heavy_modules_loaded("hinotori.cli.app") == []


def test_no_command_module_loads_a_heavy_stack() -> None:
    # Every module of hinotori.cli in one interpreter, in turn: what each newly loads names
    # the culprit (the test above would only say that something did).
    modules = sorted(f"hinotori.cli.{m.stem}" for m in Path(cli.__file__).parent.glob("*.py")
                     if m.stem != "__init__")
    code = (f"import json, sys\nfound = {{}}\nfor name in {modules!r}:\n    __import__(name)\n"
            f"    found[name] = [m for m in {list(NOT_AT_START)!r} if m in sys.modules]\n"
            "print(json.dumps(found))")
    found = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                      text=True, check=True).stdout)
    assert len(found) > 25
    assert {name: loaded for name, loaded in found.items() if loaded} == {}


def test_constants_the_cli_keeps_match_their_sources() -> None:
    # Option defaults and choices the CLI states itself so that --help needs no heavy import.
    from hinotori.bake.archive import COMPRESSIONS
    from hinotori.bake.gc import DEFAULT_KEEP
    from hinotori.cli import imagecmds, imageiocmds, quick

    assert imagecmds.DEFAULT_KEEP == DEFAULT_KEEP
    assert imageiocmds.COMPRESSIONS == COMPRESSIONS
    assert quick.SPEC_FILE == SPEC_FILE


@pytest.mark.parametrize("package", ["hinotori.spec", "hinotori.bake", "hinotori.verify"])
def test_a_lazy_package_still_names_everything_it_did(package: str) -> None:
    # Each loads a name's submodule on first use (PEP 562); every name in __all__ must still
    # be the submodule's own object, and a name it does not have an AttributeError.
    module = importlib.import_module(package)
    homes = {name: sub for sub, names in module._EXPORTS.items() for name in names}
    for name in module.__all__:
        home = importlib.import_module(f"{package}.{homes[name]}")
        assert getattr(module, name) is getattr(home, name), name
    assert sorted(module.__all__) == sorted(homes)
    with pytest.raises(AttributeError):
        module.not_a_name  # noqa: B018


def test_the_probe_sees_a_heavy_import() -> None:
    # What `hinotori logs` imports when it runs: the probe must report it.
    loaded = heavy_modules_loaded("hinotori.cli.app", "hinotori.observe.logs")
    assert {"hinotori.observe.logs", "httpx"} <= set(loaded)


def _shape(command: Any) -> tuple[Any, ...]:
    """What a click command is to its user: names, help, parameters, sub-commands."""
    params = [(type(p).__name__, p.name, p.opts, p.secondary_opts, p.required, repr(p.default),
               getattr(p, "help", None), p.envvar, p.metavar, p.hidden if hasattr(p, "hidden")
               else None) for p in command.params]
    subs = sorted((n, _shape(c)) for n, c in getattr(command, "commands", {}).items())
    return (type(command).__name__, command.name, command.help, command.short_help,
            command.hidden, command.no_args_is_help, getattr(command, "rich_help_panel", None),
            params, subs)


def test_a_command_alone_is_the_one_the_whole_app_would_run() -> None:
    # main() parses a command line naming a command with an app of that command alone (Typer
    # reads every registered signature first); what it runs must be the same command.
    import typer.main

    from hinotori.cli.app import app, app_for

    whole = typer.main.get_group(app)
    assert len(whole.commands) > 30
    for name, command in whole.commands.items():
        alone = typer.main.get_group(app_for([name]))
        assert list(alone.commands) == [name]
        assert _shape(alone.commands[name]) == _shape(command), name
        assert (alone.help, alone.no_args_is_help, alone.rich_markup_mode,
                alone.suggest_commands) == (whole.help, whole.no_args_is_help,
                                            whole.rich_markup_mode, whole.suggest_commands)
    for first in ([], ["--help"], ["imag"], ["--spec"]):  # no command named: the whole app
        assert app_for(first) is app


def test_the_built_in_providers_os_image_facts_are_their_classes() -> None:
    # The spec asks every service's provider whether it runs an OS image; for a built-in not
    # imported yet the registry's table answers, after that the class does: they must agree.
    from hinotori.providers.registry import (
        BUILT_IN,
        BUILT_IN_RUNS_OS_IMAGE,
        PROVIDERS,
        runs_os_image,
    )

    assert set(BUILT_IN_RUNS_OS_IMAGE) == set(BUILT_IN)
    for name in BUILT_IN:
        assert PROVIDERS[name].runs_os_image is BUILT_IN_RUNS_OS_IMAGE[name], name
        assert runs_os_image(name) is BUILT_IN_RUNS_OS_IMAGE[name], name


def test_loading_a_spec_imports_no_provider() -> None:
    # Commands that only read the store (hosts, releases, audit) load the spec: a file-tree
    # service (examples/hello) and an OS-image one (examples/debian-web).
    root = Path(__file__).resolve().parents[2] / "examples"
    code = ("import json, sys\nfrom hinotori.spec import load_spec\n"
            f"for name in ('hello', 'debian-web'): load_spec({str(root)!r} + '/' + name)\n"
            "print(json.dumps([m for m in ('asyncio', 'hinotori.providers.process', "
            "'hinotori.providers.machines') if m in sys.modules]))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout
    assert json.loads(loaded) == []
