"""Image archives: one portable tar per image, written reproducibly and read defensively.

``hinotori image export`` writes one; ``hinotori image import`` reads one (transfer.py says what
is in it). This module holds what both kinds of image (file trees, OS images) share:

- **Reproducible writing**: every member has mtime 0, owner 0:0 without names, the PAX format
  (extended headers only where a name needs one), members in a fixed order; gzip without a
  name or time in its header; zstd at a fixed level. The same image gives the same bytes.
- **Compression** by the output's suffix (``.tar``, ``.tar.gz``/``.tgz``,
  ``.tar.zst``/``.tzst``); reading tells it from the first bytes, so stdin works too.
- **A file appears whole or not at all**: written beside its destination, renamed at the end.
- **Members read with limits**: metadata members are read into memory only below a cap, and
  every member goes through :func:`check_member` first.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import posixpath
import sys
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO

from hinotori.errors import ImageArchiveError

FORMAT = "hinotori-image"
VERSION = 1
MARKER = "hinotori-image.json"  # always the first member: what the archive holds
PROVENANCE = "image.json"
COMPRESSIONS = ("none", "gzip", "zstd")
_SUFFIXES = {".tar": "none", ".tar.gz": "gzip", ".tgz": "gzip", ".tar.zst": "zstd",
             ".tzst": "zstd"}
_ZSTD_LEVEL = 3  # zstd's default: ~the speed of writing the tar at all, a third of its size
_GZIP_LEVEL = 6
_GZIP_MAGIC, _ZSTD_MAGIC = b"\x1f\x8b", b"\x28\xb5\x2f\xfd"
_CHUNK = 1 << 20
META_LIMIT = 64 << 20  # a manifest of a million files is ~150 MiB; ours stay far below


def compression_for(name: str) -> str:
    """The compression an output's name asks for; ValueError naming the suffixes known."""
    lower = name.lower()
    for suffix, kind in sorted(_SUFFIXES.items(), key=lambda kv: -len(kv[0])):
        if lower.endswith(suffix):
            return kind
    raise ValueError(f"{name!r} has no archive suffix: use .tar, .tar.gz (.tgz) or .tar.zst "
                     "(.tzst), or say --compress")


@contextlib.contextmanager
def open_writer(dest: Path | None, compression: str) -> Iterator[tarfile.TarFile]:
    """A tar stream into ``dest`` (None: stdout), compressed as asked. A file destination is
    written under a temporary name beside it and renamed only when the archive is complete."""
    if dest is None:
        out: BinaryIO = sys.stdout.buffer
        with _compressed(out, compression) as raw, \
                _stream(raw, "w|") as tar:
            yield tar
        out.flush()
        return
    dest = dest.absolute()
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    except OSError as e:
        raise ImageArchiveError(f"cannot write {dest}: {e.strerror}",
                                hint="give a file in a directory that exists and is "
                                     "writable") from None
    try:
        with os.fdopen(fd, "wb") as f:
            with _compressed(f, compression) as raw, \
                    _stream(raw, "w|") as tar:
                yield tar
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _stream(fileobj: IO[bytes], mode: str) -> tarfile.TarFile:
    """tarfile's stream mode with 1 MiB reads and writes: its defaults (10 KiB blocks, 16 KiB
    copies) cost a Python call per 10 KiB on the way through a compressor."""
    tar = tarfile.open(fileobj=fileobj, mode=mode,  # noqa: SIM115 - the caller closes it
                       format=tarfile.PAX_FORMAT, bufsize=_CHUNK)
    tar.copybufsize = _CHUNK
    return tar


@contextlib.contextmanager
def _compressed(out: BinaryIO, compression: str) -> Iterator[IO[bytes]]:
    if compression == "none":
        yield out
    elif compression == "gzip":
        # filename="" and mtime=0: gzip's header holds neither, so the bytes stay the same.
        with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0,
                           compresslevel=_GZIP_LEVEL) as gz:
            yield gz  # type: ignore[misc]
    elif compression == "zstd":
        zstd = _zstandard()
        with zstd.ZstdCompressor(level=_ZSTD_LEVEL, write_checksum=True).stream_writer(
                out, closefd=False) as z:
            yield z
    else:
        raise ValueError(f"unknown compression {compression!r}")


def _zstandard() -> Any:
    try:
        import zstandard
    except ImportError:
        raise ImageArchiveError("zstd archives need the zstandard package",
                                hint="pip install zstandard, or use .tar / .tar.gz") from None
    return zstandard


def info(name: str, *, kind: bytes = tarfile.REGTYPE, mode: int = 0o444, size: int = 0,
         target: str = "") -> tarfile.TarInfo:
    """A member with nothing in it but what the archive means: no time, owner or user name."""
    member = tarfile.TarInfo(name)
    member.type, member.mode, member.size, member.linkname = kind, mode, size, target
    member.mtime, member.uid, member.gid, member.uname, member.gname = 0, 0, 0, "", ""
    return member


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    tar.addfile(info(name, size=len(data)), io.BytesIO(data))


class HashingReader:
    """A file object that hashes what is read through it (tarfile reads exactly the size)."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.sha, self.count = f, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.sha.update(data)
        self.count += len(data)
        return data

    def hexdigest(self) -> str:
        return self.sha.hexdigest()


# -- reading -----------------------------------------------------------------------------------


class _Prefixed(io.RawIOBase):
    """The bytes already peeked at, then the rest of the stream (stdin cannot seek back)."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self._head, self._rest = head, rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


