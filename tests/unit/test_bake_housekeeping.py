"""Image housekeeping: manifest diffs, which images gc keeps and why, and the commands `images`,
`image inspect`, `image diff` and `gc`, run in a Typer app of their own against a project under
tmp_path. Images are baked for real (copy and file steps only, so no subprocess); releases and
hosts are written to the real state store."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from hinotori.bake import BuildCache, ManifestEntry
from hinotori.bake.diff import diff_manifests
from hinotori.bake.gc import collect, images_in_use
from hinotori.cli import imagecmds
from hinotori.errors import HinotoriError
from hinotori.model import Host, HostState
from hinotori.project import Project
from hinotori.releases import bake_service

app = typer.Typer()
app.command("images")(imagecmds.images)
app.command("gc")(imagecmds.gc)
image_app = typer.Typer()
image_app.command("inspect")(imagecmds.image_inspect)
image_app.command("diff")(imagecmds.image_diff)
app.add_typer(image_app, name="image")

SPEC = """\
[services.web]
command = ["python3", "app/app.py"]

[services.web.image]
steps = [
  { copy = "src", to = "app/" },
  { env = { APP_MODE = "prod" } },
  { file = "VERSION", content = "%s" },
]

[services.api]
command = ["python3", "app/app.py"]
path_prefix = "/api"

