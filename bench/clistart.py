"""CLI start-up: the CPU a `hinotori` command costs before and around its own work.

    python bench/clistart.py [--runs 7]

Every command is a fresh interpreter, so what it imports and builds before it acts is paid on
every run (and by the test suite, which starts thousands). Measured as CPU seconds (user +
system, from the child's rusage), medians of ``--runs`` interleaved rounds: on a shared
machine wall time swings with the load, CPU time barely does. The project is examples/hello
(two of them: one with its controller up, one without).

    python -c pass         the interpreter's own start here, the floor of every command
    --help                 the whole app: every command's signature and help
    deploy --help          one command's help
    hosts                  a full command that loads the spec (pydantic's models) and the store
    bake web --local       the whole CLI baking a file-tree image itself
    status, controller up  the quick path (hinotori.cli.statusquick): one request, Rich's table
    bake web, controller   the bake handed to the controller (hinotori.cli.bakequick); the
                           command's own CPU, not the controller's bake

Commands run with PYTHONDONTWRITEBYTECODE dropped (an installed hinotori has its bytecode) and
from a directory outside the source tree (``python -m`` would put the current one first).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from results import record  # noqa: E402

from tests.support import make_project  # noqa: E402

HAND_OFF_GOAL = "< 0.2"  # seconds of CPU for `hinotori bake` handed to a running controller


def cpu_of(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    """CPU seconds of one run of ``argv`` (it must succeed)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}\n"
                         f"{result.stderr}")
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    if args.runs < 1:
        raise SystemExit("--runs must be at least 1")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1", "COLUMNS": "120"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    with tempfile.TemporaryDirectory(prefix="bench-clistart-") as tmp_dir:
        tmp = Path(tmp_dir)
        up, idle = make_project(tmp / "up", replicas=1), make_project(tmp / "idle", replicas=1)
        hinotori = [sys.executable, "-m", "hinotori"]
        cpu_of([*hinotori, "up", "-d", "--spec", str(up.path)], env, tmp)
        try:
            cpu_of([*hinotori, "bake", "web", "--spec", str(idle.path)], env, tmp)  # a release
            ways = {
                "python -c pass": [sys.executable, "-c", "pass"],
                "--help": [*hinotori, "--help"],
                "deploy --help": [*hinotori, "deploy", "--help"],
                "hosts": [*hinotori, "hosts", "--spec", str(idle.path)],
                "bake web --local": [*hinotori, "bake", "web", "--local", "--spec",
                                     str(idle.path)],
                "status, controller up": [*hinotori, "status", "--spec", str(up.path)],
                "bake web, controller up": [*hinotori, "bake", "web", "--spec", str(up.path)],
            }
            cpu: dict[str, list[float]] = {label: [] for label in ways}
            for n in range(args.runs):
                for label, argv in ways.items():
                    up.set_version(f"{n}")  # every hand-off bakes a new image
                    cpu[label].append(cpu_of(argv, env, tmp))
        finally:
            cpu_of([*hinotori, "down", "--spec", str(up.path)], env, tmp)
            shutil.rmtree(tmp, ignore_errors=True)
    floor = statistics.median(cpu["python -c pass"])
    print(f"CPU per command, medians of {args.runs} interleaved rounds "
          f"(the interpreter's own start: {floor * 1000:.1f} ms):")
    for label, seconds in cpu.items():
        median = statistics.median(seconds)
        print(f"  {label:<26} {median * 1000:7.1f} ms  ({(median - floor) * 1000:+.1f} ms "
              "over the interpreter)")
        goal = HAND_OFF_GOAL if label == "bake web, controller up" else None
        record("clistart", f"CPU of `hinotori {label}`" if label != "python -c pass" else
               "CPU of `python -c pass` (the interpreter's start)", median, unit="s",
               goal=goal, detail=f"medians of {args.runs} interleaved runs")


if __name__ == "__main__":
    main()
