"""Walking a file tree the way an image sees it, and removing read-only trees.

Every part of bake that looks at a tree (copying the context, normalising, building the manifest)
agrees on what an image may hold, and this module is where that agreement lives:

- regular files, directories and symlinks, nothing else: a fifo, socket or device node is refused,
  because it has no content to hash and would behave differently on every host;
- symlinks only with a relative target that stays inside the tree. The check is done twice: on the
  text of the target (``a -> ../x`` escapes, even if it happens to lead back in, because then the
  link depends on the name of the directory the tree lives in) and on the real path (``x -> d/..``
  escapes when ``d`` is itself a link to ``.``);
- names that are valid UTF-8, because the manifest is UTF-8 JSON.

Nothing is followed: a symlink to a directory is recorded as a symlink, never descended into.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from hinotori.errors import BakeError

FILE, DIR, SYMLINK = "file", "dir", "symlink"


@dataclass(frozen=True)
class Node:
    """One path under a tree: ``rel`` is its relative POSIX path, ``abs`` its path on disk."""

    rel: str
    abs: str
    kind: str
    st: os.stat_result


def walk(
    root: Path,
    *,
    skip: Callable[[str, bool], bool] | None = None,
    what: str = "image",
    start: str = "",
    check_links: bool = True,
) -> Iterator[Node]:
    """Yield every node under ``root`` (not ``root`` itself), parents before children.

    ``skip(rel, is_dir)`` prunes a path (and, for a directory, everything under it). ``what``
    names the tree in error messages ("build context", "image"). ``start`` walks only below
    that directory (a relative path); paths stay relative to ``root`` and symlinks are still
    judged against ``root``. ``check_links=False`` yields symlinks unjudged, for callers that
    judge them later (a cache snapshot of a tree that a later step may still fix).
    """
    real_root = os.path.realpath(root)
    stack = [(start, os.path.join(root, start) if start else os.fspath(root))]
    while stack:
        rel_dir, abs_dir = stack.pop()
        try:
            entries = sorted(os.scandir(abs_dir), key=lambda e: e.name)
        except OSError as exc:
            where = rel_dir or "."
            raise BakeError(f"cannot read {what} directory {where}: {exc.strerror}") from exc
        subdirs = []
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            st = entry.stat(follow_symlinks=False)
            kind = kind_of(st.st_mode)
            # Pruned paths are not checked: what the image will not hold may be anything.
            if skip is not None and skip(rel, kind == DIR):
                continue
            _check_name(rel, f"{what} path")
            if kind is None:
                raise BakeError(
                    f"{what} path {rel} is a special file ({special_name(st.st_mode)}); "
                    "an image holds only regular files, directories and symlinks",
                    hint="remove it (from a build context: or list it in .hinotoriignore)",
                )
            if kind == SYMLINK and check_links:
                check_symlink(rel, entry.path, real_root, what)
            yield Node(rel, entry.path, kind, st)
            if kind == DIR:
                subdirs.append((rel, entry.path))
        # Reversed so the stack pops them in name order: parents always precede children.
        stack.extend(reversed(subdirs))


def check_symlink(rel: str, abs_path: str, real_root: str, what: str) -> str:
    """Return the link's target if it is relative and stays inside the tree; else BakeError."""
    target = os.readlink(abs_path)
    hint = ("make the link relative and inside the tree, or copy the file instead "
            "(from a build context: or list the link in .hinotoriignore)")
    _check_name(target, f"{what} symlink {rel} target")
    if posixpath.isabs(target):
        raise BakeError(f"{what} symlink {rel} -> {target} is absolute", hint=hint)
    lexical = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
    real = os.path.realpath(abs_path)
    inside = real == real_root or real.startswith(real_root.rstrip("/") + "/")
    if lexical == ".." or lexical.startswith("../") or not inside:
        raise BakeError(f"{what} symlink {rel} -> {target} points outside the {what}", hint=hint)
    return target


def force_remove(path: Path) -> None:
    """Delete a tree even when its directories are read-only (as stored images are)."""
    if not os.path.lexists(path):
        return
    if not os.path.isdir(path) or os.path.islink(path):
        os.unlink(path)
        return
    # Unlinking needs write permission on the parent, so open every directory up first (top-down:
    # os.walk lists a directory only after the loop above it has made it readable).
    os.chmod(path, 0o755)
    for dirpath, dirnames, _ in os.walk(path):
        for d in dirnames:
            full = os.path.join(dirpath, d)
            if not os.path.islink(full):
                os.chmod(full, 0o755)
    shutil.rmtree(path)


def kind_of(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return FILE
    if stat.S_ISDIR(mode):
        return DIR
    if stat.S_ISLNK(mode):
        return SYMLINK
    return None


def special_name(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "fifo"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device")):
        if test(mode):
            return name
    return "unknown type"


def _check_name(text: str, label: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        shown = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        raise BakeError(f"{label} {shown!r} is not valid UTF-8",
                        hint="rename it: manifests are UTF-8") from None
