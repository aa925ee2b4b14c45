"""The build cache without a subprocess: chained keys, snapshots of real trees under tmp_path
(hard-linked blobs in, verified copies out), the tracker that spares rehashing, unsharing before a
step that writes in place, damaged blobs, and pruning."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hinotori.bake import BuildCache, CopyStep, ManifestEntry, RunStep, build_manifest
from hinotori.bake.cache import Snapshot, base_key, step_key
from hinotori.bake.normalise import normalise, normalised_entries
from hinotori.bake.snapshot import (
    CacheDamaged,
    Seen,
    Tracker,
    restore,
    settle,
    take,
    unshare,
)
from hinotori.errors import BakeError


@pytest.fixture
def cache(tmp_path: Path) -> BuildCache:
    return BuildCache(tmp_path / "cache")


def make_tree(root: Path) -> Path:
    (root / "app" / "lib").mkdir(parents=True)
    (root / "app" / "main.py").write_text("main\n")
    (root / "app" / "lib" / "util.py").write_text("util\n")
    (root / "app" / "copy.py").write_text("util\n")  # same content: one blob
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o750)
    (root / "current").symlink_to("app/main.py")
    return root


def entry(path: str, sha: str = "0" * 64) -> ManifestEntry:
    return ManifestEntry(path, "file", "0644", size=1, sha256=sha)


def test_keys_chain_and_see_only_what_matters() -> None:
    env = {"PATH": "/bin", "SOURCE_DATE_EPOCH": "315532800"}
    empty = base_key(context=None, step_env=env)
    ctx_a = base_key(context=[entry("a")], step_env=env)
    assert len({empty, ctx_a, base_key(context=[entry("a", "1" * 64)], step_env=env),
                base_key(context=None, step_env={**env, "PATH": "/usr/bin"})}) == 4
    step = CopyStep("src", "app/")
    k1 = step_key(empty, step, [entry("src/a")])
    assert k1 == step_key(empty, CopyStep("src", "app/"), [entry("src/a")])
    assert k1 != step_key(ctx_a, step, [entry("src/a")])  # another prefix
    assert k1 != step_key(empty, step, [entry("src/a", "1" * 64)])  # another input
    assert k1 != step_key(empty, CopyStep("src", "app/", mode="0644"), [entry("src/a")])
    # Env order is not part of a step's identity.
    assert (step_key(empty, RunStep("x", env={"A": "1", "B": "2"}), None)
            == step_key(empty, RunStep("x", env={"B": "2", "A": "1"}), None))


def test_take_links_blobs_and_restore_copies_them_back(tmp_path: Path,
                                                      cache: BuildCache) -> None:
    src = make_tree(tmp_path / "src")
    tracker: Tracker = {}
    snap = take("k1", src, cache, tracker)
    assert snap.entries == build_manifest(src) and snap.error is None
    assert set(tracker) == {"app/main.py", "app/lib/util.py", "app/copy.py", "run.sh"}
    # Blobs are hard links to the tree's files (one per content: copy.py shares util.py's).
    blobs = sorted(p.name for p in cache.contents.blobs_dir.rglob("*") if p.is_file())
    assert len(blobs) == 3
    assert os.stat(src / "app" / "main.py").st_nlink == 2

    cache.save(snap)
    loaded = cache.load("k1")
    assert loaded == snap
    restored = tmp_path / "restored"
    restore(loaded, cache, restored, tracker)
    assert build_manifest(restored) == snap.entries  # modes included (0750 stays 0750)
    assert all(os.stat(p).st_nlink == 1 for p in restored.rglob("*") if p.is_file()
               and not p.is_symlink())
    assert tracker["run.sh"].ino == os.stat(restored / "run.sh").st_ino


def test_unchanged_files_are_not_hashed_again_but_changes_are_seen(
        tmp_path: Path, cache: BuildCache, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = make_tree(tmp_path / "t")
    tracker: Tracker = {}
    take("k1", tree, cache, tracker)
    unshare(tree, tracker)  # what the builder does before a run step
    settle(tmp_path, tracker)
    with open(tree / "app" / "main.py", "a") as f:  # rewritten in place, same inode
        f.write("more\n")
    hashed: list[str] = []
    from hinotori.bake import snapshot as snapshot_mod
    real = snapshot_mod.file_sha256

    def counting(path: str) -> tuple[str, int]:
        hashed.append(os.path.relpath(path, tree))
        return real(path)

    monkeypatch.setattr(snapshot_mod, "file_sha256", counting)
    snap = take("k2", tree, cache, tracker)
    assert hashed == ["app/main.py"]
    assert snap.entries == build_manifest(tree)


def test_while_a_run_step_is_to_come_contents_are_packed_copies(tmp_path: Path,
                                                               cache: BuildCache) -> None:
    tree = make_tree(tmp_path / "t")
    tracker: Tracker = {}
    snap = take("k1", tree, cache, tracker, link=False)
    assert all(os.stat(p).st_nlink == 1 for p in tree.rglob("*") if p.is_file())
    assert unshare(tree, tracker) == 0
    (pack,) = cache.contents.packs_dir.iterdir()  # one file for all three contents
    assert not cache.contents.blobs_dir.exists()
    assert len(snap.where) == 3 and {w.split(":")[0] for w in snap.where.values()} == {pack.stem}
    cache.save(snap)
    restore(cache.load("k1"), cache, tmp_path / "back", {})  # type: ignore[arg-type]
    assert build_manifest(tmp_path / "back") == snap.entries
    # Contents already stored are referenced, not stored again.
    (tree / "new.txt").write_text("new\n")
    settle(tmp_path, tracker)
    again = take("k2", tree, cache, tracker, link=False)
    assert set(again.where) == set(snap.where) | {next(
        e.sha256 for e in again.entries if e.path == "new.txt")}
    assert len(list(cache.contents.packs_dir.iterdir())) == 2
    # A damaged pack is a miss.
    pack.write_bytes(b"x" * pack.stat().st_size)
    with pytest.raises(CacheDamaged, match="other content"):
        restore(again, cache, tmp_path / "damaged", {})


def test_content_a_step_verified_is_stored_without_hashing_again(
        tmp_path: Path, cache: BuildCache, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = make_tree(tmp_path / "t")
    manifest = {e.path: e for e in build_manifest(tree)}
    tracker: Tracker = {rel: Seen.of(os.lstat(tree / rel), e.sha256 or "")
                        for rel, e in manifest.items() if e.type == "file"}
    from hinotori.bake import snapshot as snapshot_mod

    def no_hashing(path: str) -> tuple[str, int]:
        raise AssertionError(f"hashed {path}")

    monkeypatch.setattr(snapshot_mod, "file_sha256", no_hashing)
    for link in (False, True):
        snap = take(f"k{link}", tree, cache, tracker, link=link)
        assert snap.entries == build_manifest(tree)
        restore(snap, cache, tmp_path / f"back{link}", {})
        assert build_manifest(tmp_path / f"back{link}") == snap.entries


def test_unshare_keeps_a_step_from_reaching_the_cache(tmp_path: Path, cache: BuildCache) -> None:
    tree = make_tree(tmp_path / "t")
    tracker: Tracker = {}
    snap = take("k1", tree, cache, tracker)
    main = next(e for e in snap.entries if e.path == "app/main.py")
    os.chmod(tree / "app", 0o555)  # even in a read-only directory
    assert unshare(tree, tracker) == 3  # copy.py was never linked: its blob was util.py's
    assert (os.stat(tree / "app").st_mode & 0o777) == 0o555
    with open(tree / "app" / "main.py", "a") as f:
        f.write("appended by a run step\n")
    assert cache.contents.loose(main.sha256 or "").read_text() == "main\n"
    assert os.stat(tree / "run.sh").st_mode & 0o777 == 0o750


def test_a_damaged_or_missing_blob_is_a_miss_not_a_wrong_tree(tmp_path: Path,
                                                              cache: BuildCache) -> None:
    tree = make_tree(tmp_path / "t")
    snap = take("k1", tree, cache, {})
    main = next(e for e in snap.entries if e.path == "app/main.py")
    blob = cache.contents.loose(main.sha256 or "")
    os.chmod(blob, 0o644)
    blob.write_text("tampered\n")  # the tree's file shares the inode: like a root-owned edit
    with pytest.raises(CacheDamaged, match="other content"):
        restore(snap, cache, tmp_path / "r1", {})
    blob.unlink()
    with pytest.raises(CacheDamaged, match="missing"):
        restore(snap, cache, tmp_path / "r2", {})


def test_what_a_snapshot_refuses_and_what_it_only_records(tmp_path: Path,
                                                         cache: BuildCache) -> None:
    tree = make_tree(tmp_path / "t")
    (tree / "escape").symlink_to("/etc/passwd")
    snap = take("k1", tree, cache, {})
    assert snap.error == "image symlink escape -> /etc/passwd is absolute"
    os.mkfifo(tree / "pipe")
    with pytest.raises(BakeError, match="special file"):
        take("k2", tree, cache, {})


def test_cached_entries_give_the_digest_of_the_normalised_tree(tmp_path: Path,
                                                              cache: BuildCache) -> None:
    tree = make_tree(tmp_path / "t")
    (tree / "empty").mkdir(mode=0o700)
    snap = take("k1", tree, cache, {})
    normalise(tree, 0)
    assert normalised_entries(snap.entries) == build_manifest(tree)


def test_unreadable_snapshot_is_a_miss(cache: BuildCache) -> None:
    cache.save(Snapshot("k1", [entry("a")]))
    assert cache.has("k1") and cache.load("k1") is not None
    (cache.steps_dir / "k1.json").write_text("{not json")
    assert cache.load("k1") is None
    (cache.steps_dir / "k2.json").write_text('{"format": 1, "key": "other", "entries": []}')
    assert cache.load("k2") is None


def test_prune_keeps_what_is_reachable(tmp_path: Path, cache: BuildCache) -> None:
    one = tmp_path / "one"
    one.mkdir()
    (one / "a").write_text("shared\n")
    (one / "b").write_text("only in one\n")
    two = tmp_path / "two"
    two.mkdir()
    (two / "a").write_text("shared\n")
    (two / "c").write_text("only in two\n")
    three = tmp_path / "three"
    three.mkdir()
    (three / "d").write_text("packed\n")
    for key, tree, link in (("k1", one, True), ("k2", two, True), ("k3", three, False)):
        cache.save(take(key, tree, cache, {}, link=link))
    (cache.tmp_dir / "leftover").mkdir(parents=True)
    assert cache.usage().snapshots == 3 and cache.usage().blobs == 4  # 3 loose, 1 pack

    dry = cache.prune({"k2"}, dry_run=True)
    assert (dry.snapshots, dry.blobs, dry.bytes) == (2, 2, len("only in one\npacked\n"))
    assert cache.usage().blobs == 4
    assert cache.prune({"k2"}) == dry
    assert cache.keys() == ["k2"] and cache.usage().blobs == 2
    assert not cache.tmp_dir.exists()
    restore(cache.load("k2"), cache, tmp_path / "back", {})  # type: ignore[arg-type]
    assert (tmp_path / "back" / "c").read_text() == "only in two\n"
