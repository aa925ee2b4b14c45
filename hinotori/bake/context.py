"""Copying a build context into a scratch build directory.

Steps never run in the user's own directory: the context is copied first, so a step cannot change
the source tree, and what the image holds is exactly what the copy plus the steps produced.

The copy honours the ignore rules (``ignore.py``), keeps relative symlinks that stay inside the
context as symlinks, and refuses (BakeError naming the path) links that leave it and special
files. Hard links become separate files. Modes are kept, plus owner read/write, so that steps can
edit what they were given; normalisation decides the final modes later. If the image store lies
inside the context under another name than ``.hinotori``, it is skipped too, or a bake would copy
the store into itself.
"""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from hinotori.bake.ignore import IgnoreRules
from hinotori.bake.tree import DIR, FILE, walk
from hinotori.errors import BakeError


@dataclass(frozen=True)
class CopyStats:
    files: int
    bytes: int


def copy_context(
    context: Path, dest: Path, rules: IgnoreRules, *, also_skip: Path | None = None
) -> CopyStats:
    """Copy ``context`` into the new directory ``dest``; ``also_skip`` is a path never to copy."""
    skip_rel = _relative_inside(also_skip, context) if also_skip is not None else None

    def skip(rel: str, is_dir: bool) -> bool:
        return rel == skip_rel or rules.excluded(rel, is_dir)

    os.mkdir(dest, 0o755)
    files = size = 0
    for node in walk(context, skip=skip, what="build context"):
        target = os.path.join(dest, node.rel)
        try:
            if node.kind == DIR:
                os.mkdir(target, 0o755)
            elif node.kind == FILE:
                shutil.copyfile(node.abs, target, follow_symlinks=False)
                os.chmod(target, stat.S_IMODE(node.st.st_mode) | 0o600)
                files += 1
                size += node.st.st_size
            else:
                os.symlink(os.readlink(node.abs), target)
        except OSError as exc:
            raise BakeError(f"cannot copy build context path {node.rel}: {exc.strerror}",
                            hint="make it readable, or list it in .hinotoriignore") from exc
    return CopyStats(files, size)


def _relative_inside(path: Path, root: Path) -> str | None:
    real, real_root = os.path.realpath(path), os.path.realpath(root)
    if real.startswith(real_root.rstrip("/") + "/"):
        return os.path.relpath(real, real_root).replace(os.sep, "/")
    return None
