"""The manifest of an image: what is in the tree, in one canonical byte form, and its digest.

An image's identity is its manifest, and only its manifest. One entry per path under the rootfs
(the rootfs directory itself has none):

    path    relative POSIX path, UTF-8, no leading "./"
    type    "file" | "dir" | "symlink"
    mode    permission bits as a 4-digit octal string ("0444"); always "0777" for a symlink,
            whose own mode means nothing on Linux and differs on other systems
    size    files only: length in bytes
    sha256  files only: lowercase hex sha256 of the content
    target  symlinks only: the link text, as stored (always relative, never leaving the tree)

Canonical serialisation (this exact byte string is ``manifest.json``):

    - each entry is one JSON object holding exactly the keys its type has above, with sorted keys,
      separators "," and ":" (no whitespace), non-ASCII characters written as themselves (not
      \\u escapes), encoded as UTF-8;
    - entries are sorted by the UTF-8 bytes of ``path``;
    - the file is "[" + "\\n", then the entry objects joined by ",\\n", then "\\n" (only if there is
      at least one entry), then "]" + "\\n". It is therefore a valid JSON array, one entry a line.

The digest is "sha256:" + the hex sha256 of those bytes, so ``sha256sum manifest.json`` checks an
image by hand. Nothing else enters it: no mtimes, owners, build time or absolute paths, so the
same content gives the same digest in another directory, on another machine, a year later.

``build_manifest`` records the modes it finds on disk. Bake normalises the tree before building
the manifest (see ``normalise``), so an image's manifest holds normalised modes; a later
``build_manifest`` of a host's copy that shows other modes has found drift.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hinotori.bake.tree import DIR, FILE, SYMLINK, Node, walk

SYMLINK_MODE = "0777"
# Below this many files a thread pool costs more than it saves.
PARALLEL_MIN_FILES = 64
HASH_WORKERS = min(8, (os.cpu_count() or 1) + 2)
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ManifestEntry:
    path: str
    type: str
    mode: str
    size: int = 0
    sha256: str | None = None
    target: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The entry as its canonical object: exactly the keys its type has."""
        d: dict[str, Any] = {"path": self.path, "type": self.type, "mode": self.mode}
        if self.type == FILE:
            d["size"] = self.size
            d["sha256"] = self.sha256
        elif self.type == SYMLINK:
            d["target"] = self.target
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ManifestEntry:
        return cls(path=d["path"], type=d["type"], mode=d["mode"], size=int(d.get("size", 0)),
                   sha256=d.get("sha256"), target=d.get("target"))


def _sort_key(entry: ManifestEntry) -> bytes:
    return entry.path.encode("utf-8")


def canonical_bytes(entries: Iterable[ManifestEntry]) -> bytes:
    """The canonical serialisation described in the module docstring."""
    lines = [
        json.dumps(e.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        for e in sorted(entries, key=_sort_key)
    ]
    body = ",\n".join(lines) + ("\n" if lines else "")
    return ("[\n" + body + "]\n").encode("utf-8")


def manifest_digest(entries: Iterable[ManifestEntry]) -> str:
    return "sha256:" + hashlib.sha256(canonical_bytes(entries)).hexdigest()


def write_manifest(path: Path, entries: Iterable[ManifestEntry]) -> str:
    """Write ``manifest.json`` and return the digest of exactly the bytes written."""
    data = canonical_bytes(entries)
    path.write_bytes(data)
    return "sha256:" + hashlib.sha256(data).hexdigest()


def read_manifest(path: Path) -> list[ManifestEntry]:
    return [ManifestEntry.from_dict(d) for d in json.loads(path.read_bytes())]


def build_manifest(root: Path) -> list[ManifestEntry]:
    """Walk ``root`` and return its entries, sorted canonically.

    Refuses (BakeError naming the path) what an image may not hold: special files, absolute or
    escaping symlinks, non-UTF-8 names.
    """
    return entries_of(walk(Path(root)))


def entries_of(nodes: Iterable[Node]) -> list[ManifestEntry]:
    """Manifest entries for walked nodes, sorted canonically, with the modes found on disk.

    Files are hashed on a thread pool when there are many of them; hashlib releases the GIL
    while it hashes, so the threads really run side by side.
    """
    entries: list[ManifestEntry] = []
    files: list[tuple[str, str]] = []
    for node in nodes:
        if node.kind == FILE:
            files.append((node.rel, node.abs))
        elif node.kind == DIR:
            entries.append(ManifestEntry(node.rel, DIR, mode_text(node.st.st_mode)))
        else:
            entries.append(ManifestEntry(node.rel, SYMLINK, SYMLINK_MODE,
                                         target=os.readlink(node.abs)))
    if len(files) >= PARALLEL_MIN_FILES:
        with ThreadPoolExecutor(max_workers=HASH_WORKERS,
                                thread_name_prefix="hinotori-hash") as pool:
            entries.extend(pool.map(_file_entry, files, chunksize=32))
    else:
        entries.extend(map(_file_entry, files))
    entries.sort(key=_sort_key)
    return entries


def file_sha256(path: str) -> tuple[str, int]:
    """The hex sha256 and size of a file's content, read once."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _file_entry(item: tuple[str, str]) -> ManifestEntry:
    rel, path = item
    h = hashlib.sha256()
    size = 0
    # Size is counted from the bytes hashed, so the two always agree even if the file changed
    # between the walk and the read.
    with open(path, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return ManifestEntry(rel, FILE, mode_text(mode), size=size, sha256=h.hexdigest())


def mode_text(st_mode: int) -> str:
    return f"{st_mode & 0o7777:04o}"
