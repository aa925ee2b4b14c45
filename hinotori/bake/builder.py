"""``bake()``: build context + steps -> a content-addressed image in the store.

The pipeline, all inside one scratch directory in the store's ``.tmp`` (same filesystem as the
images, so the last move is a single atomic rename)::

    scratch/rootfs   <- copy of the context, minus ignored paths     (context.py)
    scratch/home, scratch/tmp, scratch/logs                           (steps' HOME, TMPDIR, output)
    run each step in scratch/rootfs                                   (steps.py)
    drop everything but rootfs; normalise rootfs                     (normalise.py)
    manifest of rootfs -> digest                                      (manifest.py)
    digest already stored?  -> discard scratch, reused=True
    else write manifest.json + image.json, rename scratch -> <root>/sha256-<hex>

Whatever goes wrong (a failing step, a refused path, Ctrl-C) the scratch directory is removed, so
the store only ever holds whole images. When an identical image is already stored it is returned
as it is, with its first provenance and labels: an image never changes once stored.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import hinotori
from hinotori.bake.context import copy_context
from hinotori.bake.ignore import IgnoreRules
from hinotori.bake.images import Image, ImageStore
from hinotori.bake.manifest import build_manifest, manifest_digest, write_manifest
from hinotori.bake.normalise import build_epoch, normalise
from hinotori.bake.provenance import git_source, recipe_hash
from hinotori.bake.steps import Step, StepContext, step_environment
from hinotori.bake.tree import FILE, force_remove
from hinotori.errors import BakeError

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BakeResult:
    image: Image
    reused: bool  # True when an identical image was already stored


def bake(
    context: Path,
    steps: Sequence[Step],
    store: ImageStore,
    *,
    labels: dict[str, str] | None = None,
    on_progress: Progress | None = None,
    ignore_file: str = ".hinotoriignore",
) -> BakeResult:
    say = on_progress or (lambda _msg: None)
    context = _check_context(Path(context))
    epoch = build_epoch()
    rules = IgnoreRules.load(context, ignore_file)
    scratch = store.new_scratch()
    try:
        rootfs = scratch / "rootfs"
        say(f"copying context {context}")
        copied = copy_context(context, rootfs, rules, also_skip=store.root)
        say(f"copied {copied.files} files ({_size(copied.bytes)})")

        _run_steps(steps, scratch, rootfs, epoch, say)

        say("normalising and hashing")
        normalise(rootfs, 0 if epoch is None else epoch)
        entries = build_manifest(rootfs)
        digest = manifest_digest(entries)
        if store.exists(digest):
            say(f"image {digest} already stored")
            return BakeResult(store.get(digest), reused=True)

        files = [e for e in entries if e.type == FILE]
        info = {
            "digest": digest,
            "created_at": time.time(),
            "builder_version": hinotori.__version__,
            "recipe_hash": recipe_hash(steps),
            "recipe": [s.to_json() for s in steps],
            "context": str(context),
            "file_count": len(files),
            "total_size": sum(e.size for e in files),
            "labels": dict(sorted((labels or {}).items())),
        }
        source = git_source(context)
        if source is not None:
            info["source"] = source
        write_manifest(scratch / "manifest.json", entries)
        (scratch / "image.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n",
                                            encoding="utf-8")
        _seal(scratch, epoch)
        if not store.commit(scratch, digest):
            say(f"image {digest} was stored meanwhile by another bake")
            return BakeResult(store.get(digest), reused=True)
        say(f"stored image {digest}")
        return BakeResult(store.get(digest), reused=False)
    finally:
        # After a successful commit the scratch path no longer exists; otherwise it goes.
        force_remove(scratch)


def _check_context(context: Path) -> Path:
    if not context.exists():
        raise BakeError(f"build context {context} does not exist",
                        hint="check the image's `context` path (relative to hinotori.toml)")
    if not context.is_dir():
        raise BakeError(f"build context {context} is not a directory",
                        hint="the context is the directory whose files go into the image")
    return context.resolve()


def _run_steps(steps: Sequence[Step], scratch: Path, rootfs: Path, epoch: int | None,
               say: Progress) -> None:
    home, tmp, logs = scratch / "home", scratch / "tmp", scratch / "logs"
    for d in (home, tmp, logs):
        d.mkdir()
    env = step_environment(home, tmp, epoch)
    for i, step in enumerate(steps, start=1):
        say(f"step {i}/{len(steps)}: {step.describe()}")
        step.execute(StepContext(build_dir=rootfs, env=env, log_dir=logs, index=i))
    # Steps are not sandboxed: one may have written beside the build dir, or replaced it. Only a
    # real rootfs directory goes on, and nothing else in the scratch reaches the image directory.
    if rootfs.is_symlink() or not rootfs.is_dir():
        raise BakeError("a step removed or replaced the build directory itself",
                        hint="steps must change files inside their working directory")
    for extra in scratch.iterdir():
        if extra != rootfs:
            force_remove(extra)


def _seal(scratch: Path, epoch: int | None) -> None:
    times = (epoch or 0, epoch or 0)
    for name in ("manifest.json", "image.json"):
        os.chmod(scratch / name, 0o444)
        os.utime(scratch / name, times)


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
