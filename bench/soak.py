"""Soak: chaos (a kill every 10 s) plus phoenix rotation under 100 concurrent clients.

    python bench/soak.py [--minutes 10] [--clients 100] [--rate 400]

A throwaway project (examples/hello, 3 replicas, max_age 2m so phoenix rotates every host over
and over); a real controller, router and hosts; `hinotori chaos` kills a random serving host
every 10 s (skipping a beat while a rotation holds the service). Prints failed requests (goal
0), recovery time after each kill (goal p99 under 5 s) and the rotations done; exits 1 if a
goal is missed. The pytest wrapper tests/soak/ runs it with the `soak` marker.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from results import record  # bench/results.py, beside this script

from hinotori.examples import example_dir
from hinotori.loadgen import BackgroundLoad


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hinotori", *args, "--spec", str(directory)],
                          capture_output=True, text=True)


def soak(minutes: float, clients: int, rate: float) -> dict[str, object]:
    directory = Path(tempfile.mkdtemp(prefix="hinotori-soak-"))
    shutil.copytree(example_dir("hello"), directory, dirs_exist_ok=True)
    router = f"127.0.0.1:{free_port()}"
    spec = directory / "hinotori.toml"
    spec.write_text(spec.read_text().replace("127.0.0.1:8080", router).replace(
        'stop_grace = "10s"', 'stop_grace = "10s"\nmax_age = "2m"'))
    try:
        for step in (("up", "-d"), ("bake", "web"), ("deploy", "web")):
            result = cli(directory, *step)
            if result.returncode:
                sys.exit(f"hinotori {' '.join(step)} failed: {result.stderr}")
        load = BackgroundLoad(router, clients=clients, rate=rate)
        load.start()
        try:
            chaos = cli(directory, "chaos", "web", "--interval", "10s", "--duration",
                        f"{minutes * 60:.0f}s", "--recover-timeout", "30s", "--json")
        finally:
            stats = load.stop()
        report = json.loads(chaos.stdout or "{}")
        times = sorted(v["recover_s"] for v in report.get("victims", [])
                       if v.get("recover_s") is not None)
        deployments = json.loads(cli(directory, "deployments", "--limit", "1000",
                                     "--json").stdout)
        return {
            "minutes": minutes, "clients": clients, "requests": stats.total,
            "failed_requests": stats.failed, "failure_kinds": dict(stats.failure_kinds),
            "kills": report.get("kills"), "not_recovered": report.get("not_recovered"),
            "skipped_kills": len(report.get("skipped", [])),
            "recover_p50_s": times[len(times) // 2] if times else None,
            "recover_p99_s": times[min(len(times) - 1, round(0.99 * (len(times) - 1)))]
            if times else None,
            "recover_max_s": times[-1] if times else None,
            "phoenix_rotations": sum(1 for d in deployments if d["kind"] == "phoenix"
                                     and d["state"] == "succeeded"),
            "p99_ms": round(stats.p99_ms, 2)}
    finally:
        cli(directory, "down")
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--rate", type=float, default=400)
    args = ap.parse_args()
    result = soak(args.minutes, args.clients, args.rate)
    print(json.dumps(result, indent=2))
    record("soak", "failed requests", result["failed_requests"], goal="== 0",  # type: ignore[arg-type]
           detail=f"of {result['requests']:,}, {args.minutes:g} min, {args.clients} clients")
    record("soak", "kills not recovered", result["not_recovered"] or 0, goal="== 0",  # type: ignore[arg-type]
           detail=f"{result['kills']} kills")
    if result["recover_p99_s"] is not None:
        record("soak", "recovery after a kill, p99", result["recover_p99_s"], unit="s",  # type: ignore[arg-type]
               goal="< 5", detail=f"p50 {result['recover_p50_s']:.2f} s")
    record("soak", "phoenix rotations", result["phoenix_rotations"])  # type: ignore[arg-type]
    ok = result["failed_requests"] == 0 and not result["not_recovered"] and \
        (result["recover_p99_s"] or 0) < 5
    print("soak: " + ("goals met" if ok else "GOALS MISSED"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
