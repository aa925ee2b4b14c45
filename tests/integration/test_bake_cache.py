"""The build cache end to end: real contexts, real run steps (subprocesses), real stores.

What the issue asks for, pinned: two clean bakes in two places give one digest; a one-file change
reuses the cached prefix and runs only what follows; cached and uncached bakes agree; a failing
step leaves no image and no cache entry of its own; --no-cache runs everything again.

Run steps count their own runs by appending to a file outside the tree (its path arrives in the
step's env, which is part of the step and so of its key), so a test can tell "cached" from "ran".
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hinotori.bake import (
    BuildCache,
    CopyStep,
    EnvStep,
    FileStep,
    ImageStore,
    RemoveStep,
    RunStep,
    Step,
    bake,
)
from hinotori.errors import BakeError

pytestmark = pytest.mark.integration


def make_context(path: Path) -> Path:
    (path / "src" / "pkg").mkdir(parents=True)
    (path / "requirements.txt").write_text("flask==3.0\n")
    for i in range(20):
        (path / "src" / "pkg" / f"mod{i}.py").write_text(f"VALUE = {i}\n")
    (path / "src" / "app.py").write_text("import pkg\n")
    (path / "src" / "tests").mkdir()
    (path / "src" / "tests" / "test_app.py").write_text("def test(): pass\n")
    (path / "notes.log").write_text("ignored\n")
    (path / ".hinotoriignore").write_text("*.log\n")
    return path


def recipe(counter: Path) -> list[Step]:
    """copy deps -> "install" (a run step) -> env -> copy src -> build (a run step) -> file
    -> remove: a late copy step that only source edits touch."""
    count = {"COUNTER": str(counter)}
    return [
        CopyStep("requirements.txt", "deps/"),
        RunStep("echo install >> \"$COUNTER\"; mkdir -p deps/lib; "
                "for i in 1 2 3 4 5; do echo \"lib $i\" > deps/lib/m$i.py; done; "
                "echo $APP_MODE > deps/mode", env=count),
        EnvStep({"APP_MODE": "prod"}),
        CopyStep("src", "app/"),
        RunStep("echo build >> \"$COUNTER\"; ls app/pkg | sort > app/index.txt; "
                "echo \"$APP_MODE\" > app/mode", env=count),
        FileStep("etc/app.conf", "debug = false\n", mode="0600"),
        RemoveStep("app/tests"),
    ]


def runs(counter: Path) -> list[str]:
    return counter.read_text().split() if counter.exists() else []


@pytest.fixture
def counter(tmp_path: Path) -> Path:
    return tmp_path / "runs.txt"


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "project" / ".hinotori" / "images")


def snapshots(store: ImageStore) -> set[str]:
    return set(BuildCache.beside(store.root).keys())


def scratch_left(store: ImageStore) -> list[str]:
    return os.listdir(store.tmp_dir) if store.tmp_dir.exists() else []


def test_two_clean_bakes_in_two_places_give_one_digest(tmp_path: Path, counter: Path) -> None:
    one = make_context(tmp_path / "machine-one" / "ctx")
    two = tmp_path / "machine-two" / "somewhere" / "else"
    shutil.copytree(one, two, symlinks=True)
    for p in two.rglob("*"):  # other mtimes and modes: not content
        os.utime(p, (1_000_000_000, 1_000_000_000))
    (two / "src" / "app.py").chmod(0o600)

    a = bake(one, recipe(counter), ImageStore(tmp_path / "machine-one" / "images"))
    b = bake(two, recipe(counter), ImageStore(tmp_path / "machine-two" / "images"))
    assert not a.reused and not b.reused
    assert (a.cache_hits, a.cache_misses) == (b.cache_hits, b.cache_misses) == (0, 7)
    assert a.image.digest == b.image.digest
    rootfs = a.image.rootfs
    assert (rootfs / "app" / "index.txt").read_text().split()[0] == "mod0.py"
    assert (rootfs / "app" / "mode").read_text() == "prod\n"
    assert (rootfs / "deps" / "mode").read_text() == "\n"  # the env step comes after it
    assert not (rootfs / "app" / "tests").exists()
    assert not (rootfs / "notes.log").exists() and not (rootfs / "requirements.txt").exists()
    assert a.image.provenance["env"] == {"APP_MODE": "prod"}
    assert len(a.image.provenance["cache_keys"]) == 8  # the start and seven steps


def test_a_one_file_change_reuses_the_cached_prefix(tmp_path: Path, counter: Path,
                                                    store: ImageStore) -> None:
    ctx = make_context(tmp_path / "ctx")
    first = bake(ctx, recipe(counter), store)
    assert runs(counter) == ["install", "build"]

    said: list[str] = []
    again = bake(ctx, recipe(counter), store, on_progress=said.append)
    assert again.reused and again.image == first.image
    assert (again.cache_hits, again.cache_misses) == (7, 0)
    assert runs(counter) == ["install", "build"]
    assert all(f"step {i}/7" in " ".join(said) for i in range(1, 8))
    assert sum(m.endswith("(cached)") for m in said) == 7

    (ctx / "src" / "pkg" / "mod7.py").write_text("VALUE = 'seven'\n")
    said.clear()
    changed = bake(ctx, recipe(counter), store, on_progress=said.append)
    assert not changed.reused and changed.image.digest != first.image.digest
    assert (changed.cache_hits, changed.cache_misses) == (3, 4)
    assert runs(counter) == ["install", "build", "build"]  # the install step was not run
    assert [m for m in said if m.endswith("(cached)")] == [
        "step 1/7: copy: requirements.txt -> deps/ (cached)",
        f"step 2/7: {recipe(counter)[1].describe()} (cached)",
        "step 3/7: env: APP_MODE=prod (cached)"]
    ran = [m for m in said if "(ran in " in m]
    assert [m.split(":")[0] for m in ran] == ["step 4/7", "step 5/7", "step 6/7", "step 7/7"]
    assert (changed.image.rootfs / "app" / "pkg" / "mod7.py").read_text() == "VALUE = 'seven'\n"

    # An ignored file is not an input: nothing runs.
    (ctx / "notes.log").write_text("more noise\n")
    assert bake(ctx, recipe(counter), store).cache_misses == 0

    # Uncached, the same inputs give the same image; every step runs.
    uncached = bake(ctx, recipe(counter), store, use_cache=False)
    assert uncached.image.digest == changed.image.digest
    assert (uncached.cache_hits, uncached.cache_misses) == (0, 7)
    assert runs(counter) == ["install", "build", "build", "install", "build"]

    # Back to the first content: the first image, all from the cache.
    (ctx / "src" / "pkg" / "mod7.py").write_text("VALUE = 7\n")
    back = bake(ctx, recipe(counter), store)
    assert back.image.digest == first.image.digest and back.cache_hits == 7


def test_without_copy_steps_the_whole_context_is_the_start(tmp_path: Path, counter: Path,
                                                           store: ImageStore) -> None:
    ctx = make_context(tmp_path / "ctx")
    steps: list[Step] = [RunStep("echo build >> \"$COUNTER\"; ls src/pkg > index.txt",
                                 env={"COUNTER": str(counter)})]
    first = bake(ctx, steps, store)
    assert (first.image.rootfs / "requirements.txt").exists()  # as before copy steps existed
    assert not (first.image.rootfs / "notes.log").exists()
    assert bake(ctx, steps, store).cache_hits == 1
    # Any context change is an input of the implicit start, so every step runs again.
    (ctx / "requirements.txt").write_text("flask==3.1\n")
    changed = bake(ctx, steps, store)
    assert (changed.cache_hits, changed.cache_misses) == (0, 1)
    assert runs(counter) == ["build", "build"]
    assert bake(ctx, steps, store, use_cache=False).image.digest == changed.image.digest


def test_a_failing_step_leaves_no_image_and_no_cache_entry(tmp_path: Path, counter: Path,
                                                           store: ImageStore) -> None:
    ctx = make_context(tmp_path / "ctx")
    bad = recipe(counter)
    bad[4] = RunStep("echo half > app/half.txt; exit 3")
    with pytest.raises(BakeError, match=r"step 5 \(run: echo half .*\) failed with exit code 3"):
        bake(ctx, bad, store)
    assert store.list() == [] and scratch_left(store) == []
    # The steps before it are cached (start + 4 steps), the failing one is not.
    assert len(snapshots(store)) == 5
    good = bake(ctx, recipe(counter), store)
    assert (good.cache_hits, good.cache_misses) == (4, 3)
    assert not (good.image.rootfs / "app" / "half.txt").exists()
    assert runs(counter) == ["install", "build"]


def test_a_run_step_rewriting_a_file_in_place_cannot_reach_the_cache(
        tmp_path: Path, store: ImageStore) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "config.txt").write_text("original\n")
    steps: list[Step] = [CopyStep("config.txt", "config.txt"),
                         RunStep("echo appended >> config.txt"),
                         FileStep("version", "1")]
    first = bake(ctx, steps, store)
    assert (first.image.rootfs / "config.txt").read_text() == "original\nappended\n"
    # Restoring step 1's tree must give back the original, not what step 2 appended.
    steps[2] = FileStep("version", "2")
    second = bake(ctx, steps, store)
    assert second.cache_hits == 2
    assert (second.image.rootfs / "config.txt").read_text() == "original\nappended\n"
    third = bake(ctx, [steps[0], RunStep("cat config.txt > seen.txt")], store)
    assert third.cache_hits == 1
    assert (third.image.rootfs / "seen.txt").read_text() == "original\n"


def test_a_damaged_cache_entry_is_discarded_and_rebuilt(tmp_path: Path, counter: Path,
                                                        store: ImageStore) -> None:
    ctx = make_context(tmp_path / "ctx")
    first = bake(ctx, recipe(counter), store)
    store.remove(first.image.digest)  # so the next bake must restore, not just reuse
    for stored in BuildCache.beside(store.root).root.glob("[bp][la]*/**/*"):  # blobs, packs
        if stored.is_file():
            stored.chmod(0o644)
            stored.write_bytes(b"bit rot" * (stored.stat().st_size // 7 + 1))
    said: list[str] = []
    again = bake(ctx, recipe(counter), store, on_progress=said.append)
    assert again.image.digest == first.image.digest
    assert any("damaged" in m for m in said)


def test_step_level_refusals_store_nothing(tmp_path: Path, store: ImageStore) -> None:
    ctx = make_context(tmp_path / "ctx")
    (tmp_path / "outside").mkdir()
    (ctx / "vendor").symlink_to(tmp_path / "outside")
    with pytest.raises(BakeError, match=r"step 1 \(copy: vendor/lib -> lib\): vendor "
                                        r"resolves through a symlink"):
        bake(ctx, [CopyStep("vendor/lib", "lib")], store)
    steps: list[Step] = [CopyStep("src", "app"), RunStep(f"ln -s {tmp_path / 'outside'} out"),
                         FileStep("out/evil.conf", "x")]
    with pytest.raises(BakeError, match=r"step 3 \(file: out/evil.conf .*\): out resolves "
                                        r"through a symlink"):
        bake(ctx, steps, store)
    assert list((tmp_path / "outside").iterdir()) == []
    # An escaping link a later step removes is fine; one left at the end is refused, cached
    # or not.
    link: list[Step] = [CopyStep("src", "app"), RunStep("ln -s /etc/passwd pw")]
    for use_cache in (True, True, False):
        with pytest.raises(BakeError, match="symlink pw -> /etc/passwd is absolute"):
            bake(ctx, link, store, use_cache=use_cache)
    assert bake(ctx, [*link, RemoveStep("pw")], store).cache_hits == 2
    assert len(store.list()) == 1 and scratch_left(store) == []


def test_the_cli_bakes_with_and_without_the_cache(tmp_path: Path) -> None:
    proj = make_context(tmp_path / "proj")
    (proj / "hinotori.toml").write_text("""\
[services.web]
command = ["python3", "app/app.py"]

[services.web.image]
steps = [
  { copy = "requirements.txt", to = "deps/" },
  { run = "echo installed > deps/marker" },
  { copy = "src", to = "app/" },
]
""")

    def cli(*args: str) -> dict:
        out = subprocess.run([sys.executable, "-m", "hinotori", "bake", "web", "--spec",
                              str(proj), "--json", *args], capture_output=True, text=True,
                             timeout=120, check=True).stdout
        return json.loads(out)[0]

    first = cli()
    assert (first["cache_hits"], first["cache_misses"], first["release"]) == (0, 3, "v1")
    (proj / "src" / "app.py").write_text("import pkg  # edited\n")
    second = cli()
    assert (second["cache_hits"], second["cache_misses"], second["release"]) == (2, 1, "v2")
    forced = cli("--no-cache")
    assert (forced["cache_hits"], forced["cache_misses"]) == (0, 3)
    assert forced["image"] == second["image"] and not forced["release_created"]
    shown = subprocess.run([sys.executable, "-m", "hinotori", "bake", "web", "--spec",
                            str(proj)], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "COLUMNS": "200"}, check=True).stdout
    assert "(3 of 3 steps cached)" in shown
