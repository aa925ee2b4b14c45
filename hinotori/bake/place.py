"""Putting files, links and directories into a build tree that may already hold things.

The rules every step that writes into the tree follows (copy, file, and the context copy):

- a new file or link *replaces* whatever file or link was at its path: the old one is unlinked
  first and the new one created (``O_EXCL``), so nothing is ever written through a symlink, and
  no existing file is rewritten in place. The second point is what lets the build cache keep
  hard links to files of the tree (``snapshot.py``): only run steps rewrite files in place, and
  they get private copies first;
- a directory where a file must go, or a file where a directory must go, is refused, naming the
  step and the path;
- an existing symlink where a directory must go is followed only when its real path is a
  directory inside the tree.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path

from hinotori.bake.paths import is_inside
from hinotori.bake.tree import force_remove
from hinotori.errors import BakeError

_CHUNK = 1 << 20


def make_dir(path: str, rel: str, real_root: str, label: str) -> None:
    """Make directory ``path`` (``rel`` in the tree) unless one is already there."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        os.mkdir(path, 0o755)
        return
    if stat.S_ISDIR(st.st_mode):
        return
    if stat.S_ISLNK(st.st_mode):
        real = os.path.realpath(path)
        if not is_inside(real, real_root):
            raise BakeError(f"{label}: {rel} is a symlink to {real}, outside the image",
                            hint="steps never write through links that leave the image")
        if os.path.isdir(real):
            return
    raise BakeError(f"{label}: {rel} is in the way: a directory goes there",
                    hint="remove it first with a { remove = \"...\" } step")


def make_dirs(path: str, real_root: str, label: str) -> None:
    """``mkdir -p`` of a real path (no links in it) that lies inside the tree."""
    rel = os.path.relpath(path, real_root)
    if rel == ".":
        return
    current = real_root
    for part in rel.split(os.sep):
        current = os.path.join(current, part)
        make_dir(current, os.path.relpath(current, real_root), real_root, label)


def clear_for_file(path: str, rel: str, label: str) -> None:
    """Make room for a new file or link at ``path``: unlink an old file or link; refuse a
    directory."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise BakeError(f"{label}: {rel} is a directory in the image; a file cannot replace it",
                        hint="remove it first with a { remove = \"...\" } step, or pick "
                             "another destination")
    os.unlink(path)


def copy_file(src: str, dst: str, mode: int, want_sha256: str | None = None) -> str | None:
    """Copy ``src`` to the new file ``dst`` with ``mode``. With ``want_sha256`` the bytes are
    hashed as they are copied and their sha256 returned (the caller compares), so what was
    checked is exactly what was written."""
    if want_sha256 is None:
        shutil.copyfile(src, dst, follow_symlinks=False)
        os.chmod(dst, mode)
        return None
    h = hashlib.sha256()
    with open(src, "rb") as fi, open(dst, "xb") as fo:
        while chunk := fi.read(_CHUNK):
            h.update(chunk)
            fo.write(chunk)
    os.chmod(dst, mode)
    return h.hexdigest()


def write_file(dst: str, data: bytes, mode: int) -> None:
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb", closefd=False) as f:
            f.write(data)
    finally:
        os.close(fd)
    os.chmod(dst, mode)


def remove_path(path: str) -> None:
    """Remove a file, link or whole directory (even a read-only one) at ``path``."""
    if stat.S_ISDIR(os.lstat(path).st_mode):
        force_remove(Path(path))
    else:
        os.unlink(path)
