"""Recipe steps: what runs in the build directory between copying the context and storing it.

A step is a frozen dataclass with three duties: ``to_json()`` (its canonical description, which
feeds the recipe hash and equals the shape a spec writes, e.g. ``{"run": "make"}``),
``describe()`` (a one-line label for progress and errors) and ``execute(ctx)``. A new kind of step
is one class here plus one line in ``STEP_KINDS``; ``step_from_dict`` picks the class by which
registry key a dict has. Malformed steps raise ``ValueError`` (so a pydantic validator turns
them into a spec error with the file and key).

Every step runs with the build directory as cwd and a small, clean environment, never the baker's
own (which would make images depend on who baked them):

    PATH                     inherited, so the baker's tools are found
    HOME, TMPDIR             empty directories beside the build dir, discarded with the scratch
    LANG=C.UTF-8, TZ=UTC     locale- and zone-dependent output stays the same everywhere
    SOURCE_DATE_EPOCH        the baker's if set, else 315532800 (1980-01-01). Not 0, although
                             stored mtimes default to 0: ZIP cannot hold dates before 1980, and
                             wheel builders fail on SOURCE_DATE_EPOCH=0 (pypa/wheel#418)
    PYTHONDONTWRITEBYTECODE=1, PYTHONHASHSEED=0
                             bytecode caches written as a side effect of running Python embed
                             source mtimes and would change the digest on every bake; a fixed
                             hash seed keeps set/dict-ordered output stable. Bytecode compiled on
                             purpose (pip's install-time compile) is reproducible anyway: with
                             SOURCE_DATE_EPOCH set, py_compile writes hash-based .pyc files
    + the step's own ``env``

Steps are not sandboxed (this is the process flavour of bake): they run as the baker, and the
clean environment is about reproducibility, not isolation.

A ``RunStep`` runs in its own session with output (stdout and stderr together) going to a log
file beside the build dir, not a pipe: a step that leaves a background process behind cannot hang
the bake, and when the step's main process exits, anything left in its process group is killed, so
nothing keeps writing into the tree after it is measured.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from hinotori.errors import BakeError

ZIP_EPOCH = 315532800  # 1980-01-01T00:00:00Z, the earliest time a ZIP entry can carry
TAIL_LINES = 20
_DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class StepContext:
    """Where and how a step runs. ``index`` is 1-based; ``log_dir`` is outside the build dir."""

    build_dir: Path
    env: Mapping[str, str]
    log_dir: Path
    index: int


def step_environment(home: Path, tmp: Path, epoch: int | None) -> dict[str, str]:
    """The clean base environment described in the module docstring."""
    return {
        "PATH": os.environ.get("PATH") or _DEFAULT_PATH,
        "HOME": str(home),
        "TMPDIR": str(tmp),
        "LANG": "C.UTF-8",
        "TZ": "UTC",
        "SOURCE_DATE_EPOCH": str(ZIP_EPOCH if epoch is None else epoch),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONHASHSEED": "0",
    }


class Step(ABC):
    kind: ClassVar[str]

    @abstractmethod
    def to_json(self) -> dict[str, Any]: ...

    @abstractmethod
    def describe(self) -> str: ...

    @abstractmethod
    def execute(self, ctx: StepContext) -> None:
        """Change the build directory, or raise BakeError saying why it could not."""

    @classmethod
    @abstractmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Step: ...


@dataclass(frozen=True)
class RunStep(Step):
    """A command: a string runs as ``/bin/sh -c <string>``, a tuple runs as argv (no shell)."""

    kind: ClassVar[str] = "run"
    run: str | tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        run = self.run if isinstance(self.run, str) else tuple(self.run)
        if isinstance(run, str) and not run.strip():
            raise ValueError("run: the command is empty")
        if isinstance(run, tuple) and (not run or not all(isinstance(a, str) for a in run)):
            raise ValueError("run: argv must be a non-empty list of strings")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.env.items()):
            raise ValueError("env: names and values must be strings")
        object.__setattr__(self, "run", run)
        object.__setattr__(self, "env", dict(self.env))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunStep:
        unknown = set(d) - {"run", "env"}
        if unknown:
            raise ValueError(f"run step: unknown keys {sorted(unknown)}")
        run = d["run"]
        if not isinstance(run, str | list | tuple):
            raise ValueError("run: expected a string (shell line) or a list (argv)")
        return cls(run=run if isinstance(run, str) else tuple(run), env=dict(d.get("env", {})))

    @property
    def argv(self) -> list[str]:
        return ["/bin/sh", "-c", self.run] if isinstance(self.run, str) else list(self.run)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"run": self.run if isinstance(self.run, str) else list(self.run)}
        if self.env:
            d["env"] = dict(sorted(self.env.items()))
        return d

    def describe(self) -> str:
        text = self.run if isinstance(self.run, str) else shlex.join(self.run)
        lines = text.strip().splitlines()
        text = lines[0] + (" …" if len(lines) > 1 else "")
        return f"run: {text if len(text) <= 100 else text[:99] + '…'}"

    def execute(self, ctx: StepContext) -> None:
        log_path = ctx.log_dir / f"step-{ctx.index}.log"
        with open(log_path, "wb") as log:
            try:
                proc = subprocess.Popen(
                    self.argv, cwd=ctx.build_dir, env={**ctx.env, **self.env},
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                raise BakeError(f"step {ctx.index} ({self.describe()}) could not start: {exc}",
                                hint="check the command exists on PATH in the build "
                                     "environment") from exc
            try:
                returncode = proc.wait()
            finally:
                # Kill what the step left behind (and the step itself, if we are interrupted).
                _kill_group(proc.pid)
        if returncode != 0:
            how = (f"exit code {returncode}" if returncode > 0
                   else f"killed by signal {-returncode}")
            tail = _tail(log_path, TAIL_LINES)
            shown = "\n".join(f"  | {line}" for line in tail) or "  | (no output)"
            raise BakeError(
                f"step {ctx.index} ({self.describe()}) failed with {how}; "
                f"last {len(tail)} lines of output:\n{shown}",
                hint="the step runs in a copy of the context with a clean environment "
                     "(see hinotori.bake.steps); nothing was stored",
            )


# One line per kind of step: the key a spec uses -> the class.
STEP_KINDS: dict[str, type[Step]] = {
    RunStep.kind: RunStep,
}


def step_from_dict(d: Mapping[str, Any]) -> Step:
    """Build a step from its dict form, e.g. ``{"run": "make", "env": {"CC": "gcc"}}``."""
    kinds = [k for k in d if k in STEP_KINDS]
    if len(kinds) != 1:
        raise ValueError(
            f"a step needs exactly one of {sorted(STEP_KINDS)}, got keys {sorted(d)}")
    return STEP_KINDS[kinds[0]].from_dict(d)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is already gone
        os.killpg(pgid, signal.SIGKILL)


def _tail(path: Path, lines: int) -> list[str]:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 64 * 1024))
        data = f.read()
    return data.decode("utf-8", "replace").splitlines()[-lines:]
