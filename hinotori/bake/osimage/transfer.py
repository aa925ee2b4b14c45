"""An OS image into an archive and back (transfer.py describes the archive).

An OS image lives in the container engine; its digest is the engine's image id, which is the
sha256 of the image's config, and the config names every layer by the sha256 of its
uncompressed tar (``rootfs.diff_ids``). So the archive carries exactly those: ``config.json``
and ``layers/<hex>.tar``, each layer once. Import checks the chain (config against the digest,
every layer against the config) while staging a ``docker save``-shaped tar in the store's
scratch, and only then asks the engine to load it; the image is recorded in the store (and so
visible to hinotori) after the engine holds it under that same id.

Export reads the engine's ``docker save`` stream (spooled to scratch: its own manifest may come
last) and re-writes it in our fixed shape, so the same image gives the same bytes whichever
engine, tags or save format (Docker 25's OCI layout included) it came from.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from hinotori.bake import archive
from hinotori.bake.archive import ImageArchiveError, check_member, read_digested
from hinotori.bake.images import Image, ImageStore
from hinotori.bake.osimage.bake import image_repository
from hinotori.bake.tree import force_remove
from hinotori.engine_storage import retrying
from hinotori.errors import EngineError, ImageNotFound

if TYPE_CHECKING:
    import docker

_CHUNK = 1 << 20
_DIFF_ID = re.compile(r"sha256:([0-9a-f]{64})")
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_REFUSE = archive.DAMAGED


def export_os(engine: Callable[[], docker.DockerClient], store: ImageStore, image: Image,
              tar: tarfile.TarFile) -> int:
    """Write config.json and the layers; returns the number of members written."""
    client = engine()
    store.tmp_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=store.tmp_dir) as spool:
        try:
            return _export(client, image, tar, spool)
        finally:
            client.close()


def _export(client: docker.DockerClient, image: Image, tar: tarfile.TarFile,
            spool: IO[bytes]) -> int:
    import docker.errors

    try:
        found = retrying(lambda: client.images.get(image.digest))
        chunks = found.save(chunk_size=_CHUNK, named=False)
        for chunk in chunks:
            spool.write(chunk)
    except docker.errors.ImageNotFound:
        raise ImageNotFound(f"{image.digest} is no longer in the container engine",
                            hint="bake the service again") from None
    spool.seek(0)
    with tarfile.open(fileobj=spool, mode="r:") as saved:
        config_name, layer_names = _saved_manifest(saved)
        config = _read(saved, config_name)
        if "sha256:" + archive.sha256_hex(config) != image.digest:
            raise EngineError(f"the engine's config of {image.digest} does not hash to it",
                              hint="this engine names images differently (Docker with "
                                   "the containerd store?): export from another engine")
        diff_ids = _diff_ids(config)
        if len(diff_ids) != len(layer_names):
            raise EngineError(f"the engine saved {len(layer_names)} layers of "
                              f"{image.digest}; its config names {len(diff_ids)}")
        archive.add_bytes(tar, "config.json", config)
        written: set[str] = set()
        for hex_, name in zip(diff_ids, layer_names, strict=True):
            if hex_ in written:
                continue
            written.add(hex_)
            member = _resolve(saved, name)
            src = saved.extractfile(member)
            assert src is not None
            reader = archive.HashingReader(src)
            tar.addfile(archive.info(f"layers/{hex_}.tar", size=member.size), reader)
            if reader.hexdigest() != hex_:
                raise EngineError(f"layer {name} of {image.digest} as the engine saved it "
                                  f"is not sha256:{hex_} (compressed?)",
                                  hint="export from another engine")
        return 1 + len(written)


def _resolve(saved: tarfile.TarFile, name: str) -> tarfile.TarInfo:
    """A saved layer's member; Docker's save links a repeated layer to its first copy."""
    member = saved.getmember(name)
    for _ in range(8):
        if member.issym():
            name = posixpath.normpath(posixpath.join(posixpath.dirname(name), member.linkname))
        elif member.islnk():
            name = member.linkname
        else:
            return member
        member = saved.getmember(name)
    raise EngineError(f"the engine's saved image links {name} in a loop")


def _saved_manifest(saved: tarfile.TarFile) -> tuple[str, list[str]]:
    try:
        manifest = json.loads(_read(saved, "manifest.json"))
        return str(manifest[0]["Config"]), [str(n) for n in manifest[0]["Layers"]]
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise EngineError(f"the engine's saved image has no usable manifest.json ({e})"
                          ) from None


def _read(saved: tarfile.TarFile, name: str) -> bytes:
    f = saved.extractfile(name)
    if f is None:
        raise EngineError(f"the engine's saved image has no file {name}")
    return f.read()


def _diff_ids(config: bytes) -> list[str]:
    """The layers' sha256 hex, in order, from an image config; ImageArchiveError if unusable."""
    try:
        ids = json.loads(config)["rootfs"]["diff_ids"]
        hexes = [m.group(1) for i in ids if (m := _DIFF_ID.fullmatch(i))]
    except (ValueError, KeyError, TypeError) as e:
        raise ImageArchiveError(f"the image config names no layers ({e})", hint=_REFUSE
                                ) from None
    if len(hexes) != len(ids) or not hexes:
        raise ImageArchiveError("the image config's layer ids are not sha256 digests",
                                hint=_REFUSE)
    return hexes


