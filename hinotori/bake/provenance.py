"""Where an image came from: recorded in ``image.json``, never in the digest.

Provenance answers "which recipe, which source, which builder?" for a human or an audit. It must
not enter the digest, or two bakes of the same inputs at different times or places would differ.

- ``recipe_hash``: "sha256:" + sha256 of the steps' canonical JSON (a JSON array of each step's
  ``to_json()``, sorted keys, no whitespace, UTF-8).
- ``git_source``: the commit of the repository holding the context and whether the context has
  uncommitted changes (``git status --porcelain`` limited to the context, leaving out
  ``.hinotori`` so the image store itself never makes a tree look dirty). None when the context
  is not in a git repository or git is not installed.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hinotori.bake.steps import Step

_GIT_TIMEOUT = 15.0


def recipe_json(steps: Sequence[Step]) -> bytes:
    return json.dumps([s.to_json() for s in steps], sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def recipe_hash(steps: Sequence[Step]) -> str:
    return "sha256:" + hashlib.sha256(recipe_json(steps)).hexdigest()


def git_source(context: Path) -> dict[str, Any] | None:
    commit = _git(context, "rev-parse", "--verify", "--quiet", "HEAD")
    if not commit:
        return None
    status = _git(context, "status", "--porcelain", "--", ".", ":(exclude).hinotori")
    if status is None:
        return None
    return {"commit": commit, "dirty": bool(status)}


def _git(cwd: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True,
                             stdin=subprocess.DEVNULL, timeout=_GIT_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None  # no git, or a repository too slow to ask: provenance is best-effort
    return out.stdout.strip() if out.returncode == 0 else None
