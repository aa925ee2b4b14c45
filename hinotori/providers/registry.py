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
BUILT_IN = {"process": "hinotori.providers.process:ProcessProvider",
            "container": "hinotori.providers.machines:ContainerHosts"}
PROVIDERS: Registry[type[Provider]] = Registry("provider", BUILT_IN, group=GROUP)
# Each built-in's Provider.runs_os_image, known without importing it: the spec asks it of every
# service, and the process provider's module (asyncio, subprocess) is ~25 ms of CPU for every
# command that loads a spec. A unit test checks it against the classes.
BUILT_IN_RUNS_OS_IMAGE = {"process": False, "container": True}


def runs_os_image(name: str) -> bool:
    """Whether provider ``name``'s hosts run an OS image (an engine image), not a copy of a
    file-tree image: its class's ``runs_os_image`` (UnknownName for an unknown name)."""
    if name in BUILT_IN and PROVIDERS.declared(name) == BUILT_IN[name]:  # not imported yet
        return BUILT_IN_RUNS_OS_IMAGE[name]
    return PROVIDERS[name].runs_os_image


def build(names: Iterable[str], ctx: ProviderContext) -> dict[str, Provider]:
    """One provider of each name (an unknown name raises UnknownName, listing the known)."""
    return {name: PROVIDERS[name].create(ctx) for name in sorted(set(names))}
