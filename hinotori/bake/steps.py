"""The registry of recipe steps: which kinds exist, and building one from its dict form.

    { run = "make" | ["argv", ...], env = { ... } }   runsteps.py: a command
    { env = { K = "V" } }                             runsteps.py: env for later run steps
    { copy = "src", to = "dest", mode = "0644" }      filesteps.py: context -> image
    { file = "path", content = "...", mode = "0644" } filesteps.py: write a file
    { remove = "path" }                               filesteps.py: remove a path
    { apt = ["curl", ...] }                           aptstep.py: Debian packages (OS images)
    { sysctl = { "net.core.somaxconn" = "1024" } }    sysctlstep.py: kernel settings (OS images)

What a step is and must do is in ``stepbase.py``. A new kind of step is one class (in the module
where it fits) plus one line in ``STEP_KINDS``. A dict is the kind whose name is one of its keys
and whose keys it all accepts, so ``{run, env}`` is a run step and ``{env}`` an env step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hinotori.bake.aptstep import AptStep
from hinotori.bake.filesteps import CopyStep, FileStep, RemoveStep
from hinotori.bake.runsteps import ZIP_EPOCH, EnvStep, RunStep, step_environment
from hinotori.bake.stepbase import Step, StepContext
from hinotori.bake.sysctlstep import SysctlStep

__all__ = [
    "STEP_KINDS",
    "ZIP_EPOCH",
    "AptStep",
    "CopyStep",
    "EnvStep",
    "FileStep",
    "RemoveStep",
    "RunStep",
    "Step",
    "StepContext",
    "SysctlStep",
    "step_environment",
    "step_from_dict",
    "step_kind",
]

# One line per kind of step: the key a spec uses -> the class.
STEP_KINDS: dict[str, type[Step]] = {
    RunStep.kind: RunStep,
    EnvStep.kind: EnvStep,
    CopyStep.kind: CopyStep,
    FileStep.kind: FileStep,
    RemoveStep.kind: RemoveStep,
    AptStep.kind: AptStep,
    SysctlStep.kind: SysctlStep,
}


def step_kind(d: Mapping[str, Any]) -> str | None:
    """The kind a step dict is, or None when it names no kind or several."""
    named = [k for k in d if k in STEP_KINDS]
    fitting = [k for k in named if set(d) <= STEP_KINDS[k].keys]
    if len(fitting) == 1:
        return fitting[0]
    return named[0] if len(named) == 1 else None


def step_from_dict(d: Mapping[str, Any]) -> Step:
    """Build a step from its dict form, e.g. ``{"run": "make", "env": {"CC": "gcc"}}``."""
    if not isinstance(d, Mapping):
        raise ValueError(f"a step is a table, got {type(d).__name__}")
    kind = step_kind(d)
    if kind is None:
        raise ValueError(
            f"a step needs exactly one of {', '.join(sorted(STEP_KINDS))} "
            f"(env may also go with run), got keys {sorted(d)}")
    return STEP_KINDS[kind].from_dict(d)
