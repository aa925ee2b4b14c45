"""OS images for real: mmdebstrap bootstraps Debian, a real engine (Podman and Docker, each
test that depends on it on both) builds the recipe's layers, and the real `hinotori` CLI bakes,
inspects, diffs and collects them.

The Debian base is bootstrapped once per machine and kept (as a tarball under
~/.cache/hinotori-test/, keyed by its inputs, and in the engine), so only the first session pays
the ~15 s; every test bakes its own project on top of it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hinotori.bake.osimage import BaseSpec, ensure_base
from tests.support import project_tags, remove_project_tags, require, run_once

# On both engines the Engine API has, Podman and Docker: every test whose outcome depends on the
# engine (the rest, about mmdebstrap or no engine at all, run on Podman).
BOTH = pytest.mark.parametrize("engine_url", ["podman", "docker"], indirect=True)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "debian-web"
TAR_CACHE = Path.home() / ".cache" / "hinotori-test"

SPEC = """\
[project]
name = "{name}"

[services.web]
provider = "container"
command = ["python3", "app.py"]

[services.web.image]
os = {{ {os} }}
steps = [
  {{ apt = ["netcat-openbsd"] }},
  {{ run = "useradd --system --home-dir /app --shell /usr/sbin/nologin web" }},
  {{ copy = "app.py", to = "app.py" }},
  {{ copy = "VERSION", to = "VERSION" }},
{extra}]
"""


class OsProject:
    def __init__(self, path: Path, name: str) -> None:
        self.path, self.name = path, name

    def write(self, *, os_keys: str = "", extra: str = "") -> None:
        (self.path / "hinotori.toml").write_text(
            SPEC.format(name=self.name, os=os_keys, extra=extra))

    def cli(self, *args: str, env: dict[str, str] | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([sys.executable, "-m", "hinotori", *args, "--spec",
                                 str(self.path)], capture_output=True, text=True, timeout=600,
                                env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1",
                                     **(env or {})})
        if check and result.returncode != 0:
            raise AssertionError(f"hinotori {' '.join(args)} exited {result.returncode}\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def bake(self, *args: str) -> dict:
        return json.loads(self.cli("bake", "web", "--json", *args).stdout)[0]

    def releases(self) -> list[dict]:
        return json.loads(self.cli("releases", "--json").stdout)


@pytest.fixture(scope="session")
def docker_client(engine_url: str) -> Iterator[object]:
    import docker

    client = docker.DockerClient(base_url=engine_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def debian_base(docker_client) -> str:
    """The default base (bookworm minbase + python3), bootstrapped once and kept."""
    require(shutil.which("mmdebstrap") is not None,
            "mmdebstrap is not installed (apt-get install mmdebstrap)")
    TAR_CACHE.mkdir(parents=True, exist_ok=True)
    return ensure_base(docker_client, BaseSpec(), tar_cache=TAR_CACHE)


@pytest.fixture
def osproj(tmp_path: Path, debian_base: str, docker_client) -> Iterator[OsProject]:
    path = tmp_path / "proj"
    path.mkdir()
    shutil.copy(EXAMPLE / "app.py", path / "app.py")
    (path / "VERSION").write_text(f"{uuid.uuid4().hex}\n")  # never in any earlier layer cache
    project = OsProject(path, f"ostest-{uuid.uuid4().hex[:8]}")
    project.write()
    yield project
    remove_project_tags(docker_client, project.name)


@BOTH
def test_bake_rebake_and_one_line_change(osproj: OsProject, docker_client) -> None:
    first = osproj.bake()
    tag = f"localhost/hinotori/{osproj.name}-web:{first['image'][7:19]}"
    # The release names the engine image id the container provider runs.
    assert first["image"] == docker_client.images.get(tag).id
    assert first["release"] == "v1" and first["release_created"]
    assert first["cache_hits"] + first["cache_misses"] == 4
    assert first["cache_misses"] >= 1  # VERSION is new to every cache

    again = osproj.bake()
    assert again["image"] == first["image"]
    assert not again["release_created"] and again["release"] == "v1"
    assert (again["cache_hits"], again["cache_misses"]) == (4, 0)

    (osproj.path / "VERSION").write_text(f"{uuid.uuid4().hex}\n")  # copied by the last step
    changed = osproj.bake()
    assert changed["image"] != first["image"]
    assert (changed["cache_hits"], changed["cache_misses"]) == (3, 1)
    assert changed["cached_steps"] == [1, 2, 3]
    assert changed["release"] == "v2" and changed["release_created"]

    with (osproj.path / "app.py").open("a") as f:  # copied by step 3: steps 3 and 4 run
        f.write(f"# {uuid.uuid4().hex}\n")
    text = osproj.cli("bake", "web").stdout
    assert "new release v3" in text and "(2 of 4 steps cached)" in text
    assert "steps cached: 1 2; built: 3 4" in text
    assert [r["release_name"] for r in osproj.releases()] == ["v1", "v2", "v3"]


@BOTH
def test_cold_bake_runs_every_step_and_installs_the_package(osproj: OsProject,
                                                             docker_client) -> None:
    result = osproj.bake("--no-cache")
    assert (result["cache_hits"], result["cache_misses"]) == (0, 4)
    out = run_once(docker_client, result["image"], [
        "sh", "-c", "dpkg-query -W -f='${Status}' netcat-openbsd; echo; "
        "id -u web; cat /app/VERSION; pwd; python3 -c 'print(42)'"]).decode().splitlines()
    assert out[0] == "install ok installed"
    assert out[1].isdigit() and int(out[1]) > 0
    assert out[2] == (osproj.path / "VERSION").read_text().strip()
    assert out[3:] == ["/app", "42"]  # the workdir, and python3 always installed


@BOTH
def test_copy_and_file_steps_set_modes_as_in_a_file_tree(osproj: OsProject,
                                                          docker_client) -> None:
    """A copy step's mode on every file it copies (its directories keep theirs), a file
    step's on its file: through the context tar, since Docker's classic builder refuses
    COPY --chmod."""
    conf = osproj.path / "conf"
    (conf / "sub").mkdir(parents=True)
    (conf / "a.txt").write_text("a\n")
    (conf / "sub" / "b.txt").write_text("b\n")
    (osproj.path / "tool.sh").write_text("#!/bin/sh\necho tool\n")
    osproj.write(extra='  { copy = "conf", to = "conf", mode = "0640" },\n'
                       '  { copy = "tool.sh", to = "bin/tool", mode = "0750" },\n'
                       '  { file = "etc/secret.conf", content = "k=v\\n", mode = "0600" },\n')
    image = osproj.bake()["image"]
    out = run_once(docker_client, image, [
        "stat", "-c", "%a %U %n", "conf/a.txt", "conf/sub/b.txt", "conf/sub", "bin/tool",
        "etc/secret.conf", "app.py"]).decode().splitlines()
    assert out == ["640 root conf/a.txt", "640 root conf/sub/b.txt", "755 root conf/sub",
                   "750 root bin/tool", "600 root etc/secret.conf", "644 root app.py"]
    assert run_once(docker_client, image, ["bin/tool"]) == b"tool\n"


@BOTH
def test_failing_step_tags_nothing_and_makes_no_release(osproj: OsProject,
                                                        docker_client) -> None:
    osproj.bake()
    tags, stored = project_tags(docker_client, osproj.name), osproj.cli("images", "--json").stdout
    token = uuid.uuid4().hex
    osproj.write(extra=f'  {{ run = "echo boom-{token}; exit 3" }},\n')
    failed = osproj.cli("bake", "web", check=False)
    assert failed.returncode == 1
    assert f"boom-{token}" in failed.stderr and "step 5/5" in failed.stderr
    assert "exit status 3" in failed.stderr and "Traceback" not in failed.stderr
    assert [r["release_name"] for r in osproj.releases()] == ["v1"]
    assert project_tags(docker_client, osproj.name) == tags
    assert osproj.cli("images", "--json").stdout == stored


@BOTH
def test_inspect_diff_and_gc(osproj: OsProject, docker_client) -> None:
    v1 = osproj.bake()["image"]
    (osproj.path / "VERSION").write_text("second\n")
    v2 = osproj.bake()["image"]
    (osproj.path / "VERSION").write_text(f"{uuid.uuid4().hex}\n")
    v3 = osproj.bake()["image"]

    inspect = osproj.cli("image", "inspect", "web@v2").stdout
    assert f"localhost/hinotori/{osproj.name}-web:{v2[7:19]}" in inspect
    assert "bookworm minbase" in inspect and "python3" in inspect
    assert "{ apt = [\"netcat-openbsd\"] } (cached)" in inspect
    assert "layers (" in inspect and "COPY" in inspect
    diff = osproj.cli("image", "diff", "web@v1", "web@v2").stdout
    assert "~ app/VERSION (content" in diff and "0 added, 0 removed, 1 changed" in diff

    result = json.loads(osproj.cli("gc", "--keep", "1", "--json").stdout)
    assert {i["digest"] for i in result["removed"]} == {v1, v2}
    assert list(result["kept"]) == [v3]
    assert project_tags(docker_client, osproj.name) == {
        f"localhost/hinotori/{osproj.name}-web:{v3[7:19]}"}
    listed = json.loads(osproj.cli("images", "--json").stdout)
    assert [i["digest"] for i in listed] == [v3]


def test_mmdebstrap_missing_or_failing_is_a_clear_error(osproj: OsProject,
                                                        tmp_path: Path) -> None:
    empty = tmp_path / "empty-path"
    empty.mkdir()
    # A base no engine has: its key is new, so it would have to be bootstrapped.
    osproj.write(os_keys=f'packages = ["hinotori-test-{uuid.uuid4().hex[:8]}"]')
    cache = {"XDG_CACHE_HOME": str(tmp_path / "cache")}  # the lock files of these bases
    missing = osproj.cli("bake", "web", check=False, env={"PATH": str(empty), **cache})
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert "mmdebstrap is not installed" in missing.stderr
    assert "apt-get install mmdebstrap" in missing.stderr

    # mmdebstrap runs and fails: on a mirror with no Release file, in seconds (a package the
    # real mirror lacks made it fetch Debian's index first, 30-90 s, for the same error path).
    mirror = tmp_path / "empty-mirror"
    mirror.mkdir()
    osproj.write(os_keys=f'packages = ["hinotori-test-{uuid.uuid4().hex[:8]}"], '
                         f'mirror = "file://{mirror}"')
    failing = osproj.cli("bake", "web", check=False, env=cache)
    assert failing.returncode == 1 and "Traceback" not in failing.stderr
    assert "mmdebstrap bookworm failed" in failing.stderr
    tail = failing.stderr.split("last", 1)[1]
    assert "does not have a Release file" in tail and str(mirror) in tail  # its own output
    assert osproj.releases() == []


def test_engine_missing_is_a_clear_error(osproj: OsProject, tmp_path: Path) -> None:
    empty = tmp_path / "no-podman"
    empty.mkdir()
    result = osproj.cli("bake", "web", check=False,
                        env={"DOCKER_HOST": f"unix://{tmp_path}/nothing.sock",
                             "PATH": str(empty)})
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "no container engine answers" in result.stderr
    assert osproj.releases() == []


@BOTH
def test_example_checks_pass_in_its_image(tmp_path: Path, debian_base: str,
                                          docker_client) -> None:
    """examples/debian-web bakes, and its checks (package, user, service, process, command)
    pass when the verify evaluator runs in a container of the image with the app started as
    its command starts it."""
    from hinotori.spec import load_spec
    from hinotori.verify.runner import evaluator_source

    path = tmp_path / "debian-web"
    shutil.copytree(EXAMPLE, path)
    name = f"ostest-{uuid.uuid4().hex[:8]}"
    text = (path / "hinotori.toml").read_text().replace('name = "debian-web"', f'name = "{name}"')
    (path / "hinotori.toml").write_text(text)
    project = OsProject(path, name)
    try:
        image = project.bake()["image"]
        service = load_spec(path).spec.services["web"]
        plan = {"mode": "evaluate", "checks": [c.plan() for c in service.checks],
                "retry_timeout": 10.0, "sleep": 0.2, "workers": 4, "address": "127.0.0.1:8000",
                "session": None, "os_root": "/"}
        shared = tmp_path / "shared"
        shared.mkdir()
        (shared / "plan.json").write_text(json.dumps(plan))
        (shared / "evaluator.py").write_text(evaluator_source())
        command = " ".join(service.command)
        out = run_once(
            docker_client, image, ["sh", "-c", f"{command} >/dev/null 2>&1 & "
                                   "python3 -I -S /t/evaluator.py < /t/plan.json"],
            environment={"PORT": "8000"}, network_mode="none",
            volumes={str(shared): {"bind": "/t", "mode": "ro"}})
        results = json.loads(out)["results"]
        assert len(results) == len(service.checks) == 5
        assert [r["ok"] for r in results] == [True] * 5, results
    finally:
        remove_project_tags(docker_client, name)
