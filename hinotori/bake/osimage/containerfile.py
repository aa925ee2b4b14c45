"""A recipe as a Containerfile, and the build context the engine gets with it.

Each recipe step becomes exactly one instruction, so each step is one cached layer and the
engine's layer cache does what hinotori's build cache does for file trees: an edit reuses every
step before the first one it changes. Paths in steps are relative, as everywhere in a recipe;
here they are relative to the image's ``workdir`` (default ``/app``), which is also the
command's working directory::

    (prelude)  FROM <base id>; ARG SOURCE_DATE_EPOCH, LANG, TZ, PYTHON…; WORKDIR <workdir>
    run        RUN ["/bin/sh", "-c", "<line>"]  or  RUN ["argv", …]
               (with the step's env: RUN ["/usr/bin/env", "K=V", …, "/bin/sh", "-c", …])
    env        ENV K="V" …   (unlike a file tree, it stays in the image's config as well)
    copy       COPY ["c<N>/…", "<workdir>/<to>"]
    file       COPY ["f<N>", "<workdir>/<file>"]
    remove     RUN ["rm", "-r", "--", "<workdir>/<path>"]  (a missing path fails, as it does
               for a file tree)
    apt        RUN apt-get update && apt-get install -y --no-install-recommends … \\
                   && rm -rf /var/lib/apt/lists/*
    sysctl     COPY ["f<N>", "/etc/sysctl.d/NN-hinotori.conf"]  (absolute: the OS's own place)
    (epilogue) LABEL "hinotori.sysctls"="{…}"  after the last step, when there are sysctl steps:
               every setting of them, for the container provider to pass to the engine

The prelude's ARGs give run steps the same clean, fixed environment a file-tree bake gives
them (runsteps.py), without writing it into the image's config.

The build context is a tar assembled here, never the user's directory: ``c<N>/`` holds what
copy step N reads (through ``BuildSource``, so ``.hinotoriignore`` and the context's link rules
apply exactly as in a file-tree bake), ``f<N>`` the content of file step N, and the
Containerfile itself. Every entry is owned by root with a fixed mtime, so the same inputs give
the same context bytes, and the engine's content-based COPY cache hits. Modes are the tar
entries' own (a copy step's ``mode`` set on each file it copies, as in a file-tree bake, a file
step's on its file): COPY keeps them on both engines, whereas ``COPY --chmod`` is refused by
Docker's classic builder (the one its build API runs without BuildKit).
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO

from hinotori.bake.aptstep import AptStep
from hinotori.bake.context import BuildSource
from hinotori.bake.filesteps import CopyStep, FileStep, RemoveStep
from hinotori.bake.paths import relative
from hinotori.bake.runsteps import ZIP_EPOCH, EnvStep, RunStep
from hinotori.bake.stepbase import Step
from hinotori.bake.sysctlstep import SysctlStep, image_sysctls
from hinotori.bake.tree import DIR, FILE, SYMLINK
from hinotori.errors import BakeError
from hinotori.sysctls import LABEL, to_label

CONTAINERFILE = "Containerfile"
APT_ENV = "DEBIAN_FRONTEND=noninteractive"
# What a run step sees besides PATH (the base image's), as in runsteps.step_environment.
BUILD_ARGS = {"LANG": "C.UTF-8", "TZ": "UTC", "PYTHONDONTWRITEBYTECODE": "1",
              "PYTHONHASHSEED": "0"}


@dataclass(frozen=True)
class Translation:
    text: str  # the Containerfile
    # Instruction number as the engine counts them (FROM is 1) -> recipe step (1-based), 0 for
    # the prelude and the epilogue (the sysctls label).
    owners: dict[int, int]
    generated: dict[str, tuple[bytes, int]] = field(default_factory=dict)  # f<N> -> content, mode
    # c<N> -> (source, kind, mode for every file it copies or None to keep each file's own)
    copies: dict[str, tuple[str, str, int | None]] = field(default_factory=dict)


def translate(steps: Sequence[Step], *, base: str, workdir: str = "/app",
              source: BuildSource | None = None, epoch: int = ZIP_EPOCH) -> Translation:
    """The Containerfile for ``steps`` on ``base``. ``source`` is needed by copy steps (to
    know whether a source is a directory)."""
    lines = [f"FROM {base}"]
    owners = {1: 0}
    # One ARG line, not one per variable: every instruction is a cache lookup on each build.
    lines.append("ARG " + " ".join(f"{name}={value}" for name, value in
                                   {"SOURCE_DATE_EPOCH": str(epoch), **BUILD_ARGS}.items()))
    lines.append(f"WORKDIR {_json_path(workdir)}")
    for n in range(2, len(lines) + 1):
        owners[n] = 0
    generated: dict[str, tuple[bytes, int]] = {}
    copies: dict[str, tuple[str, str, int | None]] = {}
    for i, step in enumerate(steps, start=1):
        lines.append(_instruction(i, step, workdir, source, generated, copies))
        owners[len(lines)] = i
    settings = image_sysctls(steps)
    if settings:
        lines.append(f'LABEL "{LABEL}"={_env_value(LABEL, to_label(settings))}')
        owners[len(lines)] = 0
    return Translation("\n".join(lines) + "\n", owners, generated, copies)


def _instruction(i: int, step: Step, workdir: str, source: BuildSource | None,
                 generated: dict[str, tuple[bytes, int]],
                 copies: dict[str, tuple[str, str, int | None]]) -> str:
    def at(rel: str) -> str:
        return posixpath.join(workdir, rel) if rel else workdir

    if isinstance(step, RunStep):
        argv = step.argv
        if step.env:
            argv = ["/usr/bin/env", *(f"{k}={v}" for k, v in sorted(step.env.items())), *argv]
        return f"RUN {_json(argv)}"
    if isinstance(step, EnvStep):
        return "ENV " + " ".join(f"{k}={_env_value(k, v)}" for k, v in sorted(step.env.items()))
    if isinstance(step, AptStep):
        packages = " ".join(step.packages)
        return ("RUN " + _json(["/bin/sh", "-c", f"apt-get update && {APT_ENV} apt-get install "
                                f"-y --no-install-recommends {packages} && "
                                "rm -rf /var/lib/apt/lists/*"]))
    if isinstance(step, RemoveStep):
        return f"RUN {_json(['rm', '-r', '--', at(relative(step.remove, 'remove'))])}"
    if isinstance(step, SysctlStep):
        name = f"f{i}"
        generated[name] = (step.conf().encode("utf-8"), 0o644)
        return f"COPY {_json([name, step.path])}"
    if isinstance(step, FileStep):
        name = f"f{i}"
        generated[name] = (step.content.encode("utf-8"), int(step.mode, 8))
        return f"COPY {_json([name, at(relative(step.file, 'file'))])}"
    if isinstance(step, CopyStep):
        if source is None:
            raise ValueError("copy steps need the build source")
        name = f"c{i}"
        top = source.top(step.source, f"step {i} ({step.describe()})")
        kind = DIR if top is None else top.kind
        copies[name] = (step.source, kind, None if step.mode is None else int(step.mode, 8))
        to = relative(step.to, "to", allow_root=True)
        dest = at(to)
        if kind == DIR:
            return f"COPY {_json([name + '/', dest.rstrip('/') + '/'])}"
        into = to == "" or step.to.endswith("/")
        src = f"{name}/{posixpath.basename(step.source)}"
        return f"COPY {_json([src, dest.rstrip('/') + '/' if into else dest])}"
    raise BakeError(f"step {i} ({step.describe()}): a {step.kind} step cannot be part of an OS "
                    "image", hint="use run, env, copy, file, remove, apt or sysctl steps")


def _json(argv: Sequence[str]) -> str:
    return json.dumps(list(argv), ensure_ascii=False)


def _json_path(path: str) -> str:
    if any(c.isspace() for c in path):
        raise BakeError(f"workdir {path!r} contains white space",
                        hint="choose a workdir without spaces, e.g. \"/app\"")
    return path


def _env_value(name: str, value: str) -> str:
    """A value for ENV, literal: quoted, with the characters ENV would interpret escaped."""
    if "\n" in value or "\r" in value:
        raise BakeError(f"env step: the value of {name} spans lines, which an OS image's ENV "
                        "cannot hold", hint="put multi-line values in a file step")
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    return f'"{escaped}"'


def context_tar(translation: Translation, source: BuildSource | None, *,
                epoch: int = ZIP_EPOCH) -> IO[bytes]:
    """The build context as a tar (a spooled temporary file, rewound)."""
    out = tempfile.SpooledTemporaryFile(max_size=16 << 20)  # noqa: SIM115 - returned open
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, CONTAINERFILE, translation.text.encode("utf-8"), 0o644, epoch)
        for name, (content, mode) in sorted(translation.generated.items()):
            _add_bytes(tar, name, content, mode, epoch)
        for name, (src, kind, forced) in sorted(translation.copies.items()):
            assert source is not None
            _add_dir(tar, name, 0o755, epoch)
            label = f"copy step {name[1:]} ({src or '.'})"
            for node in source.nodes(src, label):
                if kind == DIR:
                    rel = node.rel[len(src) + 1:] if src else node.rel
                else:
                    rel = posixpath.basename(node.rel)
                arcname = f"{name}/{rel}"
                mode = node.st.st_mode & 0o777 | 0o600
                if node.kind == DIR:
                    _add_dir(tar, arcname, mode | 0o100, epoch)
                elif node.kind == SYMLINK:
                    info = _info(arcname, epoch, 0o777)
                    info.type, info.linkname = tarfile.SYMTYPE, os.readlink(node.abs)
                    tar.addfile(info)
                elif node.kind == FILE:
                    info = _info(arcname, epoch, mode if forced is None else forced)
                    info.size = node.st.st_size
                    with open(node.abs, "rb") as f:
                        tar.addfile(info, f)
    out.seek(0)
    return out


def _info(name: str, epoch: int, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = epoch, mode, 0, 0, "", ""
    return info


def _add_bytes(tar: tarfile.TarFile, name: str, content: bytes, mode: int, epoch: int) -> None:
    info = _info(name, epoch, mode)
    info.size = len(content)
    tar.addfile(info, io.BytesIO(content))


def _add_dir(tar: tarfile.TarFile, name: str, mode: int, epoch: int) -> None:
    info = _info(name, epoch, mode)
    info.type = tarfile.DIRTYPE
    tar.addfile(info)
