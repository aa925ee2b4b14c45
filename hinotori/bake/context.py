"""The build context: what a recipe may read, and copying it into a build tree.

Steps never run in the user's own directory. A recipe without copy steps starts from a copy of the
whole context; a recipe with copy steps starts from an empty tree, and each copy step brings in
one file or directory of the context. Either way the context is read through a ``BuildSource``,
which holds the rules of what may be read:

- the ignore rules (``ignore.py``): an excluded path is never copied, and naming one (or a path
  under an excluded directory) in a copy step is refused;
- the image store and the build cache, when they lie inside the context under another name than
  ``.hinotori``, are skipped too, or a bake would copy the store into itself;
- relative symlinks that stay inside the context are kept as symlinks; links that leave it and
  special files are refused (BakeError naming the path); a source path reached through a link
  must still resolve inside the context.

Hard links become separate files. Modes are kept, plus owner read/write, so that steps can edit
what they were given (a copy step's ``mode`` replaces them); normalisation decides the final modes
later.

``manifest()`` describes a source as manifest entries (paths relative to the context), which is
what the build cache keys a copy on. A copy given those entries as ``expected`` hashes what it
copies as it copies it and refuses anything else: a file edited between making the key and
copying would otherwise be cached under a key made from its old content.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hinotori.bake.ignore import IgnoreRules
from hinotori.bake.manifest import ManifestEntry, entries_of
from hinotori.bake.paths import parent, resolve_inside
from hinotori.bake.place import clear_for_file, copy_file, make_dir
from hinotori.bake.tree import DIR, FILE, SYMLINK, Node, check_symlink, kind_of, special_name, walk
from hinotori.errors import BakeError

_WHAT = "build context"


@dataclass(frozen=True)
class CopyStats:
    files: int
    bytes: int


class BuildSource:
    """A build context with its ignore rules and the paths it must never copy."""

    def __init__(self, root: Path, rules: IgnoreRules, skip: Sequence[Path] = ()) -> None:
        self.root = Path(root)
        self.real_root = os.path.realpath(root)
        self.rules = rules
        self._skip = {r for p in skip if (r := _relative_inside(p, self.root)) is not None}

    def skipped(self, rel: str, is_dir: bool) -> bool:
        return rel in self._skip or self.rules.excluded(rel, is_dir)

    def top(self, src: str, label: str) -> Node | None:
        """The node a copy source names, checked; None for the whole context (``src`` "")."""
        if not src:
            return None
        parts = src.split("/")
        for i in range(1, len(parts)):
            if self.skipped("/".join(parts[:i]), True):
                raise _excluded(label, src, "/".join(parts[:i]))
        resolve_inside(str(self.root), parent(src), label)
        path = os.path.join(self.root, src)
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            if self.skipped(src, False) or self.skipped(src, True):
                raise _excluded(label, src, src) from None
            raise BakeError(f"{label}: {src} does not exist in the build context {self.root}",
                            hint="copy sources are relative to the image's `context`") from None
        kind = kind_of(st.st_mode)
        if self.skipped(src, kind == DIR):
            raise _excluded(label, src, src)
        if kind is None:
            raise BakeError(f"{label}: {src} is a special file ({special_name(st.st_mode)}); "
                            "an image holds only regular files, directories and symlinks")
        if kind == SYMLINK:
            check_symlink(src, path, self.real_root, _WHAT)
        return Node(src, path, kind, st)

    def nodes(self, src: str, label: str) -> Iterator[Node]:
        """What copying ``src`` reads: a directory's (or the context's) contents, or the one
        file or link. Paths are relative to the context."""
        top = self.top(src, label)
        if top is None or top.kind == DIR:
            yield from walk(self.root, skip=self.skipped, what=_WHAT, start=src)
        else:
            yield top

    def manifest(self, src: str, label: str) -> list[ManifestEntry]:
        return entries_of(self.nodes(src, label))

    def copy_all(self, dest: Path, expected: Sequence[ManifestEntry] | None = None,
                 on_verified: Callable[[str, str], None] | None = None) -> CopyStats:
        """Copy the whole context into the new directory ``dest``."""
        os.mkdir(dest, 0o755)
        real_root = os.path.realpath(dest)
        label = "copying the build context"
        return copy_nodes(self.nodes("", label), lambda rel: os.path.join(real_root, rel),
                          real_root=real_root, label=label, on_verified=on_verified,
                          expected=None if expected is None else {e.path: e for e in expected})


def copy_nodes(
    nodes: Iterable[Node],
    target_of: Callable[[str], str],
    *,
    real_root: str,
    label: str,
    mode: int | None = None,
    expected: Mapping[str, ManifestEntry] | None = None,
    on_verified: Callable[[str, str], None] | None = None,
) -> CopyStats:
    """Copy context ``nodes`` into the tree at ``real_root``; ``target_of(rel)`` is where each
    goes (an absolute path inside the tree). ``mode`` replaces the files' own modes.
    ``on_verified(target, sha256)`` hears of each file checked against ``expected``."""
    files = size = 0
    seen: set[str] = set()
    for node in nodes:
        target = target_of(node.rel)
        shown = os.path.relpath(target, real_root)
        want = None
        if expected is not None:
            want = expected.get(node.rel)
            if want is None or want.type != node.kind:
                raise _changed(label, node.rel)
            seen.add(node.rel)
        try:
            if node.kind == DIR:
                make_dir(target, shown, real_root, label)
            elif node.kind == FILE:
                clear_for_file(target, shown, label)
                file_mode = mode if mode is not None else stat.S_IMODE(node.st.st_mode) | 0o600
                got = copy_file(node.abs, target, file_mode, want.sha256 if want else None)
                if want is not None:
                    if got != want.sha256:
                        raise _changed(label, node.rel)
                    if on_verified is not None:
                        on_verified(target, got)
                files += 1
                size += node.st.st_size
            else:
                link = os.readlink(node.abs)
                if want is not None and link != want.target:
                    raise _changed(label, node.rel)
                clear_for_file(target, shown, label)
                os.symlink(link, target)
        except OSError as exc:
            raise BakeError(f"{label}: cannot copy build context path {node.rel}: "
                            f"{exc.strerror}",
                            hint="make it readable, or list it in .hinotoriignore") from exc
    if expected is not None and seen != set(expected):
        raise _changed(label, sorted(set(expected) - seen)[0])
    return CopyStats(files, size)


def copy_context(
    context: Path, dest: Path, rules: IgnoreRules, *,
    also_skip: Path | Sequence[Path] | None = None,
    expected: Sequence[ManifestEntry] | None = None,
) -> CopyStats:
    """Copy all of ``context`` into the new directory ``dest``; ``also_skip`` are paths never
    to copy (the image store, the cache). ``expected``: see the module docstring."""
    skip = [also_skip] if isinstance(also_skip, Path) else list(also_skip or ())
    return BuildSource(context, rules, skip).copy_all(dest, expected)


def _excluded(label: str, src: str, by: str) -> BakeError:
    what = f"{src} is" if by == src else f"{src} is under {by}, which is"
    return BakeError(f"{label}: {what} excluded from the build context",
                     hint="it is listed in .hinotoriignore (or is .git or .hinotori); remove "
                          "the line, or copy another path")


def _changed(label: str, rel: str) -> BakeError:
    return BakeError(f"{label}: {rel} changed in the build context while it was being baked",
                     hint="bake again once nothing is writing into the context")


def _relative_inside(path: Path, root: Path) -> str | None:
    real, real_root = os.path.realpath(path), os.path.realpath(root)
    if real.startswith(real_root.rstrip("/") + "/"):
        return os.path.relpath(real, real_root).replace(os.sep, "/")
    return None
