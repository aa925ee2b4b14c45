"""A fleet of 3 lab machines: deploys to machines versus to this machine, and machine losses.

    python bench/fleet.py [--runs 3] [--losses 10] [--only deploy|loss]

Needs root (a lab of 3 machines: two Podman, one Docker), podman, docker.io, openssh-server,
docker-registry and mmdebstrap. The service is examples/hello in containers of a Debian OS
image (the integration tests' CONTAINER_SPEC), 3 replicas, blue-green; the local engine is a
private Podman service.

deploy   each run: fresh machines (killed and started again: their storage is a tmpfs, so
         they come back with no image), a fresh project on them, `hinotori deploy` of v1
         (first: the image is shipped to every machine) and then of 2 one-line changes
         (later: only the changed layer travels); the same with the same spec without
         `machines` (hosts in this computer's engine). Seconds from command to "now serves"
         (the whole CLI process), medians, ratio machines/local.
loss     3 replicas on 3 machines under a keep-alive GET load (20 clients, 200 req/s through
         the built-in router); --losses times a machine is killed (`lab kill`) or cut off
         (`lab cut`), alternately, each machine in turn. For each loss, from the kill/cut:
           down      the `machine.down` event's timestamp
           table     the first moment every router worker's table (polled every 10 ms on its
                     control socket) no longer routes the machine's hosts: what traffic sees
           lost      the last of its hosts' `host.lost` events (recorded just after the table
                     is applied, so a hair later than `table`)
           healed    the `service.healed` event: 3 serving hosts again
         then the machine is mended, its stale hosts burned, and the fleet spread over the 3
         machines again by `hinotori phoenix` (not timed). Prints p50/p99 of each, and the
         load's failed requests (goal: 0).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hinotori.engine import ensure_podman_service, stop_podman_service  # noqa: E402
from hinotori.lab.lab import Lab  # noqa: E402
from hinotori.loadgen import BackgroundLoad  # noqa: E402
from tests.support import (  # noqa: E402
    CONTAINER_SPEC,
    HELLO,
    CliProject,
    free_port,
    teardown,
    wait_until,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import record  # noqa: E402  (bench/results.py, beside this script)

DEPLOY_TIMEOUT = 600


def project(work: Path, name: str, lab: Lab | None) -> CliProject:
    """examples/hello in containers, 3 replicas; on the lab's 3 machines, or on this one."""
    path = work / name
    shutil.copytree(HELLO, path, ignore=shutil.ignore_patterns("__pycache__", ".hinotori",
                                                                "hinotori.toml"))
    (path / "VERSION").write_text("1\n")
    port = free_port()
    spec = CONTAINER_SPEC.format(name=f"{name}{uuid.uuid4().hex[:6]}",
                                 listen=f"127.0.0.1:{port}").replace("replicas = 2",
                                                                     "replicas = 3")
    machines = 'machines = ["m1", "m2", "m3"]\n' if lab is not None else ""
    spec = spec.replace('provider = "container"\n', f'provider = "container"\n{machines}')
    (path / "hinotori.toml").write_text(spec + "\n" + (lab.snippet() if lab else ""))
    p = CliProject(path)
    p.router = f"127.0.0.1:{port}"
    return p


def timed_deploy(p: CliProject) -> float:
    p.cli("bake", "web", timeout=DEPLOY_TIMEOUT)
    started = time.perf_counter()
    out = p.cli("deploy", "web", "--strategy", "blue-green", timeout=DEPLOY_TIMEOUT).stdout
    took = time.perf_counter() - started
    if "now serves" not in out:
        raise SystemExit(f"deploy did not say it serves:\n{out}")
    return took


def deploy_series(p: CliProject, later: int) -> tuple[float, list[float]]:
    """The first deploy of a fresh project, then ``later`` one-line changes."""
    p.cli("up", "-d")
    first = timed_deploy(p)
    laters = []
    for n in range(2, later + 2):
        p.set_version(str(n))
        laters.append(timed_deploy(p))
    return first, laters


def fresh_machines(lab: Lab) -> None:
    """Every machine killed and started again: empty, as a new machine."""
    for m in lab.machines:
        lab.kill(m.name)
    for m in lab.machines:
        lab.mend(m.name)


