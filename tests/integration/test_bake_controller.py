"""`hinotori bake` through a running controller (a warm process) and its fallbacks.

When the project's controller runs, `bake` hands it the bake (POST /v1/services/{service}/bake,
which reads the spec from disk first); without one, or when it cannot be used (another
hinotori, no token, a wrong token, it dies mid-bake), the CLI bakes in its own process. Either
way the output, --json, exit codes and errors are the same, and the ``image.baked`` event says
who baked and through what ("via").
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hinotori.store import Store
from tests.support import (
    CONTAINER_SPEC,
    CliProject,
    ensure_debian_base,
    free_port,
    make_project,
    remove_project_tags,
    require,
    teardown,
    wait_until,
)


def baked(p: CliProject) -> list[dict]:
    """The image.baked events, oldest first."""
    store = Store(p.path / ".hinotori" / "state.db")
    try:
        return [{"actor": e.actor, **e.detail} for e in store.events(action="image.baked")]
    finally:
        store.close()


def bakes_logged(p: CliProject) -> int:
    return (p.path / ".hinotori" / "controller.log").read_text().count("bake of web for")


@pytest.fixture
def up(tmp_path: Path) -> Iterator[CliProject]:
    """examples/hello with its controller up, nothing baked."""
    p = make_project(tmp_path)
    p.cli("up", "-d")
    yield p
    teardown(p)


def test_bake_goes_through_the_controller_and_matches_a_local_bake(up: CliProject) -> None:
    p = up
    first = p.cli("bake", "web", "--json")
    (summary,) = json.loads(first.stdout)
    assert summary["release"] == "v1" and summary["release_created"]
    assert bakes_logged(p) == 1  # the controller baked it
    (event,) = baked(p)
    assert event["via"] == "controller" and event["image"] == summary["image"]
    assert "(cli:" in event["actor"]  # the token's principal, then who the CLI says it is

    # The same inputs baked here: the same digest, no new release, the same summary.
    (local,) = json.loads(p.cli("bake", "web", "--json", "--local").stdout)
    assert bakes_logged(p) == 1
    assert baked(p)[-1]["via"] == "local"
    assert local == {**summary, "reused": True, "release_created": False}
    # And the same text either way.
    through = p.cli("bake", "web")
    here = p.cli("bake", "web", "--local")
    assert bakes_logged(p) == 2
    assert through.stdout == here.stdout and "no change, still v1" in here.stdout
    assert (through.stderr, here.stderr) == ("", "")


def test_the_controller_bakes_the_spec_as_it_is_on_disk_now(up: CliProject) -> None:
    p = up
    p.cli("bake", "web")
    spec = p.path / "hinotori.toml"
    # A step added after `up`: the controller must read the spec again, not bake its old one.
    spec.write_text(spec.read_text().replace(
        "steps = []", 'steps = [{ run = "echo baked-later > later.txt" }]'))
    (through,) = json.loads(p.cli("bake", "web", "--json").stdout)
    assert bakes_logged(p) == 2
    assert through["release"] == "v2" and through["cache_hits"] + through["cache_misses"] == 1
    (local,) = json.loads(p.cli("bake", "web", "--json", "--local").stdout)
    assert local["image"] == through["image"] and not local["release_created"]


def test_errors_are_the_same_through_the_controller_and_here(up: CliProject) -> None:
    p = up
    pairs = [(p.cli(*args, check=False), p.cli(*args, "--local", check=False))
             for args in (("bake", "nosuch"), ("bake", "web", "--environment", "staging"))]
    for through, here in pairs:
        assert through.returncode == here.returncode != 0
        assert (through.stdout, through.stderr) == (here.stdout, here.stderr)
        assert "error:" in here.stderr
    # A failing step: the BakeError (message, hint, exit code) comes back from the controller.
    spec = p.path / "hinotori.toml"
    spec.write_text(spec.read_text().replace(
        "steps = []", 'steps = [{ run = "echo step-output; exit 3" }]'))
    through = p.cli("bake", "web", check=False)
    here = p.cli("bake", "web", "--local", check=False)
    assert bakes_logged(p) == 1  # "nosuch" never reached a bake; the failing one did
    assert through.returncode == here.returncode == 1
    assert through.stderr == here.stderr and "step-output" in here.stderr
    assert baked(p) == []


def test_without_a_controller_the_cli_bakes_itself(tmp_path: Path) -> None:
    p = make_project(tmp_path)
    try:
        (summary,) = json.loads(p.cli("bake", "web", "--json").stdout)
        (event,) = baked(p)
        assert event["via"] == "local" and event["image"] == summary["image"]
        assert "cli:" not in event["actor"]
        # A controller.json left by a controller that is gone: nothing answers, bake here.
        (p.path / ".hinotori" / "controller.json").write_text(json.dumps({
            "pid": 1, "address": f"127.0.0.1:{free_port()}", "version": "0.1.0",
            "spec": str(p.path / "hinotori.toml"), "environment": None}))
        result = p.cli("bake", "web")
        assert "no change, still v1" in result.stdout and result.stderr == ""
        assert [e["via"] for e in baked(p)] == ["local", "local"]
    finally:
        teardown(p)


def test_a_controller_it_cannot_use_is_left_alone(up: CliProject) -> None:
    p = up
    state = p.path / ".hinotori"
    info_text = (state / "controller.json").read_text()
    token = (state / "token").read_text()
    try:
        # Another hinotori runs there (or another spec file): bake here.
        info = json.loads(info_text)
        (state / "controller.json").write_text(json.dumps({**info, "version": "0.0.0-other"}))
        assert "new release v1" in p.cli("bake", "web").stdout
        (state / "controller.json").write_text(info_text)
        # No token on disk: none is made for the bake (it would lock out every other client).
        (state / "token").unlink()
        p.set_version(uuid.uuid4().hex)
        assert "new release v2" in p.cli("bake", "web").stdout
        assert not (state / "token").exists()
        # A token the controller does not take: bake here, and say why.
        (state / "token").write_text("not-the-token")
        p.set_version(uuid.uuid4().hex)
        result = p.cli("bake", "web")
        assert "new release v3" in result.stdout
        assert "does not take this project's token" in result.stderr
    finally:
        (state / "controller.json").write_text(info_text)
        (state / "token").write_text(token)
    assert bakes_logged(p) == 0
    assert [e["via"] for e in baked(p)] == ["local"] * 3
    p.set_version(uuid.uuid4().hex)
    p.cli("bake", "web")
    assert bakes_logged(p) == 1


def test_a_controller_dying_mid_bake_leaves_the_bake_to_the_cli(up: CliProject) -> None:
    p = up
    spec = p.path / "hinotori.toml"
    spec.write_text(spec.read_text().replace("steps = []", 'steps = [{ run = "sleep 2" }]'))
    pid = p.controller_pid()
    proc = subprocess.Popen([sys.executable, "-m", "hinotori", "bake", "web", "--spec",
                             str(p.path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"})
    try:
        assert wait_until(lambda: bakes_logged(p) == 1, timeout=30)
        os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "stopped during the bake; baking here instead" in err
    assert "new release v1" in out
    assert [e["via"] for e in baked(p)] == ["local"]


def test_an_os_image_bakes_through_the_controller_with_the_local_digest(
        tmp_path: Path, engine_url: str, docker_client) -> None:
    require(shutil.which("podman") is not None, "podman is not installed")
    ensure_debian_base(docker_client)
    p = CliProject(tmp_path / "proj")
    p.path.mkdir()
    (p.path / "app.py").write_text("print('hello')\n")
    p.set_version(uuid.uuid4().hex)
    name = f"bakectl-{uuid.uuid4().hex[:8]}"
    p.router = f"127.0.0.1:{free_port()}"
    (p.path / "hinotori.toml").write_text(CONTAINER_SPEC.format(name=name, listen=p.router))
    try:
        p.cli("up", "-d")
        (first,) = json.loads(p.cli("bake", "web", "--json").stdout)
        p.set_version(uuid.uuid4().hex)  # a one-line change: one layer is built
        (changed,) = json.loads(p.cli("bake", "web", "--json").stdout)
        assert (changed["cache_hits"], changed["cache_misses"]) == (1, 1)
        assert changed["release"] == "v2" and changed["image"] != first["image"]
        assert bakes_logged(p) == 2
        (local,) = json.loads(p.cli("bake", "web", "--json", "--local").stdout)
        assert local["image"] == changed["image"] and not local["release_created"]
        assert [e["via"] for e in baked(p)] == ["controller", "controller", "local"]
        assert docker_client.images.get(changed["image"]).id == changed["image"]
    finally:
        teardown(p)
        remove_project_tags(docker_client, name)
