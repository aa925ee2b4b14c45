"""Removing OS images from the container engine, for ``hinotori gc``.

An OS image is removed by its hinotori tag, never by id: two projects (or two services) whose
recipes give the same image share one engine id under two tags, and removing one project's
tag must leave the other's image alone. The engine deletes the image when its last tag goes,
along with the untagged parent layers no other image needs; the layers other images still
build on stay, and with them the layer cache. Bases (``localhost/hinotori-base``) are shared
by every project on the engine and are not removed here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from hinotori.bake.images import Image

if TYPE_CHECKING:
    from docker import DockerClient


def remove_engine_images(images: Sequence[Image], *,
                         engine: Callable[[], DockerClient] | None = None) -> dict[str, str]:
    """Remove each OS image's tag from the engine; digest -> why, for those that could not
    be removed (they stay recorded, so a later gc tries again)."""
    import docker.errors

    from hinotori.engine import EngineError, connect

    if not images:
        return {}
    try:
        client = engine() if engine is not None else connect()
    except EngineError as e:
        return {i.digest: f"not removed from the engine: {e.message}" for i in images}
    failed: dict[str, str] = {}
    try:
        for image in images:
            ref = image.provenance.get("engine", {}).get("tag") or image.digest
            try:
                client.images.remove(ref)
            except docker.errors.ImageNotFound:
                pass  # already gone: only the record is left to remove
            except docker.errors.APIError as e:
                failed[image.digest] = f"the engine refused to remove it: {e.explanation or e}"
    finally:
        client.close()
    return failed