def bench_deploy(work: Path, lab: Lab, runs: int) -> None:
    rows: dict[str, dict[str, list[float]]] = {k: {"first": [], "later": []}
                                               for k in ("machines", "local")}
    for run in range(1, runs + 1):
        if run > 1:
            fresh_machines(lab)
        for kind in ("machines", "local"):
            p = project(work, f"d{run}{kind[0]}", lab if kind == "machines" else None)
            try:
                first, later = deploy_series(p, 2)
            finally:
                teardown(p)
            rows[kind]["first"].append(first)
            rows[kind]["later"].extend(later)
            print(f"run {run} {kind:8}: first {first:6.2f} s, later "
                  f"{', '.join(f'{s:.2f}' for s in later)} s", flush=True)
    print(f"\ndeploy of 3 replicas (blue-green, Debian OS image), medians of {runs} run(s):")
    for phase in ("first", "later"):
        med = {k: statistics.median(v[phase]) for k, v in rows.items()}
        print(f"  {phase:6} machines {med['machines']:6.2f} s   local {med['local']:6.2f} s   "
              f"ratio machines/local {med['machines'] / med['local']:.2f}x")
        record("fleet", f"deploy of 3 replicas, {phase}: to 3 machines", med["machines"],
               unit="s")
        record("fleet", f"deploy of 3 replicas, {phase}: machines / this machine",
               med["machines"] / med["local"], unit="x")


