"""Releases from bakes and config changes: a release is made only when something changed.

A release is service + image digest + config (command, env, port variable, and for each secret
its source and a keyed fingerprint of its value now). Baking the same inputs again, or deploying
with an unchanged config, makes no new release; a changed image or a changed config makes
exactly one; a rotated secret alone makes a config-only one ("secret DB_PASSWORD changed").
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hinotori.bake import BakeResult, BuildCache, bake
from hinotori.bake.ignore import IgnoreRules
from hinotori.errors import BakeError, NotFound
from hinotori.model import Release, ReleaseConfig
from hinotori.project import Project
from hinotori.secrets import secrets_reason
from hinotori.store import Store, default_actor

if TYPE_CHECKING:
    import docker


@dataclass(frozen=True)
class ReleaseOutcome:
    release: Release
    created: bool  # False: the newest release already had this image and config


def bake_service(project: Project, service: str, *,
                 on_progress: Callable[[str], None] | None = None,
                 use_cache: bool = True, actor: str | None = None, via: str = "local",
                 engine: docker.DockerClient | None = None) -> tuple[BakeResult, ReleaseOutcome]:
    """Bake ``service``'s image from its recipe and make a release if anything changed.
    ``use_cache=False`` runs every step again (``hinotori bake --no-cache``). ``actor`` (who
    baked; default this user) and ``via`` ("local"; "controller" for a bake the CLI handed
    to a running controller; "push" for a push webhook's ship) go into the ``image.baked``
    event, the bake's provenance.
    ``engine``: a client of the project's engine to build OS images with (a warm process keeps
    one); by default one is connected for this bake and closed after it."""
    svc = project.service(service)
    actor = actor or default_actor()
    started = time.monotonic()
    _secret_files_not_baked(project, service)
    # Held across the bake and the release, so `gc` cannot remove the new image in between.
    # bake() takes the same lock shared again: flock grants a shared lock while others
    # hold it shared, even with an exclusive request (gc) waiting, so this cannot deadlock.
    with BuildCache.beside(project.images.root).lock():
        if svc.image.os is not None:
            result = _bake_os(project, service, on_progress=on_progress, use_cache=use_cache,
                              engine=engine)
        else:
            result = bake(project.root / svc.image.context, svc.image.recipe(),
                          project.images,
                          labels={"service": service, "project": project.spec.project.name},
                          on_progress=on_progress, use_cache=use_cache)
        outcome = ensure_release(project, service, image=result.image.digest,
                                 config=svc.release_config(), reason="bake", actor=actor)
    project.store.record(actor, "image.baked", service, {
        "image": result.image.digest, "via": via, "release": outcome.release.name,
        "release_created": outcome.created, "reused": result.reused,
        "cache_hits": result.cache_hits, "cache_misses": result.cache_misses,
        "no_cache": not use_cache, "seconds": round(time.monotonic() - started, 3)})
    return result, outcome


def _secret_files_not_baked(project: Project, service: str) -> None:
    """Refuse to bake a context that would copy a file secret into the image (images are
    stored in plain text under .hinotori/ and copied to every host)."""
    svc = project.service(service)
    context = (project.root / svc.image.context).resolve()
    rules: IgnoreRules | None = None
    for name, secret in sorted(svc.secrets.items()):
        if secret.file is None:
            continue
        path = (project.root / os.path.expanduser(secret.file)).resolve()
        if not path.is_relative_to(context) or path == context:
            continue
        parts = path.relative_to(context).parts
        rules = rules or IgnoreRules.load(context)
        if not any(rules.excluded("/".join(parts[:i]), i < len(parts))
                   for i in range(1, len(parts) + 1)):
            raise BakeError(f"secret {name}'s file {secret.file} is inside {service}'s image "
                            "context: it would be baked into the image",
                            hint=f"list {'/'.join(parts)} in .hinotoriignore, or keep the "
                                 "file outside the context")


def _bake_os(project: Project, service: str, *, on_progress: Callable[[str], None] | None,
             use_cache: bool, engine: docker.DockerClient | None) -> BakeResult:
    """An OS image (``image.os`` set): built in the container engine; its digest is the
    engine image id the container provider runs."""
    from hinotori.bake.osimage import BaseSpec, OsRecipe, bake_os

    image = project.service(service).image
    assert image.os is not None
    os_spec = image.os
    recipe = OsRecipe(BaseSpec(suite=os_spec.suite, variant=os_spec.variant,
                               packages=tuple(os_spec.packages), mirror=os_spec.mirror,
                               arch=os_spec.arch), workdir=os_spec.workdir)
    client = engine or project.engine()
    try:
        return bake_os(client, project.root / image.context, image.recipe(), recipe,
                       project.images, project=project.spec.project.name, service=service,
                       on_progress=on_progress, use_cache=use_cache)
    finally:
        if engine is None:
            client.close()


def ensure_release(project: Project, service: str, *, image: str | None = None,
                   config: ReleaseConfig | None = None, reason: str,
                   actor: str | None = None) -> ReleaseOutcome:
    """The newest release if it already has ``image`` and ``config``; else a new one.
    ``image`` None keeps the newest release's image (a config-only release)."""
    latest = project.store.latest_release(service)
    if image is None:
        if latest is None:
            raise NotFound(f"{service} has no image yet",
                           hint=f"run `hinotori bake {service}` first")
        image = latest.image
    config = config or project.service(service).release_config()
    # The values now, as fingerprints: raises SecretError (naming key and source) before any
    # release is written if one cannot be resolved.
    config = project.secrets.fingerprinted(config)
    if latest and latest.image == image and latest.config == config:
        return ReleaseOutcome(latest, created=False)
    if latest and latest.image == image:
        reason = secrets_reason(latest.config, config) or reason
    release = project.store.create_release(service, image, config,
                                           actor=actor or default_actor(), reason=reason)
    return ReleaseOutcome(release, created=True)


