"""Taking a build tree into the cache after a step, and bringing one back.

Taking (``take``) walks the tree and records every path as a manifest entry with the mode found
on disk. Content the cache lacks is stored (``blobs.py``) as a *hard link* to the tree's file,
which costs no copy, when nothing will rewrite that file in place afterwards, and as a copy in
one pack per snapshot otherwise. Nothing is ever hard-linked into a tree that a step will then
rewrite:

- the steps hinotori implements (copy, file, remove) never rewrite a file: they unlink and
  create (``place.py``); normalising changes only modes and times, which no snapshot reads;
- a run step may rewrite any file in place, so while one is still to come, ``take`` copies new
  content into a pack (``link=False``) and the tree keeps private files. After the last run
  step it links: those files only go on to become the image, which is never written;
- before a run step, ``unshare`` still gives any file with a second link a private copy (after
  the rule above there is none; it is the guard that keeps a mistake from reaching the cache);
- bringing a tree back (``restore``) *copies* each content, verifying its sha256 as it copies,
  so a restored tree never shares storage with the cache, and damaged or missing content is a
  cache miss (``CacheDamaged``), never a wrong image.

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
from dataclasses import dataclass, replace
from pathlib import Path

from hinotori.bake.blobs import ContentReader
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
    """A stored content is missing or does not match its sha256."""


@dataclass(frozen=True)
class Seen:
    """A file's identity when its content last had ``sha256``, and where the cache keeps that
    content: "" for a loose blob, "<pack>:<offset>" in a pack, None when not (yet) stored."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int
    sha256: str
    where: str | None = None

    @classmethod
    def of(cls, st: os.stat_result, sha256: str, where: str | None = None) -> Seen:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, sha256,
                   where)

    def matches(self, st: os.stat_result) -> bool:
        return (self.dev, self.ino, self.size, self.mtime_ns, self.ctime_ns) == (
            st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


Tracker = dict[str, Seen]


def take(key: str, tree: Path, cache: BuildCache, tracker: Tracker, *,
         link: bool = True) -> Snapshot:
    """Snapshot ``tree`` under ``key`` (not yet saved). Content the cache lacks is hard-linked
    in as a loose blob when ``link`` (no later step rewrites files in place), else copied into
    one new pack. Raises BakeError or OSError when the tree cannot be cached; the tracker then
    still describes every file correctly."""
    store = cache.contents
    real_root = os.path.realpath(tree)
    entries: list[ManifestEntry] = []
    todo: list[tuple[str, str, int]] = []  # to hash
    known: list[tuple[ManifestEntry, str, str | None]] = []  # hashed already, to store
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
            if seen is None or not seen.matches(node.st):
                todo.append((node.rel, node.abs, node.st.st_mode))
                continue
            entry = ManifestEntry(node.rel, FILE, mode_text(node.st.st_mode), size=seen.size,
                                  sha256=seen.sha256)
            where = seen.where or store.location(seen.sha256)
            if where is None:  # known content (a copy step verified it), not stored yet
                known.append((entry, node.abs, None))
            else:
                tracker[node.rel] = replace(seen, where=where)
                entries.append(entry)

    def hash_and_link(item: tuple[str, str, int]) -> tuple[ManifestEntry, str, str | None]:
        rel, path, mode = item
        sha, size = file_sha256(path)
        where = store.location(sha)
        if where is None and link and store.link(path, sha):
            where = ""
        return ManifestEntry(rel, FILE, mode_text(mode), size=size, sha256=sha), path, where

    if len(todo) >= PARALLEL_MIN_FILES:
        with ThreadPoolExecutor(HASH_WORKERS, thread_name_prefix="hinotori-snap") as pool:
            hashed = list(pool.map(hash_and_link, todo, chunksize=32))
    else:
        hashed = list(map(hash_and_link, todo))
    pack = store.open_pack()
    try:
        for entry, path, where in [*known, *hashed]:
            sha = entry.sha256 or ""
            if where is None:
                where = store.location(sha)  # stored meanwhile: an identical file before it
            if where is None:
                where = "" if link and store.link(path, sha) else pack.add(path, sha)
            # Recorded after linking, which changes the ctime.
            tracker[entry.path] = Seen.of(os.lstat(path), sha, where)
            entries.append(entry)
        pack.close()
    except BaseException:
        pack.abort()
        raise
    entries.sort(key=lambda e: e.path.encode("utf-8"))
    present = {e.path for e in entries if e.type == FILE}
    for rel in set(tracker) - present:
        del tracker[rel]
    where_map = {seen.sha256: seen.where for e in entries if e.type == FILE
                 if (seen := tracker[e.path]).where}
    return Snapshot(key, entries, error.message if error else None,
                    error.hint if error else None, where_map)


def restore(snapshot: Snapshot, cache: BuildCache, dest: Path, tracker: Tracker) -> None:
    """Materialise ``snapshot`` as the new directory ``dest`` (private copies of every stored
    content, verified as they are copied). Raises CacheDamaged for missing or altered content."""
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
    reader = ContentReader(cache.contents)

    def copy(e: ManifestEntry) -> None:
        sha = e.sha256 or ""
        where = snapshot.where.get(sha, "")
        path = os.path.join(root, e.path)
        _copy_verified(reader, sha, where, e.size, path, int(e.mode, 8))
        tracker[e.path] = Seen.of(os.lstat(path), sha, where)

    try:
        if len(files) >= PARALLEL_MIN_FILES:
            with ThreadPoolExecutor(HASH_WORKERS, thread_name_prefix="hinotori-restore") as pool:
                list(pool.map(copy, files, chunksize=32))
        else:
            for e in files:
                copy(e)
    finally:
        reader.close()
    cache.contents.remember(snapshot.where)
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
            tracker[rel] = Seen.of(os.lstat(path), seen.sha256, seen.where)
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


def _copy_verified(reader: ContentReader, sha256: str, where: str, size: int, dest: str,
                   mode: int) -> None:
    h = hashlib.sha256()
    with open(dest, "xb") as out:
        try:
            for chunk in reader.chunks(sha256, where, size):
                h.update(chunk)
                out.write(chunk)
        except FileNotFoundError as exc:
            raise CacheDamaged(f"content {sha256} is missing ({where or 'loose'})") from exc
    if h.hexdigest() != sha256:
        raise CacheDamaged(f"content {sha256} has other content ({where or 'loose'})")
    os.chmod(dest, mode)
