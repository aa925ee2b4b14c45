"""Drift: how a live host's view of its image differs from the image's manifest (like AIDE).

Nothing on a live host is ever changed by hinotori (invariant 6): drift is only reported, and
fixed by replacing the host. The image manifest already records path, type, mode, size and
sha256 of every file, so it *is* the integrity database; this module walks the host's view and
compares. Unlike the bake walk it refuses nothing: a planted fifo or a symlink pointing out of
the tree is exactly what must be reported, not an error.

Files are hashed on a thread pool (hashlib releases the GIL), and a file whose size already
differs is reported without being read.

A container host on another machine has no view here: its engine's diff of the container
against its image (``GET /containers/{id}/changes``, Podman's and Docker's) is the same
report, from the writable layer instead of a walk (``from_changes``).
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from hinotori.bake import ManifestEntry

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Change:
    path: str
    what: str  # "content", "mode 0444 -> 0644", "type file -> dir", "target a -> b"


@dataclass
class Drift:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[Change] = field(default_factory=list)

    @property
    def drifted(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def to_dict(self) -> dict[str, object]:
        return {"added": self.added, "removed": self.removed,
                "changed": [{"path": c.path, "what": c.what} for c in self.changed]}


@dataclass(frozen=True)
class _Seen:
    kind: str  # file, dir, symlink, or the special kind (fifo, socket, device)
    mode: str
    size: int
    path: str  # absolute
    target: str | None = None


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "device"


def _walk(root: Path) -> Iterator[tuple[str, _Seen]]:
    stack = [("", os.fspath(root))]
    while stack:
        rel_dir, abs_dir = stack.pop()
        try:
            entries = list(os.scandir(abs_dir))
        except OSError:
            continue  # unreadable: its contents show up as removed
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            st = entry.stat(follow_symlinks=False)
            kind = _kind(st.st_mode)
            mode = "0777" if kind == "symlink" else f"{st.st_mode & 0o7777:04o}"
            target = os.readlink(entry.path) if kind == "symlink" else None
            yield rel, _Seen(kind, mode, st.st_size, entry.path, target)
            if kind == "dir":
                stack.append((rel, entry.path))


def _sha256(path: str) -> str | None:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


# Where a container host's secret files are mounted or put (providers/secretfiles.py): made by
# hinotori at boot, so never drift, and its files' names are all a report could show of them.
SECRETS_DIR = "run/hinotori"


def _ours(path: str) -> bool:
    return path == SECRETS_DIR or path.startswith(SECRETS_DIR + "/")


def compare(manifest: Iterable[ManifestEntry], root: Path, *, workers: int = 8) -> Drift:
    """Drift of the tree at ``root`` against ``manifest``."""
    expected = {e.path: e for e in manifest}
    seen = {p: s for p, s in _walk(root) if not _ours(p) or p in expected}
    drift = Drift()
    drift.added = sorted(p for p in seen if p not in expected)
    drift.removed = sorted(p for p in expected if p not in seen)
    to_hash: list[tuple[str, ManifestEntry, _Seen]] = []
    for path, want in expected.items():
        got = seen.get(path)
        if got is None:
            continue
        if got.kind != want.type:
            drift.changed.append(Change(path, f"type {want.type} -> {got.kind}"))
            continue
        if got.mode != want.mode:
            drift.changed.append(Change(path, f"mode {want.mode} -> {got.mode}"))
        if want.type == "symlink" and got.target != want.target:
            drift.changed.append(Change(path, f"target {want.target} -> {got.target}"))
        elif want.type == "file":
            if got.size != want.size:
                drift.changed.append(Change(path, "content"))
            else:
                to_hash.append((path, want, got))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hinotori-drift") as pool:
        digests = pool.map(lambda item: _sha256(item[2].path), to_hash, chunksize=64)
        for (path, want, _), digest in zip(to_hash, digests, strict=True):
            if digest != want.sha256:
                drift.changed.append(Change(path, "content"))
    drift.changed.sort(key=lambda c: (c.path, c.what))
    return drift


# The engine's change kinds (docker/podman "diff"), and the files an engine itself puts in
# every container (bind-mounted or written at start): never a host's drift.
_MODIFIED, _ADDED, _DELETED = 0, 1, 2
ENGINE_FILES = frozenset({"etc/hosts", "etc/hostname", "etc/resolv.conf", ".dockerenv",
                          "run/.containerenv"})


def from_changes(changes: Iterable[Mapping[str, object]]) -> Drift:
    """Drift from an engine's changes of a container: ``[{"Path": "/app/x", "Kind": 1}]``.

    A directory is reported modified when something in it was added or removed; that is not
    drift of its own (a walk ignores directory mtimes too), so a modified path with a change
    under it is left out, and so are the directories of the engine's own files (/etc, /run):
    a mode changed on one of those is not seen. What was modified is not said: "modified"."""
    every: dict[str, int] = {}
    for change in changes:
        path = str(change.get("Path", "")).strip("/")
        kind = change.get("Kind")
        if path and isinstance(kind, int) and not _ours(path):
            every[path] = kind
    # Podman reports /etc modified with none of its own files listed: the engine's files
    # made it so. Their directories count as parents of a change, like any other's.
    parents = {p.rsplit("/", i)[0] for p in (*every, *ENGINE_FILES)
               for i in range(1, p.count("/") + 1)}
    seen = {p: k for p, k in every.items() if p not in ENGINE_FILES}
    drift = Drift()
    drift.added = sorted(p for p, k in seen.items() if k == _ADDED)
    drift.removed = sorted(p for p, k in seen.items() if k == _DELETED)
    drift.changed = [Change(p, "modified") for p, k in sorted(seen.items())
                     if k == _MODIFIED and p not in parents]
    return drift
