"""``bake()``: build context + steps -> a content-addressed image in the store.

The pipeline, all inside one scratch directory in the store's ``.tmp`` (same filesystem as the
images, so the last move is a single atomic rename)::

    keys for the start and each step                                  (cache.py)
    scratch/rootfs   <- the longest cached prefix, restored           (snapshot.py)
                     or: a copy of the context minus ignored paths    (context.py)
                         (an empty tree when the recipe has copy steps)
    run each remaining step in scratch/rootfs, snapshot after each    (steps.py, snapshot.py)
        with scratch/home, scratch/tmp emptied before each step, scratch/logs for output
    drop everything but rootfs; normalise rootfs                      (normalise.py)
    manifest of rootfs -> digest                                      (manifest.py)
    digest already stored?  -> discard scratch, reused=True
    else write manifest.json + image.json, rename scratch -> <root>/sha256-<hex>

When every step is cached, the image's digest follows from the last snapshot alone, so a bake
of unchanged inputs whose image is stored touches no tree at all. A snapshot records exactly
the tree that running the steps again would give, and the manifest is computed from it the same
way, so a cached and an uncached bake of the same inputs give the same digest.

Whatever goes wrong (a failing step, a refused path, Ctrl-C) the scratch directory is removed, so
the store only ever holds whole images, and the cache holds snapshots only of steps that
succeeded. When an identical image is already stored it is returned as it is, with its first
provenance and labels: an image never changes once stored.

Every bake holds the cache lock shared for its whole run; ``gc`` takes it exclusively, so it
never removes content a bake is restoring, nor scratch a bake is using.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import hinotori
from hinotori.bake.cache import BuildCache, Snapshot, base_key, step_key
from hinotori.bake.context import BuildSource
from hinotori.bake.ignore import IgnoreRules
from hinotori.bake.images import Image, ImageStore
from hinotori.bake.manifest import (
    ManifestEntry,
    build_manifest,
    manifest_digest,
    write_manifest,
)
from hinotori.bake.normalise import build_epoch, normalise, normalised_entries
from hinotori.bake.provenance import git_source, recipe_hash
from hinotori.bake.snapshot import (
    CacheDamaged,
    Seen,
    Tracker,
    restore,
    settle,
    take,
    unshare,
)
from hinotori.bake.steps import Step, StepContext, step_environment
from hinotori.bake.tree import FILE, force_remove
from hinotori.errors import BakeError

Progress = Callable[[str], None]
# Parts of the steps' environment that are the same in every bake and so stay out of the key.
_PER_BAKE_ENV = ("HOME", "TMPDIR")


@dataclass(frozen=True)
class BakeResult:
    image: Image
    reused: bool  # True when an identical image was already stored
    cache_hits: int = 0  # recipe steps whose result came from the build cache
    cache_misses: int = 0  # recipe steps that ran (hits + misses == number of steps)
    # OS images (osimage/bake.py): which steps (1-based) came from the engine's layer cache;
    # None for file trees, whose cached steps are always the first ``cache_hits``.
    cached_steps: tuple[int, ...] | None = None


def bake(
    context: Path,
    steps: Sequence[Step],
    store: ImageStore,
    *,
    labels: dict[str, str] | None = None,
    on_progress: Progress | None = None,
    ignore_file: str = ".hinotoriignore",
    use_cache: bool = True,
) -> BakeResult:
    context = _check_context(Path(context))
    cache = BuildCache.beside(store.root)
    source = BuildSource(context, IgnoreRules.load(context, ignore_file),
                         (store.root, cache.root))
    with cache.lock():
        scratch = store.new_scratch()
        try:
            return _Bake(list(steps), store, cache if use_cache else None, source, scratch,
                         on_progress or (lambda _msg: None), labels or {}).run()
        finally:
            # After a successful commit the scratch path no longer exists; otherwise it goes.
            force_remove(scratch)


class _Bake:
    """One bake's state: the scratch tree, what the cache knows about it, progress."""

    def __init__(self, steps: list[Step], store: ImageStore, cache: BuildCache | None,
                 source: BuildSource, scratch: Path, say: Progress,
                 labels: dict[str, str]) -> None:
        self.started = time.monotonic()
        self.steps, self.store, self.cache, self.source = steps, store, cache, source
        self.scratch, self.say, self.labels = scratch, say, labels
        self.rootfs = scratch / "rootfs"
        self.real_rootfs = os.path.join(os.path.realpath(scratch), "rootfs")  # how steps see it
        self.logs = scratch / "logs"
        self.logs.mkdir()
        self.epoch = build_epoch()
        self.base_env = step_environment(scratch / "home", scratch / "tmp", self.epoch)
        self.envs = _environments(steps)
        self.starts_empty = any(s.reads_context for s in steps)
        self.inputs: list[list[ManifestEntry] | None] = [None] * len(steps)
        self.context_entries: list[ManifestEntry] | None = None
        self.keys: list[str] = []
        self.tracker: Tracker = {}
        self.current: Snapshot | None = None  # the snapshot of the tree as it is now, if any

    def run(self) -> BakeResult:
        n = len(self.steps)
        snap, position = None, -1
        if self.cache is not None:
            self._make_keys()
            snap, position = self._longest_cached()
        if snap is not None and position == n:
            if snap.error:  # what normalising the tree would refuse, refused without it
                self._report_cached(n)
                raise BakeError(snap.error, hint=snap.hint)
            digest = manifest_digest(normalised_entries(snap.entries))
            if self.store.exists(digest):
                self._report_cached(n)
                self.say(f"image {digest} already stored")
                return BakeResult(self.store.get(digest), reused=True, cache_hits=n)
        if snap is not None:
            position = self._restore(snap, position)
        else:
            self._start()
            position = 0
        for i in range(position + 1, n + 1):
            self._run_step(i)
        return self._finish(hits=position)

    # -- the start of the tree -----------------------------------------------------------------

    def _make_keys(self) -> None:
        if not self.starts_empty:
            self.say("hashing the build context")
            self.context_entries = self.source.manifest("", "build context")
        varying = {k: v for k, v in self.base_env.items() if k not in _PER_BAKE_ENV}
        self.keys = [base_key(context=self.context_entries, step_env=varying)]
        for i, step in enumerate(self.steps, start=1):
            self.inputs[i - 1] = step.inputs(self.source, f"step {i} ({step.describe()})")
            self.keys.append(step_key(self.keys[-1], step, self.inputs[i - 1]))

    def _longest_cached(self) -> tuple[Snapshot | None, int]:
        assert self.cache is not None
        for position in range(len(self.steps), -1, -1):
            if self.cache.has(self.keys[position]):
                snap = self.cache.load(self.keys[position])
                if snap is not None:
                    return snap, position
        return None, -1

    def _restore(self, snap: Snapshot, position: int) -> int:
        assert self.cache is not None
        try:
            restore(snap, self.cache, self.rootfs, self.tracker)
        except CacheDamaged as e:
            self.say(f"build cache entry damaged ({e}); discarded, building without it")
            self.cache.evict(snap.key)
            force_remove(self.rootfs)
            self.tracker.clear()
            self._start()
            return 0
        if position == 0 and not self.starts_empty:
            files = sum(1 for e in snap.entries if e.type == FILE)
            self.say(f"build context: {files} files (cached)")
        self._report_cached(position)
        self.current = snap
        return position

    def _start(self) -> None:
        if self.starts_empty:
            os.mkdir(self.rootfs, 0o755)
        else:
            self.say(f"copying context {self.source.root}")
            copied = self.source.copy_all(self.rootfs, self.context_entries,
                                          self._verified if self.cache else None)
            self.say(f"copied {copied.files} files ({_size(copied.bytes)})")
        self._snapshot(0)

    def _report_cached(self, upto: int) -> None:
        for i, step in enumerate(self.steps[:upto], start=1):
            self.say(f"step {i}/{len(self.steps)}: {step.describe()} (cached)")

    # -- steps ---------------------------------------------------------------------------------

    def _run_step(self, i: int) -> None:
        step, n = self.steps[i - 1], len(self.steps)
        if self.cache is not None:
            if step.writes_in_place:
                unshare(self.rootfs, self.tracker)
            settle(self.scratch, self.tracker)
        for d in (self.scratch / "home", self.scratch / "tmp"):
            force_remove(d)
            d.mkdir()
        self.say(f"step {i}/{n}: {step.describe()}")
        began = time.monotonic()
        step.execute(StepContext(
            build_dir=self.rootfs, env={**self.base_env, **self.envs[i - 1]},
            log_dir=self.logs, index=i, source=self.source,
            inputs=self.inputs[i - 1] if self.cache is not None else None,
            on_verified=self._verified if self.cache is not None else None))
        # Steps are not sandboxed: one may have replaced the build dir itself, and nothing may
        # walk (or snapshot) a link to elsewhere.
        if self.rootfs.is_symlink() or not self.rootfs.is_dir():
            raise BakeError("a step removed or replaced the build directory itself",
                            hint="steps must change files inside their working directory")
        self.say(f"step {i}/{n}: {step.describe()} (ran in {time.monotonic() - began:.1f}s)")
        self._snapshot(i, changed=step.changes_tree)

    def _verified(self, path: str, sha256: str) -> None:
        rel = os.path.relpath(path, self.real_rootfs).replace(os.sep, "/")
        self.tracker[rel] = Seen.of(os.lstat(path), sha256)

    def _snapshot(self, position: int, *, changed: bool = True) -> None:
        if self.cache is None:
            return
        key = self.keys[position]
        if not changed and self.current is not None:
            snap = replace(self.current, key=key)  # the same tree under this step's key
        else:
            try:
                # Link blobs to the tree's files only once no later step may rewrite them.
                link = not any(s.writes_in_place for s in self.steps[position:])
                snap = take(key, self.rootfs, self.cache, self.tracker, link=link)
            except (BakeError, OSError) as e:
                self.say(f"not cached after step {position}: {e}")
                self.current = None
                return
        self.cache.save(snap)
        self.current = snap

    # -- the image -----------------------------------------------------------------------------

    def _finish(self, *, hits: int) -> BakeResult:
        n = len(self.steps)
        # Only a real rootfs directory goes on; nothing else in the scratch reaches the image.
        for extra in self.scratch.iterdir():
            if extra != self.rootfs:
                force_remove(extra)
        self.say("normalising and hashing")
        normalise(self.rootfs, 0 if self.epoch is None else self.epoch)
        final = self.keys[n] if self.keys else None
        if self.current is not None and self.current.key == final:
            entries = normalised_entries(self.current.entries)
        else:
            entries = build_manifest(self.rootfs)
        digest = manifest_digest(entries)
        result = {"cache_hits": hits, "cache_misses": n - hits}
        if self.store.exists(digest):
            self.say(f"image {digest} already stored")
            return BakeResult(self.store.get(digest), reused=True, **result)

        written = write_manifest(self.scratch / "manifest.json", entries)
        assert written == digest
        info = self._provenance(digest, entries)
        (self.scratch / "image.json").write_text(
            json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        _seal(self.scratch, self.epoch)
        if not self.store.commit(self.scratch, digest):
            self.say(f"image {digest} was stored meanwhile by another bake")
            return BakeResult(self.store.get(digest), reused=True, **result)
        self.say(f"stored image {digest}")
        return BakeResult(self.store.get(digest), reused=False, **result)

    def _provenance(self, digest: str, entries: list[ManifestEntry]) -> dict[str, object]:
        files = [e for e in entries if e.type == FILE]
        info: dict[str, object] = {
            "digest": digest,
            "created_at": time.time(),
            "build_seconds": round(time.monotonic() - self.started, 3),
            "builder_version": hinotori.__version__,
            "recipe_hash": recipe_hash(self.steps),
            "recipe": [s.to_json() for s in self.steps],
            "context": str(self.source.root),
            "env": dict(sorted(self.envs[-1].items())),
            "file_count": len(files),
            "total_size": sum(e.size for e in files),
            "labels": dict(sorted(self.labels.items())),
        }
        if self.keys:
            info["cache_keys"] = self.keys  # the snapshots this image came from, for gc
        source = git_source(self.source.root)
        if source is not None:
            info["source"] = source
        return info


def _environments(steps: Sequence[Step]) -> list[dict[str, str]]:
    """``envs[i]``: what env steps before step i+1 set; ``envs[-1]``: all of them."""
    envs: list[dict[str, str]] = [{}]
    for step in steps:
        envs.append(step.environment(envs[-1]))
    return envs


def _check_context(context: Path) -> Path:
    if not context.exists():
        raise BakeError(f"build context {context} does not exist",
                        hint="check the image's `context` path (relative to hinotori.toml)")
    if not context.is_dir():
        raise BakeError(f"build context {context} is not a directory",
                        hint="the context is the directory whose files go into the image")
    return context.resolve()


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
