"""Image housekeeping commands: ``images``, ``image inspect``, ``image diff``, ``gc``.

Plain Typer-compatible functions (registered in app.py). They read the image store and the state
store directly, so they work with or without a controller. An image reference (REF) is a digest
or a unique prefix of at least 8 hex characters (``sha256:`` optional), or a release:
``web@v3`` (also ``web@3``), ``web@current``, ``web@previous`` or ``web@latest``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from hinotori.cli import render
from hinotori.cli.options import EnvOpt, JsonOpt, SpecOpt
from hinotori.cli.render import console
from hinotori.errors import ImageNotFound, NotFound

if TYPE_CHECKING:
    from hinotori.bake import Image, ManifestEntry
    from hinotori.project import Project

DEFAULT_KEEP = 3  # as hinotori.bake.gc.DEFAULT_KEEP (a test checks): not imported at start
RefArg = Annotated[str, typer.Argument(help="digest (prefix) or release, e.g. web@v3")]


def images(spec: SpecOpt = Path("."),
           environment: EnvOpt = None, json_out: JsonOpt = False) -> None:
    """Stored images, newest first, with the releases that use each."""
    from hinotori.project import Project
    from hinotori.releases import image_rows

    rows = image_rows(Project.load(spec, environment, shared=True))
    if json_out:
        render.print_json(rows)
        return
    render.table(None, ["image", "created", "files", "size", "labels", "releases"],
                 [(render.short_digest(i["digest"]), render.when(i["created_at"]),
                   "-" if i["files"] is None else i["files"], size_text(i["size"]),
                   " ".join(f"{k}={v}" for k, v in i["labels"].items()),
                   ", ".join(i["releases"]) or "-") for i in rows])


def image_inspect(ref: RefArg, spec: SpecOpt = Path("."),
                  environment: EnvOpt = None, json_out: JsonOpt = False) -> None:
    """Where an image came from: recipe, source commit, builder, build time, env, size."""
    from hinotori.project import Project
    from hinotori.releases import releases_everywhere

    project = Project.load(spec, environment, shared=True)
    image = resolve_image(project, ref)
    if image.kind == "os" and not image.has_manifest:
        _manifest(project, image)  # an OS image's files are read once, on first inspect
        image = project.images.get(image.digest)
    info = image.provenance
    releases = releases_everywhere(project).get(image.digest, [])
    if json_out:
        render.print_json({**info, "digest": image.digest, "path": str(image.path),
                           "releases": releases})
        return
    source = info.get("source")
    rows: list[tuple[str, Any]] = [
        ("digest", image.digest),
        ("created", f"{render.when(image.created_at)} ({render.age(image.created_at)} ago)"),
        ("build time", render.seconds(info.get("build_seconds"))),
        ("builder", f"hinotori {info.get('builder_version', '?')}"),
        ("recipe hash", info.get("recipe_hash", "-")),
        ("source", "-" if not source else
         f"{source['commit']}{' (dirty)' if source.get('dirty') else ''}"),
        ("context", info.get("context", "-")),
        ("labels", " ".join(f"{k}={v}" for k, v in image.labels.items()) or "-"),
        ("env", " ".join(f"{k}={v}" for k, v in info.get("env", {}).items()) or "-"),
        ("files", f"{image.file_count} ({size_text(image.total_size)})"),
        ("releases", ", ".join(releases) or "-"),
    ]
    if image.kind == "os":
        files = len([e for e in image.manifest() if e.type == "file"])
        base = info.get("base", {})
        rows[-2] = ("files", f"{files} ({size_text(image.total_size)} in the engine)")
        rows[1:1] = [("engine tag", info.get("engine", {}).get("tag", "-")),
                     ("base", f"{base.get('tag', '-')} = {base.get('suite', '?')} "
                              f"{base.get('variant', '?')} {base.get('arch', '?')}, "
                              f"packages: {' '.join(base.get('packages', []))}"),
                     ("workdir", info.get("workdir", "-"))]
    # Where it was imported from (image import), each hop; the digest never changes.
    rows[-1:-1] = [("imported", f"from {i.get('from', '?')} at {render.when(i.get('at', 0))}")
                   for i in info.get("imports", []) if isinstance(i, dict)]
    width = max(len(k) for k, _ in rows) + 2
    for key, value in rows:  # plain lines, not a table: a digest must never be cut short
        console.print(f"{key + ':':<{width}}{value}", highlight=False, markup=False,
                      soft_wrap=True)
    recipe = info.get("recipe", [])
    console.print(f"recipe ({len(recipe)} steps):" if recipe else "recipe: no steps",
                  highlight=False)
    cached = set(info.get("cached_steps", []))
    for i, step in enumerate(recipe, start=1):
        console.print(f"  {i}. {_step_text(step)}{' (cached)' if i in cached else ''}",
                      highlight=False, markup=False, soft_wrap=True)
    layers = info.get("layers", [])
    if layers:
        console.print(f"layers ({len(layers)}, newest first):", highlight=False)
        for layer in layers:
            console.print(f"  {size_text(layer['size']):>10}  {layer['created_by'][:120]}",
                          highlight=False, markup=False, soft_wrap=True)


def image_diff(a: RefArg, b: RefArg, spec: SpecOpt = Path("."), environment: EnvOpt = None,
               json_out: JsonOpt = False) -> None:
    """Files added, removed and changed (content, mode, type) from image A to image B."""
    from hinotori.bake.diff import diff_manifests
    from hinotori.project import Project

    project = Project.load(spec, environment, shared=True)
    before, after = resolve_image(project, a), resolve_image(project, b)
    diff = diff_manifests(_manifest(project, before), _manifest(project, after))
    if json_out:
        render.print_json({"a": before.digest, "b": after.digest, **diff.to_dict()})
        return
    for e in diff.added:
        console.print(f"+ {e.path}{'/' if e.type == 'dir' else ''}", highlight=False,
                      markup=False)
    for e in diff.removed:
        console.print(f"- {e.path}{'/' if e.type == 'dir' else ''}", highlight=False,
                      markup=False)
    for c in diff.changed:
        console.print(f"~ {c.path} ({_change_text(c.what, c.before, c.after)})",
                      highlight=False, markup=False)
    console.print(f"{render.short_digest(before.digest)} -> {render.short_digest(after.digest)}:"
                  f" {len(diff.added)} added, {len(diff.removed)} removed, "
                  f"{len(diff.changed)} changed", highlight=False)


def gc(spec: SpecOpt = Path("."), environment: EnvOpt = None,
       keep: Annotated[int, typer.Option(min=0, help="keep the images of each service's "
                                         "newest N releases")] = DEFAULT_KEEP,
       dry_run: Annotated[bool, typer.Option("--dry-run", help="only say what would go")]
       = False,
       json_out: JsonOpt = False) -> None:
    """Remove the images, build-cache entries and scratch that nothing needs any more.

    Never the image of a current, previous or canary release or of a live host, nor those of
    each service's newest --keep releases."""
    from hinotori.bake.gc import collect
    from hinotori.project import Project
    from hinotori.store import Store, default_actor

    project = Project.load(spec, environment, shared=True)
    # The image store is shared: what any environment's releases or hosts use stays.
    others = [(env, Store(path)) for env, path in project.all_state_files()
              if path != project.state_dir / "state.db"]
    try:
        result = collect(project.images, project.store, keep=keep, dry_run=dry_run,
                         actor=default_actor(), engine=project.engine,
                         others=[(env or "top level", store) for env, store in others])
    finally:
        for _, store in others:
            store.close()
    if json_out:
        render.print_json(result.to_dict())
        return
    verb = "would remove" if dry_run else "removed"
    for image in result.removed:
        labels = " ".join(f"{k}={v}" for k, v in image.labels.items())
        console.print(f"{verb} {render.short_digest(image.digest)} "
                      f"({image.file_count} files, {size_text(image.total_size)}) {labels}",
                      highlight=False, markup=False)
    for digest, why in result.kept.items():
        console.print(f"kept {render.short_digest(digest)}: {'; '.join(why)}",
                      highlight=False, markup=False)
    c = result.cache
    console.print(f"{verb} {len(result.removed)} images ({size_text(result.freed)}), "
                  f"{c.snapshots} cache snapshots, {c.blobs} cache blobs ({size_text(c.bytes)}), "
                  f"{len(result.scratch)} scratch directories", highlight=False)


