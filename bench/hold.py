"""Held deployments (`deploy --hold`): what a preview costs and how fast it ends (not a test).

    python bench/hold.py [--runs 3] [--duration 3] [--routers builtin,haproxy]

Per router kind, in a throwaway project (examples/hello, 2 replicas, a preview listener), under
a steady keep-alive load on the main listener (hinotori.loadgen, 20 clients):

(a) `deploy web --hold` of a new release: seconds until the command returns (held), and the
    preview's routing change (apply -> acknowledged, ms);
(b) wrk on the main listener (the live release) vs on the preview listener (the held one),
    interleaved, same hosts' code: req/s and p99, ratio preview/main (the peer: the main
    listener of the same data plane; goal ~1.0x);
(c) `promote web` (returns once switched and drained): seconds, switch ms; every other run
    `abort web` instead (returns once the held hosts are burned): seconds;
and the load's failed requests over everything (goal 0).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hinotori.examples import example_dir
from hinotori.loadgen import BackgroundLoad

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import record
from router import free_port, wrk


def cli(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hinotori", *args, "--spec", str(directory)],
                          capture_output=True, text=True, check=True,
                          env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"})


def timed(directory: Path, *args: str) -> float:
    started = time.perf_counter()
    cli(directory, *args)
    return time.perf_counter() - started


def project(kind: str) -> tuple[Path, int, int]:
    directory = Path(tempfile.mkdtemp(prefix=f"hinotori-bench-hold-{kind}-"))
    shutil.copytree(example_dir("hello"), directory, dirs_exist_ok=True)
    main, preview = free_port(), free_port()
    spec = directory / "hinotori.toml"
    spec.write_text(spec.read_text()
                    .replace('listen = "127.0.0.1:8080"',
                             f'kind = "{kind}"\nlisten = "127.0.0.1:{main}"\n'
                             f'preview_listen = "127.0.0.1:{preview}"')
                    .replace("replicas = 3", "replicas = 2")
                    .replace('command = ["python3", "app.py"]',
                             f'command = ["{sys.executable}", "app.py"]'))
    return directory, main, preview


def run_kind(kind: str, runs: int, duration: float) -> dict[str, list[float]]:
    directory, main, preview = project(kind)
    out: dict[str, list[float]] = {k: [] for k in (
        "held_s", "preview_ms", "main_rps", "preview_rps", "main_p99", "preview_p99",
        "promote_s", "switch_ms", "abort_s", "failed", "requests")}
    try:
        cli(directory, "up", "-d")
        cli(directory, "bake", "web")
        cli(directory, "deploy", "web")
        load = BackgroundLoad(f"127.0.0.1:{main}", clients=20, rate=200)
        load.start()
        try:
            for i in range(runs):
                (directory / "VERSION").write_text(f"{i + 2}\n")
                cli(directory, "bake", "web")
                out["held_s"].append(timed(directory, "deploy", "web", "--hold"))
                dep = json.loads(cli(directory, "deployments", "--json").stdout)[-1]
                step = next(s for s in dep["steps"] if s["step"] == "preview")
                out["preview_ms"].append(step["switch_ms"])
                for port, key in ((main, "main"), (preview, "preview"), (main, "main"),
                                  (preview, "preview")):
                    result = wrk(port, duration)
                    out[f"{key}_rps"].append(result["rps"])
                    out[f"{key}_p99"].append(result["p99"])
                if i % 2 == 0:
                    out["promote_s"].append(timed(directory, "promote", "web"))
                    dep = json.loads(cli(directory, "deployments", "--json").stdout)[-1]
                    out["switch_ms"].append(dep["summary"]["switch_ms"])
                else:
                    out["abort_s"].append(timed(directory, "abort", "web"))
        finally:
            stats = load.stop()
        out["failed"].append(stats.failed)
        out["requests"].append(stats.total)
    finally:
        subprocess.run([sys.executable, "-m", "hinotori", "down", "--spec", str(directory)],
                       capture_output=True, check=False)
        shutil.rmtree(directory, ignore_errors=True)
    return out


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--routers", default="builtin,haproxy")
    args = parser.parse_args()
    for kind in args.routers.split(","):
        r = run_kind(kind, args.runs, args.duration)
        print(f"{kind}: held in {med(r['held_s']):.2f} s (preview apply "
              f"{med(r['preview_ms']):.1f} ms); wrk main {med(r['main_rps']):.0f} req/s p99 "
              f"{med(r['main_p99']):.1f} ms vs preview {med(r['preview_rps']):.0f} req/s p99 "
              f"{med(r['preview_p99']):.1f} ms: {med(r['preview_rps']) / med(r['main_rps']):.2f}x; "
              f"promote {med(r['promote_s']):.2f} s (switch {med(r['switch_ms']):.1f} ms), "
              f"abort {med(r['abort_s']):.2f} s; load: {int(sum(r['failed']))} failed of "
              f"{int(sum(r['requests']))}")
        record("hold", f"{kind}: deploy --hold until held", med(r["held_s"]), unit="s")
        record("hold", f"{kind}: the preview's routing change", med(r["preview_ms"]), unit="ms")
        record("hold", f"{kind}: req/s, preview listener / main listener",
               med(r["preview_rps"]) / med(r["main_rps"]), unit="x")
        if r["promote_s"]:
            record("hold", f"{kind}: promote", med(r["promote_s"]), unit="s",
                   detail=f"switch {med(r['switch_ms']):.1f} ms")
        if r["abort_s"]:  # every other run: none with --runs 1
            record("hold", f"{kind}: abort", med(r["abort_s"]), unit="s")
        record("hold", f"{kind}: failed requests of the load", sum(r["failed"]), goal="== 0",
               detail=f"of {int(sum(r['requests'])):,}")


if __name__ == "__main__":
    main()
