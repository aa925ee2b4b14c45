"""``bake_os()``: a recipe on a Debian base -> an engine image, registered in the image store.

    base      the bootstrapped Debian for (suite, variant, packages, mirror, arch)   base.py
    recipe    one Containerfile instruction per step, context tar assembled here   containerfile.py
    build     the engine's build API, layer cache on, fixed timestamp              engine_build.py
    tag       localhost/hinotori/<project>-<service>:<12 hex of the id>, only after success
    record    <images>/sha256-<engine id hex>/ with image.json (provenance: base, layers,
              recipe) and engine.json; no manifest.json until someone asks (files.py)

The image's digest is the engine's image id (``client.images.get(ref).id``): the container
provider runs exactly that id, and the release names it. A cached rebake of unchanged inputs
is all layer-cache hits, so the engine answers with the same id, the record is already there
and no release is made. Nothing here reads the image's files: that is what keeps the cached
rebake as fast as the engine's own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import hinotori
from hinotori.bake.builder import BakeResult
from hinotori.bake.cache import BuildCache
from hinotori.bake.context import BuildSource
from hinotori.bake.ignore import IgnoreRules
from hinotori.bake.images import ImageStore
from hinotori.bake.osimage.base import (
    BaseSpec,
    ensure_base,
    find_base,
    in_history,
    remember_base,
    remembered_base,
    same_image,
)
from hinotori.bake.osimage.containerfile import context_tar, translate
from hinotori.bake.osimage.engine_build import BuildOutcome, build
from hinotori.bake.provenance import git_source, recipe_hash
from hinotori.bake.steps import Step
from hinotori.engine_storage import inspect_image, retrying
from hinotori.errors import BakeError, ImageNotFound

if TYPE_CHECKING:
    import docker

Progress = Callable[[str], None]
IMAGE_REPOSITORY = "localhost/hinotori"
T = TypeVar("T")


@dataclass(frozen=True)
class OsRecipe:
    base: BaseSpec
    workdir: str = "/app"


def image_repository(project: str, service: str) -> str:
    return f"{IMAGE_REPOSITORY}/{project}-{service}"


def bake_os(client: docker.DockerClient, context: Path, steps: Sequence[Step], recipe: OsRecipe,
            store: ImageStore, *, project: str, service: str,
            on_progress: Progress | None = None, use_cache: bool = True,
            ignore_file: str = ".hinotoriignore") -> BakeResult:
    say = on_progress or (lambda _m: None)
    started = time.monotonic()
    context = _check_context(Path(context))
    cache = BuildCache.beside(store.root)
    source = BuildSource(context, IgnoreRules.load(context, ignore_file), (store.root, cache.root))
    epoch = recipe.base.epoch()
    steps = list(steps)
    translation = translate(steps, base=recipe.base.tag, workdir=recipe.workdir, source=source,
                            epoch=epoch)

    def describe(instruction: int) -> str:
        owner = translation.owners.get(instruction, 0)
        if owner == 0:
            return "the image's prelude (FROM, ARG, WORKDIR) or its sysctls label"
        return f"step {owner}/{len(steps)} ({steps[owner - 1].describe()})"

    # Provenance's git facts (two `git` runs, a status over the tree) are read while the
    # engine builds, and the new image's inspect and history while the engine cleans up after
    # committing it (on_image): the engine's build is the only wait a cached rebake should have.
    api = client.api
    with ThreadPoolExecutor(max_workers=6, thread_name_prefix="bake-os") as pool:
        git = pool.submit(git_source, source.root)
        early: dict[str, Future[Any]] = {}

        def on_image(short: str) -> None:  # called from the build's stream: nothing slow
            early.clear()
            early["inspect"] = pool.submit(inspect_image, client, short)
            early["history"] = pool.submit(_history_unless_stored, client, store, short)

        def build_it() -> BuildOutcome:
            with context_tar(translation, source, epoch=epoch) as tar:
                return build(client, tar, timestamp=epoch, use_cache=use_cache, on_line=say,
                             describe=describe, on_image=on_image)

        base_id: str | None = None
        try:
            outcome = build_it()
        except BakeError:
            # The base is there on every bake but the first, and a build without it fails at
            # FROM at once: only then is it looked for, made, and the build run again.
            if find_base(client, recipe.base) is not None:
                raise  # the base was there: the recipe's own failure
            base_id = ensure_base(client, recipe.base, on_progress=say)
            outcome = build_it()
        cached_steps = sorted(translation.owners[n] for n in outcome.cached
                              if translation.owners.get(n))
        for i, step in enumerate(steps, start=1):
            say(f"step {i}/{len(steps)}: {step.describe()}"
                f"{' (cached)' if i in cached_steps else ''}")
        image_id = outcome.image_id
        repository = image_repository(project, service)
        tag = image_id.removeprefix("sha256:")[:12]
        hits = len(cached_steps)

        def result(reused: bool) -> BakeResult:
            return BakeResult(store.get(image_id), reused=reused, cache_hits=hits,
                              cache_misses=len(steps) - hits, cached_steps=tuple(cached_steps))

        def about_it(attrs: dict[str, Any]) -> bool:
            return same_image(attrs.get("Id"), image_id)

        if store.exists(image_id):
            say(f"image {image_id} already stored")
            attrs = _answer(early.get("inspect"), about_it) or inspect_image(client, image_id)
            if f"{repository}:{tag}" not in (attrs.get("RepoTags") or []):
                api.tag(image_id, repository, tag=tag)
            return result(reused=True)
        # A new image has no tag yet: tagged now; its inspect and history are asked now unless
        # the engine answered them already for this image.
        tagging = pool.submit(api.tag, image_id, repository, tag=tag)
        inspecting = early.get("inspect") or pool.submit(inspect_image, client, image_id)
        known = base_id or remembered_base(client, recipe.base)
        looked_up = pool.submit(find_base, client, recipe.base) if known is None else None
        history = _answer(early.get("history"),
                          lambda h: bool(h) and same_image(h[0].get("Id"), image_id))
        if history is None:
            history = retrying(lambda: api.history(image_id))
        if looked_up is not None or not in_history(known, history):
            # Not made or seen by this process, or not what this image was built on (the tag
            # was made again since): the engine says which image the tag names.
            known = (looked_up.result() if looked_up is not None
                     else find_base(client, recipe.base))
        base_id = known or ""  # "": removed since the build used it
        if base_id:
            remember_base(client, recipe.base, base_id)
        attrs = _answer(inspecting, about_it) or inspect_image(client, image_id)
        info = _provenance(image_id, history, attrs, base_id, steps, recipe,
                           source, translation.text, tag=f"{repository}:{tag}",
                           service=service, project=project, cached_steps=cached_steps,
                           seconds=time.monotonic() - started, git=git.result())
        tagging.result()  # tagged before the record says it is
        store.record(image_id, info, engine={"id": image_id, "tag": f"{repository}:{tag}"})
        say(f"stored image {image_id}")
        return result(reused=False)


def _history_unless_stored(client: docker.DockerClient, store: ImageStore,
                           short_id: str) -> list[dict[str, Any]] | None:
    """The engine's history of ``short_id``; None (not asked) when an image with that prefix
    is stored already: a rebake of it needs only its tags checked."""
    try:
        store.get(short_id)
    except ImageNotFound as e:
        if "ambiguous" not in e.message:
            return retrying(lambda: client.api.history(short_id))
    return None


def _answer(asked: Future[T] | None, about_it: Callable[[T], bool]) -> T | None:
    """What the engine answered to a question asked early, if it answered and the answer is
    about the image the build made (``about_it``); None: ask again."""
    if asked is None:
        return None
    try:
        answer = asked.result()
    except Exception:  # any failure of a question asked early is asked again, then raised
        return None
    return answer if about_it(answer) else None


def _provenance(image_id: str, history: list[dict[str, Any]], attrs: dict[str, Any],
                base_id: str, steps: list[Step], recipe: OsRecipe, source: BuildSource,
                containerfile: str, *, tag: str, service: str, project: str,
                cached_steps: list[int], seconds: float,
                git: dict[str, Any] | None) -> dict[str, Any]:
    """image.json of a new image: ``history`` and ``attrs`` are the engine's history and
    inspect of ``image_id``."""
    env: dict[str, str] = {}
    for step in steps:
        env = step.environment(env)
    layers = [{"id": h.get("Id", ""), "created_by": h.get("CreatedBy", ""),
               "size": int(h.get("Size") or 0)} for h in history]
    info: dict[str, Any] = {
        "kind": "os",
        "digest": image_id,
        "created_at": time.time(),
        "build_seconds": round(seconds, 3),
        "builder_version": hinotori.__version__,
        "recipe_hash": recipe_hash(steps),
        "recipe": [s.to_json() for s in steps],
        "context": str(source.root),
        "env": dict(sorted(env.items())),
        "workdir": recipe.workdir,
        "total_size": int(attrs.get("Size") or 0),
        "labels": {"project": project, "service": service},
        "engine": {"id": image_id, "tag": tag},
        "base": {"tag": recipe.base.tag, "id": base_id, **recipe.base.inputs()},
        "layers": layers,
        "cached_steps": cached_steps,
        "containerfile": containerfile,
    }
    if git is not None:
        info["source"] = git
    return info


def _check_context(context: Path) -> Path:
    if not context.is_dir():
        raise BakeError(f"build context {context} is not a directory",
                        hint="check the image's `context` path (relative to hinotori.toml)")
    return context.resolve()
