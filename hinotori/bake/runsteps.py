"""Steps that run commands: ``run`` and ``env``, and the clean environment they run in.

Every run step runs with the build directory as cwd and a small, clean environment, never the
baker's own (which would make images depend on who baked them):

    PATH                     inherited, so the baker's tools are found
    HOME, TMPDIR             empty directories beside the build dir, emptied again before every
                             step and discarded with the scratch: nothing a step leaves there
                             reaches a later step, so a step restored from the build cache and
                             a step run again see the same world
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
    + what earlier ``env`` steps set (``{ env = { K = "V" } }``, recorded in image.json)
    + the run step's own ``env``

Steps are not sandboxed (this is the process flavour of bake): they run as the baker, and the
clean environment is about reproducibility, not isolation.

The build directory's absolute path differs from one bake to the next (it is scratch space in
the image store), so a step that writes that path into a file makes a different image every
time, cached or not, here or on another machine. The usual culprits are Python's: pip records a
wheel installed *by path* in ``direct_url.json``, and bytecode embeds the absolute source path.
Install by name from a local directory (``pip install --no-index --find-links wheels --no-compile
…``) and compile with a relative ``python -m compileall -d deps deps``.

A ``RunStep`` runs through hinotori.command, in its own session with output (stdout and stderr
together) going to a log file beside the build dir, not a pipe: a step that leaves a background
process behind cannot hang the bake, and when the step's main process exits (or the bake is
interrupted), anything left in its process group is killed, so nothing keeps writing into the tree
after it is measured.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from hinotori.bake.stepbase import Step, StepContext, check_env
from hinotori.errors import BakeError

ZIP_EPOCH = 315532800  # 1980-01-01T00:00:00Z, the earliest time a ZIP entry can carry
TAIL_LINES = 20
_DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


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


@dataclass(frozen=True)
class RunStep(Step):
    """A command: a string runs as ``/bin/sh -c <string>``, a tuple runs as argv (no shell)."""

    kind: ClassVar[str] = "run"
    keys: ClassVar[frozenset[str]] = frozenset({"run", "env"})
    writes_in_place: ClassVar[bool] = True  # a command may rewrite any file it is given
    run: str | tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        run = self.run if isinstance(self.run, str) else tuple(self.run)
        if isinstance(run, str) and not run.strip():
            raise ValueError("run: the command is empty")
        if isinstance(run, tuple) and (not run or not all(isinstance(a, str) for a in run)):
            raise ValueError("run: argv must be a non-empty list of strings")
        object.__setattr__(self, "run", run)
        object.__setattr__(self, "env", check_env(self.env))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunStep:
        cls.check_keys(d)
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
        from hinotori import command  # asyncio: not on every CLI command's start-up path

        try:
            done = command.run_sync(self.argv, cwd=ctx.build_dir, env={**ctx.env, **self.env},
                                    output=ctx.log_dir / f"step-{ctx.index}.log")
        except OSError as exc:
            raise BakeError(f"{ctx.label(self)} could not start: {exc}",
                            hint="check the command exists on PATH in the build "
                                 "environment") from exc
        if not done.succeeded:
            how = (f"exit code {done.rc}" if done.rc > 0
                   else f"killed by signal {-done.rc}")
            tail = done.tail(TAIL_LINES)
            shown = "\n".join(f"  | {line}" for line in tail) or "  | (no output)"
            raise BakeError(
                f"{ctx.label(self)} failed with {how}; "
                f"last {len(tail)} lines of output:\n{shown}",
                hint="the step runs in a copy of the context with a clean environment "
                     "(see hinotori.bake.runsteps); nothing was stored",
            )


@dataclass(frozen=True)
class EnvStep(Step):
    """``{ env = { K = "V" } }``: environment for every later run step. It changes no file;
    the image's build env (all env steps merged) is recorded in image.json."""

    kind: ClassVar[str] = "env"
    keys: ClassVar[frozenset[str]] = frozenset({"env"})
    changes_tree: ClassVar[bool] = False
    env: dict[str, str]

    def __post_init__(self) -> None:
        env = check_env(self.env)
        if not env:
            raise ValueError("env: an env step sets at least one variable")
        object.__setattr__(self, "env", env)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EnvStep:
        cls.check_keys(d)
        return cls(env=dict(d["env"]) if isinstance(d["env"], Mapping) else d["env"])

    def to_json(self) -> dict[str, Any]:
        return {"env": dict(sorted(self.env.items()))}

    def describe(self) -> str:
        text = " ".join(f"{k}={v}" for k, v in sorted(self.env.items()))
        return f"env: {text if len(text) <= 100 else text[:99] + '…'}"

    def execute(self, ctx: StepContext) -> None:
        return None  # nothing on disk: the builder passes environment() on to later steps

    def environment(self, env: Mapping[str, str]) -> dict[str, str]:
        return {**env, **self.env}

