"""What the shipper keeps per open log file (``Tail``), what one read gives (``Work``), and its
counters (``ShipStats``)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

from hinotori.observe.logs.changes import FileChanges
from hinotori.observe.logs.store import Row


@dataclass(eq=False)
class Tail:
    host: str
    name: str
    fh: BinaryIO
    ident: str  # "dev:inode" of the open file
    stream: int
    gen: int
    offset: int
    unframe: Callable[[str], str] | None = None
    path: str = ""  # where the source names it (a rotated file is no longer there)
    size: int = -1  # the file's size at this pass's look
    seen: int = -1  # a size up to which everything was read: unchanged, nothing to read
    changes: FileChanges | None = None  # inotify tells when the file changes (None: look)
    polled: bool = False  # its path names no file now: looked at each pass for a new one

    def close(self) -> None:
        if self.changes is not None:
            self.changes.unwatch(self)
            self.changes = None
        with contextlib.suppress(OSError):
            self.fh.close()


@dataclass
class Work:
    tail: Tail
    rows: list[Row]
    offset: int  # where the tail is once these rows are stored
    close: bool = False
    seen: int = -1  # the tail's ``seen`` once these rows are stored


@dataclass
class ShipStats:
    passes: int = 0
    lines: int = 0  # new lines stored
    errors: int = 0
    open_files: int = 0
    last_error: str | None = field(default=None)


def ident_of(st: os.stat_result) -> str:
    return f"{st.st_dev}:{st.st_ino}"
