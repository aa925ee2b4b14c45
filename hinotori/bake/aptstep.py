"""The ``apt`` step: Debian packages declared in the recipe, for OS images only.

    { apt = ["curl", "netcat-openbsd"] }

An OS image (``[services.NAME.image] os = {...}``) turns it into one cached layer::

    RUN apt-get update && apt-get install -y --no-install-recommends curl netcat-openbsd \\
        && rm -rf /var/lib/apt/lists/*

(``osimage/containerfile.py``). A file-tree image has no package manager to run, so the spec
refuses an apt step without ``os``, and a recipe built in code that still has one fails here
with the same advice. A package is a Debian name, optionally pinned (``curl=7.88.1-10``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from hinotori.bake.stepbase import Step, StepContext
from hinotori.errors import BakeError

# Debian policy 5.6.1 (names) and 5.6.12 (versions), loosely: what apt-get accepts as NAME[=VER].
PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+(=[A-Za-z0-9.+~:-]+)?")


def check_package(name: object) -> str:
    if not isinstance(name, str) or not PACKAGE.fullmatch(name):
        raise ValueError(f"apt: {name!r} is not a Debian package name (e.g. \"curl\", or "
                         "\"curl=7.88.1-10\" pinned)")
    return name


@dataclass(frozen=True)
class AptStep(Step):
    kind: ClassVar[str] = "apt"
    keys: ClassVar[frozenset[str]] = frozenset({"apt"})
    packages: tuple[str, ...]

    def __post_init__(self) -> None:
        packages = tuple(self.packages)
        if not packages:
            raise ValueError("apt: name at least one package, e.g. apt = [\"curl\"]")
        for p in packages:
            check_package(p)
        object.__setattr__(self, "packages", packages)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AptStep:
        cls.check_keys(d)
        packages = d["apt"]
        if isinstance(packages, str) or not isinstance(packages, list | tuple):
            raise ValueError("apt: expected a list of package names, e.g. apt = [\"curl\"]")
        return cls(packages=tuple(packages))

    def to_json(self) -> dict[str, Any]:
        return {"apt": list(self.packages)}

    def describe(self) -> str:
        text = " ".join(self.packages)
        return f"apt: {text if len(text) <= 100 else text[:99] + '…'}"

    def execute(self, ctx: StepContext) -> None:
        raise BakeError(f"{ctx.label(self)}: apt steps install Debian packages and need an OS "
                        "image",
                        hint="add os = { suite = \"bookworm\" } to the service's [image] table, "
                             "or install the tool another way")
