"""Steps that change files directly, without running anything: ``copy``, ``file``, ``remove``.

    { copy = "src", to = "app/", mode = "0644" }
        A file, link or directory of the build context into the image. A directory's contents
        go into ``to`` (made if missing, merged if there). A file or link goes to ``to`` itself,
        or into it, keeping its name, when ``to`` ends with "/", is "." or is a directory already.
        ``mode`` (optional) replaces every copied file's mode. A recipe with a copy step starts
        from an empty tree: only copy steps bring files in.
    { file = "etc/app.conf", content = "...", mode = "0644" }
        Write ``content`` (UTF-8) to a file; ``mode`` defaults to "0644".
    { remove = "tests" }
        Remove a file, link or directory; removing a path that is not there is an error.

Paths follow ``paths.py``: relative, no ``..`` (refused when the step is built, so a spec
reports it with its line), and, when the step runs, never resolving through a link to outside
the context (``copy``) or the image (``to``, ``file``, ``remove``). What is written follows
``place.py``: files replace files, never through a link and never in place.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from hinotori.bake.context import copy_nodes
from hinotori.bake.paths import basename, parent, relative, resolve_inside
from hinotori.bake.place import clear_for_file, make_dirs, remove_path, write_file
from hinotori.bake.stepbase import Step, StepContext, parse_mode
from hinotori.bake.tree import DIR
from hinotori.errors import BakeError

if TYPE_CHECKING:
    from hinotori.bake.context import BuildSource
    from hinotori.bake.manifest import ManifestEntry


def _short(text: str, limit: int = 100) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


@dataclass(frozen=True)
class CopyStep(Step):
    kind: ClassVar[str] = "copy"
    keys: ClassVar[frozenset[str]] = frozenset({"copy", "to", "mode"})
    reads_context: ClassVar[bool] = True
    copy: str
    to: str
    mode: str | None = None

    def __post_init__(self) -> None:
        relative(self.copy, "copy", allow_root=True)
        relative(self.to, "to", allow_root=True)
        if self.mode is not None:
            object.__setattr__(self, "mode", parse_mode(self.mode))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CopyStep:
        cls.check_keys(d)
        if "to" not in d:
            raise ValueError("copy step: `to` is required (the destination in the image, "
                             "e.g. to = \"app/\")")
        return cls(copy=d["copy"], to=d["to"], mode=d.get("mode"))

    @property
    def source(self) -> str:
        return relative(self.copy, "copy", allow_root=True)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"copy": self.copy, "to": self.to}
        if self.mode is not None:
            d["mode"] = self.mode
        return d

    def describe(self) -> str:
        return _short(f"copy: {self.copy} -> {self.to}")

    def inputs(self, source: BuildSource, label: str) -> list[ManifestEntry] | None:
        return source.manifest(self.source, label)

    def execute(self, ctx: StepContext) -> None:
        label = ctx.label(self)
        if ctx.source is None:
            raise BakeError(f"{label}: no build context to copy from")
        src = self.source
        top = ctx.source.top(src, label)
        real_root = os.path.realpath(ctx.build_dir)
        dest = resolve_inside(real_root, relative(self.to, "to", allow_root=True), label)
        whole_dir = top is None or top.kind == DIR
        if whole_dir:
            target = dest
        else:
            into = self.to.endswith("/") or dest == real_root or os.path.isdir(dest)
            target = os.path.join(dest, basename(src)) if into else dest
        try:
            make_dirs(dest if whole_dir else os.path.dirname(target), real_root, label)
        except OSError as exc:
            raise BakeError(f"{label}: cannot make {self.to}: {exc.strerror}",
                            hint="an earlier step may have left its directory read-only") from exc
        cut = len(src) + 1 if src else 0

        def target_of(rel: str) -> str:
            return os.path.join(dest, rel[cut:]) if whole_dir else target
        copy_nodes(ctx.source.nodes(src, label), target_of, real_root=real_root, label=label,
                   mode=None if self.mode is None else int(self.mode, 8),
                   expected=None if ctx.inputs is None else {e.path: e for e in ctx.inputs},
                   on_verified=ctx.on_verified)


@dataclass(frozen=True)
class FileStep(Step):
    kind: ClassVar[str] = "file"
    keys: ClassVar[frozenset[str]] = frozenset({"file", "content", "mode"})
    file: str
    content: str
    mode: str = "0644"

    def __post_init__(self) -> None:
        relative(self.file, "file")
        if not isinstance(self.content, str):
            raise ValueError("content: expected a string")
        object.__setattr__(self, "mode", parse_mode(self.mode))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FileStep:
        cls.check_keys(d)
        if "content" not in d:
            raise ValueError("file step: `content` is required (the text to write)")
        return cls(file=d["file"], content=d["content"], mode=d.get("mode", "0644"))

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "content": self.content, "mode": self.mode}

    def describe(self) -> str:
        return _short(f"file: {self.file} ({len(self.content.encode())} bytes, {self.mode})")

    def execute(self, ctx: StepContext) -> None:
        label = ctx.label(self)
        rel = relative(self.file, "file")
        real_root = os.path.realpath(ctx.build_dir)
        folder = resolve_inside(real_root, parent(rel), label)
        try:
            make_dirs(folder, real_root, label)
            target = os.path.join(folder, basename(rel))
            clear_for_file(target, rel, label)
            write_file(target, self.content.encode("utf-8"), int(self.mode, 8))
        except OSError as exc:
            raise BakeError(f"{label}: cannot write {rel}: {exc.strerror}",
                            hint="an earlier step may have left its directory read-only") from exc


@dataclass(frozen=True)
class RemoveStep(Step):
    kind: ClassVar[str] = "remove"
    keys: ClassVar[frozenset[str]] = frozenset({"remove"})
    remove: str

    def __post_init__(self) -> None:
        relative(self.remove, "remove")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RemoveStep:
        cls.check_keys(d)
        return cls(remove=d["remove"])

    def to_json(self) -> dict[str, Any]:
        return {"remove": self.remove}

    def describe(self) -> str:
        return _short(f"remove: {self.remove}")

    def execute(self, ctx: StepContext) -> None:
        label = ctx.label(self)
        rel = relative(self.remove, "remove")
        folder = resolve_inside(str(ctx.build_dir), parent(rel), label)
        target = os.path.join(folder, basename(rel))
        if not os.path.lexists(target):
            raise BakeError(f"{label}: nothing at {rel} to remove",
                            hint="check the path: it is relative to the image root")
        try:
            remove_path(target)
        except OSError as exc:
            raise BakeError(f"{label}: cannot remove {rel}: {exc.strerror}",
                            hint="an earlier step may have left its directory read-only") from exc
