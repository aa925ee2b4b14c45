"""Manifests, normalisation, tree rules, ignore rules and steps: the parts of bake that need no
subprocess. Trees are real files under tmp_path."""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path

import pytest

from hinotori.bake import (
    IgnoreRules,
    ManifestEntry,
    RunStep,
    build_manifest,
    manifest_digest,
    recipe_hash,
    step_from_dict,
)
from hinotori.bake import manifest as manifest_mod
from hinotori.bake.context import copy_context
from hinotori.bake.manifest import canonical_bytes, read_manifest, write_manifest
from hinotori.bake.normalise import build_epoch, normalise
from hinotori.errors import BakeError

# The digest of the tree made by tiny_tree(). If this changes, every image digest changes:
# that is a format change, to be made on purpose only.
TINY_DIGEST = "sha256:98aeb7d1cc338ce7610a23df13fa8da4bf9fa9209d72ccf59f58cffcdb5c013a"
TINY_CANONICAL = (
    "[\n"
    '{"mode":"0444","path":"a.txt","sha256":'
    '"5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03","size":6,"type":"file"},\n'
    '{"mode":"0555","path":"bin","type":"dir"},\n'
    '{"mode":"0555","path":"bin/run","sha256":'
    '"a8076d3d28d21e02012b20eaf7dbf75409a6277134439025f282e368e3305abf","size":10,"type":"file"},\n'
    '{"mode":"0777","path":"link","target":"a.txt","type":"symlink"}\n'
    "]\n"
)


def tiny_tree(root: Path) -> Path:
    root.mkdir()
    (root / "a.txt").write_text("hello\n")
    (root / "bin").mkdir()
    (root / "bin" / "run").write_text("#!/bin/sh\n")
    (root / "bin" / "run").chmod(0o755)
    (root / "link").symlink_to("a.txt")
    normalise(root, 0)
    return root


def test_canonical_form_and_digest_are_pinned(tmp_path: Path) -> None:
    entries = build_manifest(tiny_tree(tmp_path / "t"))
    assert canonical_bytes(entries).decode() == TINY_CANONICAL
    assert manifest_digest(entries) == TINY_DIGEST


def test_manifest_file_hashes_to_the_digest(tmp_path: Path) -> None:
    entries = build_manifest(tiny_tree(tmp_path / "t"))
    path = tmp_path / "manifest.json"
    assert write_manifest(path, entries) == TINY_DIGEST
    assert read_manifest(path) == entries


def test_empty_manifest_is_valid_json() -> None:
    assert canonical_bytes([]) == b"[\n]\n"


def test_entries_sorted_by_path_bytes_whatever_the_input_order() -> None:
    paths = ["a/b", "a-b", "B", "z", "é", "a"]
    entries = [ManifestEntry(p, "dir", "0555") for p in paths]
    ordered = [e.path for e in build_sorted(entries)]
    assert ordered == ["B", "a", "a-b", "a/b", "z", "é"]
    assert manifest_digest(entries) == manifest_digest(reversed(entries))


def build_sorted(entries: list[ManifestEntry]) -> list[ManifestEntry]:
    return [ManifestEntry.from_dict(d) for d in json.loads(canonical_bytes(entries))]


def test_non_ascii_is_written_as_utf8_not_escaped() -> None:
    data = canonical_bytes([ManifestEntry("café", "dir", "0555")])
    assert "café".encode() in data


def test_digest_ignores_location_and_mtimes(tmp_path: Path) -> None:
    a = tiny_tree(tmp_path / "one")
    (tmp_path / "elsewhere").mkdir()
    b = tiny_tree(tmp_path / "elsewhere" / "two")
    os.utime(b / "a.txt", (1_700_000_000, 1_700_000_000))
    assert manifest_digest(build_manifest(a)) == manifest_digest(build_manifest(b))


def test_one_byte_changes_the_digest(tmp_path: Path) -> None:
    root = tiny_tree(tmp_path / "t")
    os.chmod(root, 0o755)
    (root / "a.txt").chmod(0o644)
    (root / "a.txt").write_text("hellO\n")
    normalise(root, 0)
    assert manifest_digest(build_manifest(root)) != TINY_DIGEST


def test_mode_change_changes_the_digest(tmp_path: Path) -> None:
    root = tiny_tree(tmp_path / "t")
    (root / "a.txt").chmod(0o555)
    assert manifest_digest(build_manifest(root)) != TINY_DIGEST


