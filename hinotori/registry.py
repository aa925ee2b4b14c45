"""Name -> implementation tables: how a provider, router, strategy or log sink is found by name.

Each kind of plug-in has one ``Registry`` in its own module (``providers/registry.py``,
``router/registry.py``, ``deploy/strategies.py``, ``observe/logs/forward/sinks.py``), filled
with one line per built-in. Adding one is a new module plus that line. An entry may be given as
``"package.module:attr"``, imported on its first lookup: the spec validates names against the
provider registry, and must not import every provider (and asyncio) to do so. A registry with an
entry-point ``group`` (providers: ``hinotori.providers``) also finds third-party plug-ins that a
distribution declares there: their names are listed from metadata without importing them, and
one is loaded only when a lookup asks for a name no built-in has.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from importlib import metadata
from typing import Generic, TypeVar

from hinotori.errors import HinotoriError, UnknownName

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """A read-mostly mapping of names to implementations (classes, usually)."""

    def __init__(self, what: str, entries: Mapping[str, T | str], *,
                 group: str | None = None) -> None:
        self.what = what  # "provider", "router kind", ...: for messages
        self.group = group
        self._entries: dict[str, T | str] = dict(entries)

    def register(self, name: str, entry: T | str) -> None:
        """Add an entry by hand (a plug-in imported by the project's own code, or a test)."""
        if name in self._entries and self._entries[name] is not entry:
            raise HinotoriError(f"{self.what} {name!r} is registered already",
                                hint="pick another name")
        self._entries[name] = entry

    def declared(self, name: str) -> T | str | None:
        """``name``'s entry as it stands, without importing it: a ``"module:attr"`` string for
        a built-in no lookup has asked for yet; None for a name not registered here."""
        return self._entries.get(name)

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def _entry_points(self) -> dict[str, metadata.EntryPoint]:
        if self.group is None:
            return {}
        return {ep.name: ep for ep in metadata.entry_points(group=self.group)}

    def names(self) -> list[str]:
        """Every name a lookup can succeed for, sorted (entry points without importing them)."""
        return sorted({*self._entries, *self._entry_points()})

    def get(self, name: str, default: T | None = None) -> T | None:  # type: ignore[override]
        try:
            return self[name]
        except UnknownName:
            return default

    def __getitem__(self, name: str) -> T:
        entry = self._entries.get(name)
        if isinstance(entry, str):  # a built-in named lazily: a bug if it does not import
            module, _, attr = entry.partition(":")
            entry = self._entries[name] = getattr(importlib.import_module(module), attr)
        if entry is not None:
            return entry
        ep = self._entry_points().get(name)
        if ep is None:
            raise UnknownName(f"unknown {self.what} {name!r}",
                              hint=f"known: {', '.join(self.names()) or 'none'}")
        try:
            entry = ep.load()
        except Exception as e:  # any import error of a third-party package: say whose
            dist = f" of {ep.dist.name} {ep.dist.version}" if ep.dist is not None else ""
            raise HinotoriError(
                f"the {self.what} {name!r} (entry point {ep.value!r} in group "
                f"{self.group!r}{dist}) failed to load: {type(e).__name__}: {e}",
                hint="fix or uninstall the package that declares it") from e
        self._entries[name] = entry
        return entry

    def __contains__(self, name: object) -> bool:
        # Built-ins first: scanning the installed distributions' metadata takes ~20 ms.
        return isinstance(name, str) and (name in self._entries or name in self._entry_points())

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())
