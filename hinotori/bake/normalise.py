"""Normalising a built tree before it becomes an image.

What a step leaves behind depends on the umask, the clock and the user it ran as. None of that is
content, so before the manifest is taken the tree is made uniform:

- regular files become 0444, or 0555 if any execute bit was set (setuid, setgid and sticky bits
  are dropped: an image never grants privileges);
- directories become 0555, so the stored image is read-only to everyone but root;
- every mtime (symlinks' own included) becomes the build epoch: ``SOURCE_DATE_EPOCH`` if set, else
  0. This is cosmetic, as mtimes are not in the digest, but it stops tools that do look at mtimes
  (make, rsync, Python's bytecode checks) from telling two copies of one image apart;
- owners are left as they are and never recorded.

The walk refuses what an image may not hold (special files, escaping symlinks), naming the path.

``normalised_entries`` applies the same mode rules to manifest entries recorded before
normalising (a build-cache snapshot), so the image digest of a cached tree is known without
rebuilding or rehashing it: it is the digest that normalising the tree and building its manifest
would give.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path

from hinotori.bake.manifest import ManifestEntry
from hinotori.bake.tree import DIR, FILE, walk
from hinotori.errors import BakeError

FILE_MODE, EXEC_MODE, DIR_MODE = 0o444, 0o555, 0o555
_ANY_EXEC = stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH


def file_mode(st_mode: int) -> int:
    return EXEC_MODE if st_mode & _ANY_EXEC else FILE_MODE


def normalise(root: Path, epoch: int) -> None:
    """Make modes and mtimes under ``root`` (and of ``root`` itself) uniform, in place."""
    times = (epoch, epoch)
    # A directory is opened up (0555 keeps the execute bit) as soon as it is seen, before the walk
    # lists it: a step may have left a directory its own user cannot read.
    for node in walk(root):
        if node.kind == FILE:
            os.chmod(node.abs, file_mode(node.st.st_mode))
        elif node.kind == DIR:
            os.chmod(node.abs, DIR_MODE)
        os.utime(node.abs, times, follow_symlinks=False)
    os.chmod(root, DIR_MODE)
    os.utime(root, times)


def normalised_entries(entries: Iterable[ManifestEntry]) -> list[ManifestEntry]:
    """Entries with the modes ``normalise`` would give their paths (symlinks keep "0777")."""
    out = []
    for e in entries:
        if e.type == FILE:
            e = replace(e, mode=f"{file_mode(int(e.mode, 8)):04o}")
        elif e.type == DIR:
            e = replace(e, mode=f"{DIR_MODE:04o}")
        out.append(e)
    return out


def build_epoch(environ: Mapping[str, str] | None = None) -> int | None:
    """``SOURCE_DATE_EPOCH`` from the environment as an int, or None when it is unset."""
    value = (os.environ if environ is None else environ).get("SOURCE_DATE_EPOCH", "").strip()
    if not value:
        return None
    if not value.isdigit():
        raise BakeError(f"SOURCE_DATE_EPOCH={value!r} is not a whole number of seconds",
                        hint="set it to a Unix time, e.g. $(git log -1 --format=%ct), or unset it")
    return int(value)
