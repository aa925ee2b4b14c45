"""Promotion: deploy in one environment the image another environment serves now, never a rebuild.

`deploy web -E production --from staging` reads staging's state.db read-only, takes the release
serving there (its image digest), and makes a production release of that digest with
production's config (its overlay applied): no bake, and since every environment shares one image
store, nothing is copied. The release records its origin (environment, release, digest).

An environment with ``promote_only = true`` takes nothing else: no bake-and-deploy (ship, the
push webhook), no deploy of a release made here. And the image must, in ``promote_from``:
serve now; have served without a break for at least ``soak``; never have failed a deployment
going to it nor been rolled back from. Each refusal names the condition that failed. The
controller checks again when the deployment starts, so the API cannot go around the CLI.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from hinotori.durations import format_duration
from hinotori.errors import ImageNotFound, NotFound, PromotionRefused
from hinotori.model import Release
from hinotori.project import Project
from hinotori.releases import ReleaseOutcome
from hinotori.spec.environments import EnvironmentSpec
from hinotori.store import default_actor
from hinotori.store.origins import SourceState


@dataclass(frozen=True)
class Candidate:
    """What serves in the source now, and for how long it has."""

    source: str
    release: Release
    hosts: list[str]
    served_for: float


def settings(project: Project) -> EnvironmentSpec:
    """The chosen environment's own settings (defaults without one)."""
    if project.environment is None:
        return EnvironmentSpec()
    return project.spec.environments[project.environment]


def refuse_unpromoted(project: Project, what: str) -> None:
    """Raise if the environment is promote_only: ``what`` (a deploy, a ship…) is not a
    promotion."""
    env = settings(project)
    if env.promote_only:
        raise PromotionRefused(
            f"{project.environment} is promote_only: it deploys only images promoted from "
            f"{env.promote_from}, not {what}",
            hint=f"deploy what serves in {env.promote_from}: `hinotori deploy SERVICE "
                 f"-E {project.environment} --from {env.promote_from}`")


def candidate(project: Project, service: str, source: str, *,
              image: str | None = None) -> Candidate:
    """What ``service`` serves in ``source`` now, checked against the target environment's
    conditions (``image``: insist on this digest, e.g. a promoted release deployed again)."""
    target = project.environment
    declared = project.loaded.environments
    if target is None:
        raise PromotionRefused("--from promotes between environments: choose the target "
                               "with --environment/-E NAME",
                               hint=f"environments: {', '.join(declared) or 'none declared'}")
    if source not in declared:
        raise NotFound(f"no environment {source!r} to promote from (declared: "
                       f"{', '.join(declared)})")
    if source == target:
        raise PromotionRefused(f"{target} cannot promote from itself",
                               hint="--from names the environment the image serves in now")
    env = settings(project)
    if env.promote_only and source != env.promote_from:
        raise PromotionRefused(f"{target} takes images only from {env.promote_from} "
                               f"(promote_from), not from {source}")
    with SourceState(project.environment_state(source)) as src:
        release = src.current(service)
        if release is None:
            raise PromotionRefused(f"{service} serves nothing in {source}: no image to promote",
                                   hint=f"deploy it there first (-E {source})")
        if image is not None and release.image != image:
            raise PromotionRefused(f"image {image[:19]} is not serving in {source} now "
                                   f"({service} serves {release.image[:19]} there, "
                                   f"{release.name})", hint=f"promote what serves now: "
                                   f"--from {source}")
        hosts = src.serving_hosts(service, release.image)
        if not hosts:
            raise PromotionRefused(f"{service} {release.name} is not serving in {source} now "
                                   "(no serving host)", hint=f"`hinotori up -E {source}` and "
                                   "let it serve before promoting it")
        since = src.served_since(service, release.image)
        served_for = time.time() - since if since is not None else 0.0
        if env.soak and served_for < env.soak:
            raise PromotionRefused(
                f"{service} {release.name} ({release.image[:19]}) has served in {source} for "
                f"{format_duration(served_for)}, less than the {format_duration(env.soak)} "
                f"soak {target} demands",
                hint=f"promote it in {format_duration(env.soak - served_for)}")
        if env.promote_only:
            for trouble in src.troubles(service, release.image):
                raise PromotionRefused(
                    f"{service}'s image {release.image[:19]} had a deployment {trouble.what} in "
                    f"{source} (deployment {trouble.deployment}): {target} takes only images "
                    "that served without a failed deployment or a rollback",
                    hint="bake a fixed image and let it serve in "
                         f"{source} for the soak")
    return Candidate(source, release, hosts, served_for)


def promote(project: Project, service: str, source: str) -> tuple[Candidate, ReleaseOutcome]:
    """The release of the image ``source`` serves, in this environment with its config; made
    once (promoting the same image and config again reuses it)."""
    found = candidate(project, service, source)
    try:
        project.images.get(found.release.image)
    except ImageNotFound:
        raise ImageNotFound(f"image {found.release.image} serves in {source} but is not in the "
                            "image store", hint="was it removed by hand? bake it in "
                            f"{source} again") from None
    config = project.service(service).release_config()
    origin = {"environment": source, "release": found.release.number,
              "image": found.release.image}
    latest = project.store.latest_release(service)
    if latest and latest.image == found.release.image and latest.config == config:
        known = project.store.origin(service, latest.number)
        if known and known["environment"] == source and known["release"] == origin["release"]:
            return found, ReleaseOutcome(latest, created=False)
    release = project.store.create_release(
        service, found.release.image, config, actor=default_actor(), origin=origin,
        reason=f"promoted from {source} {found.release.name}")
    return found, ReleaseOutcome(release, created=True)


def check_deployable(project: Project, service: str, number: int) -> None:
    """In a promote_only environment, release ``number`` must be a promotion whose image
    still meets the conditions in its source (the controller asks before every deploy)."""
    env = settings(project)
    if not env.promote_only:
        return
    origin = project.store.origin(service, number)
    if origin is None:
        refuse_unpromoted(project, f"{service} v{number}, which was made here")
        return
    candidate(project, service, origin["environment"], image=origin["image"])
