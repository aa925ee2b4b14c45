"""Drift compares a tree with its image manifest and reports, never refuses, what it finds."""

from __future__ import annotations

import os
from pathlib import Path

from hinotori.bake import build_manifest
from hinotori.observe.drift import Change, compare, from_changes


def tree(root: Path) -> Path:
    (root / "app").mkdir(parents=True)
    (root / "app" / "main.py").write_text("print('hi')\n")
    (root / "conf").write_text("a=1\n")
    (root / "link").symlink_to("conf")
    return root


def test_untouched_tree_has_no_drift(tmp_path: Path) -> None:
    root = tree(tmp_path / "t")
    assert not compare(build_manifest(root), root).drifted


def test_every_kind_of_change_is_reported(tmp_path: Path) -> None:
    root = tree(tmp_path / "t")
    manifest = build_manifest(root)
    (root / "app" / "main.py").write_text("print('HI')\n")  # same size, other content
    (root / "conf").chmod(0o600)
    (root / "link").unlink()
    (root / "link").symlink_to("app")
    (root / "added.txt").write_text("")
    os.mkfifo(root / "app" / "pipe")  # an image may not hold it; drift must still report it
    (root / "escape").symlink_to("/etc/passwd")
    drift = compare(manifest, root)
    assert drift.added == ["added.txt", "app/pipe", "escape"]
    assert drift.removed == []
    assert Change("app/main.py", "content") in drift.changed
    assert Change("conf", "mode 0644 -> 0600") in drift.changed
    assert Change("link", "target conf -> app") in drift.changed


def test_removed_and_type_changes(tmp_path: Path) -> None:
    root = tree(tmp_path / "t")
    manifest = build_manifest(root)
    (root / "app" / "main.py").unlink()
    (root / "conf").unlink()
    (root / "conf").mkdir()
    drift = compare(manifest, root)
    assert drift.removed == ["app/main.py"]
    assert drift.changed == [Change("conf", "type file -> dir")]


def test_an_engines_changes_are_drift_without_its_own_files_or_parent_directories() -> None:
    # What Podman answers for a clean container, and what a planted file and a removal add.
    assert not from_changes([{"Path": "/etc", "Kind": 0}]).drifted
    assert not from_changes([{"Path": "/etc", "Kind": 0}, {"Path": "/etc/hosts", "Kind": 1},
                             {"Path": "/run", "Kind": 0},
                             {"Path": "/run/.containerenv", "Kind": 1}]).drifted
    drift = from_changes([{"Path": "/app", "Kind": 0}, {"Path": "/app/extra", "Kind": 1},
                          {"Path": "/app/VERSION", "Kind": 2}, {"Path": "/app/app.py", "Kind": 0},
                          {"Path": "/usr", "Kind": 0}, {"Path": "/usr/bin", "Kind": 0},
                          {"Path": "/usr/bin/nc", "Kind": 1}, {"Path": "/srv", "Kind": 0}])
    assert drift.added == ["app/extra", "usr/bin/nc"]
    assert drift.removed == ["app/VERSION"]
    # /srv changed with nothing under it: its own metadata, reported.
    assert drift.changed == [Change("app/app.py", "modified"), Change("srv", "modified")]
    assert not from_changes([]).drifted


def test_hashing_gives_every_digest_in_order_whichever_thread_hashed_it(tmp_path: Path) -> None:
    import hashlib

    from hinotori.observe import hashing

    sizes = [0, 1, 4096, hashing.BIG - 1, hashing.BIG, 3 * hashing.BIG + 5, 17, hashing.BIG + 1,
             hashing.CHUNK + 3]
    files = []
    for i, size in enumerate(sizes):
        path = tmp_path / f"f{i}"
        path.write_bytes(bytes((i + j) % 251 for j in range(size)))
        files.append((str(path), size))
    want = [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p, _ in files]
    # Swapped after the walk: a fifo is not waited on, a symlink not followed, a directory or a
    # vanished path has no digest; a file that grew or shrank never matches its entry.
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "link").symlink_to("f0")
    (tmp_path / "grew").write_bytes(b"abcd")
    (tmp_path / "shrank").write_bytes(b"ab")
    odd = [(str(tmp_path / name), size) for name, size in
           (("pipe", 0), ("link", 0), ("gone", 0), ("f0", 0), (".", 4), ("grew", 2),
            ("shrank", 4))]
    sha = [hashlib.sha256(b"").hexdigest(), None, None, hashlib.sha256(b"").hexdigest(), None,
           hashlib.sha256(b"abc").hexdigest(), hashlib.sha256(b"ab").hexdigest()]
    assert hashing.sha256_files(files + odd) == want + sha
    assert [hashing.sha256_file(p, size) for p, size in files + odd] == want + sha


