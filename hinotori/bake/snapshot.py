"""Taking a build tree into the cache after a step, and bringing one back.

Taking (``take``) walks the tree and records every path as a manifest entry with the mode found
on disk. A file's content goes into the cache's blob store as a *hard link* to the tree's file,
which costs no copy. That is safe only while nothing rewrites that file in place, so:

- the steps hinotori implements (copy, file, remove) never rewrite a file: they unlink and
  create (``place.py``); normalising changes only modes and times, which no snapshot reads;
- before a step that may rewrite files in place (a run step), ``unshare`` gives every file that
  has a second link a private copy, so the command can never reach the cache's blob;
- bringing a tree back (``restore``) *copies* each blob, verifying its sha256 as it copies, so a
  restored tree never shares storage with the cache, and a damaged blob is a cache miss
  (``CacheDamaged``), never a wrong image.

Hashing every file after every step would cost as much as the steps it saves. The tracker
remembers each file's identity when it was last hashed or restored (device, inode, size, mtime and
ctime in nanoseconds), and a file whose identity is unchanged keeps its hash. The ctime cannot be
set from user space, but the kernel stamps it from a clock that ticks only every few milliseconds,
so a file rewritten within the same tick as it was recorded could look unchanged. ``settle``
closes that gap: before a step runs, it waits until the clock has moved past the newest ctime the
tracker holds, so anything the step writes carries a later ctime than anything recorded.

A tree that cannot be taken (a special file, an unreadable file or directory, a name that is not
UTF-8) is simply not cached; the bake goes on and fails or succeeds exactly as it would without a
cache. A symlink that leaves the tree does not stop a snapshot (a later step may remove it), but
the snapshot records the error, so a fully cached bake refuses such a tree just as an uncached one
does.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from hinotori.bake.cache import BuildCache, Snapshot
from hinotori.bake.manifest import (
    HASH_WORKERS,
    PARALLEL_MIN_FILES,
    SYMLINK_MODE,
    ManifestEntry,
    file_sha256,
    mode_text,
)
from hinotori.bake.tree import DIR, FILE, SYMLINK, check_symlink, walk
from hinotori.errors import BakeError

_CHUNK = 1 << 20


class CacheDamaged(Exception):
    """A blob is missing or its content does not match its name."""


@dataclass(frozen=True)
class Seen:
    """A file's identity when its content last had ``sha256``."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int
    sha256: str

    @classmethod
    def of(cls, st: os.stat_result, sha256: str) -> Seen:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, sha256)

    def matches(self, st: os.stat_result) -> bool:
        return (self.dev, self.ino, self.size, self.mtime_ns, self.ctime_ns) == (
            st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


Tracker = dict[str, Seen]


def take(key: str, tree: Path, cache: BuildCache, tracker: Tracker) -> Snapshot:
    """Snapshot ``tree`` under ``key`` (not yet saved). Raises BakeError or OSError when the tree
    cannot be cached; the tracker then still describes every file correctly."""
    real_root = os.path.realpath(tree)
    entries: list[ManifestEntry] = []
    todo: list[tuple[str, str, int]] = []
    error: BakeError | None = None
    for node in walk(tree, check_links=False):
        if node.kind == DIR:
            entries.append(ManifestEntry(node.rel, DIR, mode_text(node.st.st_mode)))
        elif node.kind == SYMLINK:
            entries.append(ManifestEntry(node.rel, SYMLINK, SYMLINK_MODE,
                                         target=os.readlink(node.abs)))
            if error is None:
                try:
                    check_symlink(node.rel, node.abs, real_root, "image")
                except BakeError as e:
                    error = e
        else:
            seen = tracker.get(node.rel)
            if seen is not None and seen.matches(node.st) and cache.has_blob(seen.sha256):
                entries.append(ManifestEntry(node.rel, FILE, mode_text(node.st.st_mode),
                                             size=seen.size, sha256=seen.sha256))
            else:
                todo.append((node.rel, node.abs, node.st.st_mode))

    def store(item: tuple[str, str, int]) -> ManifestEntry:
        rel, path, mode = item
        sha, size = file_sha256(path)
        cache.add_blob(path, sha)
        tracker[rel] = Seen.of(os.lstat(path), sha)  # after linking, which changes the ctime
        return ManifestEntry(rel, FILE, mode_text(mode), size=size, sha256=sha)

    if len(todo) >= PARALLEL_MIN_FILES:
        with ThreadPoolExecutor(HASH_WORKERS, thread_name_prefix="hinotori-snap") as pool:
            entries.extend(pool.map(store, todo, chunksize=32))
    else:
        entries.extend(map(store, todo))
    entries.sort(key=lambda e: e.path.encode("utf-8"))
    present = {e.path for e in entries if e.type == FILE}
    for rel in set(tracker) - present:
        del tracker[rel]
    return Snapshot(key, entries, error.message if error else None,
                    error.hint if error else None)


def restore(snapshot: Snapshot, cache: BuildCache, dest: Path, tracker: Tracker) -> None:
    """Materialise ``snapshot`` as the new directory ``dest`` (private copies of every blob,
    verified as they are copied). Raises CacheDamaged for a missing or altered blob."""
    os.mkdir(dest, 0o755)
    root = os.fspath(dest)
    dirs: list[tuple[str, int]] = []
    files: list[ManifestEntry] = []
    for e in snapshot.entries:  # canonical order: parents before children
        path = os.path.join(root, e.path)
        if e.type == DIR:
            os.mkdir(path, 0o755)  # writable while it is filled; its own mode comes last
            dirs.append((path, int(e.mode, 8)))
        elif e.type == SYMLINK:
            os.symlink(e.target or "", path)
        else:
            files.append(e)
    tracker.clear()

    def copy(e: ManifestEntry) -> None:
        path = os.path.join(root, e.path)
        _copy_verified(cache.blob(e.sha256 or ""), path, e.sha256 or "", int(e.mode, 8))
        tracker[e.path] = Seen.of(os.lstat(path), e.sha256 or "")

    if len(files) >= PARALLEL_MIN_FILES:
        with ThreadPoolExecutor(HASH_WORKERS, thread_name_prefix="hinotori-restore") as pool:
            list(pool.map(copy, files, chunksize=32))
    else:
        for e in files:
            copy(e)
    for path, mode in reversed(dirs):  # children first: a read-only parent comes last
        os.chmod(path, mode)


def unshare(tree: Path, tracker: Tracker) -> int:
    """Give every regular file with more than one link a private copy; return how many."""
    count = 0
    for rel, path, st in _linked_files(os.fspath(tree)):
        folder = os.path.dirname(path)
        folder_mode = stat.S_IMODE(os.stat(folder).st_mode)
        if not folder_mode & stat.S_IWUSR:
            os.chmod(folder, folder_mode | stat.S_IWUSR | stat.S_IXUSR)
        try:
            fd, tmp = tempfile.mkstemp(prefix=".hinotori-unshare-", dir=folder)
            with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
                while chunk := src.read(_CHUNK):
                    out.write(chunk)
            os.chmod(tmp, stat.S_IMODE(st.st_mode))
            os.replace(tmp, path)
        finally:
            if not folder_mode & stat.S_IWUSR:
                os.chmod(folder, folder_mode)
        seen = tracker.get(rel)
        if seen is not None and seen.matches(st):
            tracker[rel] = Seen.of(os.lstat(path), seen.sha256)
        count += 1
    return count


def settle(probe_dir: Path, tracker: Tracker) -> None:
    """Wait until the filesystem clock has passed every ctime the tracker holds."""
    newest = max((s.ctime_ns for s in tracker.values()), default=0)
    if not newest:
        return
    probe = probe_dir / ".clock"
    probe.touch()
    while True:
        os.utime(probe)  # stamps "now" as the kernel's file clock sees it
        if os.stat(probe).st_ctime_ns > newest:
            return
        time.sleep(0.001)


def _linked_files(root: str) -> list[tuple[str, str, os.stat_result]]:
    found: list[tuple[str, str, os.stat_result]] = []
    stack = [("", root)]
    while stack:
        rel_dir, abs_dir = stack.pop()
        try:
            entries = list(os.scandir(abs_dir))
        except OSError:
            continue  # unreadable: the snapshot could not have linked anything in it
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                stack.append((rel, entry.path))
            elif stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                found.append((rel, entry.path, st))
    return found


def _copy_verified(blob: Path, dest: str, sha256: str, mode: int) -> None:
    h = hashlib.sha256()
    try:
        src = open(blob, "rb")  # noqa: SIM115 - closed by the with below
    except FileNotFoundError as exc:
        raise CacheDamaged(f"blob {sha256} is missing") from exc
    with src, open(dest, "xb") as out:
        while chunk := src.read(_CHUNK):
            h.update(chunk)
            out.write(chunk)
    if h.hexdigest() != sha256:
        raise CacheDamaged(f"blob {sha256} has other content")
    os.chmod(dest, mode)