def test_parallel_and_serial_hashing_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "many"
    root.mkdir()
    for i in range(100):
        (root / f"f{i:03}").write_bytes(os.urandom(i * 37))
    parallel = build_manifest(root)
    monkeypatch.setattr(manifest_mod, "PARALLEL_MIN_FILES", 10_000)
    assert build_manifest(root) == parallel
    assert [e.size for e in parallel] == [i * 37 for i in range(100)]


# -- normalisation ----------------------------------------------------------------------------


def test_normalise_modes_and_mtimes(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir(mode=0o700)
    cases = {"plain": 0o600, "group_exec": 0o610, "setuid": 0o4755, "world": 0o666}
    for name, mode in cases.items():
        (root / name).write_text(name)
        os.chmod(root / name, mode)
    (root / "private").mkdir(mode=0o700)
    (root / "private" / "f").write_text("x")
    (root / "ln").symlink_to("plain")

    normalise(root, 1234)

    def mode(p: Path) -> int:
        return stat.S_IMODE(os.lstat(p).st_mode)

    assert mode(root / "plain") == 0o444
    assert mode(root / "world") == 0o444
    assert mode(root / "group_exec") == 0o555
    assert mode(root / "setuid") == 0o555
    assert mode(root / "private") == 0o555
    assert mode(root) == 0o555
    for p in [root, root / "plain", root / "private" / "f", root / "ln"]:
        assert os.lstat(p).st_mtime == 1234
    modes = {e.path: e.mode for e in build_manifest(root)}
    assert modes == {"group_exec": "0555", "ln": "0777", "plain": "0444", "private": "0555",
                     "private/f": "0444", "setuid": "0555", "world": "0444"}


def test_build_epoch_from_environment() -> None:
    assert build_epoch({}) is None
    assert build_epoch({"SOURCE_DATE_EPOCH": "1700000000"}) == 1_700_000_000
    with pytest.raises(BakeError, match="SOURCE_DATE_EPOCH"):
        build_epoch({"SOURCE_DATE_EPOCH": "yesterday"})


# -- what an image may hold -------------------------------------------------------------------


def test_symlinks_are_recorded_not_followed(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "real").mkdir(parents=True)
    (root / "real" / "f").write_text("x")
    (root / "alias").symlink_to("real")
    (root / "real" / "up").symlink_to("../real/f")
    (root / "dangling").symlink_to("nowhere")
    by_path = {e.path: e for e in build_manifest(root)}
    assert by_path["alias"] == ManifestEntry("alias", "symlink", "0777", target="real")
    assert by_path["real/up"].target == "../real/f"
    assert by_path["dangling"].target == "nowhere"
    assert "alias/f" not in by_path


@pytest.mark.parametrize(
    ("link", "target"),
    [
        ("abs", "/etc/passwd"),
        ("up", "../outside"),
        ("sub/deep", "../../outside"),
        # Leaves and comes back in: depends on the name of the directory the tree lives in.
        ("roundtrip", "../r/file"),
        # Lexically inside, really outside: "self" is a link to ".", so "self/.." is the parent.
        ("sneaky", "self/.."),
    ],
)
def test_escaping_symlinks_are_refused(tmp_path: Path, link: str, target: str) -> None:
    root = tmp_path / "r"
    (root / "sub").mkdir(parents=True)
    (root / "file").write_text("x")
    (root / "self").symlink_to(".")
    (root / link).symlink_to(target)
    with pytest.raises(BakeError) as err:
        build_manifest(root)
    assert link in str(err.value)


def test_fifo_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "d").mkdir(parents=True)
    os.mkfifo(root / "d" / "pipe")
    with pytest.raises(BakeError, match=r"d/pipe is a special file \(fifo\)"):
        build_manifest(root)
    with pytest.raises(BakeError, match="d/pipe"):
        normalise(root, 0)


def test_socket_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(root / "s"))
        with pytest.raises(BakeError, match=r"s is a special file \(socket\)"):
            build_manifest(root)
    finally:
        sock.close()


# -- ignore rules and copying the context -----------------------------------------------------


def test_ignore_rules_have_gitignore_semantics() -> None:
    rules = IgnoreRules(["*.log", "!keep.log", "build/", "/top", "docs/**/*.md", "# comment"])
    assert rules.excluded("x.log", False)
    assert rules.excluded("a/b/x.log", False)
    assert not rules.excluded("keep.log", False)
    assert rules.excluded("build", True)
    assert not rules.excluded("build", False)  # "build/" matches directories only
    assert rules.excluded("top", False)
    assert not rules.excluded("sub/top", False)  # anchored to the root
    assert rules.excluded("docs/a/b/c.md", False)
    assert not rules.excluded("# comment", False)