def test_a_same_size_rewrite_is_found_in_small_and_big_files(tmp_path: Path) -> None:
    # Small files are hashed in the calling thread, big ones on the pool: both must see it,
    # and a rewrite that puts the old mtime back changes nothing for a full hash.
    from hinotori.observe.hashing import BIG

    root = tmp_path / "t"
    (root / "big").mkdir(parents=True)
    for i in range(3):
        (root / f"small{i}").write_bytes(b"s" * 100)
        (root / "big" / f"b{i}").write_bytes(b"b" * (BIG + 10))
    manifest = build_manifest(root)
    for path in (root / "small1", root / "big" / "b2"):
        before = path.stat()
        path.write_bytes(path.read_bytes().replace(b"s", b"S").replace(b"b", b"B"))
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    drift = compare(manifest, root)
    assert drift.changed == [Change("big/b2", "content"), Change("small1", "content")]
    assert not drift.added and not drift.removed


def _manifest_diff(before: list, after: list) -> tuple[list[str], list[str], list[Change]]:
    """What drift must report, worked out from two full manifests (bake's own hashing)."""
    old, new = {e.path: e for e in before}, {e.path: e for e in after}
    changed = []
    for path in old.keys() & new.keys():
        a, b = old[path], new[path]
        if a.type != b.type:
            changed.append(Change(path, f"type {a.type} -> {b.type}"))
            continue
        if a.mode != b.mode:
            changed.append(Change(path, f"mode {a.mode} -> {b.mode}"))
        if a.type == "symlink" and a.target != b.target:
            changed.append(Change(path, f"target {a.target} -> {b.target}"))
        elif a.type == "file" and (a.size, a.sha256) != (b.size, b.sha256):
            changed.append(Change(path, "content"))
    return (sorted(new.keys() - old.keys()), sorted(old.keys() - new.keys()),
            sorted(changed, key=lambda c: (c.path, c.what)))


def test_drift_equals_the_difference_of_two_full_manifests(tmp_path: Path) -> None:
    # Random trees with small files (hashed in the calling thread) and big ones (on the pool),
    # random planted changes of every kind: compare() must say exactly what a full rebuild of
    # the manifest says, in the same order.
    import random

    from hinotori.observe.hashing import BIG

    for seed in range(3):
        rng = random.Random(seed)
        root = tmp_path / f"t{seed}"
        for i in range(120):
            d = root / f"d{i % 6}"
            d.mkdir(parents=True, exist_ok=True)
            size = rng.choice((0, 1, 100, 4096, BIG + rng.randrange(1000)))
            (d / f"f{i}").write_bytes(rng.randbytes(size))
        (root / "d0" / "link").symlink_to("f0")
        manifest = build_manifest(root)
        files = sorted(p for p in root.rglob("f*") if p.is_file())
        for p in rng.sample(files, 12):
            what = rng.randrange(5)
            data = p.read_bytes()
            if what == 0 and data:  # same size, other bytes, old mtime put back
                before = p.stat()
                p.write_bytes(bytes([data[0] ^ 1]) + data[1:])
                os.utime(p, ns=(before.st_atime_ns, before.st_mtime_ns))
            elif what == 1:
                p.write_bytes(data + b"x")
            elif what == 2:
                p.chmod(0o600)
            elif what == 3:
                p.unlink()
            else:
                p.unlink()
                p.mkdir()
        (root / "d1" / "planted").write_text("x")
        (root / "d0" / "link").unlink()
        (root / "d0" / "link").symlink_to("f6")
        drift = compare(manifest, root)
        assert (drift.added, drift.removed, drift.changed) == \
            _manifest_diff(manifest, build_manifest(root))
        assert drift.changed  # the planted changes were there to be found
