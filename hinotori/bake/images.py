"""The image store: content-addressed, read-only image directories under one root.

Layout (the root is normally the project's ``.hinotori/images/``)::

    <root>/sha256-<hex>/rootfs/         the image's files, read-only (0444/0555 files, 0555 dirs)
    <root>/sha256-<hex>/manifest.json   canonical manifest; sha256 of this file == <hex>
    <root>/sha256-<hex>/image.json      provenance (outside the digest)
    <root>/sha256-<hex>/engine.json     OS images only (hinotori.bake.osimage): the image lives
                                        in the container engine and <hex> is its engine id;
                                        the directory records it (image.json: base, layers,
                                        recipe) and has no rootfs. Its manifest.json is
                                        written later, when first asked for (osimage/files.py)
    <root>/.tmp/                        scratch space for bakes and removals in progress

An image directory appears in one ``rename(2)`` of a fully written scratch directory on the same
filesystem, so readers see a whole image or none, and a failed or killed bake never leaves a
partial one under its digest. Two bakes racing to the same digest both produce identical
content; the second rename fails because the directory exists, and its copy is discarded.
Removal runs the other way: rename out to ``.tmp`` first, then delete at leisure. Scratch left by a
killed process stays in ``.tmp`` and is never mistaken for an image; its name holds the pid of the
process that made it (``bake-<pid>-…``, ``remove-<pid>-…``), so ``gc`` can tell it is orphaned.
"""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hinotori.bake.manifest import ManifestEntry, read_manifest, write_manifest
from hinotori.bake.tree import force_remove
from hinotori.errors import ImageNotFound

_HEX = re.compile(r"[0-9a-f]{64}")
_DIR_NAME = re.compile(r"sha256-([0-9a-f]{64})")
_SCRATCH_NAME = re.compile(r"(?:bake|remove)-(\d+)-.*")
MIN_PREFIX = 8
ENGINE_FILE = "engine.json"


@dataclass(frozen=True)
class Image:
    digest: str  # "sha256:<hex>"
    path: Path  # <root>/sha256-<hex>
    created_at: float
    provenance: dict[str, Any]

    @property
    def rootfs(self) -> Path:
        return self.path / "rootfs"

    @property
    def file_count(self) -> int:
        return int(self.provenance.get("file_count", 0))

    @property
    def total_size(self) -> int:
        return int(self.provenance.get("total_size", 0))

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.provenance.get("labels", {}))

    @property
    def kind(self) -> str:
        """"files" (a rootfs here) or "os" (an engine image recorded here)."""
        return str(self.provenance.get("kind", "files"))

    @property
    def has_manifest(self) -> bool:
        return (self.path / "manifest.json").is_file()

    def manifest(self) -> list[ManifestEntry]:
        if not self.has_manifest:
            raise ImageNotFound(
                f"{self.digest} is an OS image whose file list has not been read yet",
                hint="`hinotori image inspect` or `image diff` reads it from the engine")
        return read_manifest(self.path / "manifest.json")


class ImageStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def tmp_dir(self) -> Path:
        return self.root / ".tmp"

    def get(self, ref: str) -> Image:
        """An image by full digest or by a unique prefix of at least 8 hex characters."""
        prefix = ref.strip().lower().removeprefix("sha256:")
        if len(prefix) < MIN_PREFIX or not re.fullmatch(r"[0-9a-f]+", prefix) or len(prefix) > 64:
            raise ImageNotFound(
                f"{ref!r} is not an image reference",
                hint=f"use sha256:<hex> or at least {MIN_PREFIX} hex characters of a digest "
                     "(see `hinotori images`)")
        matches = [hex_ for hex_ in self._stored_hexes() if hex_.startswith(prefix)]
        if not matches:
            raise ImageNotFound(f"no image {ref!r} in {self.root}",
                                hint="bake it first, or list images with `hinotori images`")
        if len(matches) > 1:
            shown = ", ".join(f"sha256:{m[:12]}" for m in sorted(matches))
            raise ImageNotFound(f"image reference {ref!r} is ambiguous: {shown}",
                                hint="give more characters of the digest")
        return self._load(matches[0])

    def list(self) -> list[Image]:
        """Every stored image, newest first."""
        images = [self._load(h) for h in self._stored_hexes()]
        return sorted(images, key=lambda i: (-i.created_at, i.digest))

    def exists(self, digest: str) -> bool:
        hex_ = _hex_of(digest)
        return hex_ is not None and self._complete(self.root / f"sha256-{hex_}")

    def rootfs(self, digest: str) -> Path:
        return self._require(digest) / "rootfs"

    def remove(self, digest: str) -> None:
        path = self._require(digest)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        # Renaming a directory rewrites its ".." entry, which needs write permission on it.
        os.chmod(path, 0o755)
        doomed = Path(tempfile.mkdtemp(prefix=f"remove-{os.getpid()}-",
                                       dir=self.tmp_dir)) / path.name
        os.rename(path, doomed)
        force_remove(doomed.parent)

    # -- used by the builder -------------------------------------------------------------------

    def new_scratch(self) -> Path:
        """A fresh scratch directory on the store's filesystem (so the final rename is atomic)."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"bake-{os.getpid()}-", dir=self.tmp_dir))

    def commit(self, scratch: Path, digest: str) -> bool:
        """Move a finished scratch into place; False if an image of that digest already won."""
        hex_ = _hex_of(digest)
        if hex_ is None:
            raise ValueError(f"not a digest: {digest!r}")
        final = self.root / f"sha256-{hex_}"
        try:
            os.rename(scratch, final)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                return False
            raise
        os.chmod(final, 0o555)
        return True

    def record(self, digest: str, info: dict[str, Any], *, engine: dict[str, Any]) -> bool:
        """Record an engine image (an OS image) under its engine id; False if already there."""
        scratch = self.new_scratch()
        try:
            for name, data in (("image.json", info), (ENGINE_FILE, engine)):
                path = scratch / name
                path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n",
                                encoding="utf-8")
                os.chmod(path, 0o444)
            return self.commit(scratch, digest)
        finally:
            force_remove(scratch)

    def add_manifest(self, digest: str, entries: list[ManifestEntry]) -> None:
        """Give a recorded engine image its manifest (computed from the engine, later)."""
        path = self._require(digest)
        os.chmod(path, 0o755)
        try:
            tmp = path / f".manifest-{os.getpid()}.json"
            write_manifest(tmp, entries)
            os.chmod(tmp, 0o444)
            os.replace(tmp, path / "manifest.json")
        finally:
            os.chmod(path, 0o555)

    def scratch_dirs(self) -> list[tuple[Path, int | None]]:
        """Scratch directories in ``.tmp`` with the pid of the process that made each (None
        when the name holds none)."""
        try:
            names = sorted(os.listdir(self.tmp_dir))
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            m = _SCRATCH_NAME.fullmatch(name)
            found.append((self.tmp_dir / name, int(m.group(1)) if m else None))
        return found

    # -- internals -----------------------------------------------------------------------------

    def _stored_hexes(self) -> list[str]:
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        return [m.group(1) for n in names
                if (m := _DIR_NAME.fullmatch(n)) and self._complete(self.root / n)]

    def _require(self, digest: str) -> Path:
        hex_ = _hex_of(digest)
        path = self.root / f"sha256-{hex_}"
        if hex_ is None or not self._complete(path):
            raise ImageNotFound(f"no image {digest!r} in {self.root}",
                                hint="images are named by full digest: sha256:<64 hex>")
        return path

    @staticmethod
    def _complete(path: Path) -> bool:
        return (path / "image.json").is_file() and (
            (path / "manifest.json").is_file() or (path / ENGINE_FILE).is_file())

    def _load(self, hex_: str) -> Image:
        path = self.root / f"sha256-{hex_}"
        info = json.loads((path / "image.json").read_text(encoding="utf-8"))
        return Image(digest=f"sha256:{hex_}", path=path,
                     created_at=float(info.get("created_at", 0.0)), provenance=info)


def _hex_of(digest: str) -> str | None:
    hex_ = digest.strip().lower().removeprefix("sha256:")
    return hex_ if _HEX.fullmatch(hex_) else None
