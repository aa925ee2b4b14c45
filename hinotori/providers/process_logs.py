"""Where a process host's logs are on this machine (``ProcessProvider.log_source``).

``output.log`` in the host's state dir holds its stdout and stderr and is kept after the host is
destroyed; files matching the service's ``log_files`` are looked for in its view (its working
directory) and its scratch dir, never outside them.
"""

from __future__ import annotations

import stat
from collections.abc import Sequence
from pathlib import Path

from hinotori.model import Host
from hinotori.providers.base import STDOUT, SourceFile

SCRATCH = "$HINOTORI_SCRATCH/"  # how a scratch file is named: the way the host reaches it


def matches(base: Path, pattern: str) -> list[Path]:
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
                          for p in matches(view, pattern)]
            found += [SourceFile(SCRATCH + p.relative_to(scratch).as_posix(), p)
                      for p in matches(scratch, pattern)]
        return found
