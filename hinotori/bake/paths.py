"""Paths named by recipe steps, and the rule that they stay inside their tree.

A step names paths in one of two trees: the build context (``copy``'s source) or the image being
built (``to``, ``file``, ``remove``). Either way a path is relative to the root of its tree and
must stay inside it. That is checked twice:

- statically, on the text (``relative``): no absolute path, no ``..`` component, no NUL. The
  spec runs this check when it loads, so a bad path is a spec error at its file, line and key;
  the step classes run it again when they are built, so a recipe made in code is held to the
  same rule;
- when the step runs, on the disk (``resolve_inside``): the path's real location, with every
  symlink already in the tree followed, must still be under the tree's real root. ``a/b`` is
  refused when ``a`` is a link to ``/etc``, or to ``../..``. Only this check can see links that a
  context holds or that an earlier step made.

Paths are normalised to POSIX form without ``.`` components or repeated slashes; the root itself
is ``""`` (written ``"."`` in a spec).
"""

from __future__ import annotations

import os
import posixpath

from hinotori.errors import BakeError


def relative(value: object, what: str, *, allow_root: bool = False) -> str:
    """``value`` as a normalised relative path inside its tree; ValueError saying why not.

    ``what`` names the path in the message ("copy", "to", …). ``allow_root`` admits ``"."``
    (the tree itself), returned as ``""``.
    """
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what}: expected a non-empty relative path")
    if "\0" in value:
        raise ValueError(f"{what}: a path cannot contain a NUL character")
    if value.startswith("/"):
        raise ValueError(f"{what}: {value!r} is absolute; paths in a step are relative to the "
                         "build context (copy) or to the image root (to, file, remove)")
    parts = [p for p in value.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"{what}: {value!r} climbs out with '..'; paths in a step stay inside "
                         "the build context (copy) or the image (to, file, remove)")
    if not parts and not allow_root:
        raise ValueError(f"{what}: {value!r} names the root itself; name a path inside it")
    return "/".join(parts)


def resolve_inside(root: str, rel: str, label: str) -> str:
    """The real path of ``root/rel`` (links followed, missing parts kept as written), or a
    BakeError when it lies outside ``root``. ``label`` names the step in the message."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(real_root, rel)) if rel else real_root
    if not is_inside(real, real_root):
        raise BakeError(
            f"{label}: {rel} resolves through a symlink to {real}, outside its tree",
            hint="a step only reads inside the build context and writes inside the image; "
                 "name the real path, or make the link relative and inside the tree")
    return real


def is_inside(path: str, real_root: str) -> bool:
    return path == real_root or path.startswith(real_root.rstrip("/") + "/")


def basename(rel: str) -> str:
    return posixpath.basename(rel)


def parent(rel: str) -> str:
    return posixpath.dirname(rel)
