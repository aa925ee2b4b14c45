"""The process provider's files: a host's view copied from the image (and removed with its
read-only modes), its env.json and its host.json, written atomically."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

from hinotori.model import Host, HostState
from hinotori.providers.ports import SPAWN_LOCK
from hinotori.statefiles import write_private


def copy_tree(src: Path, dst: Path) -> None:
    if shutil.which("cp"):
        with SPAWN_LOCK:  # started under the lock (see ports.py), waited for outside it
            cp = subprocess.Popen(["cp", "-a", "--reflink=auto", "--", str(src), str(dst)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if cp.wait() == 0:
            return
        remove_tree(dst)  # e.g. a cp without --reflink: fall back below
    shutil.copytree(src, dst, symlinks=True)


def remove_tree(path: Path) -> None:
    """rmtree that also removes read-only trees (the view keeps the image's modes)."""
    if not path.exists():
        return
    for d, _, _ in os.walk(path):
        with contextlib.suppress(OSError):
            if not os.path.islink(d):
                os.chmod(d, os.stat(d).st_mode | stat.S_IRWXU)
    shutil.rmtree(path, ignore_errors=True)


def write_env(env: dict[str, str], state_dir: Path) -> None:
    tmp = state_dir / "env.json.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(env, f)
    tmp.replace(state_dir / "env.json")


def write_host(host: Host, state_dir: Path) -> None:
    # atomic: list() never reads half a file
    write_private(state_dir / "host.json", json.dumps(host.to_dict(), indent=2),
                  tmp=state_dir / "host.json.tmp")


def read_host(path: Path) -> Host | None:
    try:
        d = json.loads(path.read_text())
        d["state"] = HostState(d["state"])
        return Host(**d)
    except (OSError, ValueError, TypeError, KeyError):
        return None
