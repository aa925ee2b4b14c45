"""[environments.NAME] overlays: merged key by key (tables merge, scalars and arrays replace),
errors located at the overlay's own file:line:key, unknown environments refused listing the
declared ones, and every command that takes --spec also taking --environment/-E."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import typer.main

from hinotori.cli.app import app, main
from hinotori.errors import SpecError
from hinotori.project import Project
from hinotori.spec import load_spec, parse_spec
from hinotori.spec.environments import merge
from tests.support import spec_error

BASE = """\
[project]
name = "shop"

[router]
listen = "127.0.0.1:8080"

[services.web]
command = ["python3", "app.py"]
replicas = 2
env = { A = "1", B = "2" }
hosts = ["a.example", "b.example"]
health = { path = "/healthz", interval = "500ms" }

[services.worker]
command = ["python3", "worker.py"]
path_prefix = "/jobs"
"""

ENVS = BASE + """
[environments.staging.router]
listen = "127.0.0.1:8081"

[environments.production]
promote_only = true
promote_from = "staging"
soak = "10m"

[environments.production.services.web]
replicas = 6
env = { B = "prod" }
hosts = ["shop.example"]
health = { interval = "2s" }
"""


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_tables_merge_and_scalars_and_arrays_replace() -> None:
    prod = parse_spec(ENVS, environment="production")
    web = prod.services["web"]
    assert web.replicas == 6
    assert web.env == {"A": "1", "B": "prod"}  # a table merges key by key
    assert web.hosts == ["shop.example"]  # an array replaces the whole array
    assert web.health.interval == 2.0 and web.health.path == "/healthz"
    assert prod.router.listen == "127.0.0.1:8080"  # untouched: the top level's
    assert prod.services["worker"] == parse_spec(BASE).services["worker"]
    staging = parse_spec(ENVS, environment="staging")
    assert staging.router.listen == "127.0.0.1:8081" and staging.services["web"].replicas == 2


def test_no_environment_is_the_top_level_spec_and_settings_are_kept() -> None:
    top = parse_spec(ENVS)
    assert top.services["web"].replicas == 2 and top.router.listen == "127.0.0.1:8080"
    prod = top.environments["production"]
    assert prod.promote_only and prod.promote_from == "staging" and prod.soak == 600.0
    assert not top.environments["staging"].promote_only


def test_merge_leaves_its_inputs_alone_and_records_where_each_key_came_from() -> None:
    base = {"services": {"web": {"env": {"A": "1"}, "hosts": ["a"]}}}
    over = {"services": {"web": {"env": {"B": "2"}, "hosts": ["b"]}}}
    merged, provenance = merge(base, over, ("environments", "x"))
    assert merged == {"services": {"web": {"env": {"A": "1", "B": "2"}, "hosts": ["b"]}}}
    assert base == {"services": {"web": {"env": {"A": "1"}, "hosts": ["a"]}}}
    assert over["services"]["web"]["env"] == {"B": "2"}
    assert provenance[("services", "web", "hosts")] == ("environments", "x", "services", "web",
                                                        "hosts")
    assert ("services", "web", "env", "A") not in provenance  # the base's, not the overlay's


def test_a_new_key_a_later_schema_adds_is_overridable_without_code() -> None:
    # Any key of any table: here one no one wrote overlay code for.
    prod = parse_spec(ENVS + '\n[environments.production.services.web.strategy]\n'
                             'kind = "rolling"\nmax_surge = 2\n', environment="production")
    assert prod.services["web"].strategy.kind == "rolling"
    assert prod.services["web"].strategy.max_surge == 2  # type: ignore[union-attr]


@pytest.mark.parametrize(("extra", "needle", "key", "words"), [
    ('\n[environments.production.services.web]\nreplicas = "6"\n', 'replicas = "6"',
     "environments.production.services.web.replicas", "expected an integer"),
    ("\n[environments.staging.bogus]\nx = 1\n", "[environments.staging.bogus]",
     "environments.staging.bogus", "unknown key"),
    ("\n[environments.staging.services.web]\nreplicaz = 3\n", "replicaz",
     "environments.staging.services.web.replicaz", "unknown key"),
    ('\n[environments.staging.router]\nlisten = "nowhere"\n', 'listen = "nowhere"',
     "environments.staging.router.listen", "HOST:PORT"),
    # A model-level rule the overlay broke: at the overlay's table, not the top-level one.
    ("\n[environments.staging.services.web]\nstateful = true\n",
     "[environments.staging.services.web]", "environments.staging.services.web",
     "replicas = 1"),
    ('\n[environments.staging]\nsoak = "soon"\n', 'soak = "soon"',
     "environments.staging.soak", "duration"),
    ("\n[environments.staging]\npromote_only = 1\n", "promote_only = 1",
     "environments.staging.promote_only", "true or false"),
])
def test_errors_in_an_overlay_point_at_the_overlay(extra: str, needle: str, key: str,
                                                    words: str) -> None:
    text = BASE + extra
    for environment in (None, "staging"):  # every overlay is checked, whichever is chosen
        if "staging" not in extra and environment == "staging":
            continue
        err = spec_error(text, environment)
        assert (err.file, err.line, err.key) == ("hinotori.toml", line_of(text, needle), key)
        assert words in str(err)


def test_a_rule_across_services_the_overlay_broke_points_at_its_environment() -> None:
    text = BASE + ('\n[environments.staging.services.worker]\npath_prefix = "/"\n'
                   'hosts = ["a.example", "b.example"]\n')
    err = spec_error(text)
    assert "match the same requests" in str(err)
    assert err.key == "environments.staging"
    assert err.line == line_of(text, "[environments.staging.services.worker]")


@pytest.mark.parametrize(("extra", "key", "words"), [
    ('\n[environments.a]\npromote_from = "b"\n', "environments.a.promote_from",
     "no environment 'b'"),
    ('\n[environments.a]\npromote_from = "a"\n', "environments.a.promote_from", "itself"),
    ("\n[environments.a]\npromote_only = true\n", "environments.a.promote_from",
     "promote_only needs promote_from"),
    ("\n[environments.a.environments.b]\n", "environments.a.environments",
     "cannot declare environments"),
    ('\nenvironments = "x"\n', "environments", "table"),
    ('\n[environments]\nx = 3\n', "environments.x", "table"),
])
def test_environment_settings_are_checked(extra: str, key: str, words: str) -> None:
    text = extra.lstrip("\n") + "\n" + BASE if extra.startswith("\nenvironments =") \
        else BASE + extra
    err = spec_error(text)
    assert err.key == key and words in str(err) and err.line is not None


def test_an_environment_name_must_be_a_name() -> None:
    text = BASE + "\n[environments.Prod]\n"
    assert spec_error(text).key is not None and "environments" in str(spec_error(text))


def test_an_unknown_environment_lists_the_declared_ones() -> None:
    err = spec_error(ENVS, "prod")
    assert err.exit_code == 2 and "no environment 'prod' (declared: production, staging)" in \
        str(err)
    err = spec_error(BASE, "staging")
    assert "declares no environments" in str(err)


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "hinotori.toml").write_text(text)
    return tmp_path


def test_a_project_per_environment_shares_only_images_and_cache(tmp_path: Path) -> None:
    root = write(tmp_path, ENVS)
    staging, prod = Project.load(root, "staging"), Project.load(root, "production")
    assert staging.state_dir == root / ".hinotori" / "env" / "staging"
    assert prod.hosts_dir == root / ".hinotori" / "env" / "production" / "hosts"
    assert staging.router_dir != prod.router_dir
    assert staging.controller_file != prod.controller_file
    assert staging.images_dir == prod.images_dir == root / ".hinotori" / "images"
    assert staging.images.root == prod.images.root
    # Labels, container names and adoption differ per environment.
    assert staging.spec.project.name == "shop-staging"
    assert prod.spec.project.name == "shop-production"
    assert staging.token() != prod.token()


def test_without_environments_the_layout_is_unchanged(tmp_path: Path) -> None:
    root = write(tmp_path, BASE)
    project = Project.load(root)
    assert project.environment is None and project.state_dir == root / ".hinotori"
    assert project.images_dir == root / ".hinotori" / "images"
    assert project.spec.project.name == "shop"
    assert load_spec(root).spec == parse_spec(BASE, file=str(root / "hinotori.toml"))


def test_with_environments_declared_one_must_be_chosen(tmp_path: Path) -> None:
    root = write(tmp_path, ENVS)
    with pytest.raises(SpecError) as info:
        Project.load(root)
    assert "production, staging" in str(info.value) and info.value.exit_code == 2
    assert Project.load(root, shared=True).state_dir == root / ".hinotori"


def run(argv: list[str], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["hinotori", *argv])
    with pytest.raises(SystemExit) as exit_:
        main()
    code = exit_.value.code
    return (code if isinstance(code, int) else 1), capsys.readouterr().err


def test_commands_exit_2_listing_the_environments_unless_on_the_shared_store(
        tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write(tmp_path, ENVS)
    monkeypatch.delenv("HINOTORI_ENVIRONMENT", raising=False)
    for argv in (["hosts"], ["releases"], ["deploy", "web"], ["audit"], ["status"]):
        code, err = run([*argv, "--spec", str(root)], capsys, monkeypatch)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1, err
        assert "production, staging" in lines[0] and "--environment" in lines[0]
    for argv in (["images"], ["gc", "--dry-run"]):
        code, err = run([*argv, "--spec", str(root)], capsys, monkeypatch)
        assert code == 0, err
    code, err = run(["hosts", "-E", "prod", "--spec", str(root)], capsys, monkeypatch)
    assert code == 2 and "declared: production, staging" in err
    monkeypatch.setenv("HINOTORI_ENVIRONMENT", "staging")
    code, err = run(["hosts", "--spec", str(root)], capsys, monkeypatch)
    assert code == 0, err
    assert (root / ".hinotori" / "env" / "staging" / "state.db").exists()


def test_every_command_that_takes_spec_takes_environment() -> None:
    def walk(command: Any, path: tuple[str, ...] = ()) -> Any:
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, (*path, name))
        if not hasattr(command, "commands"):
            yield path, command

    found = 0
    for path, command in walk(typer.main.get_command(app)):
        opts = {o for p in command.params for o in getattr(p, "opts", [])}
        if "--spec" in opts:
            found += 1
            assert {"--environment", "-E"} <= opts, path
            env = next(p for p in command.params if "--environment" in p.opts)
            assert env.envvar == "HINOTORI_ENVIRONMENT", path
    assert found >= 25
