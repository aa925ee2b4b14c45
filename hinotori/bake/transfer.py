"""Images between controllers (the AMI copy): one image -> one portable file -> another store.

An archive is a tar (archive.py: reproducible, optionally gzip/zstd), its members in this order::

    hinotori-image.json   what it holds: format, version, kind ("files" | "os"), digest
    image.json            the provenance, as stored (outside the digest)
    manifest.json         file trees: the canonical manifest; its sha256 is the digest
    rootfs/<path>         file trees: every manifest entry, in manifest order
    config.json           OS images: the engine's image config; its sha256 is the digest
    layers/<hex>.tar      OS images: each layer once, named by its sha256 (the config's diff_ids)

Import trusts nothing the archive says until it is checked, and nothing becomes visible before
everything is: the manifest (or config) must hash to the digest the archive names; then every
member is staged in a scratch directory on the store's filesystem and checked against it (type,
mode, size, content, link target; nothing missing, nothing extra, nothing twice); only then is
the scratch renamed into place (OS images: loaded into the engine, then recorded). Any refusal
removes the scratch and says what did not match. The importer adds ``imports`` (file, time,
hinotori version) to image.json, which is outside the digest.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hinotori
from hinotori.bake import archive
from hinotori.bake.archive import ImageArchiveError, check_member, read_digested, read_small
from hinotori.bake.cache import BuildCache
from hinotori.bake.images import Image, ImageStore
from hinotori.bake.manifest import ManifestEntry, canonical_bytes
from hinotori.bake.tree import DIR, FILE, SYMLINK, check_symlink, force_remove

if TYPE_CHECKING:
    import docker

EngineFactory = Callable[[], "docker.DockerClient"]
_HEX = re.compile(r"[0-9a-f]{64}")
_MODE = re.compile(r"0[0-7]{3}")
_REFUSE = archive.DAMAGED


@dataclass
class ExportResult:
    digest: str
    kind: str
    members: int
    seconds: float


@dataclass
class ImportResult:
    image: Image
    imported: bool  # False: the store had this digest already; nothing was written
    seconds: float
    checked: dict[str, int] = field(default_factory=dict)  # what was verified: files, bytes…


def export_image(store: ImageStore, image: Image, dest: Path | None, *, compression: str,
                 engine: EngineFactory | None = None) -> ExportResult:
    """Write ``image`` as one archive to ``dest`` (None: stdout)."""
    started = time.monotonic()
    marker = {"format": archive.FORMAT, "version": archive.VERSION, "kind": image.kind,
              "digest": image.digest}
    provenance = (image.path / archive.PROVENANCE).read_bytes()
    if image.kind == "os":
        from hinotori.bake.osimage.transfer import export_os

        if engine is None:
            raise ValueError("an OS image needs an engine to export")
        with archive.open_writer(dest, compression) as tar:
            archive.add_bytes(tar, archive.MARKER, _json(marker))
            archive.add_bytes(tar, archive.PROVENANCE, provenance)
            count = export_os(engine, store, image, tar)
        return ExportResult(image.digest, "os", count + 2, time.monotonic() - started)
    manifest = (image.path / "manifest.json").read_bytes()
    if "sha256:" + archive.sha256_hex(manifest) != image.digest:
        raise ImageArchiveError(f"the stored manifest of {image.digest} does not hash to it",
                                hint="the image store is damaged: bake the image again")
    entries = image.manifest()
    with archive.open_writer(dest, compression) as tar:
        for name, data in ((archive.MARKER, _json(marker)),
                           (archive.PROVENANCE, provenance), ("manifest.json", manifest)):
            archive.add_bytes(tar, name, data)
        for entry in entries:
            _add_entry(tar, image.rootfs, entry)
    return ExportResult(image.digest, "files", len(entries) + 3, time.monotonic() - started)


def _add_entry(tar: tarfile.TarFile, rootfs: Path, entry: ManifestEntry) -> None:
    name, mode = f"rootfs/{entry.path}", int(entry.mode, 8)
    if entry.type == DIR:
        tar.addfile(archive.info(name, kind=tarfile.DIRTYPE, mode=mode))
    elif entry.type == SYMLINK:
        tar.addfile(archive.info(name, kind=tarfile.SYMTYPE, mode=0o777, target=entry.target
                                 or ""))
    else:
        # Hashed on the way out: a store damaged since the bake never leaves in an archive.
        with open(rootfs / entry.path, "rb") as f:
            reader = archive.HashingReader(f)
            try:
                tar.addfile(archive.info(name, mode=mode, size=entry.size), reader)
            except OSError:
                reader.sha.update(b"short")  # the file shrank: fall through to the refusal
            if reader.hexdigest() != entry.sha256 or reader.count != entry.size:
                raise ImageArchiveError(f"stored file {entry.path} no longer matches the "
                                        "image's manifest", hint="the image store is damaged: "
                                        "bake the image again")


def import_image(store: ImageStore, source: Path | None, *, origin: str,
                 engine: EngineFactory | None = None, project: str = "imported",
                 expect: str | None = None) -> ImportResult:
    """Verify and store the image in the archive at ``source`` (None: stdin). ``expect``, a
    full digest, refuses an archive of any other image: the check against the digest proves the
    archive is whole, and only a digest got from a trusted side proves it is the right one."""
    started = time.monotonic()
    store.tmp_dir.mkdir(parents=True, exist_ok=True)
    with archive.open_reader(source) as tar:
        items = archive.members(tar, source)
        marker = _marker(read_small(tar, next(items, None), archive.MARKER, source, 1 << 16))
        digest = marker["digest"]
        if expect is not None and digest != expect:
            raise ImageArchiveError(f"the archive holds image {digest}, not {expect}",
                                    hint="check which file you were given; nothing was "
                                         "imported")
        info = _provenance(read_small(tar, next(items, None), archive.PROVENANCE, source))
        info["kind"] = marker["kind"]  # what Image.kind reads: the header's, checked below
        info["imports"] = [*_list(info.get("imports")), {
            "from": origin, "at": time.time(), "digest": digest,
            "builder_version": hinotori.__version__}]
        with BuildCache.beside(store.root).lock():  # no gc while an image is staged
            if marker["kind"] == "os":
                from hinotori.bake.osimage.transfer import import_os

                if engine is None:
                    raise ValueError("an OS image needs an engine to import")
                imported, checked = import_os(store, tar, items, source, digest, info,
                                              engine=engine, project=project)
            else:
                imported, checked = _import_files(store, tar, items, source, digest, info)
    return ImportResult(store.get(digest), imported, time.monotonic() - started, checked)


def _import_files(store: ImageStore, tar: tarfile.TarFile, items: Iterator[tarfile.TarInfo],
                  source: Path | None, digest: str, info: dict[str, Any]
                  ) -> tuple[bool, dict[str, int]]:
    raw = read_digested(tar, next(items, None), "manifest.json", source, digest, "manifest")
    entries = parse_manifest(raw)
    if store.exists(digest):
        return False, {}
    total = sum(e.size for e in entries if e.type == FILE)
    archive.check_space(store.tmp_dir, total, f"image {digest}")
    scratch = store.new_scratch()
    try:
        checked = _stage(tar, items, scratch, entries)
        (scratch / "manifest.json").write_bytes(raw)
        (scratch / archive.PROVENANCE).write_bytes(_json(info, indent=2))
        for name in ("manifest.json", archive.PROVENANCE):
            os.chmod(scratch / name, 0o444)
        store.commit(scratch, digest)  # False: a racing import won with the same content
    finally:
        force_remove(scratch)
    return True, checked


def _stage(tar: tarfile.TarFile, items: Iterator[tarfile.TarInfo], scratch: Path,
           entries: list[ManifestEntry]) -> dict[str, int]:
    """Write every ``rootfs/`` member into ``scratch/rootfs``, each checked against its entry."""
    rootfs = scratch / "rootfs"
    os.mkdir(rootfs, 0o700)
    pending = {e.path: e for e in entries}
    done: set[str] = set()
    dest = os.fspath(scratch)
    size = 0
    for member in items:
        check_member(member, dest)
        path = member.name.removeprefix("rootfs/")
        if not member.name.startswith("rootfs/") or path in done or path not in pending:
            what = "twice" if path in done else "but not in the manifest"
            raise ImageArchiveError(f"archive member {member.name!r} is in the archive {what}",
                                    hint=_REFUSE)
        entry = pending.pop(path)
        done.add(path)
        _check_header(member, entry)
        target = rootfs / path
        try:
            if entry.type == DIR:
                os.mkdir(target, 0o700)
            elif entry.type == SYMLINK:
                os.symlink(entry.target or "", target)
            else:
                _write_file(tar, member, target, entry)
                size += entry.size
        except FileNotFoundError:  # the manifest made its parent a directory: not here yet
            raise ImageArchiveError(f"archive member {member.name!r} comes before its "
                                    "directory", hint=_REFUSE) from None
    if pending:
        first = sorted(pending)[0]
        more = f" and {len(pending) - 1} more" if len(pending) > 1 else ""
        raise ImageArchiveError(f"rootfs/{first}{more} in the manifest but missing from the "
                                "archive", hint=_REFUSE)
    real_root = os.path.realpath(rootfs)
    for entry in entries:  # the real path of each link, now that every path exists
        if entry.type == SYMLINK:
            _hostile(lambda e=entry: check_symlink(e.path, os.fspath(rootfs / e.path),
                                                   real_root, "image"))
    # Modes last, deepest first: a read-only directory takes no more files.
    for entry in reversed(entries):
        path = rootfs / entry.path
        if entry.type != SYMLINK:
            os.chmod(path, int(entry.mode, 8))
        os.utime(path, (0, 0), follow_symlinks=False)
    os.chmod(rootfs, 0o555)
    os.utime(rootfs, (0, 0))
    return {"files": sum(e.type == FILE for e in entries), "entries": len(entries),
            "bytes": size}


def _check_header(member: tarfile.TarInfo, entry: ManifestEntry) -> None:
    kind = DIR if member.isdir() else SYMLINK if member.issym() else FILE \
        if member.isreg() else None
    name = member.name
    if kind != entry.type:
        raise ImageArchiveError(f"{name} is a {kind or 'special member'} in the archive, a "
                                f"{entry.type} in the manifest", hint=_REFUSE)
    mode = f"{member.mode & 0o7777:04o}"
    if kind != SYMLINK and mode != entry.mode:
        raise ImageArchiveError(f"{name} has mode {mode} in the archive, {entry.mode} in the "
                                "manifest", hint=_REFUSE)
    if kind == SYMLINK and member.linkname != entry.target:
        raise ImageArchiveError(f"{name} points to {member.linkname!r} in the archive, to "
                                f"{entry.target!r} in the manifest", hint=_REFUSE)
    if kind == FILE and member.size != entry.size:
        raise ImageArchiveError(f"{name} declares {member.size} bytes in the archive, "
                                f"{entry.size} in the manifest", hint=_REFUSE)


def _write_file(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path,
                entry: ManifestEntry) -> None:
    src = tar.extractfile(member)
    assert src is not None
    reader = archive.HashingReader(src)
    # O_EXCL|O_NOFOLLOW: never through a link, never over a path already written.
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        while chunk := reader.read(1 << 20):
            out.write(chunk)
    if reader.count != entry.size:
        raise ImageArchiveError(f"the archive is cut short inside {member.name}",
                                hint="export the image again")
    if reader.hexdigest() != entry.sha256:
        raise ImageArchiveError(f"{member.name}: content sha256 {reader.hexdigest()[:16]}… "
                                f"does not match the manifest's {(entry.sha256 or '')[:16]}…",
                                hint=_REFUSE)


def parse_manifest(raw: bytes) -> list[ManifestEntry]:
    """A manifest from an archive, held to what bake writes: canonical bytes, clean relative
    paths whose parents are directories of the image, no special types or privileged modes,
    relative links that stay inside the tree (by their text; their real paths are checked once
    staged)."""
    try:
        items = json.loads(raw)
        entries = [ManifestEntry.from_dict(d) for d in items]
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise ImageArchiveError(f"the archive's manifest is not a manifest ({e})",
                                hint=_REFUSE) from None
    if canonical_bytes(entries) != raw:
        raise ImageArchiveError("the archive's manifest is not in canonical form",
                                hint=_REFUSE)
    kinds: dict[str, str] = {}
    for e in entries:
        _check_entry(e, kinds)
        kinds[e.path] = e.type
    return entries


def _check_entry(e: ManifestEntry, kinds: dict[str, str]) -> None:
    def bad(why: str) -> ImageArchiveError:
        return ImageArchiveError(f"manifest entry {e.path!r} {why}", hint=_REFUSE)

    parts = e.path.split("/")
    if not e.path or posixpath.normpath(e.path) != e.path or e.path.startswith("/") \
            or ".." in parts or "." in parts:
        raise bad("is not a plain relative path")
    if e.path in kinds:
        raise bad("appears twice")
    parent = posixpath.dirname(e.path)
    if parent and kinds.get(parent) != DIR:
        raise bad(f"lies under {parent!r}, which is not a directory of the image")
    if e.type not in (FILE, DIR, SYMLINK) or not isinstance(e.mode, str) \
            or not _MODE.fullmatch(e.mode):
        raise bad(f"has type {e.type!r} and mode {e.mode!r}; an image holds files, "
                  "directories and symlinks without special bits")
    if e.type != SYMLINK and int(e.mode, 8) & 0o022:
        raise bad(f"has mode {e.mode}, writable by group or others")
    if e.type == FILE and (not isinstance(e.size, int) or e.size < 0
                           or not isinstance(e.sha256, str) or not _HEX.fullmatch(e.sha256)):
        raise bad("has no valid size and sha256")
    if e.type == SYMLINK:
        target = e.target if isinstance(e.target, str) else ""
        lexical = posixpath.normpath(posixpath.join(parent, target))
        if not target or target.startswith("/") or lexical == ".." \
                or lexical.startswith("../"):
            raise bad(f"is a symlink to {target!r}, outside the image")


def _hostile(check: Callable[[], object]) -> None:
    from hinotori.errors import BakeError

    try:
        check()
    except BakeError as e:
        raise ImageArchiveError(e.message, hint=_REFUSE) from None


def _marker(raw: bytes) -> dict[str, Any]:
    try:
        marker = json.loads(raw)
    except ValueError:
        marker = None
    if not isinstance(marker, dict) or marker.get("format") != archive.FORMAT:
        raise ImageArchiveError("this is not a hinotori image archive",
                                hint="`hinotori image export` writes one")
    if marker.get("version") != archive.VERSION:
        raise ImageArchiveError(f"image archive version {marker.get('version')!r} is not one "
                                f"this hinotori reads ({archive.VERSION})",
                                hint="import it with the hinotori version that exported it")
    digest = marker.get("digest")
    if not isinstance(digest, str) or not _HEX.fullmatch(digest.removeprefix("sha256:")) \
            or not digest.startswith("sha256:") or marker.get("kind") not in ("files", "os"):
        raise ImageArchiveError("the archive's header names no valid digest or kind",
                                hint=_REFUSE)
    return marker


def _provenance(raw: bytes) -> dict[str, Any]:
    try:
        info = json.loads(raw)
    except ValueError:
        info = None
    if not isinstance(info, dict):
        raise ImageArchiveError("the archive's image.json is not a JSON object", hint=_REFUSE)
    return info


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _json(value: Any, indent: int | None = None) -> bytes:
    return (json.dumps(value, indent=indent, sort_keys=True, ensure_ascii=False)
            + "\n").encode("utf-8")
