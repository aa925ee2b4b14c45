"""Where the build cache keeps file contents: loose blobs (hard links) and packs (copies).

    blobs/<2 hex>/<sha256>   one content per file: a hard link to a file of a build tree
    packs/<name>.pack        the contents one snapshot had to copy, end to end

A snapshot names where each of its contents lives: a sha256 missing from its ``where`` map is a
loose blob; one in it is "<pack name>:<offset>" (the length is the manifest entry's size).

Why two kinds: a hard link costs no copy, but may only be made when nothing will rewrite the
tree's file in place afterwards (``snapshot.py``). When something may, the content must be copied,
and copying thousands of small files into thousands of blob files costs an inode each, which on
some filesystems costs more than the step being cached. A pack is one file per snapshot
whatever the number of contents in it.

Both are written once and never changed: a loose blob appears by one ``link(2)``, a pack by one
rename of a finished file. Readers verify every content's sha256 as they copy it out
(``snapshot.restore``), so a damaged or missing content is a cache miss, never a wrong file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import threading
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

_CHUNK = 1 << 20
_NO_LINKS = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP)


class ContentChanged(OSError):
    """A file's content changed between hashing it and storing it."""


class ContentStore:
    def __init__(self, root: Path) -> None:
        self.blobs_dir = root / "blobs"
        self.packs_dir = root / "packs"
        self.tmp_dir = root / ".tmp"
        self._loose: set[str] = set()  # loose blobs seen present by this process
        self._where: dict[str, str] = {}  # packed contents this process knows the place of

    def loose(self, sha256: str) -> Path:
        return self.blobs_dir / sha256[:2] / sha256

    def pack(self, name: str) -> Path:
        return self.packs_dir / f"{name}.pack"

    def has_loose(self, sha256: str) -> bool:
        if sha256 in self._loose:
            return True
        if self.loose(sha256).is_file():
            self._loose.add(sha256)
            return True
        return False

    def location(self, sha256: str) -> str | None:
        """Where a content is stored: "" (loose), "<pack>:<offset>", or None (not stored)."""
        if sha256 in self._where:
            return self._where[sha256]
        return "" if self.has_loose(sha256) else None

    def remember(self, where: Mapping[str, str]) -> None:
        """Contents a snapshot (restored or just taken) keeps in packs."""
        self._where.update(where)

    def forget(self) -> None:
        self._loose.clear()
        self._where.clear()

    def link(self, path: str, sha256: str) -> bool:
        """Make the file at ``path`` the loose blob of ``sha256``. False when this filesystem
        cannot hard-link it (the caller packs a copy instead)."""
        dest = self.loose(sha256)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, dest)
        except FileExistsError:
            pass
        except OSError as exc:
            if exc.errno not in _NO_LINKS:
                raise
            return False
        self._loose.add(sha256)
        return True

    def open_pack(self) -> PackWriter:
        return PackWriter(self)

    def files(self) -> Iterator[tuple[Path, str, int]]:
        """Every stored file: (path, sha256 for a loose blob or "pack:<name>", size)."""
        if self.blobs_dir.is_dir():
            for shard in sorted(self.blobs_dir.iterdir()):
                for blob in sorted(shard.iterdir()):
                    yield blob, blob.name, blob.lstat().st_size
        if self.packs_dir.is_dir():
            for pack in sorted(self.packs_dir.iterdir()):
                if pack.suffix == ".pack":
                    yield pack, f"pack:{pack.stem}", pack.lstat().st_size


class PackWriter:
    """Appends contents to a new pack; ``close`` makes it visible under its name."""

    def __init__(self, store: ContentStore) -> None:
        self.store = store
        self.name = uuid.uuid4().hex
        self.where: dict[str, str] = {}
        self._tmp = store.tmp_dir / f"pack-{self.name}"
        self._file: BinaryIO | None = None
        self._offset = 0

    def add(self, path: str, sha256: str) -> str:
        """Copy the file at ``path`` (content ``sha256``) in; return its location."""
        if sha256 in self.where:
            return self.where[sha256]
        if self._file is None:
            self.store.tmp_dir.mkdir(parents=True, exist_ok=True)
            self._file = open(self._tmp, "xb")  # noqa: SIM115 - closed in close()/abort()
        out = self._file
        h = hashlib.sha256()
        start = self._offset
        with open(path, "rb") as src:
            while chunk := src.read(_CHUNK):
                h.update(chunk)
                out.write(chunk)
                self._offset += len(chunk)
        if h.hexdigest() != sha256:
            raise ContentChanged(errno.EAGAIN, f"{path} changed while it was being cached")
        self.where[sha256] = f"{self.name}:{start}"
        return self.where[sha256]

    def close(self) -> None:
        if self._file is None:
            return
        self._file.close()
        self._file = None
        self.store.packs_dir.mkdir(parents=True, exist_ok=True)
        os.rename(self._tmp, self.store.pack(self.name))
        self.store.remember(self.where)

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)


class ContentReader:
    """Reads contents out of loose blobs and packs; pack files stay open until ``close``.
    ``chunks`` may be called from several threads at once (``os.pread`` has no shared offset)."""

    def __init__(self, store: ContentStore) -> None:
        self.store = store
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()

    def chunks(self, sha256: str, where: str, size: int) -> Iterator[bytes]:
        """The bytes of a content; FileNotFoundError when its blob or pack is gone."""
        if not where:
            with open(self.store.loose(sha256), "rb") as f:
                while chunk := f.read(_CHUNK):
                    yield chunk
            return
        name, _, offset_text = where.partition(":")
        with self._lock:
            fd = self._fds.get(name)
            if fd is None:
                fd = self._fds[name] = os.open(self.store.pack(name), os.O_RDONLY)
        offset, left = int(offset_text), size
        while left > 0:
            chunk = os.pread(fd, min(left, _CHUNK), offset)
            if not chunk:
                return  # a short pack: the caller's hash check catches it
            offset += len(chunk)
            left -= len(chunk)
            yield chunk

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

