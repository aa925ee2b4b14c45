"""Which open log files changed since the shipper last asked, told by inotify (Linux).

The shipper keeps every live host's files open (shipper.py). Looking at each one every pass
(a ``stat`` per file, 5 times a second) is ~10,000 syscalls a second at a thousand hosts with
a thousand more kept warm, nearly all of them finding nothing new. Instead each open file is
watched through its descriptor (``/proc/self/fd/N``: the very file open, whatever its path
names now) for writes, truncation, renames and unlinks; a pass looks only at the files that
had such an event. A file the kernel stops watching (IN_IGNORED) and a lost queue
(IN_Q_OVERFLOW) make everything be looked at again, so an event missed is never a line lost.
Without inotify (another system, a watch refused) ``changed`` answers None: look at all.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Hashable

log = logging.getLogger("hinotori.logs")

try:
    if not sys.platform.startswith("linux"):
        raise ImportError("inotify is Linux's")
    from inotify_simple import INotify
    from inotify_simple import flags as _flags

    WATCHED = (_flags.MODIFY | _flags.ATTRIB | _flags.MOVE_SELF | _flags.DELETE_SELF)
    _LOST = _flags.Q_OVERFLOW
    _GONE = _flags.IGNORED
except ImportError:  # no inotify: every file is looked at, every pass
    INotify = None  # type: ignore[assignment,misc]
    WATCHED = _LOST = _GONE = 0


class FileChanges:
    """``watch(key, fd)`` an open file; ``changed()``: the keys whose file had an event since
    the last call (None: unknown, look at everything); ``unwatch(key)`` before closing it."""

    def __init__(self, enabled: bool = True) -> None:
        self._inotify = None
        if INotify is not None and enabled:
            try:
                self._inotify = INotify(nonblocking=True)
            except OSError as e:  # e.g. fs.inotify.max_user_instances reached
                log.warning("no inotify (%s): log files are looked at every pass", e)
        self._keys: dict[int, set[Hashable]] = {}  # watch descriptor -> keys on that file
        self._wd: dict[Hashable, int] = {}  # key -> its watch descriptor

    def __len__(self) -> int:
        return len(self._wd)

    def watch(self, key: Hashable, fd: int) -> bool:
        """Watch the file open as ``fd``; False if it cannot be (look at it every pass)."""
        if self._inotify is None:
            return False
        self.unwatch(key)
        try:
            wd = self._inotify.add_watch(f"/proc/self/fd/{fd}", WATCHED)
        except OSError as e:  # e.g. fs.inotify.max_user_watches reached
            log.debug("cannot watch a log file: %s", e)
            return False
        self._keys.setdefault(wd, set()).add(key)
        self._wd[key] = wd
        return True

    def unwatch(self, key: Hashable) -> None:
        wd = self._unwatch_key(key)
        if wd is not None and wd not in self._keys and self._inotify is not None:
            with contextlib.suppress(OSError):  # gone already (IN_IGNORED on its way)
                self._inotify.rm_watch(wd)

    def _unwatch_key(self, key: Hashable) -> int | None:
        wd = self._wd.pop(key, None)
        if wd is not None:
            keys = self._keys.get(wd, set())
            keys.discard(key)
            if not keys:
                self._keys.pop(wd, None)
        return wd

    def watched(self, key: Hashable) -> bool:
        return key in self._wd

    def changed(self) -> set[Hashable] | None:
        if self._inotify is None:
            return None
        found: set[Hashable] = set()
        lost = False
        for event in self._inotify.read(timeout=0):
            if event.mask & _LOST:
                lost = True
                continue
            keys = self._keys.get(event.wd)
            if keys is None:
                continue  # a watch removed since
            found.update(keys)
            if event.mask & _GONE:  # the kernel dropped the watch: look at these every pass
                for key in keys:
                    self._wd.pop(key, None)
                del self._keys[event.wd]
        return None if lost else found

    def close(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        self._keys.clear()
        self._wd.clear()