# -- machine loss ------------------------------------------------------------------------------
class TablePoller:
    """Every router worker's table, polled on its control socket: (time, routed host ids)."""

    def __init__(self, state_dir: Path) -> None:
        self.socks = sorted(state_dir.rglob("router-*.sock"))
        if not self.socks:
            raise SystemExit(f"no router control socket under {state_dir}")
        self.seen: list[tuple[float, set[str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _get(sock: Path) -> set[str]:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(str(sock))
            s.sendall(b'{"op":"get"}\n')
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(1 << 16)
                if not chunk:
                    break
                data += chunk
        table = json.loads(data).get("table") or {}
        return {b["host_id"] for r in table.get("routes", ()) for b in r.get("backends", ())}

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.time()
            try:
                routed = set().union(*(self._get(s) for s in self.socks))
            except (OSError, ValueError):
                routed = None
            if routed is not None:
                self.seen.append((now, routed))
            time.sleep(0.01)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def out_at(self, hosts: set[str], after: float) -> float | None:
        """When none of ``hosts`` was routed any more (the first poll after ``after``)."""
        for at, routed in list(self.seen):
            if at >= after and not routed & hosts:
                return at
        return None


def events(p: CliProject, action: str) -> list[dict]:
    return p.json("audit", "--action", action, "--limit", "1000")  # type: ignore[return-value]


def first_event(p: CliProject, action: str, after: float,
                subjects: set[str] | None = None) -> list[float]:
    return sorted(e["ts"] for e in events(p, action)
                  if e["ts"] >= after and (subjects is None or e["subject"] in subjects))


def machine_of(p: CliProject) -> dict[str, str]:
    return {h["id"]: h["machine"] for h in p.serving()}


def machine_state(p: CliProject, name: str) -> str:
    return next(r["state"] for r in p.json("machines") if r["name"] == name)  # type: ignore[union-attr]


def spread(p: CliProject) -> bool:
    return len(p.serving()) == 3 and sorted(machine_of(p).values()) == ["m1", "m2", "m3"]


def p99(values: list[float]) -> float:
    """Nearest rank (of 10 values: the largest)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


def record_failure_times(load: BackgroundLoad) -> list[tuple[float, str]]:
    """When each failed request failed (the load counts them, this says when)."""
    times: list[tuple[float, str]] = []
    fail = load.generator._fail

    def timed(reason: str) -> None:
        times.append((time.time(), reason))
        fail(reason)

    load.generator._fail = timed  # type: ignore[method-assign]
    return times


def keep_logs(p: CliProject, to: Path) -> None:
    for log in (p.path / ".hinotori").rglob("*.log"):
        dest = to / log.relative_to(p.path / ".hinotori")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log, dest)


def bench_loss(work: Path, lab: Lab, losses: int) -> None:
    p = project(work, "loss", lab)
    load = None
    poller = None
    measured: dict[str, list[float]] = {"down": [], "table": [], "lost": [], "healed": []}
    phases: list[tuple[float, str]] = []  # (start, what): failures are put in the last before
    failures: list[tuple[float, str]] = []
    try:
        p.cli("up", "-d")
        timed_deploy(p)
        if not spread(p):
            raise SystemExit(f"v1 is not one host per machine: {machine_of(p)}")
        poller = TablePoller(p.path / ".hinotori")
        poller.start()
        load = BackgroundLoad(p.router, clients=20, rate=200)
        failures = record_failure_times(load)
        load.start()
        for i in range(losses):
            name = f"m{i % 3 + 1}"
            how, fail = (("kill", lab.kill) if i % 2 == 0 else ("cut", lab.cut))
            gone = {h for h, m in machine_of(p).items() if m == name}
            started = time.time()
            phases.append((started, f"loss {i + 1} ({how} {name}) until healed"))
            fail(name)
            if not wait_until(lambda s=started: bool(first_event(p, "service.healed", s)),
                              timeout=120):
                raise SystemExit(f"loss {i + 1}: {name} {how}: replicas not restored in 120 s")
            down = first_event(p, "machine.down", started, {name})
            lost = first_event(p, "host.lost", started, {f"web/{h}" for h in gone})
            table = poller.out_at(gone, started)
            healed = first_event(p, "service.healed", started)[0]
            if not down or len(lost) != len(gone) or table is None:
                raise SystemExit(f"loss {i + 1}: {name} {how}: down {down}, lost {lost} of "
                                 f"{gone}, table {table}")
            row = {"down": down[0] - started, "table": table - started,
                   "lost": lost[-1] - started, "healed": healed - started}
            for k, v in row.items():
                measured[k].append(v)
            stats = load.stats()
            print(f"loss {i + 1:2} {how:4} {name}: " + "  ".join(
                f"{k} {v:5.2f} s" for k, v in row.items()) +
                f"   load {stats.total} req, {stats.failed} failed", flush=True)
            phases.append((time.time(), f"restore after loss {i + 1} (mend {name}, phoenix)"))
            restore(p, lab, name, gone)
    finally:
        stats = load.stop() if load is not None else None
        if poller is not None:
            poller.stop()
        if failures:
            keep = Path(tempfile.mkdtemp(prefix="hinotori-bench-fleet-logs-"))
            keep_logs(p, keep)
            print(f"failed requests (logs kept in {keep}):")
            for at, reason in failures:
                phase = max((ph for ph in phases if ph[0] <= at), default=(0.0, "before"))
                print(f"  {time.strftime('%H:%M:%S', time.localtime(at))}.{int(at % 1 * 1000):03d}"
                      f" {reason}: {phase[1]}, +{at - phase[0]:.2f} s")
        teardown(p)
    n = len(measured["down"])
    print(f"\nmachine loss under load (3 replicas on 3 machines), {n} losses, "
          f"seconds from kill/cut:")
    for k, v in measured.items():
        if v:
            kinds = "  ".join(f"{how} p50 {statistics.median(v[j::2]):5.2f}"
                              for j, how in enumerate(("kill", "cut")) if v[j::2])
            print(f"  {k:7} p50 {statistics.median(v):5.2f}  p99 {p99(v):5.2f}  "
                  f"min {min(v):5.2f}   ({kinds})")
            record("fleet", f"machine loss -> {k}, p50", statistics.median(v), unit="s",
                   detail=f"{n} losses")
            record("fleet", f"machine loss -> {k}, p99", p99(v), unit="s")
    if stats is not None:
        print(f"  load: {stats.total} requests, {stats.failed} failed "
              f"({stats.failures if stats.failed else 'none'})")
        record("fleet", "failed requests through machine losses", stats.failed, goal="== 0",
               detail=f"of {stats.total:,}")


def restore(p: CliProject, lab: Lab, name: str, gone: set[str]) -> None:
    """Mend the machine, wait for its stale hosts to burn, spread the fleet over 3 again."""
    lab.mend(name)
    check(wait_until(lambda: machine_state(p, name) == "up", timeout=60), f"{name} not up")

    def burned() -> bool:
        states = {h["id"]: h["state"] for h in p.json("hosts", "--all")}  # type: ignore[union-attr]
        return all(states.get(h) == "destroyed" for h in gone)

    check(wait_until(burned, timeout=60), f"the lost hosts of {name} were not burned")
    for _ in range(3):
        if spread(p):
            return
        p.cli("phoenix", "web", "--lock-wait", "60s", timeout=DEPLOY_TIMEOUT)
    check(spread(p), f"not spread over 3 machines after phoenix: {machine_of(p)}")


def check(ok: bool, what: str) -> None:
    if not ok:
        raise SystemExit(what)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--losses", type=int, default=10)
    parser.add_argument("--only", choices=("deploy", "loss"))
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("the lab needs root")
    work = Path(tempfile.mkdtemp(prefix="hinotori-bench-fleet-"))
    os.environ["DOCKER_HOST"] = ensure_podman_service(work / "podman.sock")
    lab = Lab.up(work / "lab", 3, docker={"m3"})
    steps: list[Callable[[], None]] = []
    if args.only in (None, "deploy"):
        steps.append(lambda: bench_deploy(work, lab, args.runs))
    if args.only in (None, "loss"):
        steps.append(lambda: bench_loss(work, lab, args.losses))
    try:
        for step in steps:
            step()
    finally:
        lab.down()
        stop_podman_service(work / "podman.sock")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