def config_with_env(project: Project, service: str, overrides: dict[str, str]) -> ReleaseConfig:
    """The spec's config for ``service`` with ``overrides`` on top of its env."""
    return project.service(service).release_config(overrides)


def release_rows(store: Store, service: str | None = None) -> list[dict[str, Any]]:
    """Every release (newest last) as `hinotori releases --json` and `GET /v1/releases` show
    it (``Release.view``): with its role, "current", "previous" or "", and its origin
    (environment, release, image) if it was promoted, else None."""
    rows: list[dict[str, Any]] = []
    origins = store.origins()
    for r in store.releases(service):
        current, previous = store.service_releases(r.service)
        role = "current" if r.number == current else "previous" if r.number == previous else ""
        rows.append({**r.view(role), "origin": origins.get((r.service, r.number))})
    return rows


def bake_summary(service: str, result: BakeResult, outcome: ReleaseOutcome) -> dict[str, Any]:
    """One bake as `hinotori bake --json` and `POST /v1/services/{service}/bake` report it."""
    return {"service": service, "image": result.image.digest, "reused": result.reused,
            "release": outcome.release.name, "release_created": outcome.created,
            "files": result.image.provenance.get("file_count"),
            "cache_hits": result.cache_hits, "cache_misses": result.cache_misses,
            "cached_steps": result.cached_steps}


def releases_using(store: Store) -> dict[str, list[str]]:
    """Image digest -> the releases ("web@v3") made from it."""
    using: dict[str, list[str]] = {}
    for r in store.releases():
        using.setdefault(r.image, []).append(f"{r.service}@{r.name}")
    return using


def releases_everywhere(project: Project) -> dict[str, list[str]]:
    """``releases_using`` over every environment's store (the image store is shared), each
    release named with its environment; without environments, this project's store."""
    if not project.loaded.environments:
        return releases_using(project.store)
    using: dict[str, list[str]] = {}
    for env, path in project.all_state_files():
        store = project.store if path == project.state_dir / "state.db" else Store(path)
        try:
            for digest, names in releases_using(store).items():
                using.setdefault(digest, []).extend(f"{env}:{n}" if env else n for n in names)
        finally:
            if store is not project.store:
                store.close()
    return using


def image_rows(project: Project) -> list[dict[str, Any]]:
    """Stored images, newest first, with the releases that use each (`hinotori images --json`,
    `GET /v1/images`); with environments, every environment's ("staging:web@v3")."""
    using = releases_everywhere(project)
    return [{"digest": i.digest, "created_at": i.created_at,
             "files": None if i.kind == "os" else i.file_count, "kind": i.kind,
             "size": i.total_size, "labels": i.labels, "releases": using.get(i.digest, [])}
            for i in project.images.list()]
