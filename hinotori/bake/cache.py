"""The build cache: the tree after each recipe step, stored under a key for everything that made it.

Keys chain, as in a Dockerfile's layer cache, but over content rather than timestamps::

    key 0   sha256(cache format, builder version, PATH and SOURCE_DATE_EPOCH of the steps,
                   how the tree starts: "empty" (the recipe has copy steps) or "context" plus
                   the digest of the whole context's manifest)
    key n   sha256(key n-1, step n's canonical JSON, digest of step n's inputs)

A step's inputs are what it reads from outside the tree (``Step.inputs``): for a copy step, the
manifest of its source in the context. So an edit to a file that only a late copy step reads
changes that step's key and every later one, and no earlier one. A run step has no inputs
beyond the tree and its own text: like any build cache, this one assumes a command gives the
same result for the same tree (bake with ``use_cache=False`` to run everything again).

Layout (``root`` is ``.hinotori/cache/``, beside ``images/``)::

    root/steps/<key>.json     one snapshot: the tree after a step, as manifest entries with the
                              modes found on disk (not yet normalised), plus why the tree is not
                              yet a valid image (an escaping link a later step may remove)
    root/blobs/, root/packs/  file contents (``blobs.py``): hard links to a build tree's files,
                              or copies packed one file per snapshot
    root/.tmp/                snapshots and packs being written
    root/lock                 flock: every bake holds it shared, ``gc`` exclusive

A snapshot file appears by one rename, after every content it names is stored, so a snapshot is
either whole or absent; a failed step writes none. ``prune`` keeps only the snapshots named by
the images that remain (each image.json lists its chain of keys) and the contents those
snapshots name.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hinotori
from hinotori.bake.blobs import ContentStore
from hinotori.bake.manifest import ManifestEntry, manifest_digest
from hinotori.bake.stepbase import Step
from hinotori.bake.tree import FILE, force_remove

CACHE_FORMAT = 1


def _digest(obj: Any) -> str:
    data = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(data.encode("utf-8")).hexdigest()


def base_key(*, context: Sequence[ManifestEntry] | None, step_env: dict[str, str]) -> str:
    """Key 0. ``context`` is the whole context's manifest when the tree starts as a copy of
    it, None when it starts empty; ``step_env`` the parts of the steps' environment that vary
    from one baker to another."""
    return _digest({"format": CACHE_FORMAT, "builder": hinotori.__version__,
                    "start": "empty" if context is None else "context",
                    "context": None if context is None else manifest_digest(context),
                    "env": step_env})


def step_key(previous: str, step: Step, inputs: Sequence[ManifestEntry] | None) -> str:
    return _digest({"previous": previous, "step": step.to_json(),
                    "inputs": None if inputs is None else manifest_digest(inputs)})


@dataclass(frozen=True)
class Snapshot:
    key: str
    entries: list[ManifestEntry]  # modes as found on disk
    error: str | None = None  # why this tree would not be a valid image, if it would not
    hint: str | None = None
    where: dict[str, str] = field(default_factory=dict)  # packed contents: sha -> place

    def files(self) -> Iterator[ManifestEntry]:
        return (e for e in self.entries if e.type == FILE)


@dataclass(frozen=True)
class PruneStats:
    snapshots: int
    blobs: int  # stored content files: loose blobs and packs
    bytes: int


class BuildCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.steps_dir = self.root / "steps"
        self.tmp_dir = self.root / ".tmp"
        self.contents = ContentStore(self.root)

    @classmethod
    def beside(cls, images_root: Path) -> BuildCache:
        """The cache of the image store at ``images_root``: its sibling ``cache``."""
        return cls(Path(images_root).parent / "cache")

    @contextlib.contextmanager
    def lock(self, *, exclusive: bool = False) -> Iterator[None]:
        """Shared for a bake (many at once), exclusive for gc (alone)."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    # -- snapshots -----------------------------------------------------------------------------

    def _snapshot_path(self, key: str) -> Path:
        return self.steps_dir / f"{key}.json"

    def has(self, key: str) -> bool:
        return self._snapshot_path(key).is_file()

    def load(self, key: str) -> Snapshot | None:
        """The snapshot stored under ``key``; None if there is none or it cannot be read."""
        try:
            data = json.loads(self._snapshot_path(key).read_bytes())
            if data.get("format") != CACHE_FORMAT or data.get("key") != key:
                return None
            return Snapshot(key, [ManifestEntry.from_dict(e) for e in data["entries"]],
                            data.get("error"), data.get("hint"), dict(data.get("where", {})))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None  # a snapshot we cannot read is a miss, never a failed bake

    def save(self, snapshot: Snapshot) -> None:
        self.steps_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        data = {"format": CACHE_FORMAT, "key": snapshot.key, "error": snapshot.error,
                "hint": snapshot.hint, "where": snapshot.where,
                "entries": [e.to_dict() for e in snapshot.entries]}
        fd, tmp = tempfile.mkstemp(prefix="snapshot-", dir=self.tmp_dir)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            # dumps, not dump: dump streams through the pure-Python encoder, 5x slower.
            f.write(json.dumps(data, separators=(",", ":"), ensure_ascii=False))
        os.replace(tmp, self._snapshot_path(snapshot.key))

    def evict(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._snapshot_path(key).unlink()

    def keys(self) -> list[str]:
        try:
            return sorted(p.stem for p in self.steps_dir.iterdir() if p.suffix == ".json")
        except FileNotFoundError:
            return []

    # -- housekeeping --------------------------------------------------------------------------

    def usage(self) -> PruneStats:
        stored = list(self.contents.files())
        return PruneStats(len(self.keys()), len(stored), sum(size for _, _, size in stored))

    def prune(self, keep: set[str], *, dry_run: bool = False) -> PruneStats:
        """Remove snapshots not in ``keep``, contents no kept snapshot names, and scratch.
        Call it under ``lock(exclusive=True)``."""
        doomed = [k for k in self.keys() if k not in keep]
        needed: set[str] = set()
        for key in keep:
            snap = self.load(key)
            if snap is None:
                continue
            needed.update(f"pack:{place.partition(':')[0]}" for place in snap.where.values())
            needed.update(e.sha256 for e in snap.files() if e.sha256 not in snap.where)
        unused = [(p, size) for p, name, size in self.contents.files() if name not in needed]
        if not dry_run:
            for key in doomed:
                self.evict(key)
            for path, _ in unused:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            force_remove(self.tmp_dir)
            self.contents.forget()
        return PruneStats(len(doomed), len(unused), sum(size for _, size in unused))
