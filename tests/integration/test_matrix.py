"""The same end-to-end guarantees on every combination of provider and router:
{process, container} hosts x {builtin, haproxy} data plane.

For each: a blue-green deploy and a rollback under continuous keep-alive load drop nothing; a
canary whose release fails half its requests is judged on the router's numbers (the built-in
router's counters, or HAProxy's stats) and rolled back to stable; a healthy canary is promoted
through its steps with nothing dropped. Real CLI, controller, router, hosts (and Podman and
HAProxy where the combination names them).
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hinotori.loadgen import BackgroundLoad
from tests.support import (
    CANARY_SPEC,
    HELLO,
    CliProject,
    container_teardown,
    make_project,
    require,
    teardown,
    write_container_project,
)

pytestmark = pytest.mark.integration

CANARY = CANARY_SPEC.format(steps="[20, 100]", pause="1s", deadline="5s")



def _process_project(tmp_path: Path) -> CliProject:
    return make_project(tmp_path, replicas=2)


def _container_project(tmp_path: Path, request: pytest.FixtureRequest) -> CliProject:
    require(shutil.which("mmdebstrap") is not None,
            "mmdebstrap is not installed (apt-get install mmdebstrap)")
    request.getfixturevalue("engine_url")  # a real Podman service for this session
    name = f"matrix{uuid.uuid4().hex[:6]}"  # the directory's name, too
    # CONTAINER_SPEC sets BIND=0.0.0.0: in its own network namespace the app listens on all
    # interfaces (the engine publishes it on this machine's 127.0.0.1 only).
    return write_container_project(tmp_path / name, name, (HELLO / "app.py").read_text(), "1")


def _use_haproxy(project: CliProject) -> None:
    require(shutil.which("haproxy") is not None, "haproxy is not installed (apt-get install "
                                                 "haproxy)")
    spec = project.path / "hinotori.toml"
    text = spec.read_text()
    assert text.count("[router]\n") == 1
    spec.write_text(text.replace("[router]\n", '[router]\nkind = "haproxy"\n'))


@pytest.fixture(params=[("process", "builtin"), ("process", "haproxy"),
                        ("container", "builtin"), ("container", "haproxy")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CliProject]:
    provider, router = request.param
    project = (_process_project(tmp_path) if provider == "process"
               else _container_project(tmp_path, request))
    if router == "haproxy":
        _use_haproxy(project)
    yield project
    if provider == "container":  # leave no container or image tag of this project behind
        container_teardown(project, request.getfixturevalue("docker_client"), project.path.name)
    else:
        teardown(project)


def _under_load(project: CliProject, *args: str, check: bool = True):
    load = BackgroundLoad(project.router, clients=20, rate=250, record_header="x-hello-version")
    load.start()
    try:
        result = project.cli(*args, check=check, timeout=300)
    finally:
        stats = load.stop()
    return result, stats


def test_deploy_rollback_and_canary_drop_nothing(stack: CliProject) -> None:
    p = stack
    p.cli("up", "-d")
    p.cli("bake", "web")
    p.cli("deploy", "web", "--env", "HELLO_VERSION=1", timeout=300)
    [first] = {h["release_name"] for h in p.serving()}

    # Blue-green to a new release, then an instant rollback, under load: nothing dropped.
    out, stats = _under_load(p, "deploy", "web", "--env", "HELLO_VERSION=2")
    [second] = {h["release_name"] for h in p.serving()}
    assert second != first and f"now serves {second}" in out.stdout
    assert stats.failed == 0, stats.failures
    out, more = _under_load(p, "rollback", "web")
    assert f"now serves {first}" in out.stdout and "instantly from warm hosts" in out.stdout
    assert more.failed == 0, more.failures
    assert stats.total + more.total > 200 and {"1", "2"} <= set(stats.by_header)

    # A canary failing half its requests is judged on the router's numbers and rolled back.
    spec = p.path / "hinotori.toml"
    spec.write_text(spec.read_text() + CANARY)
    bad, failing = _under_load(p, "deploy", "web", "--env", "HELLO_ERROR_RATE=0.5",
                               "--env", "HELLO_VERSION=3", check=False)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "failed its canary analysis at 20%" in bad.stderr
    assert "rolled back to stable" in bad.stdout
    assert failing.by_header["3"] < failing.by_header["1"]
    assert {h["release_name"] for h in p.serving()} == {first}

    # A healthy canary goes through its steps and is promoted, nothing dropped.
    good, stats = _under_load(p, "deploy", "web", "--env", "HELLO_VERSION=4")
    assert stats.failed == 0, stats.failures
    [promoted] = {h["release_name"] for h in p.serving()}
    assert "canary weight 20%" in good.stdout and f"promoted {promoted}" in good.stdout
    assert {"1", "4"} <= set(stats.by_header)
