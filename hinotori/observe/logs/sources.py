"""Where a host's logs can be read on this machine: the LogSource of each provider.

The shipper reads files; a provider tells it which (``Provider.log_source``: a class attribute,
so no provider instance is needed). A source lists, for one host, its captured output (named
``stdout``) and the files matching the service's declared ``log_files`` that exist now, each
with a stable name (what the host calls it) and the path this machine reads it at. A provider
whose hosts are elsewhere (a VM, a remote machine) would supply a source that mirrors their
files locally, or run a shipper beside them, or serve them as API feeds (``FeedSource``: the
container provider's hosts on machines of a fleet, through the engine's log API, feeds.py): the
store's (stream, offset) dedup makes any at-least-once transport safe.

``SOURCES`` maps a provider's name to its source through the provider registry, so a new
provider brings its own source and needs no line here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import cast

from hinotori.errors import HinotoriError
from hinotori.providers.base import FeedSource, LogSource, SourceFeed, SourceFile
from hinotori.providers.process_logs import SCRATCH
from hinotori.providers.registry import PROVIDERS


class ProviderSources(Mapping[str, LogSource]):
    """provider name -> its LogSource, as the provider registry has them, or as the live
    provider instances of ``live()`` have them (an instance's source may reach more: the
    container provider's reads hosts on other machines through its connections)."""

    def __init__(self, live: Callable[[], Mapping[str, object]] | None = None) -> None:
        self.live = live

    def __getitem__(self, provider: str) -> LogSource:
        instance = self.live().get(provider) if self.live is not None else None
        if instance is not None and hasattr(instance, "log_source"):
            return cast(LogSource, instance.log_source)
        try:
            return PROVIDERS[provider].log_source
        except HinotoriError:  # unknown, or a plug-in that fails to load: the shipper warns
            raise KeyError(provider) from None

    def __iter__(self) -> Iterator[str]:
        return iter(PROVIDERS)

    def __len__(self) -> int:
        return len(PROVIDERS)


SOURCES: Mapping[str, LogSource] = ProviderSources()

__all__ = ["SCRATCH", "SOURCES", "FeedSource", "LogSource", "ProviderSources", "SourceFeed",
           "SourceFile"]
