"""Where a host's secrets go: env vars, and ``as_file`` secrets as 0400 files on a tmpfs.

The files of a host live in ``<tmpfs>/hinotori-<uid>/<project>/<host id>/NAME``, where tmpfs
is ``$XDG_RUNTIME_DIR`` (the user's own) or else ``/dev/shm``: memory, never a disk, and never
under ``.hinotori/``. ``<project>`` is a hash of the project's hosts directory, so the path of a
host's files is known from its id alone (destroy needs nothing recorded) and two projects never
share one. The provider removes them when it destroys the host (or when its boot fails).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from hinotori.errors import ProviderError
from hinotori.providers.base import BootRequest, ResolvedSecret
from hinotori.statefiles import private_dir

IN_CONTAINER = "/run/hinotori/secrets"  # where a container host finds its secret files


def _fstype(path: Path) -> str | None:
    """The filesystem type of the mount holding ``path`` (from /proc/self/mounts)."""
    best, kind = "", None
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    target = str(path.resolve())
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def tmpfs_root() -> Path:
    """$XDG_RUNTIME_DIR if it is ours and a tmpfs, else /dev/shm; ProviderError if neither."""
    candidates = [os.environ.get("XDG_RUNTIME_DIR") or "", "/dev/shm"]
    for c in (Path(c) for c in candidates if c):
        with contextlib.suppress(OSError):
            if c.is_dir() and _fstype(c) == "tmpfs" and (
                    c.stat().st_uid == os.getuid() or str(c) == "/dev/shm"):
                return c
    raise ProviderError("no tmpfs for secret files: neither $XDG_RUNTIME_DIR nor /dev/shm is one",
                        hint="mount a tmpfs on /dev/shm, or drop as_file from the secret")


def host_dir(scope: Path | str, host_id: str) -> Path:
    """The directory of a host's secret files (it may not exist); ``scope`` tells projects
    apart (a provider's directory under .hinotori/)."""
    project = hashlib.sha256(str(scope).encode()).hexdigest()[:12]
    return tmpfs_root() / f"hinotori-{os.getuid()}" / project / host_id


def files_wanted(secrets: Sequence[ResolvedSecret]) -> bool:
    return any(s.as_file for s in secrets)


def write_files(where: Path, secrets: Sequence[ResolvedSecret]) -> dict[str, Path]:
    """Each ``as_file`` secret as ``where/NAME`` (0400, in a 0700 directory); name -> path."""
    wanted = [s for s in secrets if s.as_file]
    if not wanted:
        return {}
    private_dir(where)
    paths = {}
    for s in wanted:
        path = where / s.name
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a boot retried with the same id
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o400)
        with os.fdopen(fd, "wb") as f:
            f.write(s.value.encode())
        paths[s.name] = path
    return paths


def remove_files(scope: Path | str, host_id: str) -> None:
    """Remove a host's secret files, if any (never an error: the host may have had none)."""
    with contextlib.suppress(ProviderError):
        where = host_dir(scope, host_id)
        shutil.rmtree(where, ignore_errors=True)
        with contextlib.suppress(OSError):
            where.parent.rmdir()  # the project's directory, once its last host is gone


def sweep(scope: Path | str, keep: set[str]) -> None:
    """Remove the secret files of every host of ``scope`` but those in ``keep``."""
    with contextlib.suppress(ProviderError, OSError):
        for d in host_dir(scope, "-").parent.iterdir():
            if d.name not in keep:
                shutil.rmtree(d, ignore_errors=True)


def secret_env(secrets: Sequence[ResolvedSecret], paths: Mapping[str, str]) -> dict[str, str]:
    """The host's variables for its secrets: NAME=value, or NAME_FILE=<path as the host sees
    it> for an ``as_file`` one."""
    env = {}
    for s in secrets:
        if s.as_file:
            env[f"{s.name}_FILE"] = paths[s.name]
        else:
            env[s.name] = s.value
    return env


@contextlib.contextmanager
def for_container(scope: str, req: BootRequest, local: bool
                  ) -> Iterator[tuple[dict[str, str], dict[str, dict[str, str]]]]:
    """The env and binds of a container host's secrets: on this machine ``as_file`` ones are
    tmpfs files mounted read-only at IN_CONTAINER (removed if the boot fails); on another
    machine the provider puts them in the container before it starts (``tar_of``)."""
    paths = {s.name: f"{IN_CONTAINER}/{s.name}" for s in req.secrets if s.as_file}
    binds = {}
    if paths and local:
        where = host_dir(scope, req.host_id)
        write_files(where, req.secrets)
        binds[str(where)] = {"bind": IN_CONTAINER, "mode": "ro"}
    try:
        yield secret_env(req.secrets, paths), binds
    except BaseException:
        remove_files(scope, req.host_id)
        raise


def tar_of(secrets: Sequence[ResolvedSecret]) -> bytes:
    """The ``as_file`` secrets as a tar to unpack at / in a container on another machine
    (its files are the container's own, removed with it)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        parts = IN_CONTAINER.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            d = tarfile.TarInfo("/".join(parts[:i]))
            d.type, d.mode = tarfile.DIRTYPE, 0o755 if i < len(parts) else 0o700
            tar.addfile(d)
        for s in secrets:
            if s.as_file:
                data = s.value.encode()
                info = tarfile.TarInfo(f"{IN_CONTAINER.strip('/')}/{s.name}")
                info.size, info.mode = len(data), 0o400
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()
