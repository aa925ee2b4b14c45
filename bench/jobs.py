"""Scheduled jobs: what a run on a disposable host costs against the crontab line it replaces.

    python bench/jobs.py [--runs 20]

A real controller and project (examples/hello, one process host serving), and a job whose
command is `python3 -c "print('hi')"`:

    hinotori job   `hinotori job run` end to end (the CLI asks the controller, a fresh host is
                   booted from the release's image copy, runs, exits, its output is flushed to
                   the log store, it is burned, the CLI reads the tail): wall seconds; and
                   the run's own duration as recorded (boot to burned)
    crontab line   the same command run by cron's way: a subprocess on the machine, no host
                   of its own (what hinotori replaces): wall seconds

and the schedule's precision: an `every = "1s"` job for --runs runs, lag from the moment a run
was due to the moment it started (`started_at - due`), p50/p99.
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
CODE = "print('hi')"


def cli(spec: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "hinotori", *args, "--spec", str(spec)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if check and done.returncode != 0:
        raise SystemExit(f"hinotori {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return done


def project(where: Path, every: str) -> Path:
    path = where / "proj"
    shutil.copytree(HELLO, path, ignore=shutil.ignore_patterns("__pycache__", ".hinotori"))
    text = (path / "hinotori.toml").read_text().replace(
        'listen = "127.0.0.1:8080"', f'listen = "127.0.0.1:{free_port()}"').replace(
        "replicas = 3", "replicas = 1").replace(
        'command = ["python3", "app.py"]', f'command = ["{sys.executable}", "app.py"]')
    text += (f'\n[jobs.hi]\nservice = "web"\ncommand = {json.dumps([sys.executable, "-c", CODE])}'
             f'\nevery = "{every}"\n')
    (path / "hinotori.toml").write_text(text)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        spec = project(Path(tmp), every="1h")
        try:
            cli(spec, "up", "-d")
            cli(spec, "bake", "web")
            cli(spec, "deploy", "web")
            wall, recorded, direct = [], [], []
            for _ in range(args.runs):  # alternating, so drift hits both alike
                started = time.perf_counter()
                out = json.loads(cli(spec, "job", "run", "hi", "--json").stdout)
                wall.append(time.perf_counter() - started)
                assert out["state"] == "succeeded" and out["output"] == ["hi"], out
                recorded.append(out["duration_s"])
                started = time.perf_counter()
                subprocess.run([sys.executable, "-c", CODE], check=True, capture_output=True)
                direct.append(time.perf_counter() - started)
        finally:
            cli(spec, "down", check=False)
    with tempfile.TemporaryDirectory() as tmp:
        spec = project(Path(tmp), every="1s")
        try:
            cli(spec, "up", "-d")
            cli(spec, "bake", "web")
            cli(spec, "deploy", "web")
            deadline = time.monotonic() + args.runs * 3 + 60
            runs: list[dict] = []
            while time.monotonic() < deadline:
                runs = json.loads(cli(spec, "jobs", "hi", "--json", "--limit", "10000").stdout
                                  )["runs"]
                if len([r for r in runs if r["trigger"] == "schedule"]) >= args.runs:
                    break
                time.sleep(1)
            lag = [r["started_at"] - r["due"] for r in runs if r["trigger"] == "schedule"]
        finally:
            cli(spec, "down", check=False)
    med = statistics.median
    print(f"job run, end to end (CLI wall):  p50 {med(wall):.3f}s  p99 {pct(wall, .99):.3f}s")
    print(f"job run, boot to burned (store): p50 {med(recorded):.3f}s  "
          f"p99 {pct(recorded, .99):.3f}s")
    print(f"crontab line (a subprocess):     p50 {med(direct):.3f}s  p99 {pct(direct, .99):.3f}s")
    print(f"ratio hinotori/crontab (p50, wall): {med(wall) / med(direct):.1f}x")
    print(f"schedule lag, due -> started ({len(lag)} runs of every 1s): p50 {med(lag) * 1000:.0f}"
          f" ms  p99 {pct(lag, .99) * 1000:.0f} ms")
    record("jobs", "job run, end to end (CLI wall), p50", med(wall), unit="s")
    record("jobs", "job run, boot to burned (as recorded), p50", med(recorded), unit="s")
    record("jobs", "the crontab line it replaces (a subprocess), p50", med(direct), unit="s")
    record("jobs", "schedule lag, due -> started, p50", med(lag) * 1000, unit="ms",
           detail=f"{len(lag)} runs of every 1s")
    record("jobs", "schedule lag, due -> started, p99", pct(lag, .99) * 1000, unit="ms")


if __name__ == "__main__":
    main()
