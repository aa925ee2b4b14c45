"""What changed between two images, from their manifests alone (``hinotori image diff``).

Manifests are sorted lists of (path, type, mode, size, sha256, target), so a diff is a merge of
two sorted lists, and reading them is all it costs: no tree is walked, no file is hashed. A path
is *added* or *removed* when only one side has it, and *changed* when both have it but differ in
one or more of:

    type      file, dir or symlink (a file that became a link)
    content   a file's sha256 (and so its size), or a link's target
    mode      the permission bits (in a normalised image: 0444 versus 0555, i.e. the exec bit)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from hinotori.bake.manifest import ManifestEntry


@dataclass(frozen=True)
class Change:
    path: str
    what: tuple[str, ...]  # a subset of ("type", "content", "mode"), in that order
    before: ManifestEntry
    after: ManifestEntry

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "what": list(self.what), "before": self.before.to_dict(),
                "after": self.after.to_dict()}


@dataclass(frozen=True)
class ImageDiff:
    added: list[ManifestEntry] = field(default_factory=list)
    removed: list[ManifestEntry] = field(default_factory=list)
    changed: list[Change] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)

    def to_dict(self) -> dict[str, Any]:
        return {"added": [e.to_dict() for e in self.added],
                "removed": [e.to_dict() for e in self.removed],
                "changed": [c.to_dict() for c in self.changed]}


def diff_manifests(before: Iterable[ManifestEntry], after: Iterable[ManifestEntry]) -> ImageDiff:
    old = {e.path: e for e in before}
    new = {e.path: e for e in after}
    result = ImageDiff()
    for path in sorted(old.keys() | new.keys(), key=lambda p: p.encode("utf-8")):
        a, b = old.get(path), new.get(path)
        if a is None and b is not None:
            result.added.append(b)
        elif b is None and a is not None:
            result.removed.append(a)
        elif a is not None and b is not None and a != b:
            what = []
            if a.type != b.type:
                what.append("type")
            if (a.sha256, a.size, a.target) != (b.sha256, b.size, b.target):
                what.append("content")
            if a.mode != b.mode:
                what.append("mode")
            result.changed.append(Change(path, tuple(what), a, b))
    return result
