"""Image archives (`hinotori image export` / `import`) on real image stores in temporary
directories: round trips, reproducible bytes, every tamper refused, hostile archives refused,
and after any refusal nothing left in the importing store."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from hinotori.bake import ImageStore, bake, build_manifest
from hinotori.bake.archive import info
from hinotori.bake.manifest import ManifestEntry, canonical_bytes
from hinotori.bake.transfer import export_image, import_image
from hinotori.errors import ImageArchiveError

Member = tuple[tarfile.TarInfo, bytes]


def no_engine():  # an import of a file tree (or a refused OS image) never needs one
    raise AssertionError("the engine was asked for")


@pytest.fixture
def image(tmp_path: Path):
    ctx = tmp_path / "ctx"
    (ctx / "lib" / "deep").mkdir(parents=True)
    (ctx / "app.py").write_text("print('hello')\n")
    (ctx / "lib" / "deep" / "data.bin").write_bytes(os.urandom(300_000))
    (ctx / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(ctx / "run.sh", 0o755)
    (ctx / "ünï côdé.txt").write_text("names need PAX headers\n")
    os.symlink("lib/deep/data.bin", ctx / "data")
    store = ImageStore(tmp_path / "a" / "images")
    return store, bake(ctx, [], store, labels={"service": "web", "project": "a"}).image


@pytest.fixture
def target(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "b" / "images")


def left_behind(store: ImageStore) -> list[str]:
    """Anything in the store: an image, or scratch in .tmp."""
    found = [i.digest for i in store.list()]
    if store.tmp_dir.exists():
        found += os.listdir(store.tmp_dir)
    return found


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz", ".tar.zst"])
def test_round_trip_keeps_digest_tree_and_provenance(image, target, tmp_path, suffix) -> None:
    store, img = image
    compression = {".tar": "none", ".tar.gz": "gzip", ".tar.zst": "zstd"}[suffix]
    first, second = tmp_path / f"one{suffix}", tmp_path / f"two{suffix}"
    export_image(store, img, first, compression=compression)
    export_image(store, img, second, compression=compression)
    assert first.read_bytes() == second.read_bytes()  # reproducible
    result = import_image(target, first, origin=str(first), engine=no_engine)
    assert result.imported and result.image.digest == img.digest
    assert result.checked["files"] == 4
    got = target.get(img.digest)
    # The staged tree is the image: same manifest (modes included), read-only as bake leaves it.
    assert build_manifest(got.rootfs) == img.manifest()
    assert (got.path / "manifest.json").read_bytes() == (img.path / "manifest.json").read_bytes()
    assert os.stat(got.rootfs / "lib").st_mode & 0o777 == 0o555
    assert os.readlink(got.rootfs / "data") == "lib/deep/data.bin"
    # Provenance travels; the import is recorded beside it, outside the digest.
    assert got.provenance["recipe_hash"] == img.provenance["recipe_hash"]
    assert got.labels == {"service": "web", "project": "a"}
    assert [i["from"] for i in got.provenance["imports"]] == [str(first)]
    assert left_behind(target) == [img.digest]


def test_importing_a_stored_image_is_a_no_op(image, target, tmp_path) -> None:
    store, img = image
    path = tmp_path / "img.tar"
    export_image(store, img, path, compression="none")
    import_image(target, path, origin="first", engine=no_engine)
    before = (target.get(img.digest).path / "image.json").read_bytes()
    again = import_image(target, path, origin="second", engine=no_engine)
    assert not again.imported
    assert (target.get(img.digest).path / "image.json").read_bytes() == before


def test_an_exported_import_is_the_same_image_again(image, target, tmp_path) -> None:
    store, img = image
    export_image(store, img, tmp_path / "1.tar", compression="none")
    import_image(target, tmp_path / "1.tar", origin="1", engine=no_engine)
    export_image(target, target.get(img.digest), tmp_path / "2.tar", compression="gzip")
    third = ImageStore(tmp_path / "c")
    got = import_image(third, tmp_path / "2.tar", origin="2", engine=no_engine).image
    assert got.digest == img.digest
    assert [i["from"] for i in got.provenance["imports"]] == ["1", "2"]  # each hop


# -- tampering: an exported archive, changed ------------------------------------------------


def read_members(path: Path) -> list[Member]:
    with tarfile.open(path) as tar:
        return [(m, (tar.extractfile(m).read() if m.isreg() else b""))  # type: ignore[union-attr]
                for m in tar.getmembers()]


def write_members(path: Path, members: list[Member]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for m, data in members:
            m.size = len(data) if m.isreg() else 0
            tar.addfile(m, io.BytesIO(data) if m.isreg() else None)
    return path


def tampered(image, tmp_path: Path, change: Callable[[list[Member]], list[Member]]) -> Path:
    store, img = image
    clean = tmp_path / "clean.tar"
    export_image(store, img, clean, compression="none")
    return write_members(tmp_path / "tampered.tar", change(read_members(clean)))


def named(members: list[Member], name: str) -> int:
    return next(i for i, (m, _) in enumerate(members) if m.name == name)


def flip_byte(members: list[Member]) -> list[Member]:
    i = named(members, "rootfs/lib/deep/data.bin")
    m, data = members[i]
    members[i] = (m, data[:1000] + bytes([data[1000] ^ 1]) + data[1001:])
    return members


def chmod(members: list[Member]) -> list[Member]:
    members[named(members, "rootfs/app.py")][0].mode = 0o555
    return members


def drop(members: list[Member]) -> list[Member]:
    del members[named(members, "rootfs/run.sh")]
    return members


def extra(members: list[Member]) -> list[Member]:
    return [*members, (info("rootfs/lib/evil.py"), b"import os\n")]


def duplicate(members: list[Member]) -> list[Member]:
    return [*members, members[named(members, "rootfs/app.py")]]


def rename_digest(members: list[Member]) -> list[Member]:
    m, data = members[0]
    marker = json.loads(data)
    marker["digest"] = "sha256:" + hashlib.sha256(b"another image").hexdigest()
    members[0] = (m, json.dumps(marker).encode())
    return members


def relink(members: list[Member]) -> list[Member]:
    members[named(members, "rootfs/data")][0].linkname = "app.py"
    return members


def edit_manifest(members: list[Member]) -> list[Member]:
    i = named(members, "manifest.json")
    members[i] = (members[i][0], members[i][1].replace(b'"0555"', b'"0755"', 1))
    return members


def truncate(members: list[Member]) -> list[Member]:
    return members[:-2]


@pytest.mark.parametrize("change, says", [
    (flip_byte, "rootfs/lib/deep/data.bin: content sha256"),
    (chmod, "rootfs/app.py has mode 0555 in the archive, 0444 in the manifest"),
    (drop, "rootfs/run.sh in the manifest but missing"),
    (extra, "'rootfs/lib/evil.py' is in the archive but not in the manifest"),
    (duplicate, "'rootfs/app.py' is in the archive twice"),
    (rename_digest, "but its manifest is sha256:"),
    (relink, "points to 'app.py' in the archive, to 'lib/deep/data.bin' in the manifest"),
    (edit_manifest, "but its manifest is sha256:"),
    (truncate, "missing from the archive"),
], ids=lambda v: getattr(v, "__name__", "")[:20])
def test_a_tampered_archive_is_refused_and_leaves_nothing(image, target, tmp_path, change,
                                                           says) -> None:
    path = tampered(image, tmp_path, change)
    with pytest.raises(ImageArchiveError) as refused:
        import_image(target, path, origin="x", engine=no_engine)
    assert says in str(refused.value)
    assert left_behind(target) == []


def test_a_cut_short_or_foreign_file_is_refused(image, target, tmp_path) -> None:
    store, img = image
    whole = tmp_path / "whole.tar.gz"
    export_image(store, img, whole, compression="gzip")
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(ImageArchiveError, match="cut short"):
        import_image(target, cut, origin="x", engine=no_engine)
    foreign = tmp_path / "foreign.tar"
    write_members(foreign, [(info("etc/passwd"), b"root:x:0:0\n")])
    with pytest.raises(ImageArchiveError, match=r"expected hinotori-image\.json"):
        import_image(target, foreign, origin="x", engine=no_engine)
    (tmp_path / "text.tar").write_text("not a tar at all\n" * 100)
    with pytest.raises(ImageArchiveError, match="not an image archive"):
        import_image(target, tmp_path / "text.tar", origin="x", engine=no_engine)
    assert left_behind(target) == []


# -- hostile archives: self-consistent (the digest matches the manifest), shaped to escape ---


def forge(tmp_path: Path, entries: list[ManifestEntry], members: list[Member],
          manifest: bytes | None = None) -> Path:
    raw = manifest if manifest is not None else canonical_bytes(entries)
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    marker = {"format": "hinotori-image", "version": 1, "kind": "files", "digest": digest}
    head = [(info("hinotori-image.json"), json.dumps(marker).encode()),
            (info("image.json"), b"{}"), (info("manifest.json"), raw)]
    return write_members(tmp_path / "forged.tar", head + members)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def link(name: str, target: str) -> Member:
    return info(name, kind=tarfile.SYMTYPE, mode=0o777, target=target), b""


def test_member_names_that_leave_the_tree_are_refused(target, tmp_path) -> None:
    entry = ManifestEntry("a", "file", "0444", size=3, sha256=sha(b"hi\n"))
    for name in ("/etc/cron.d/evil", "rootfs/../../evil", "rootfs/./a", "rootfs//a"):
        path = forge(tmp_path, [entry], [(info(name), b"hi\n")])
        with pytest.raises(ImageArchiveError, match="not a plain relative path"):
            import_image(target, path, origin="x", engine=no_engine)
    assert left_behind(target) == []


@pytest.mark.parametrize("target_text", ["/etc/passwd", "../../../etc/passwd", "../x"])
def test_symlinks_escaping_the_image_are_refused(target, tmp_path, target_text) -> None:
    path = forge(tmp_path, [ManifestEntry("l", "symlink", "0777", target=target_text)],
                 [link("rootfs/l", target_text)])
    with pytest.raises(ImageArchiveError, match="outside the image"):
        import_image(target, path, origin="x", engine=no_engine)
    assert left_behind(target) == []


def test_a_symlink_escaping_through_another_link_is_refused(target, tmp_path) -> None:
    # `x -> d/..` reads as "." but d is a link to ".", so x's real path is the tree's parent.
    entries = [ManifestEntry("d", "symlink", "0777", target="."),
               ManifestEntry("x", "symlink", "0777", target="d/..")]
    path = forge(tmp_path, entries, [link("rootfs/d", "."), link("rootfs/x", "d/..")])
    with pytest.raises(ImageArchiveError, match="points outside the image"):
        import_image(target, path, origin="x", engine=no_engine)
    assert left_behind(target) == []


def test_a_file_under_a_symlinked_directory_is_refused(target, tmp_path) -> None:
    # If "d" were a link to somewhere, writing "d/f" would write through it.
    entries = [ManifestEntry("d", "symlink", "0777", target="e"),
               ManifestEntry("d/f", "file", "0444", size=1, sha256=sha(b"x")),
               ManifestEntry("e", "dir", "0555")]
    path = forge(tmp_path, entries, [link("rootfs/d", "e"), (info("rootfs/d/f"), b"x")])
    with pytest.raises(ImageArchiveError, match="not a directory of the image"):
        import_image(target, path, origin="x", engine=no_engine)


@pytest.mark.parametrize("kind, says", [
    (tarfile.CHRTYPE, "special member|is refused"), (tarfile.BLKTYPE, "special member|refused"),
    (tarfile.FIFOTYPE, "special member|refused"), (tarfile.LNKTYPE, "special member|refused")])
def test_devices_fifos_and_hard_links_are_refused(target, tmp_path, kind, says) -> None:
    member = info("rootfs/a", kind=kind, mode=0o444, target="rootfs/b")
    member.devmajor, member.devminor = 1, 3  # /dev/null's numbers
    path = forge(tmp_path, [ManifestEntry("a", "file", "0444", size=0, sha256=sha(b""))],
                 [(member, b"")])
    with pytest.raises(ImageArchiveError, match=says):
        import_image(target, path, origin="x", engine=no_engine)
    assert left_behind(target) == []


def test_privileged_modes_and_bad_types_in_the_manifest_are_refused(target, tmp_path) -> None:
    for entry, says in (
            (ManifestEntry("a", "file", "4755", size=1, sha256=sha(b"x")), "special bits"),
            (ManifestEntry("a", "file", "0666", size=1, sha256=sha(b"x")), "writable"),
            (ManifestEntry("a", "fifo", "0444"), "special bits")):
        path = forge(tmp_path, [entry], [(info("rootfs/a", mode=0o4755), b"x")])
        with pytest.raises(ImageArchiveError, match=says):
            import_image(target, path, origin="x", engine=no_engine)
    assert left_behind(target) == []


def test_huge_declared_sizes_are_refused_before_anything_is_written(target, tmp_path) -> None:
    huge = ManifestEntry("big", "file", "0444", size=1 << 60, sha256=sha(b""))
    path = forge(tmp_path, [huge], [(info("rootfs/big"), b"")])
    with pytest.raises(ImageArchiveError, match=r"declares 1152921504606846976 bytes; only"):
        import_image(target, path, origin="x", engine=no_engine)
    # A header claiming more than its manifest entry is refused before its content is read.
    small = ManifestEntry("f", "file", "0444", size=2, sha256=sha(b"ok"))
    path = forge(tmp_path, [small], [(info("rootfs/f"), b"ok" * 1000)])
    with pytest.raises(ImageArchiveError, match="declares 2000 bytes in the archive, 2 in"):
        import_image(target, path, origin="x", engine=no_engine)
    # Metadata is read into memory only below a cap.
    path = forge(tmp_path, [], [], manifest=b"[\n]\n" + b" " * (65 << 20))
    with pytest.raises(ImageArchiveError, match="over the limit"):
        import_image(target, path, origin="x", engine=no_engine)
    assert left_behind(target) == []


def test_a_manifest_not_in_canonical_form_is_refused(target, tmp_path) -> None:
    raw = b'[{"path":"a","type":"dir","mode":"0555"}]'
    path = forge(tmp_path, [], [(info("rootfs/a", kind=tarfile.DIRTYPE, mode=0o555), b"")],
                 manifest=raw)
    with pytest.raises(ImageArchiveError, match="canonical"):
        import_image(target, path, origin="x", engine=no_engine)


def test_a_member_before_its_directory_is_refused(target, tmp_path) -> None:
    entries = [ManifestEntry("d", "dir", "0555"),
               ManifestEntry("d/f", "file", "0444", size=1, sha256=sha(b"x"))]
    path = forge(tmp_path, entries, [(info("rootfs/d/f"), b"x"),
                                     (info("rootfs/d", kind=tarfile.DIRTYPE, mode=0o555), b"")])
    with pytest.raises(ImageArchiveError, match="comes before its directory"):
        import_image(target, path, origin="x", engine=no_engine)
    assert left_behind(target) == []


# -- OS images: the layer chain is checked before the engine is ever asked ------------------


def os_archive(tmp_path: Path, change: Callable[[list[Member]], list[Member]] | None = None
               ) -> Path:
    layers = [b"layer one" * 100, b"layer two" * 100]
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [
        f"sha256:{sha(data)}" for data in layers]}}).encode()
    marker = {"format": "hinotori-image", "version": 1, "kind": "os",
              "digest": f"sha256:{sha(config)}"}
    members = [(info("hinotori-image.json"), json.dumps(marker).encode()),
               (info("image.json"), b'{"kind": "os", "labels": {"service": "web"}}'),
               (info("config.json"), config),
               *[(info(f"layers/{sha(data)}.tar"), data) for data in layers]]
    return write_members(tmp_path / "os.tar", change(members) if change else members)


def test_an_os_image_archive_with_a_changed_layer_never_reaches_the_engine(target,
                                                                           tmp_path) -> None:
    def flip(members: list[Member]) -> list[Member]:
        m, data = members[-1]
        members[-1] = (m, b"X" + data[1:])
        return members

    for change, says in ((flip, "does not match its name"),
                         (lambda ms: ms[:-1], "missing from the archive"),
                         (lambda ms: [*ms, ms[-1]], "twice"),
                         (rename_digest, "but its config is")):
        with pytest.raises(ImageArchiveError, match=says):
            import_image(target, os_archive(tmp_path, change), origin="x", engine=no_engine)
    assert left_behind(target) == []


# -- the command line: usage errors exit 2 before anything is read or written ---------------


def run_cli(argv: list[str], capsys, monkeypatch) -> tuple[int, str, str]:
    import sys

    from hinotori.cli.app import main

    monkeypatch.setattr(sys, "argv", ["hinotori", *argv])
    with pytest.raises(SystemExit) as exit_:
        main()
    out, err = capsys.readouterr()
    return int(exit_.value.code or 0), out, err


@pytest.mark.parametrize("argv, says", [
    (["image", "export", "abcdef12", "-o", "img.zip"], "no archive suffix"),
    (["image", "export", "abcdef12", "-o", "img.tar", "--compress", "lz4"], "'lz4' is not one"),
    (["image", "export", "abcdef12", "-o", "-", "--json"], "--json needs"),
    (["image", "export", "abcdef12"], "Missing option"),
    (["image", "import"], "Missing argument"),
    (["image", "import", "x.tar", "--digest", "sha256:abcdef12"], "not a whole digest"),
], ids=["suffix", "compress", "json-stdout", "no-output", "no-file", "digest-prefix"])
def test_usage_errors_exit_2_and_write_nothing(argv, says, tmp_path, capsys,
                                               monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # no spec here: a command that got past its checks fails later
    monkeypatch.setenv("COLUMNS", "200")
    code, _, err = run_cli(argv, capsys, monkeypatch)
    assert code == 2 and says in err and "Traceback" not in err
    assert os.listdir(tmp_path) == []


def test_import_refusals_are_errors_with_a_hint_not_tracebacks(image, tmp_path, capsys,
                                                               monkeypatch) -> None:
    project = tmp_path / "p"
    project.mkdir()
    (project / "hinotori.toml").write_text('[project]\nname = "p"\n\n[services.web]\n'
                                           'command = ["true"]\n')
    path = tampered(image, tmp_path, flip_byte)
    code, _, err = run_cli(["image", "import", str(path), "--spec", str(project)], capsys,
                           monkeypatch)
    assert code == 1 and "content sha256" in err and "hint:" in err and "Traceback" not in err
    clean = tmp_path / "clean.tar"
    code, out, _ = run_cli(["image", "import", str(clean), "--spec", str(project), "--json"],
                           capsys, monkeypatch)
    assert code == 0 and json.loads(out)["imported"] is True
    code, out, _ = run_cli(["image", "import", str(clean), "--spec", str(project)], capsys,
                           monkeypatch)
    assert code == 0 and "already stored here; nothing imported" in out


def test_an_export_that_fails_leaves_no_file(image, tmp_path) -> None:
    store, img = image
    with pytest.raises(ImageArchiveError, match="cannot write"):
        export_image(store, img, tmp_path / "no" / "such" / "dir.tar", compression="none")
    os.chmod(img.rootfs / "app.py", 0o644)  # a store damaged since the bake
    (img.rootfs / "app.py").write_text("print('changed')\n")
    with pytest.raises(ImageArchiveError, match="no longer matches"):
        export_image(store, img, tmp_path / "out.tar", compression="zstd")
    assert sorted(os.listdir(tmp_path)) == ["a", "ctx"]


def test_an_expected_digest_refuses_any_other_image(image, target, tmp_path) -> None:
    store, img = image
    path = tmp_path / "img.tar"
    export_image(store, img, path, compression="none")
    other = "sha256:" + "0" * 64
    with pytest.raises(ImageArchiveError, match=f"holds image {img.digest}, not {other}"):
        import_image(target, path, origin="x", engine=no_engine, expect=other)
    assert left_behind(target) == []
    assert import_image(target, path, origin="x", engine=no_engine,
                        expect=img.digest).imported
