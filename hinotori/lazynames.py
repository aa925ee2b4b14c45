"""A package's names loaded on first use (PEP 562's module ``__getattr__``).

The CLI starts by importing packages whose heavy parts most commands never need (the spec's
pydantic models, the bake builder, the verify runner): the names stay where they are, and the
submodule that defines one is imported the first time the name is asked for.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_names(package: str, exports: Mapping[str, tuple[str, ...]]) -> Callable[[str], Any]:
    """The ``__getattr__`` for ``package``: ``exports`` maps a submodule to the names it
    gives the package. A name is looked up once, then kept in the package's namespace."""
    homes = {name: module for module, names in exports.items() for name in names}
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{home}"), name)
        namespace[name] = value
        return value

    return __getattr__
