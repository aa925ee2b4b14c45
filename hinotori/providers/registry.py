"""The providers by name: what ``provider = "..."`` in a service's spec may say.

A new provider is one module with a class that follows ``providers.base.Provider`` and one line
below; a third-party one is a distribution declaring an entry point in the group
``hinotori.providers`` (``name = "package.module:Class"``), loaded the first time its name is
asked for. ``build`` is how the controller and the CLI make them, from one ProviderContext.
"""

from __future__ import annotations

from collections.abc import Iterable

from hinotori.providers.base import Provider, ProviderContext
from hinotori.registry import Registry

GROUP = "hinotori.providers"

# Named lazily ("module:Class"): the spec checks names here, and `hinotori --help` must not
# import every provider to start.
PROVIDERS: Registry[type[Provider]] = Registry("provider", {
    "process": "hinotori.providers.process:ProcessProvider",
    "container": "hinotori.providers.machines:ContainerHosts",
}, group=GROUP)


def build(names: Iterable[str], ctx: ProviderContext) -> dict[str, Provider]:
    """One provider of each name (an unknown name raises UnknownName, listing the known)."""
    return {name: PROVIDERS[name].create(ctx) for name in sorted(set(names))}
