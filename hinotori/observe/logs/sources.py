"""Where a host's logs can be read on this machine: the LogSource protocol, one per provider.

The shipper reads files; a provider tells it which. A source lists, for one host, its
captured output (named ``stdout``) and the files matching the service's declared
``log_files`` that exist now, each with a stable name (what the host calls it) and the path
this machine reads it at. A provider whose hosts are elsewhere (a VM, a remote machine) would
supply a source that mirrors their files locally, or run a shipper beside them: the store's
(stream, offset) dedup makes any at-least-once transport safe.

For a new provider: one class with ``files`` below, and one line in ``SOURCES``.
"""

from __future__ import annotations

import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from hinotori.model import Host
from hinotori.observe.logs.records import STDOUT

SCRATCH = "$HINOTORI_SCRATCH/"  # how a scratch file is named: the way the host reaches it


@dataclass(frozen=True)
class SourceFile:
    name: str  # "stdout", "logs/app.log" (in the view), "$HINOTORI_SCRATCH/app.log"
    path: Path  # where this machine reads it
    unframe: Callable[[str], str] | None = None  # a line as written -> the host's own text


class LogSource(Protocol):
    def files(self, host: Host, declared: Sequence[str]) -> list[SourceFile]:
        """The host's output and its files matching ``declared`` globs that exist now."""
        ...


def _matches(base: Path, pattern: str) -> list[Path]:
    """Regular files under ``base`` matching ``pattern``, never outside it (a symlink planted
    on the host that points at /etc is not shipped)."""
    try:
        root = base.resolve(strict=True)
    except OSError:
        return []
    found = []
    for path in sorted(base.glob(pattern)):
        try:
            real = path.resolve(strict=True)
            if real.is_relative_to(root) and stat.S_ISREG(real.stat().st_mode):
                found.append(path)
        except OSError:
            continue  # vanished between glob and stat
    return found


class ProcessLogSource:
    """Process hosts: ``output.log`` in the host's state dir (stdout and stderr, kept after the
    host is destroyed), and declared files in its view (cwd) or its scratch dir."""

    def files(self, host: Host, declared: Sequence[str]) -> list[SourceFile]:
        state_dir = Path(host.data.get("state_dir") or Path(host.root or ".").parent)
        out = Path(host.data.get("log") or state_dir / "output.log")
        found = [SourceFile(STDOUT, out)] if out.is_file() else []
        view, scratch = Path(host.root) if host.root else None, state_dir / "scratch"
        for pattern in declared:
            if view is not None:
                found += [SourceFile(p.relative_to(view).as_posix(), p)
                          for p in _matches(view, pattern)]
            found += [SourceFile(SCRATCH + p.relative_to(scratch).as_posix(), p)
                      for p in _matches(scratch, pattern)]
        return found


class ContainerLogSource:
    """Container hosts: the log file the engine writes on this machine (``host.data["log"]``,
    stdout and stderr framed by the engine, unframed here), while the container exists."""

    def files(self, host: Host, declared: Sequence[str]) -> list[SourceFile]:
        from hinotori.providers.container_logs import decode

        out = host.data.get("log")
        if not out or not Path(out).is_file():
            return []
        return [SourceFile(STDOUT, Path(out), unframe=lambda raw: decode(raw).text)]


SOURCES: dict[str, LogSource] = {
    "process": ProcessLogSource(),
    "container": ContainerLogSource(),
}
