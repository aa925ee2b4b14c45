"""Files hinotori keeps under ``.hinotori/``: readable by their owner only, from creation.

The state holds release environments (secrets), the API token and host output, so every
directory is 0700 and every file 0600 *when it is created* (``os.open`` with the mode), never
created wider and tightened afterwards: there is no window in which another user can open it.

Image trees and host views are not written through here: their modes are part of the image's
digest and come from its manifest.

A top-level module with no hinotori imports, so the data plane (routers) may use it too.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
from pathlib import Path
from typing import IO, Any

from hinotori.errors import HinotoriError

DIR_MODE = 0o700
FILE_MODE = 0o600
_OTHERS = stat.S_IRWXG | stat.S_IRWXO


def private_dir(path: Path | str) -> Path:
    """``mkdir -p`` where every directory it creates is 0700 (existing ones are left alone)."""
    path = Path(path)
    missing = []
    for d in (path, *path.parents):
        if d.is_dir():
            break
        missing.append(d)
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process made it meanwhile
            os.mkdir(d, DIR_MODE)
            os.chmod(d, DIR_MODE)  # exactly 0700 whatever the umask
    return path


def _open_fd(path: Path | str, flags: int) -> int:
    fd = os.open(path, flags | os.O_CLOEXEC, FILE_MODE)
    try:
        if os.fstat(fd).st_mode & _OTHERS:  # a file an older hinotori created wider
            os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def private_file(path: Path | str) -> Path:
    """Create ``path`` empty with mode 0600 unless it exists (an existing one is tightened)."""
    os.close(_open_fd(path, os.O_RDONLY | os.O_CREAT))
    return Path(path)


def open_private(path: Path | str, mode: str = "ab") -> IO[Any]:
    """``open(path, mode)`` for writing ("w", "a", "a+", binary or text); a file it creates is
    0600."""
    base = mode.replace("b", "").replace("t", "")
    flags = {"w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "a": os.O_WRONLY | os.O_CREAT |
             os.O_APPEND, "a+": os.O_RDWR | os.O_CREAT | os.O_APPEND,
             "w+": os.O_RDWR | os.O_CREAT | os.O_TRUNC}[base]
    return os.fdopen(_open_fd(path, flags), mode)


def write_private(path: Path | str, data: str | bytes, *, tmp: Path | str | None = None) -> None:
    """Write ``path`` (0600) through a temporary file and a rename, so a reader never sees half
    of it. ``tmp`` defaults to ``.<name>.tmp`` beside it."""
    path = Path(path)
    tmp = Path(tmp) if tmp is not None else path.with_name(f".{path.name}.tmp")
    with open_private(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def tighten(state_dir: Path, *, keep: tuple[str, ...] = ()) -> None:
    """Take group and other bits off a state directory an older hinotori left readable, and off
    everything in it except the trees under ``keep`` (paths relative to ``state_dir``, "*" for
    any one name: e.g. "images", "hosts/*/root")."""
    state_dir = Path(state_dir)
    keep_parts = [tuple(k.split("/")) for k in keep]

    def kept(rel: tuple[str, ...]) -> bool:
        return any(len(rel) == len(k) and all(p in ("*", r) for p, r in zip(k, rel, strict=True))
                   for k in keep_parts)

    def strip(p: str) -> None:
        with contextlib.suppress(OSError):
            st = os.lstat(p)
            if not stat.S_ISLNK(st.st_mode) and st.st_mode & _OTHERS:
                os.chmod(p, stat.S_IMODE(st.st_mode) & ~_OTHERS)

    strip(str(state_dir))
    for top, dirs, files in os.walk(state_dir):
        rel = Path(top).relative_to(state_dir).parts
        dirs[:] = [d for d in dirs if not kept((*rel, d))]
        for name in (*dirs, *files):
            strip(os.path.join(top, name))


def socket_dir(state_dir: Path, longest: str, limit: int) -> Path:
    """Where unix sockets of ``state_dir`` go: ``state_dir`` itself if ``state_dir / longest``
    fits in ``limit`` bytes (a socket path has 108 on Linux; HAProxy wants fewer), else a
    private directory under /tmp named after it, so whoever adopts it later finds the same one.
    Deep project paths, and test runners' temporary directories, happen."""
    if len(os.fsencode(Path(state_dir) / longest)) <= limit:
        return Path(state_dir)
    digest = hashlib.sha256(os.fsencode(state_dir)).hexdigest()[:16]
    base = Path(tempfile.gettempdir()) / f"hinotori-{os.getuid()}"
    base.mkdir(mode=0o700, exist_ok=True)
    if base.stat().st_uid != os.getuid() or base.stat().st_mode & 0o077:
        raise HinotoriError(f"{base} is not a private directory of this user",
                            hint="remove it, or move the project to a shorter path")
    return private_dir(base / digest)