def test_git_and_hinotori_are_always_excluded() -> None:
    rules = IgnoreRules(["!.git", "!.hinotori/"])
    for rel in [".git", "sub/.git", ".hinotori", "a/.hinotori"]:
        assert rules.excluded(rel, True)
    assert rules.excluded("mod/.git", False)  # a submodule's .git file
    assert not rules.excluded(".gitignore", False)
    assert not rules.excluded(".hinotoriignore", False)


def make_context(root: Path) -> Path:
    files = {
        "app.py": "print('hi')\n",
        "debug.log": "noise",
        "keep.log": "kept",
        "build/out.o": "obj",
        "build/keep.log": "pruned with its directory",
        "src/build": "a file named build stays",
        "node/.git/HEAD": "ref",
        ".git/HEAD": "ref",
        ".hinotori/images/x": "store",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / ".hinotoriignore").write_text("*.log\n!keep.log\nbuild/\n")
    return root


def copied_paths(dest: Path) -> set[str]:
    return {str(p.relative_to(dest)) for p in dest.rglob("*")}


def test_copy_context_honours_the_ignore_file(tmp_path: Path) -> None:
    ctx = make_context(tmp_path / "ctx")
    stats = copy_context(ctx, tmp_path / "out", IgnoreRules.load(ctx))
    assert copied_paths(tmp_path / "out") == {
        ".hinotoriignore", "app.py", "keep.log", "src", "src/build", "node"}
    assert stats.files == 4


def test_copy_context_without_ignore_file_excludes_only_builtins(tmp_path: Path) -> None:
    ctx = make_context(tmp_path / "ctx")
    (ctx / ".hinotoriignore").unlink()
    copy_context(ctx, tmp_path / "out", IgnoreRules.load(ctx))
    paths = copied_paths(tmp_path / "out")
    assert {"debug.log", "build/out.o", "build/keep.log"} <= paths
    assert not any(".git" in p.split("/") or ".hinotori" in p.split("/") for p in paths)


def test_copy_context_keeps_inner_symlinks_and_refuses_escaping_ones(tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    (ctx / "conf").mkdir(parents=True)
    (ctx / "conf" / "base.ini").write_text("x")
    (ctx / "current.ini").symlink_to("conf/base.ini")
    copy_context(ctx, tmp_path / "out", IgnoreRules())
    assert os.readlink(tmp_path / "out" / "current.ini") == "conf/base.ini"

    (ctx / "secrets").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(BakeError, match="secrets"):
        copy_context(ctx, tmp_path / "out2", IgnoreRules())
    # An excluded link is never looked at.
    copy_context(ctx, tmp_path / "out3", IgnoreRules(["/secrets"]))
    assert not (tmp_path / "out3" / "secrets").is_symlink()


def test_copy_context_skips_a_store_inside_the_context(tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    (ctx / "images" / "sha256-x").mkdir(parents=True)
    (ctx / "app.py").write_text("x")
    copy_context(ctx, tmp_path / "out", IgnoreRules(), also_skip=ctx / "images")
    assert copied_paths(tmp_path / "out") == {"app.py"}


# -- steps ------------------------------------------------------------------------------------


def test_run_step_json_and_registry_round_trip() -> None:
    shell = RunStep("make all", env={"B": "2", "A": "1"})
    argv = RunStep(("pip", "install", "x"))
    assert shell.to_json() == {"run": "make all", "env": {"A": "1", "B": "2"}}
    assert argv.to_json() == {"run": ["pip", "install", "x"]}
    assert step_from_dict(shell.to_json()) == shell
    assert step_from_dict({"run": ["pip", "install", "x"]}) == argv
    assert argv.argv == ["pip", "install", "x"]
    assert shell.argv == ["/bin/sh", "-c", "make all"]
    assert shell.describe() == "run: make all"
    assert RunStep("a\nb").describe() == "run: a …"


def test_recipe_hash_depends_on_steps_only() -> None:
    a = [RunStep("make", env={"X": "1", "Y": "2"})]
    b = [RunStep("make", env={"Y": "2", "X": "1"})]
    assert recipe_hash(a) == recipe_hash(b)
    assert recipe_hash(a) != recipe_hash([RunStep("make")])
    assert recipe_hash([RunStep("make")]) != recipe_hash([RunStep(("make",))])


@pytest.mark.parametrize(
    "bad",
    [{"run": ""}, {"run": []}, {"run": 3}, {"run": "x", "shell": True}, {}, {"copy": "x"}],
)
def test_malformed_steps_raise_value_error(bad: dict) -> None:
    with pytest.raises(ValueError):
        step_from_dict(bad)
