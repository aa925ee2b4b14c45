"""CPU time and resident memory of process hosts, read from /proc, one scan for many hosts.

A process host is a session (its command and everything it started), so its usage is the sum
over every process whose session id is the host's pid. Finding them means reading
``/proc/PID/stat`` of every process on the machine: one scan costs the same for one host as for
a thousand, so the metrics sampler asks for all its hosts at once (``session_usages``) instead
of scanning /proc once per host. Each stat file is read with one ``os.open``/``os.read``
(no pathlib, no text decoding of the whole file): the scan is the sampler's whole cost.
"""

from __future__ import annotations

import os
from collections.abc import Collection

from hinotori.providers.base import HostUsage

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _stat_fields(pid: str) -> list[bytes] | None:
    """Fields 3.. of /proc/PID/stat (after the command name, which may hold spaces)."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
    except OSError:
        return None  # exited while we looked
    try:
        raw = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    return raw[raw.rfind(b")") + 2:].split()


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start ticks) of ``pid``, or None if there is no such process (or no /proc):
    what tells a live process from a zombie and from another process given the same pid.
    Asked for every serving host once per health interval, so read as cheaply as the scan."""
    fields = _stat_fields(str(pid))
    if fields is None or len(fields) < 20:
        return None
    return fields[0].decode(), int(fields[19])


def session_usages(sids: Collection[int]) -> dict[int, HostUsage]:
    """Usage per session id, for those of ``sids`` that still have a process (one /proc
    scan). A session with no process left is absent."""
    wanted = set(sids)
    ticks: dict[int, int] = {}
    pages: dict[int, int] = {}
    if not wanted:
        return {}
    try:
        entries = os.listdir("/proc")
    except OSError:  # no /proc (not Linux): nobody can tell
        return {}
    for name in entries:
        if not name.isdigit():
            continue
        fields = _stat_fields(name)
        # fields[0] is field 3 (state): session is field 6, utime/stime 14/15, rss 24.
        if fields is None or len(fields) < 22:
            continue
        sid = int(fields[3])
        if sid not in wanted:
            continue
        ticks[sid] = ticks.get(sid, 0) + int(fields[11]) + int(fields[12])
        pages[sid] = pages.get(sid, 0) + int(fields[21])
    return {sid: HostUsage(cpu_seconds=ticks[sid] / _TICKS, memory_bytes=pages[sid] * _PAGE)
            for sid in ticks}


def session_usage(sid: int) -> HostUsage | None:
    """Usage of one session (one /proc scan); None when no process of it is left."""
    return session_usages([sid]).get(sid)
