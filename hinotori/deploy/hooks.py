"""Deployment hooks: the spec's commands run at pre-deploy, post-switch and post-deploy, with
the deployment's context in their environment (HINOTORI_SERVICE, HINOTORI_DEPLOYMENT, …).

A hook is an argv list run in the project directory, never through a shell; its output is
kept (the tail) for the deployment record. A hook that runs past its timeout is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class HookResult:
    name: str
    rc: int
    output: str  # the last lines, stdout and stderr together

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def describe(self) -> str:
        tail = "\n".join(f"    | {line}" for line in self.output.splitlines()) or "    | (none)"
        return f"{self.name} hook exited {self.rc}; its output:\n{tail}"


async def run_hook(name: str, argv: list[str], *, env: dict[str, str], cwd: Path,
                   timeout: float) -> HookResult:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=cwd, env={**os.environ, **env}, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True)
    except OSError as e:
        return HookResult(name, 127, f"cannot run {argv[0]!r}: {e.strerror or e}")
    try:
        async with asyncio.timeout(timeout):
            out, _ = await proc.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        out, _ = await proc.communicate()
        return HookResult(name, 124, _tail(out) + f"\n(killed after {timeout:g}s)")
    return HookResult(name, proc.returncode or 0, _tail(out))


def _tail(out: bytes, lines: int = 20) -> str:
    return "\n".join(out.decode(errors="replace").splitlines()[-lines:])
