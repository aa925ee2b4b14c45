"""Image housekeeping: which images are in use, and removing the rest (``hinotori gc``).

An image is in use, and is never removed, while a release that names it is

    - among the newest ``keep`` releases of its service (by number),
    - the service's current or previous release (what serves, and what a rollback returns to),
    - the service's canary,
    - the release of a live host: any state but destroyed or failed, so booting, verifying,
      ready, serving, draining and warm hosts all keep their image.

Every other stored image goes, including images no release names (a bake whose release was
never made). An OS image goes from the container engine too (its hinotori tag; see
osimage/engine_images.py); one the engine cannot remove stays recorded and is reported as kept.
Then the build cache: snapshots that no remaining image's chain names (each
image.json lists ``cache_keys``) and blobs that no remaining snapshot names. Then scratch in the
image store's ``.tmp`` whose process is gone (a killed bake or removal).

All of it runs under the cache lock held exclusively, so no bake runs meanwhile; and a bake
through ``releases.bake_service`` holds the lock until its release exists, so gc never sees a
just-baked image before the release that uses it. A run that removes anything is recorded in
the event log as ``images.gc``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hinotori.bake.cache import BuildCache, PruneStats
from hinotori.bake.images import Image, ImageStore
from hinotori.bake.osimage.engine_images import remove_engine_images
from hinotori.bake.tree import force_remove
from hinotori.errors import NotFound
from hinotori.model import HostState
from hinotori.store import Store

if TYPE_CHECKING:
    from docker import DockerClient

DEFAULT_KEEP = 3


@dataclass
class GcResult:
    removed: list[Image]
    kept: dict[str, list[str]]  # digest -> why it is in use
    scratch: list[str]  # scratch directories removed
    cache: PruneStats
    dry_run: bool
    freed: int = 0  # bytes of image files removed

    def to_dict(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run,
                "removed": [{"digest": i.digest, "files": i.file_count, "size": i.total_size,
                             "labels": i.labels} for i in self.removed],
                "kept": self.kept, "scratch": self.scratch, "freed": self.freed,
                "cache": {"snapshots": self.cache.snapshots, "blobs": self.cache.blobs,
                          "bytes": self.cache.bytes}}


def images_in_use(store: Store, *, keep: int = DEFAULT_KEEP) -> dict[str, list[str]]:
    """Every image digest some release in use names -> the reasons, e.g. "web@v3 current"."""
    if keep < 0:
        raise ValueError("keep must be 0 or more")
    reasons: dict[str, list[str]] = {}

    def use(digest: str, why: str) -> None:
        reasons.setdefault(digest, []).append(why)

    by_service: dict[str, list[Any]] = {}
    for release in store.releases():
        by_service.setdefault(release.service, []).append(release)
    for service, releases in sorted(by_service.items()):
        numbered = {r.number: r for r in releases}
        current, previous = store.service_releases(service)
        for number, role in ((current, "current"), (previous, "previous"),
                             (store.canary(service), "canary")):
            if number is not None and number in numbered:
                use(numbered[number].image, f"{service}@v{number} {role}")
        newest = sorted(numbered)[-keep:] if keep else []
        for number in newest:
            use(numbered[number].image, f"{service}@v{number} among the newest {keep}")
    for host in store.hosts(states=[s for s in HostState if s.alive]):
        with contextlib.suppress(NotFound):  # a host whose release is gone has no image
            release = store.release(host.service, host.release)
            use(release.image, f"{host.service}@v{host.release} {host.state} host {host.id}")
    return reasons


def collect(images: ImageStore, store: Store, *, keep: int = DEFAULT_KEEP,
            dry_run: bool = False, actor: str = "hinotori",
            engine: Callable[[], DockerClient] | None = None,
            others: Sequence[tuple[str, Store]] = ()) -> GcResult:
    """Remove what nothing uses (or, with ``dry_run``, only say what would go). ``others``:
    (environment, store) of every other environment sharing the image store: what any of
    them uses stays."""
    cache = BuildCache.beside(images.root)
    with cache.lock(exclusive=True):
        in_use = images_in_use(store, keep=keep)
        for env, other in others:
            for digest, why in images_in_use(other, keep=keep).items():
                in_use.setdefault(digest, []).extend(f"{env}: {w}" for w in why)
        stored = images.list()
        doomed = [i for i in stored if i.digest not in in_use]
        kept = {i.digest: in_use[i.digest] for i in stored if i.digest in in_use}
        # Every bake holds the lock shared while its scratch exists, so under the exclusive
        # lock any bake scratch is orphaned; a removal's scratch is, once its process is gone.
        orphans = [path for path, pid in images.scratch_dirs()
                   if path.name.startswith("bake-") or not _alive(pid)]
        if not dry_run:
            refused = remove_engine_images([i for i in doomed if i.kind == "os"],
                                           engine=engine)
            for image in [i for i in doomed if i.digest in refused]:
                doomed.remove(image)
                kept[image.digest] = [refused[image.digest]]
            for image in doomed:
                images.remove(image.digest)
            for path in orphans:
                force_remove(path)
        keys = {k for i in stored if i.digest in in_use
                for k in i.provenance.get("cache_keys", [])}
        pruned = cache.prune(keys, dry_run=dry_run)
        result = GcResult(removed=doomed, kept=kept, scratch=[p.name for p in orphans],
                          cache=pruned, dry_run=dry_run,
                          freed=sum(i.total_size for i in doomed))
        if not dry_run and (doomed or orphans or pruned.snapshots or pruned.blobs):
            store.record(actor, "images.gc", "images", {
                "keep": keep, "removed": [i.digest for i in doomed],
                "scratch": len(orphans), "cache_snapshots": pruned.snapshots,
                "cache_blobs": pruned.blobs})
    return result


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True