# -- helpers ----------------------------------------------------------------------------------


def resolve_image(project: Project, ref: str) -> Image:
    """An image by digest (prefix) or by release (``web@v3``, ``web@current``, …)."""
    from hinotori.spec.environments import environment_needed

    if "@" not in ref:
        return project.images.get(ref)
    service, _, which = ref.partition("@")
    if project.environment is None and project.loaded.environments:
        # A release is an environment's: web@v3 in staging is not web@v3 in production.
        raise environment_needed(project.loaded.environments, str(project.loaded.path))
    store = project.store
    number: int | None
    if which in ("current", "previous"):
        current, previous = store.service_releases(service)
        number = current if which == "current" else previous
    elif which == "latest":
        latest = store.latest_release(service)
        number = latest.number if latest else None
    elif which.removeprefix("v").isdigit():
        number = int(which.removeprefix("v"))
    else:
        raise NotFound(f"{ref!r} is not an image reference",
                       hint="use a digest (prefix), or SERVICE@vN, SERVICE@current, "
                            "SERVICE@previous or SERVICE@latest")
    if number is None:
        raise NotFound(f"{service} has no {which} release",
                       hint=f"`hinotori releases {service}` lists its releases")
    release = store.release(service, number)
    try:
        return project.images.get(release.image)
    except ImageNotFound:
        raise ImageNotFound(f"{ref} uses image {release.image}, which is no longer stored",
                            hint=f"bake it again: `hinotori bake {service}`") from None


def _manifest(project: Project, image: Image) -> list[ManifestEntry]:
    """An image's manifest; an OS image's is read from the engine the first time."""
    if image.kind != "os":
        return image.manifest()
    from hinotori.bake.osimage import os_manifest

    client = project.engine()
    try:
        return os_manifest(client, project.images, image)
    finally:
        client.close()


def _step_text(step: dict[str, Any]) -> str:
    """A recipe step as the spec writes it, its kind first: { copy = "src", to = "app/" }."""
    from hinotori.bake import step_kind

    kind = step_kind(step)
    return _toml({k: step[k] for k in sorted(step, key=lambda k: (k != kind, k))})


def _toml(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)  # a TOML basic string is a JSON string


def _change_text(what: tuple[str, ...], before: Any, after: Any) -> str:
    parts = []
    for w in what:
        if w == "type":
            parts.append(f"type {before.type} -> {after.type}")
        elif w == "mode":
            parts.append(f"mode {before.mode} -> {after.mode}")
        elif before.type == after.type == "symlink":
            parts.append(f"target {before.target} -> {after.target}")
        elif before.type == after.type:
            parts.append(f"content, {size_text(before.size)} -> {size_text(after.size)}")
        else:
            parts.append("content")
    return "; ".join(parts)


def size_text(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"

