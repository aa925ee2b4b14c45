"""Deployment hooks: the spec's commands run at pre-deploy, post-switch and post-deploy, with
the deployment's context in their environment (HINOTORI_SERVICE, HINOTORI_DEPLOYMENT, …).

A hook is an argv list run in the project directory, never through a shell; its output is
kept (the tail) for the deployment record. It runs through hinotori.command: a hook that runs
past its timeout is killed, and so is one still running when its caller is cancelled
(``hinotori down``), with everything it started.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from hinotori import command

TAIL_LINES = 20


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
        done = await command.run(argv, cwd=cwd, env={**os.environ, **env}, timeout=timeout,
                                 output="combined")
    except OSError as e:
        return HookResult(name, 127, f"cannot run {argv[0]!r}: {e.strerror or e}")
    output = "\n".join(done.tail(TAIL_LINES))
    if done.timed_out:
        return HookResult(name, done.rc, output + f"\n(killed after {timeout:g}s)")
    return HookResult(name, done.rc, output)
