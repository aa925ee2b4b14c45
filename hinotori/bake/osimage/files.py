"""An OS image's files as a manifest, read from the engine when first asked for.

The bake never reads an OS image's files (that would make a cached rebake as slow as a full
export). ``image inspect`` and ``image diff`` need them, so the first of those exports a
container of the image (``containers.create`` + ``export``, a tar stream, never unpacked),
builds manifest entries from the tar headers and contents, and stores them as the record's
``manifest.json``; later calls read that file.

The entries follow manifest.py with two differences a whole OS brings: symlinks may be
absolute (``/etc/alternatives/…``), and special files (device nodes, FIFOs) are left out, as a
file-tree image never holds them either. A hard link is listed as a file with its target's
content. The manifest's own digest is not the image's identity here: the engine id is.
"""

from __future__ import annotations

import hashlib
import posixpath
import tarfile
from typing import TYPE_CHECKING

from hinotori.bake.images import Image, ImageStore
from hinotori.bake.manifest import SYMLINK_MODE, ManifestEntry
from hinotori.bake.tree import DIR, FILE, SYMLINK
from hinotori.errors import ImageNotFound

if TYPE_CHECKING:
    import docker

_CHUNK = 1 << 20


def os_manifest(client: docker.DockerClient, store: ImageStore, image: Image
                ) -> list[ManifestEntry]:
    """The image's manifest, computed from the engine and stored on first use."""
    if image.has_manifest:
        return image.manifest()
    import docker.errors

    engine_id = image.provenance.get("engine", {}).get("id", image.digest)
    try:
        container = client.containers.create(engine_id, command=["/bin/true"])
    except docker.errors.ImageNotFound:
        raise ImageNotFound(f"{image.digest} is no longer in the container engine",
                            hint="bake the service again") from None
    try:
        entries = entries_of_tar(container.export(chunk_size=_CHUNK))
    finally:
        container.remove(force=True)
    store.add_manifest(image.digest, entries)
    return entries


class _Stream:
    """A file object over the SDK's chunk iterator, for tarfile's streaming mode."""

    def __init__(self, chunks) -> None:  # type: ignore[no-untyped-def]
        self._chunks = iter(chunks)
        self._buffer = b""

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._buffer) < n:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buffer += chunk
        if n < 0:
            data, self._buffer = self._buffer, b""
        else:
            data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data


def entries_of_tar(chunks) -> list[ManifestEntry]:  # type: ignore[no-untyped-def]
    """Manifest entries from a tar stream (an iterable of byte chunks)."""
    files: dict[str, ManifestEntry] = {}
    entries: dict[str, ManifestEntry] = {}
    with tarfile.open(fileobj=_Stream(chunks), mode="r|") as tar:  # type: ignore[call-overload]
        for member in tar:
            path = _clean(member.name)
            if not path:
                continue
            mode = f"{member.mode & 0o777:04o}"
            if member.isdir():
                entries[path] = ManifestEntry(path, DIR, mode)
            elif member.issym():
                entries[path] = ManifestEntry(path, SYMLINK, SYMLINK_MODE,
                                              target=member.linkname)
            elif member.isfile():
                digest = hashlib.sha256()
                f = tar.extractfile(member)
                assert f is not None
                while block := f.read(_CHUNK):
                    digest.update(block)
                entry = ManifestEntry(path, FILE, mode, size=member.size,
                                      sha256=digest.hexdigest())
                entries[path] = files[path] = entry
            elif member.islnk():
                target = files.get(_clean(member.linkname))
                if target is not None:
                    entries[path] = ManifestEntry(path, FILE, mode, size=target.size,
                                                  sha256=target.sha256)
    return sorted(entries.values(), key=lambda e: e.path.encode())


def _clean(name: str) -> str:
    """A tar member's name as a manifest path: no leading "./" or "/", no trailing "/"."""
    name = posixpath.normpath("/" + name).lstrip("/")
    return "" if name == "." else name
