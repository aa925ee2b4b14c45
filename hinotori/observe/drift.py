"""Drift: how a live host's view of its image differs from the image's manifest (like AIDE).

Nothing on a live host is ever changed by hinotori (invariant 6): drift is only reported, and
fixed by replacing the host. The image manifest already records path, type, mode, size and
sha256 of every file, so it *is* the integrity database; this module walks the host's view and
compares. Unlike the bake walk it refuses nothing: a planted fifo or a symlink pointing out of
the tree is exactly what must be reported, not an error.

A file whose size already differs is reported without being read; the others are hashed by
``hashing.sha256_files`` (small files in one thread, big ones on a pool beside it).

A container host on another machine has no view here: its engine's diff of the container
against its image (``GET /containers/{id}/changes``, Podman's and Docker's) is the same
report, from the writable layer instead of a walk (``from_changes``).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from hinotori.bake import ManifestEntry
from hinotori.observe.hashing import sha256_files


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


# What the walk saw of one path: (kind, mode, size, absolute path, symlink target). A tuple,
# not a dataclass: a tree has tens of thousands of them and building them is the walk's cost.
_Seen = tuple[str, str, int, str, "str | None"]
_KINDS = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink",
          stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket"}


def _walk(root: Path) -> dict[str, _Seen]:
    seen: dict[str, _Seen] = {}
    stack = [("", os.fspath(root))]
    while stack:
        rel_dir, abs_dir = stack.pop()
        prefix = rel_dir + "/" if rel_dir else ""
        try:
            entries = list(os.scandir(abs_dir))
        except OSError:
            continue  # unreadable: its contents show up as removed
        for entry in entries:
            rel = prefix + entry.name
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # gone meanwhile: reported removed
            kind = _KINDS.get(stat.S_IFMT(st.st_mode), "device")
            if kind == "symlink":
                seen[rel] = (kind, "0777", st.st_size, entry.path, os.readlink(entry.path))
                continue
            seen[rel] = (kind, f"{st.st_mode & 0o7777:04o}", st.st_size, entry.path, None)
            if kind == "dir":
                stack.append((rel, entry.path))
    return seen


# Where a container host's secret files are mounted or put (providers/secretfiles.py): made by
# hinotori at boot, so never drift, and its files' names are all a report could show of them.
SECRETS_DIR = "run/hinotori"


def _ours(path: str) -> bool:
    return path == SECRETS_DIR or path.startswith(SECRETS_DIR + "/")


def compare(manifest: Iterable[ManifestEntry], root: Path) -> Drift:
    """Drift of the tree at ``root`` against ``manifest``: every file whose size matches is
    hashed (``hashing.sha256_files``), so a rewrite that keeps size and mtime is found too."""
    expected = {e.path: e for e in manifest}
    seen = {p: s for p, s in _walk(root).items() if not _ours(p) or p in expected}
    drift = Drift()
    drift.added = sorted(p for p in seen if p not in expected)
    drift.removed = sorted(p for p in expected if p not in seen)
    to_hash: list[tuple[str, str | None]] = []  # (path, the manifest's sha256)
    for path, want in expected.items():
        got = seen.get(path)
        if got is None:
            continue
        kind, mode, size, _, target = got
        if kind != want.type:
            drift.changed.append(Change(path, f"type {want.type} -> {kind}"))
            continue
        if mode != want.mode:
            drift.changed.append(Change(path, f"mode {want.mode} -> {mode}"))
        if kind == "symlink" and target != want.target:
            drift.changed.append(Change(path, f"target {want.target} -> {target}"))
        elif kind == "file":
            if size != want.size:
                drift.changed.append(Change(path, "content"))
            else:
                to_hash.append((path, want.sha256))
    digests = sha256_files([(seen[path][3], seen[path][2]) for path, _ in to_hash])
    for (path, sha256), digest in zip(to_hash, digests, strict=True):
        if digest != sha256:
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