@contextlib.contextmanager
def open_reader(source: Path | None) -> Iterator[tarfile.TarFile]:
    """A tar stream read from ``source`` (None: stdin), decompressed as its first bytes say.
    Sequential only ("r|"): the importer reads each member once, in order."""
    with contextlib.ExitStack() as stack:
        if source is None:
            raw: IO[bytes] = sys.stdin.buffer
        else:
            try:
                raw = stack.enter_context(open(source, "rb"))
            except OSError as e:
                raise ImageArchiveError(f"cannot read {source}: {e.strerror}") from None
        head = raw.read(4)
        stream: IO[bytes] = io.BufferedReader(_Prefixed(head, raw), _CHUNK)
        if head.startswith(_GZIP_MAGIC):
            stream = stack.enter_context(gzip.GzipFile(fileobj=stream, mode="rb"))
        elif head.startswith(_ZSTD_MAGIC):
            stream = stack.enter_context(_zstandard().ZstdDecompressor().stream_reader(stream))
        try:
            tar = stack.enter_context(_stream(stream, "r|"))
        except tarfile.ReadError as e:
            raise ImageArchiveError(f"{_label(source)} is not an image archive ({e})",
                                    hint="`hinotori image export` writes one") from None
        except (*_stream_errors(), OSError) as e:  # the first block is read at once
            raise ImageArchiveError(f"{_label(source)} is damaged or cut short ({e})",
                                    hint="export the image again") from None
        try:
            yield tar
        except _stream_errors() as e:  # raised while reading a member's content
            raise ImageArchiveError(f"{_label(source)} is damaged or cut short ({e})",
                                    hint="export the image again") from None


def _stream_errors() -> tuple[type[BaseException], ...]:
    """What a damaged or cut-short stream raises, whichever layer notices it first."""
    errors: tuple[type[BaseException], ...] = (tarfile.TarError, EOFError, zlib.error,
                                               gzip.BadGzipFile)
    try:
        import zstandard
    except ImportError:
        return errors
    return (*errors, zstandard.ZstdError)


def _label(source: Path | None) -> str:
    return "standard input" if source is None else str(source)


def members(tar: tarfile.TarFile, source: Path | None) -> Iterator[tarfile.TarInfo]:
    """The archive's members; a damaged or cut-short archive is an ImageArchiveError."""
    it = iter(tar)
    while True:
        try:
            member = next(it)
        except StopIteration:
            return
        except (tarfile.TarError, OSError, EOFError) as e:
            raise ImageArchiveError(f"{_label(source)} is damaged or cut short ({e})",
                                    hint="export the image again") from None
        yield member


def check_member(member: tarfile.TarInfo, dest: str) -> None:
    """Refuse a member that could reach outside ``dest`` or is not plain data.

    tarfile's data filter (PEP 706) covers: absolute names, names that leave ``dest`` through
    "..", symlinks and hard links whose targets are absolute or leave ``dest``, device files
    and FIFOs. It would quietly clear setuid bits and group/other write bits; we never let it
    change a member, we only ask it. What it does not know, the callers check: names in their
    exact canonical form (no "./", "//" or trailing "/"), only the member types an image holds,
    each member against the manifest (type, mode, size, content, link target), symlinks that
    stay inside the image's own tree (not just inside ``dest``), sizes against free space.
    """
    name = member.name
    if (not name or name.startswith("/") or posixpath.normpath(name) != name
            or ".." in name.split("/")):
        raise ImageArchiveError(f"archive member {name!r} is not a plain relative path",
                                hint="the archive was not written by `hinotori image export`, "
                                     "or was changed since: refuse it")
    try:
        tarfile.data_filter(member, dest)
    except tarfile.FilterError as e:
        raise ImageArchiveError(f"archive member {name!r} is refused: {e}",
                                hint="the archive was not written by `hinotori image export`, "
                                     "or was changed since: refuse it") from None


DAMAGED = "the archive is damaged or was changed after export: do not use it"


def read_small(tar: tarfile.TarFile, member: tarfile.TarInfo | None, expected: str,
               source: Path | None, limit: int = META_LIMIT) -> bytes:
    """The content of a metadata member that must come next and be called ``expected``."""
    if member is None:
        raise ImageArchiveError(f"{_label(source)} ends before its {expected}",
                                hint="the archive is cut short: export the image again")
    if member.name != expected or not member.isfile():
        raise ImageArchiveError(f"{_label(source)}: expected {expected} here, found "
                                f"{member.name!r}",
                                hint="the archive was not written by `hinotori image export`, "
                                     "or was changed since")
    if member.size > limit:
        raise ImageArchiveError(f"{expected} in {_label(source)} declares {member.size} bytes,"
                                f" over the limit of {limit}", hint="refuse this archive")
    f = tar.extractfile(member)
    assert f is not None
    data = f.read()
    if len(data) != member.size:
        raise ImageArchiveError(f"{_label(source)} is cut short inside {expected}")
    return data


def read_digested(tar: tarfile.TarFile, member: tarfile.TarInfo | None, expected: str,
                  source: Path | None, digest: str, what: str, limit: int = META_LIMIT) -> bytes:
    """``read_small``, refused unless its sha256 is ``digest``: the member the image id names
    (a files image's manifest, an OS image's config)."""
    data = read_small(tar, member, expected, source, limit)
    found = "sha256:" + sha256_hex(data)
    if found != digest:
        raise ImageArchiveError(f"the archive names image {digest}, but its {what} is {found}",
                                hint=DAMAGED)
    return data


def check_space(directory: Path, needed: int, what: str) -> None:
    """Refuse before writing when the declared sizes cannot fit (a header may claim terabytes)."""
    st = os.statvfs(directory)
    free = st.f_bavail * st.f_frsize
    if needed > free:
        raise ImageArchiveError(f"{what} declares {needed} bytes; only {free} are free in "
                                f"{directory}", hint="free some space (`hinotori gc`), or "
                                                      "refuse the archive if that size is wrong")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
