"""Promotion versus a rebake of the same recipe in the target environment.

    python bench/promote.py [--runs 5] [--files 2000] [--replicas 2]

One project (examples/hello's app, process provider) with two environments, each its own
controller and router on 127.0.0.1: staging (1 host) and production (--replicas hosts). The
recipe is hello's plus a step that writes --files modules (4 KiB each) and byte-compiles them,
so a bake does the work a real one does. Each run makes a new version (the VERSION file), bakes
and deploys it in staging (not timed), then times one of three ways of getting it serving in
production, end to end through the CLI (each ends with production serving the new image):

    promote            `deploy web -E production --from staging`: staging's digest, no bake
    rebake (cache)     `bake web -E production` + `deploy web -E production`: the shared build
                       cache has every step, so this re-hashes the context and reuses them
    rebake (no cache)  `bake web -E production --no-cache` + `deploy`: the recipe run again,
                       what an environment that builds its own image pays

The three take turns (one new version each), --runs of each; prints medians in seconds and the
ratio rebake / promote, and checks that every rebake gave staging's digest (deterministic
bakes: the same recipe, the same image), or the bench fails.

Then the release alone, without the deployment every way shares, in this process (--runs each,
same version): ``promotion.promote()`` (read staging's store, check, make the release) versus
``bake_service()`` with the cache and without it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import record  # noqa: E402  (bench/results.py, beside this script)

HELLO = ROOT / "examples" / "hello"

WRITE = ("import os,sys; n=int(sys.argv[1]); os.makedirs('gen', exist_ok=True); "
         "[open(f'gen/m{i}.py','w').write(f'X{i} = ' + repr('x' * 4000) + '\\n') "
         "for i in range(n)]")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_project(where: Path, files: int, replicas: int) -> Path:
    path = where / "proj"
    shutil.copytree(HELLO, path, ignore=shutil.ignore_patterns("__pycache__", ".hinotori"))
    text = (path / "hinotori.toml").read_text()
    text = text.replace('command = ["python3", "app.py"]', f'command = ["{sys.executable}", '
                        '"app.py"]').replace("replicas = 3", "replicas = 1")
    steps = (f'steps = [{{ run = [{json.dumps(sys.executable)}, "-c", {json.dumps(WRITE)}, '
             f'"{files}"] }}, {{ run = [{json.dumps(sys.executable)}, "-m", "compileall", '
             '"-q", "gen"] }]')
    text = text.replace("steps = []", steps)
    text += f"""
[environments.staging.router]
listen = "127.0.0.1:{free_port()}"

[environments.production.router]
listen = "127.0.0.1:{free_port()}"

[environments.production.services.web]
replicas = {replicas}
"""
    (path / "hinotori.toml").write_text(text)
    return path


def cli(project: Path, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", "NO_COLOR": "1"}
    r = subprocess.run([sys.executable, "-m", "hinotori", *args, "--spec", str(project)],
                       capture_output=True, text=True, env=env, timeout=600)
    if r.returncode != 0:
        raise SystemExit(f"hinotori {' '.join(args)} exited {r.returncode}:\n{r.stderr}")
    return r.stdout


def current_image(project: Path, env: str) -> str:
    rows = json.loads(cli(project, "releases", "web", "-E", env, "--json"))
    return next(r["image"] for r in rows if r["role"] == "current")


def timed(project: Path, *commands: tuple[str, ...]) -> list[float]:
    """Seconds of each command."""
    out = []
    for args in commands:
        start = time.perf_counter()
        cli(project, *args)
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--replicas", type=int, default=2)
    args = parser.parse_args()
    prod = ("-E", "production")
    ways = {
        "promote": [("deploy", "web", *prod, "--from", "staging")],
        "rebake (cache)": [("bake", "web", *prod), ("deploy", "web", *prod)],
        "rebake (no cache)": [("bake", "web", *prod, "--no-cache"), ("deploy", "web", *prod)],
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    baking: dict[str, list[float]] = {name: [] for name in ways}  # the bake of a rebake
    with tempfile.TemporaryDirectory(prefix="hinotori-promote-") as tmp:
        project = make_project(Path(tmp), args.files, args.replicas)
        try:
            cli(project, "up", "-d", "-E", "staging")
            cli(project, "up", "-d", "-E", "production")
            version = 0
            for run in range(args.runs):
                for name, commands in ways.items():
                    version += 1
                    (project / "VERSION").write_text(f"{version}\n")
                    cli(project, "bake", "web", "-E", "staging")
                    cli(project, "deploy", "web", "-E", "staging")
                    staged = current_image(project, "staging")
                    parts = timed(project, *commands)
                    seconds = sum(parts)
                    if len(parts) > 1:
                        baking[name].append(parts[0])
                    served = current_image(project, "production")
                    if served != staged:
                        raise SystemExit(f"{name}: production serves {served}, staging "
                                         f"{staged}: not the same image")
                    times[name].append(seconds)
                    print(f"run {run + 1} {name}: {seconds:.2f}s", file=sys.stderr)
            release_only = in_process(project, args.runs)
        finally:
            for env in ("production", "staging"):
                subprocess.run([sys.executable, "-m", "hinotori", "down", "-E", env,
                                "--spec", str(project)], capture_output=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    base = statistics.median(times["promote"])
    print(f"{args.runs} runs, recipe of {args.files} generated modules, production "
          f"{args.replicas} replicas (medians, end to end through the CLI)")
    print(f"{'way':<20} {'median s':>9} {'min s':>7} {'max s':>7} {'x promote':>10} "
          f"{'of it bake s':>13}")
    for name, values in times.items():
        median = statistics.median(values)
        bake = f"{statistics.median(baking[name]):>13.2f}" if baking[name] else f"{'-':>13}"
        print(f"{name:<20} {median:>9.2f} {min(values):>7.2f} {max(values):>7.2f} "
              f"{median / base:>9.2f}x {bake}")
        record("promote", f"{name}, end to end", median, unit="s")
        if name != "promote":
            record("promote", f"{name} / promote, end to end", median / base, unit="x")
    base = statistics.median(release_only["promote"])
    print("the release alone, in process (no deployment):")
    for name, values in release_only.items():
        median = statistics.median(values)
        print(f"{name:<20} {median:>9.3f} {min(values):>7.3f} {max(values):>7.3f} "
              f"{median / base:>9.0f}x")
        record("promote", f"{name}, the release alone", median, unit="s")


def in_process(project: Path, runs: int) -> dict[str, list[float]]:
    sys.path.insert(0, str(ROOT))
    from hinotori.project import Project
    from hinotori.promotion import promote
    from hinotori.releases import bake_service

    target = Project.load(project, "production")
    out: dict[str, list[float]] = {"promote": [], "bake (cache)": [], "bake (no cache)": []}
    for _ in range(runs):
        for name, call in (("promote", lambda: promote(target, "web", "staging")),
                           ("bake (cache)", lambda: bake_service(target, "web")),
                           ("bake (no cache)",
                            lambda: bake_service(target, "web", use_cache=False))):
            start = time.perf_counter()
            call()
            out[name].append(time.perf_counter() - start)
    return out


if __name__ == "__main__":
    main()