[services.api.image]
steps = [{ copy = "src", to = "app/" }, { file = "API", content = "%s" }]
"""


def f(path: str, sha: str, mode: str = "0444") -> ManifestEntry:
    return ManifestEntry(path, "file", mode, size=len(sha), sha256=sha * 64)


def test_diff_of_two_manifests() -> None:
    before = [ManifestEntry("app", "dir", "0555"), f("app/a.py", "a"), f("app/b.py", "b"),
              f("app/run", "r"), ManifestEntry("cur", "symlink", "0777", target="app/a.py"),
              f("gone.txt", "g")]
    after = [ManifestEntry("app", "dir", "0555"), f("app/a.py", "A"), f("app/b.py", "b"),
             f("app/run", "r", "0555"), ManifestEntry("cur", "symlink", "0777", target="app/b"),
             ManifestEntry("new", "dir", "0555"), f("new/x", "x")]
    d = diff_manifests(before, after)
    assert [e.path for e in d.added] == ["new", "new/x"]
    assert [e.path for e in d.removed] == ["gone.txt"]
    assert [(c.path, c.what) for c in d.changed] == [
        ("app/a.py", ("content",)), ("app/run", ("mode",)), ("cur", ("content",))]
    assert diff_manifests(after, after).empty
    retyped = diff_manifests([f("x", "a")], [ManifestEntry("x", "symlink", "0777", target="y")])
    assert retyped.changed[0].what == ("type", "content", "mode")
    assert json.loads(json.dumps(d.to_dict()))["changed"][1]["after"]["mode"] == "0555"


@pytest.fixture
def project(tmp_path: Path) -> Project:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "app.py").write_text("print('hi')\n")
    return write_spec(tmp_path, "1")


def write_spec(root: Path, version: str) -> Project:
    (root / "hinotori.toml").write_text(SPEC % (version, version))
    return Project.load(root)


def release(project: Project, version: str, service: str = "web") -> int:
    """Bake ``service`` at ``version``; return the release number."""
    project = write_spec(project.root, version)
    _, outcome = bake_service(project, service)
    return outcome.release.number


def host(project: Project, service: str, number: int, state: HostState, name: str) -> None:
    project.store.save_host(Host(id=name, service=service, release=number, provider="process",
                                 state=state, born_at=time.time()), actor="test")


def cli(project: Project, *args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--spec", str(project.root)])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result.stdout


def image_of(project: Project, service: str, number: int) -> str:
    return project.store.release(service, number).image


def test_gc_keeps_serving_warm_and_recent_images_and_removes_the_rest(
        project: Project) -> None:
    for v in range(1, 8):  # web v1..v7
        release(project, str(v))
    release(project, "1", "api")
    store = project.store
    # v2 has a warm host, v3 a draining one, v4 only a destroyed one; v6 serves, v5 is the
    # previous release (rollback target); v7 is the newest.
    host(project, "web", 2, HostState.WARM, "web-warm")
    host(project, "web", 3, HostState.DRAINING, "web-draining")
    host(project, "web", 4, HostState.DESTROYED, "web-dead")
    host(project, "web", 6, HostState.SERVING, "web-serving")
    store.set_service_releases("web", 6, 5, actor="test", why="deploy")

    in_use = images_in_use(store, keep=1)
    assert set(in_use) == {image_of(project, "web", n) for n in (2, 3, 5, 6, 7)} | {
        image_of(project, "api", 1)}
    assert in_use[image_of(project, "web", 6)] == ["web@v6 current",
                                                   "web@v6 serving host web-serving"]
    assert in_use[image_of(project, "web", 2)] == ["web@v2 warm host web-warm"]

    dry = collect(project.images, store, keep=1, dry_run=True)
    doomed = {image_of(project, "web", n) for n in (1, 4)}
    assert {i.digest for i in dry.removed} == doomed
    assert len(project.images.list()) == 8 and not store.events(action="images.gc")

    done = collect(project.images, store, keep=1, actor="test")
    assert {i.digest for i in done.removed} == doomed
    assert {i.digest for i in project.images.list()} == set(in_use)
    (event,) = store.events(action="images.gc")
    assert event.actor == "test" and set(event.detail["removed"]) == doomed
    # The cache keeps what the remaining images were made from: rebaking v6 is all cached,
    # while v1's own snapshot is gone.
    again, _ = bake_service(write_spec(project.root, "6"), "web")
    assert again.reused and again.cache_hits == 3
    again, _ = bake_service(write_spec(project.root, "1"), "web")
    assert (again.cache_hits, again.cache_misses) == (2, 1)


def test_gc_clears_orphaned_scratch_and_the_unreachable_cache(project: Project) -> None:
    release(project, "1")
    release(project, "2")
    tmp = project.images.tmp_dir
    (tmp / "bake-999999999-dead").mkdir()  # a killed bake (gc holds the lock: none is running)
    (tmp / "remove-999999999-dead").mkdir()
    cache = BuildCache.beside(project.images.root)
    before = cache.usage()
    result = collect(project.images, project.store, keep=1)
    assert sorted(result.scratch) == ["bake-999999999-dead", "remove-999999999-dead"]
    assert list(tmp.iterdir()) == []
    assert result.cache.snapshots == 1  # v1's last step; the shared prefix stays
    assert cache.usage().snapshots == before.snapshots - 1


def test_images_inspect_and_diff_commands(project: Project) -> None:
    release(project, "1")
    (project.root / "src" / "extra.py").write_text("x = 1\n")
    release(project, "2")
    rows = json.loads(cli(project, "images", "--json"))
    assert [r["releases"] for r in rows] == [["web@v2"], ["web@v1"]]
    assert rows[0]["labels"] == {"project": "hinotori", "service": "web"}
    assert rows[0]["files"] == 3 and rows[0]["size"] > 0
    assert "web@v2" in cli(project, "images")

    info = json.loads(cli(project, "image", "inspect", "web@v1", "--json"))
    assert info["digest"] == image_of(project, "web", 1) and info["releases"] == ["web@v1"]
    assert info["env"] == {"APP_MODE": "prod"} and info["recipe_hash"].startswith("sha256:")
    assert info["builder_version"] and info["build_seconds"] >= 0
    text = cli(project, "image", "inspect", image_of(project, "web", 2)[7:19])
    assert "env:         APP_MODE=prod" in text
    assert '3. { file = "VERSION", content = "2", mode = "0644" }' in text
    assert image_of(project, "web", 2) in text  # never cut short
    assert "web@v2" in cli(project, "image", "inspect", "web@latest")

    d = json.loads(cli(project, "image", "diff", "web@v1", "web@v2", "--json"))
    assert [e["path"] for e in d["added"]] == ["app/extra.py"]
    assert [(c["path"], c["what"]) for c in d["changed"]] == [("VERSION", ["content"])]
    assert d["removed"] == []
    out = cli(project, "image", "diff", "web@v1", "web@v2")
    assert "+ app/extra.py" in out and "~ VERSION (content, 1 B -> 1 B)" in out
    assert "0 removed" in out


@pytest.mark.parametrize("ref,says", [
    ("web@v9", "web has no release v9"),
    ("web@previous", "web has no previous release"),
    ("nope@v1", "nope has no release v1"),
    ("web@tuesday", "is not an image reference"),
    ("abc", "is not an image reference"),
    ("deadbeef", "no image 'deadbeef'"),
])
def test_bad_references_say_what_to_do(project: Project, ref: str, says: str) -> None:
    release(project, "1")
    with pytest.raises(HinotoriError, match=says) as err:
        cli(project, "image", "inspect", ref)
    assert err.value.hint


def test_gc_command(project: Project) -> None:
    release(project, "1")
    release(project, "2")
    out = cli(project, "gc", "--keep", "1", "--dry-run")
    assert "would remove 1 images" in out and "kept" in out and "among the newest 1" in out
    assert len(project.images.list()) == 2
    result = json.loads(cli(project, "gc", "--keep", "1", "--json"))
    assert [r["digest"] for r in result["removed"]] == [image_of(project, "web", 1)]
    assert len(project.images.list()) == 1
    with pytest.raises(HinotoriError, match=r"web@v1 uses image .* no longer stored"):
        cli(project, "image", "inspect", "web@v1")