def import_os(store: ImageStore, tar: tarfile.TarFile, items: Iterator[tarfile.TarInfo],
              source: Path | None, digest: str, info: dict[str, Any], *,
              engine: Callable[[], docker.DockerClient], project: str
              ) -> tuple[bool, dict[str, int]]:
    config = read_digested(tar, next(items, None), "config.json", source, digest, "config",
                           8 << 20)
    diff_ids = _diff_ids(config)
    if store.exists(digest):
        return False, {}
    hex_ = digest.removeprefix("sha256:")
    service = str(info.get("labels", {}).get("service", "image"))
    repository = image_repository(project, service if _NAME.fullmatch(service) else "image")
    tag = f"{repository}:{hex_[:12]}"
    scratch = store.new_scratch()
    try:
        bundle = scratch / "load.tar"
        size = _stage(tar, items, scratch, bundle, config, diff_ids, tag)
        client = engine()
        try:
            _load(client, bundle, digest, tag)
        finally:
            client.close()
        force_remove(bundle)
        info["engine"] = {"id": digest, "tag": tag}
        store.record(digest, info, engine={"id": digest, "tag": tag})
    finally:
        force_remove(scratch)
    return True, {"layers": len(set(diff_ids)), "bytes": size}


def _stage(tar: tarfile.TarFile, items: Iterator[tarfile.TarInfo], scratch: Path,
           bundle: Path, config: bytes, diff_ids: list[str], tag: str) -> int:
    """A ``docker save``-shaped tar of the verified config and layers; the bytes of layers."""
    pending, done = set(diff_ids), set()
    hex_ = archive.sha256_hex(config)
    size = 0
    with tarfile.open(bundle, "w", format=tarfile.PAX_FORMAT) as out:
        archive.add_bytes(out, f"{hex_}.json", config)
        for member in items:
            check_member(member, os.fspath(scratch))
            m = re.fullmatch(r"layers/([0-9a-f]{64})\.tar", member.name)
            layer = m.group(1) if m else ""
            if not m or not member.isreg() or layer not in pending:
                what = "twice" if layer in done else "but not in the image's config"
                raise ImageArchiveError(f"archive member {member.name!r} is in the archive "
                                        f"{what}", hint=_REFUSE)
            archive.check_space(scratch, member.size, f"layer {member.name}")
            src = tar.extractfile(member)
            assert src is not None
            reader = archive.HashingReader(src)
            try:
                out.addfile(archive.info(f"{layer}.tar", size=member.size), reader)
            except OSError:
                raise ImageArchiveError(f"the archive is cut short inside {member.name}",
                                        hint="export the image again") from None
            if reader.hexdigest() != layer:
                raise ImageArchiveError(f"{member.name}: content sha256 "
                                        f"{reader.hexdigest()[:16]}… does not match its name "
                                        "(the layer id the config names)", hint=_REFUSE)
            pending.discard(layer)
            done.add(layer)
            size += member.size
        if pending:
            raise ImageArchiveError(f"layers/{sorted(pending)[0]}.tar"
                                    f"{f' and {len(pending) - 1} more' if len(pending) > 1 else ''}"
                                    " named by the image's config but missing from the archive",
                                    hint=_REFUSE)
        manifest = [{"Config": f"{hex_}.json", "RepoTags": [tag],
                     "Layers": [f"{d}.tar" for d in diff_ids]}]
        archive.add_bytes(out, "manifest.json", json.dumps(manifest).encode())
    return size


def _load(client: docker.DockerClient, bundle: Path, digest: str, tag: str) -> None:
    """The verified bundle into the engine (skipped when it holds the image already), tagged."""
    import docker.errors

    try:
        image = retrying(lambda: client.images.get(digest))
    except docker.errors.ImageNotFound:
        try:
            with open(bundle, "rb") as f:
                client.images.load(f)
            image = retrying(lambda: client.images.get(digest))
        except docker.errors.ImageNotFound:
            raise EngineError(f"the engine loaded the archive but holds no image {digest}",
                              hint="this engine names images differently (Docker with the "
                                   "containerd store?)") from None
        except docker.errors.APIError as e:
            raise EngineError(f"the engine refused to load {digest}: "
                              f"{e.explanation or e}") from None
    repository, _, name = tag.rpartition(":")
    if tag not in image.tags:
        image.tag(repository, tag=name)
