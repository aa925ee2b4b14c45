"""bake() end to end: real files, real subprocess steps, a real image store under tmp_path."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest

from hinotori.bake import BakeResult, ImageStore, RunStep, bake, build_manifest
from hinotori.errors import BakeError, ImageNotFound

pytestmark = pytest.mark.integration


def make_context(path: Path) -> Path:
    (path / "lib").mkdir(parents=True)
    (path / "app.py").write_text("import lib.util\nprint(lib.util.VALUE)\n")
    (path / "lib" / "__init__.py").write_text("")
    (path / "lib" / "util.py").write_text("VALUE = 42\n")
    (path / "start.sh").write_text("#!/bin/sh\nexec python3 app.py\n")
    (path / "start.sh").chmod(0o755)
    (path / "current").symlink_to("lib/util.py")
    (path / "debug.log").write_text("not in the image\n")
    (path / ".hinotoriignore").write_text("*.log\n")
    return path


def store_entries(store: ImageStore) -> set[str]:
    return set(os.listdir(store.root)) - {".tmp"}


def scratch_leftovers(store: ImageStore) -> list[str]:
    return os.listdir(store.tmp_dir) if store.tmp_dir.exists() else []


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "project" / ".hinotori" / "images")


def test_same_inputs_in_two_places_give_the_same_digest(tmp_path: Path, store: ImageStore) -> None:
    one = make_context(tmp_path / "one")
    two = tmp_path / "somewhere" / "else" / "two"
    shutil.copytree(one, two, symlinks=True)
    # Different mtimes and permission noise that normalisation must erase.
    for p in two.rglob("*"):
        if not p.is_symlink():
            os.utime(p, (1_000_000_000, 1_000_000_000))
    (two / "app.py").chmod(0o600)
    steps = [RunStep("mkdir -p gen && echo generated > gen/out.txt")]

    first = bake(one, steps, store)
    second = bake(two, steps, store)
    elsewhere = bake(two, steps, ImageStore(tmp_path / "other-store"))

    assert not first.reused
    assert second.reused and second.image.digest == first.image.digest
    assert not elsewhere.reused and elsewhere.image.digest == first.image.digest


def test_one_byte_changes_the_digest(tmp_path: Path, store: ImageStore) -> None:
    ctx = make_context(tmp_path / "ctx")
    before = bake(ctx, [], store).image.digest
    (ctx / "lib" / "util.py").write_text("VALUE = 43\n")
    after = bake(ctx, [], store).image.digest
    assert before != after
    assert len(store.list()) == 2


def test_ignored_files_do_not_change_the_digest(tmp_path: Path, store: ImageStore) -> None:
    ctx = make_context(tmp_path / "ctx")
    before = bake(ctx, [], store)
    (ctx / "debug.log").write_text("different noise\n")
    after = bake(ctx, [], store)
    assert after.reused and after.image.digest == before.image.digest


def test_image_layout_content_and_read_only_modes(tmp_path: Path, store: ImageStore) -> None:
    ctx = make_context(tmp_path / "ctx")
    result = bake(ctx, [RunStep(("python3", "-c", "open('built.txt', 'w').write('ok')"))], store)
    image = result.image
    hex_ = image.digest.removeprefix("sha256:")
    assert image.path == store.root / f"sha256-{hex_}"
    assert image.rootfs == store.rootfs(image.digest) == image.path / "rootfs"
    assert (image.rootfs / "built.txt").read_text() == "ok"
    assert not (image.rootfs / "debug.log").exists()
    assert os.readlink(image.rootfs / "current") == "lib/util.py"

    # The manifest on disk is what the digest covers, and it matches the tree.
    assert image.manifest() == build_manifest(image.rootfs)
    paths = [e.path for e in image.manifest()]
    assert "built.txt" in paths and paths == sorted(paths, key=str.encode)
    assert hashlib.sha256((image.path / "manifest.json").read_bytes()).hexdigest() == hex_

    for p in [image.rootfs, *image.rootfs.rglob("*")]:
        st = os.lstat(p)
        if stat.S_ISLNK(st.st_mode):
            continue
        expected = {True: 0o555, False: 0o444}[stat.S_ISDIR(st.st_mode) or
                                               bool(st.st_mode & 0o111)]
        assert stat.S_IMODE(st.st_mode) == expected, p
        assert st.st_mtime == 0
    assert stat.S_IMODE(os.stat(image.rootfs / "start.sh").st_mode) == 0o555
    assert stat.S_IMODE(os.stat(image.path / "manifest.json").st_mode) == 0o444


def test_failing_step_reports_output_and_stores_nothing(tmp_path: Path,
                                                        store: ImageStore) -> None:
    ctx = make_context(tmp_path / "ctx")
    bake(ctx, [], store)
    before = store_entries(store)
    steps = [RunStep("echo fine"),
             RunStep("echo partial > partial.txt; for i in $(seq 1 30); do echo line$i; done; "
                     "echo boom >&2; exit 7")]
    with pytest.raises(BakeError) as err:
        bake(ctx, steps, store)
    message = str(err.value)
    assert "step 2" in message and "exit code 7" in message and "run: echo partial" in message
    assert "line30" in message and "boom" in message
    assert "line5\n" not in message  # only the tail
    assert store_entries(store) == before
    assert scratch_leftovers(store) == []


def test_refused_path_from_a_step_stores_nothing(tmp_path: Path, store: ImageStore) -> None:
    ctx = make_context(tmp_path / "ctx")
    with pytest.raises(BakeError, match=r"symlink escape -> /etc/passwd is absolute"):
        bake(ctx, [RunStep("ln -s /etc/passwd escape")], store)
    with pytest.raises(BakeError, match="pipe is a special file"):
        bake(ctx, [RunStep("mkfifo pipe")], store)
    assert store_entries(store) == set()
    assert scratch_leftovers(store) == []


def test_only_rootfs_and_metadata_reach_the_image_dir(tmp_path: Path, store: ImageStore) -> None:
    ctx = make_context(tmp_path / "ctx")
    image = bake(ctx, [RunStep("echo stray > ../stray.txt")], store).image
    assert sorted(os.listdir(image.path)) == ["image.json", "manifest.json", "rootfs"]
    with pytest.raises(BakeError, match="replaced the build directory"):
        bake(ctx, [RunStep("cd .. && rm -rf rootfs && ln -s /tmp rootfs")], store)
    assert scratch_leftovers(store) == []


def test_missing_command_and_missing_context(tmp_path: Path, store: ImageStore) -> None:
    ctx = make_context(tmp_path / "ctx")
    with pytest.raises(BakeError, match="could not start"):
        bake(ctx, [RunStep(("no-such-command-hinotori",))], store)
    with pytest.raises(BakeError, match="does not exist") as err:
        bake(tmp_path / "nope", [], store)
    assert err.value.hint
    with pytest.raises(BakeError, match="not a directory"):
        bake(ctx / "app.py", [], store)
    assert scratch_leftovers(store) == []


def test_steps_get_a_clean_reproducible_environment(tmp_path: Path, store: ImageStore,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HINOTORI_TEST_LEAK", "secret")
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    ctx = make_context(tmp_path / "ctx")
    steps = [
        RunStep("env | sort > env.txt", env={"EXTRA": "yes"}),
        # Importing a module must not leave a timestamped __pycache__ behind.
        RunStep(("python3", "-c", "import lib.util")),
    ]
    image = bake(ctx, steps, store).image
    env = dict(line.split("=", 1) for line in (image.rootfs / "env.txt").read_text().splitlines())
    assert "HINOTORI_TEST_LEAK" not in env
    assert env["EXTRA"] == "yes"
    assert env["LANG"] == "C.UTF-8" and env["TZ"] == "UTC"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["SOURCE_DATE_EPOCH"] == "315532800"
    assert Path(env["HOME"]).parent == Path(env["TMPDIR"]).parent
    assert not Path(env["HOME"]).exists()  # discarded with the scratch directory
    assert not list(image.rootfs.rglob("__pycache__"))


def test_source_date_epoch_sets_mtimes(tmp_path: Path, store: ImageStore,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    image = bake(make_context(tmp_path / "ctx"), [], store).image
    assert os.stat(image.rootfs / "app.py").st_mtime == 1_700_000_000


def test_background_process_left_by_a_step_is_killed(tmp_path: Path, store: ImageStore) -> None:
    ctx = make_context(tmp_path / "ctx")
    started = time.monotonic()
    # Without the process-group kill this would hang on the pipe, then keep writing the tree.
    result = bake(ctx, [RunStep("(sleep 1; echo late > late.txt) & echo early > early.txt")],
                  store)
    assert time.monotonic() - started < 1.0
    time.sleep(1.5)
    assert (result.image.rootfs / "early.txt").exists()
    assert not (result.image.rootfs / "late.txt").exists()


def test_losing_a_race_discards_the_copy(tmp_path: Path, store: ImageStore,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = make_context(tmp_path / "ctx")
    first = bake(ctx, [], store)
    # Pretend the other bake committed between our existence check and our rename.
    monkeypatch.setattr(ImageStore, "exists", lambda self, digest: False)
    second = bake(ctx, [], store)
    assert second == BakeResult(first.image, reused=True)
    assert scratch_leftovers(store) == []


def test_store_get_list_and_remove(tmp_path: Path, store: ImageStore) -> None:
    ctx = make_context(tmp_path / "ctx")
    a = bake(ctx, [], store, labels={"service": "web"}).image
    (ctx / "app.py").write_text("print('v2')\n")
    b = bake(ctx, [], store).image
    hex_a = a.digest.removeprefix("sha256:")

    assert store.get(a.digest) == a
    assert store.get(hex_a[:8]) == a
    assert store.get("sha256:" + hex_a[:12].upper()) == a
    assert [i.digest for i in store.list()] == [b.digest, a.digest]
    assert a.provenance["labels"] == {"service": "web"}
    assert store.exists(a.digest) and not store.exists("sha256:" + "0" * 64)

    with pytest.raises(ImageNotFound, match="not an image reference"):
        store.get(hex_a[:7])
    with pytest.raises(ImageNotFound):
        store.get("0" * 8 if not hex_a.startswith("0" * 8) else "f" * 8)

    store.remove(a.digest)
    assert not store.exists(a.digest)
    assert [i.digest for i in store.list()] == [b.digest]
    assert scratch_leftovers(store) == []
    with pytest.raises(ImageNotFound):
        store.rootfs(a.digest)


def test_ambiguous_prefix(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    for last in "12":
        d = store.root / f"sha256-{'ab' * 31}{last * 2}"
        d.mkdir(parents=True)
        (d / "manifest.json").write_text("[\n]\n")
        (d / "image.json").write_text('{"created_at": 1}')
    with pytest.raises(ImageNotFound, match="ambiguous"):
        store.get("abababab")
    assert store.get("ab" * 31 + "11").digest.endswith("11")


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid",
                           *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout.strip()


def test_provenance(tmp_path: Path, store: ImageStore) -> None:
    ctx = make_context(tmp_path / "ctx")
    plain = bake(ctx, [RunStep("true")], store, labels={"team": "shop"}).image.provenance
    assert "source" not in plain
    assert plain["context"] == str(ctx.resolve())
    assert plain["labels"] == {"team": "shop"}
    assert plain["recipe"] == [{"run": "true"}]
    assert plain["recipe_hash"].startswith("sha256:")
    # app.py, lib/__init__.py, lib/util.py, start.sh, .hinotoriignore (the link is not a file)
    assert plain["file_count"] == 5
    assert plain["builder_version"]

    git(ctx, "init", "-q")
    git(ctx, "add", "-A")
    git(ctx, "commit", "-q", "-m", "init")
    head = git(ctx, "rev-parse", "HEAD")
    # A store inside the repository must not make the tree look dirty; an edit must.
    (ctx / ".hinotori").mkdir()
    (ctx / ".hinotori" / "state").write_text("x")
    clean = bake(ctx, [RunStep("true"), RunStep("echo 1 > x")], store).image.provenance
    assert clean["source"] == {"commit": head, "dirty": False}
    (ctx / "app.py").write_text("print('edited')\n")
    dirty = bake(ctx, [RunStep("true"), RunStep("echo 1 > x")], store).image.provenance
    assert dirty["source"] == {"commit": head, "dirty": True}
