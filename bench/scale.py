"""One controller for many hosts: what each cost grows by with the fleet (not a test; issue 17).

    python bench/scale.py [--sizes 10,100] [--idle 20] [--switches 5] [--reads 5]
                          [--interval auto] [--router builtin] [--app busybox[,webfs,hello]]

Per size N, a throwaway project (temp dir, spec written here): one process service of N
replicas, serving a `healthz` file. Why real servers and not a fake provider: every lever
lives on the real path (a process per host, a copy of the image per host, a real health probe,
a real router table). The host app (`--app`, a list: each app runs every size, in turn):
  busybox  Debian busybox's httpd (`busybox httpd -f -p 127.0.0.1:$PORT -h .`, a few hundred
           kB each, so 2,000 fit this machine: N serving plus N warm). It closes the
           connection after every answer and forks a child per connection: each health look
           is a new TCP connection and a fork on the host's side, the worst case for the
           controller (the kernel's handshake is most of a look) and for the machine (2,000
           forks a second at 1,000 hosts compete with the controller for the same 2 cores)
  webfs    Debian webfs's webfsd (`webfsd -F -4 -j -i 127.0.0.1 -p $PORT -r .`, ~4.6 MB RSS,
           2,000 fit): one process, no fork, and it keeps connections alive, as production
           HTTP servers and the issue's own app do, so a look rides a kept connection
  hello    examples/hello's app.py (Python, ~20 MB a host: for sizes up to a few hundred), the
           app the issue's first figures were measured with (keep-alive too)
The health interval is a knob: `auto` is 200 ms up to 100 hosts (the issue's CPU goal there)
and the spec's default above.

For each N: `up -d`, bake v1, deploy v1 (first), bake v2, deploy v2 (the timed blue-green
deploy, whole CLI process, and the controller's CPU seconds for it, which the machine's load
hardly changes; v1 stays warm), then --switches instant rollbacks (warm hosts, a
pure switch each) for switch p50/p99 (with the two deploys' switches); the last one leaves
v2 serving and v1 warm. Then, idle:
  idle CPU   CPU of the controller and its helper processes (its process tree less hosts and
             router workers), over --idle seconds, % of one core, and how much of it was in
             the kernel (busybox's new connection per look is most of it); their RSS;
             per health look (each serving host is looked at once per interval), and the
             load average beside it: on a shared machine the % moves with the load
  status     `hinotori status` wall time (a whole CLI process), median of --reads; beside it
             `hinotori --help` (the CLI's start-up alone) for scale
  API        GET /v1/status (what `status` asks) and GET /v1/hosts (live hosts) on the
             controller's API, median of --reads
  state.db   its size (with -wal) before and after the idle period
and the growth factor per 10x hosts between consecutive sizes (value ratio ^ (1/log10 of
the size ratio)): 10 means linear, 1 flat. Needs the apps' Debian packages (`busybox`,
`webfs`).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from results import record  # noqa: E402

BUSYBOX = shutil.which("busybox") or "/usr/bin/busybox"
WEBFSD = shutil.which("webfsd") or "/usr/bin/webfsd"
SWITCH = re.compile(r"switch ([0-9.]+) ms")
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

SPEC = """\
[project]
name = "scale{n}"

[router]
listen = "127.0.0.1:{port}"
kind = "{router}"

[services.web]
provider = "process"
replicas = {n}
command = {command}
{health}
boot_timeout = "120s"
drain = "2s"
keep_previous = "1h"
stop_grace = "5s"

[services.web.image]
context = "www"
steps = []
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


HELLO = Path(__file__).resolve().parent.parent / "examples" / "hello" / "app.py"
COMMANDS = {
    "busybox": f'["/bin/sh", "-c", "exec {BUSYBOX} httpd -f -p 127.0.0.1:$PORT -h ."]',
    "hello": '["python3", "app.py"]',
    "webfs": f'["/bin/sh", "-c", "exec {WEBFSD} -F -4 -j -i 127.0.0.1 -p $PORT -r ."]',
}
APP_NAMES = {"busybox": "busybox httpd", "hello": "examples/hello", "webfs": "webfsd"}
BINARIES = {"busybox": (BUSYBOX, "busybox"), "webfs": (WEBFSD, "webfs")}


class Project:
    def __init__(self, n: int, interval: str, router: str, app: str = "busybox") -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"hinotori-bench-scale-{n}-"))
        www = self.dir / "www"
        www.mkdir()
        (www / "healthz").write_text("ok\n")
        (www / "VERSION").write_text("1\n")
        if app == "hello":
            shutil.copy(HELLO, www / "app.py")
        health = "" if interval == "default" else \
            f'health = {{ path = "/healthz", interval = "{interval}" }}'
        (self.dir / "hinotori.toml").write_text(SPEC.format(
            n=n, port=free_port(), router=router, command=COMMANDS[app], health=health))
        self.state = self.dir / ".hinotori"

    def cli(self, *args: str, timeout: float = 1800) -> str:
        done = subprocess.run([sys.executable, "-m", "hinotori", *args, "--spec", str(self.dir)],
                              capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"})
        if done.returncode != 0:
            raise SystemExit(f"hinotori {' '.join(args)} exited {done.returncode}:\n"
                             f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done.stdout

    def version(self, v: int) -> None:
        (self.dir / "www" / "VERSION").write_text(f"{v}\n")

    def controller(self) -> dict[str, Any]:
        return json.loads((self.state / "controller.json").read_text())

    def db_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.state.glob("state.db*") if p.is_file())

    def down(self) -> None:
        subprocess.run([sys.executable, "-m", "hinotori", "down", "--spec", str(self.dir)],
                       capture_output=True, timeout=1800, check=False)
        for hostjson in self.state.glob("hosts/*/host.json"):  # leave nothing running
            pid = json.loads(hostjson.read_text()).get("pid")
            if pid:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, 9)
        # A `down` that failed may have left the controller and its router workers.
        pids = [p.read_text().strip() for p in self.state.glob("router/*.pid")]
        with contextlib.suppress(OSError, ValueError):
            pids.append(str(self.controller()["pid"]))
        for pid in pids:
            with contextlib.suppress(OSError, ValueError):
                if b"hinotori" in Path(f"/proc/{int(pid)}/cmdline").read_bytes():  # not reused
                    os.kill(int(pid), 9)
        shutil.rmtree(self.dir, ignore_errors=True)


# -- /proc: the controller's own processes ---------------------------------------------------
def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()  # fields from 3 (state) on


def controller_pids(controller: int, excluded_sessions: set[int], excluded: set[int]) -> set[int]:
    """The controller and its descendants, less hosts (their own sessions) and router workers."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (f := _stat(int(entry.name))):
            children.setdefault(int(f[1]), []).append(int(entry.name))
    found, todo = set(), [controller]
    while todo:
        pid = todo.pop()
        f = _stat(pid)
        if f is None or pid in excluded or int(f[3]) in excluded_sessions:
            continue
        found.add(pid)
        todo.extend(children.get(pid, []))
    return found


def process_cpu(pid: int) -> float:
    """CPU seconds ``pid`` has used (all its threads), whatever the machine's load."""
    f = _stat(pid)
    return (int(f[11]) + int(f[12])) / TICKS if f else 0.0


def cpu_and_rss(pids: set[int]) -> dict[int, tuple[float, int, float]]:
    """Per pid: (CPU seconds, RSS bytes, of the CPU seconds those in the kernel)."""
    out = {}
    for pid in pids:
        if f := _stat(pid):
            out[pid] = ((int(f[11]) + int(f[12])) / TICKS, int(f[21]) * PAGE,
                        int(f[12]) / TICKS)
    return out


def idle_cpu(p: Project, seconds: float) -> tuple[float, float, int, float]:
    """(% of one core, RSS MiB, how many processes, % of one core in the kernel) of the
    controller's own processes."""
    sessions = {json.loads(h.read_text()).get("pid") for h in p.state.glob("hosts/*/host.json")}
    routers = set()
    for pidfile in p.state.rglob("*.pid"):
        with contextlib.suppress(ValueError, IndexError, OSError):
            routers.add(int(pidfile.read_text().split()[0]))
    ctl = p.controller()["pid"]

    def pids() -> set[int]:
        return controller_pids(ctl, {s for s in sessions if s}, routers)

    before = cpu_and_rss(pids())
    started = time.monotonic()
    time.sleep(seconds)
    after = cpu_and_rss(pids())
    took = time.monotonic() - started
    used = sum(cpu - before.get(pid, (0.0, 0, 0.0))[0] for pid, (cpu, _, _) in after.items())
    kernel = sum(sys - before.get(pid, (0.0, 0, 0.0))[2] for pid, (_, _, sys) in after.items())
    return (100 * used / took, sum(rss for _, rss, _ in after.values()) / 2**20, len(after),
            100 * kernel / took)


def api_get(p: Project, path: str) -> float:
    import httpx

    info = p.controller()
    token = (p.state / "token").read_text().strip()
    with httpx.Client(base_url=f"http://{info['address']}", timeout=60,
                      headers={"Authorization": f"Bearer {token}"}) as client:
        started = time.perf_counter()
        response = client.get(path)
        took = time.perf_counter() - started
        response.raise_for_status()
    return took


def cli_help() -> None:
    subprocess.run([sys.executable, "-m", "hinotori", "--help"], capture_output=True,
                   check=True, env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"})


def timed(fn: Any, *args: Any) -> float:
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def run_size(n: int, app: str, args: argparse.Namespace) -> dict[str, float]:
    interval = args.interval if args.interval != "auto" else ("200ms" if n <= 100 else "default")
    p = Project(n, interval, args.router, app)
    row: dict[str, float] = {"hosts": n}
    try:
        p.cli("up", "-d")
        p.cli("bake", "web")
        first = time.perf_counter()
        out = p.cli("deploy", "web", "--strategy", "blue-green")
        row["first_deploy_s"] = time.perf_counter() - first
        switches = [float(m) for m in SWITCH.findall(out)]
        p.version(2)
        p.cli("bake", "web")
        ctl = p.controller()["pid"]
        cpu_before = process_cpu(ctl)
        second = time.perf_counter()
        out = p.cli("deploy", "web", "--strategy", "blue-green")
        row["deploy_s"] = time.perf_counter() - second
        row["deploy_cpu_s"] = process_cpu(ctl) - cpu_before
        switches += [float(m) for m in SWITCH.findall(out)]
        for _ in range(args.switches + args.switches % 2):  # even: v2 serves at the end
            switches += [float(m) for m in SWITCH.findall(p.cli("rollback", "web"))]
        row["switch_p50_ms"], row["switch_p99_ms"] = pct(switches, 0.5), pct(switches, 0.99)
        row["switches"] = len(switches)
        time.sleep(2)  # the last drain's destroys and writes settle
        db_before = p.db_bytes()
        row["idle_cpu_pct"], row["rss_mib"], row["procs"], row["idle_sys_pct"] = \
            idle_cpu(p, args.idle)
        # The monitor looks at each serving host once per interval: the idle CPU per look
        # (everything idle, shipper and sampler included), what the machine's load changes less.
        seconds = 0.5 if interval == "default" else (
            float(interval[:-2]) / 1000 if interval.endswith("ms") else float(interval.rstrip("s")))
        row["idle_us_per_look"] = row["idle_cpu_pct"] / 100 * seconds / n * 1e6
        row["load"] = os.getloadavg()[0]
        row["db_mib"] = db_before / 2**20
        row["db_growth_kib"] = (p.db_bytes() - db_before) / 2**10
        row["status_s"] = statistics.median(timed(p.cli, "status") for _ in range(args.reads))
        row["help_s"] = statistics.median(timed(cli_help) for _ in range(args.reads))
        row["hosts_api_s"] = statistics.median(api_get(p, "/v1/hosts")
                                               for _ in range(args.reads))
        row["status_api_s"] = statistics.median(api_get(p, "/v1/status")
                                                for _ in range(args.reads))
    finally:
        p.down()
    return row


COLUMNS = [("deploy_s", "deploy s", "{:.1f}"), ("deploy_cpu_s", "deploy CPU s", "{:.1f}"),
           ("first_deploy_s", "first s", "{:.1f}"),
           ("switch_p50_ms", "switch p50", "{:.1f}"), ("switch_p99_ms", "p99 ms", "{:.1f}"),
           ("idle_cpu_pct", "idle CPU %", "{:.1f}"), ("idle_sys_pct", "of it sys %", "{:.1f}"),
           ("idle_us_per_look", "us/look", "{:.0f}"),
           ("load", "load", "{:.1f}"), ("rss_mib", "RSS MiB", "{:.0f}"),
           ("status_s", "status ms", "{:.0f}"), ("help_s", "--help ms", "{:.0f}"),
           ("status_api_s", "/v1/status ms", "{:.1f}"),
           ("hosts_api_s", "/v1/hosts ms", "{:.1f}"), ("db_mib", "db MiB", "{:.2f}"),
           ("db_growth_kib", "db +KiB idle", "{:.0f}")]
MS = {"status_s", "help_s", "hosts_api_s", "status_api_s"}


def show(rows: list[dict[str, float]]) -> None:
    head = f"{'hosts':>6} " + " ".join(f"{title:>12}" for _, title, _ in COLUMNS)
    print(head)
    for row in rows:
        cells = [fmt.format(row[key] * (1000 if key in MS else 1)) for key, _, fmt in COLUMNS]
        print(f"{int(row['hosts']):>6} " + " ".join(f"{c:>12}" for c in cells))
    for a, b in itertools.pairwise(rows):
        per = math.log10(b["hosts"] / a["hosts"])
        growth = []
        for key, title, _ in COLUMNS:
            if a[key] > 0 and b[key] > 0:
                growth.append(f"{title.strip()} {(b[key] / a[key]) ** (1 / per):.1f}x")
        print(f"growth per 10x hosts, {int(a['hosts'])} -> {int(b['hosts'])}: "
              + ", ".join(growth))


def record_row(row: dict[str, float], interval: str, app: str = "busybox") -> None:
    n = int(row["hosts"])
    hosts = APP_NAMES[app]
    detail = f"{n} {hosts} process hosts, health interval {interval}"
    of = "" if app == "busybox" else f" ({hosts})"  # a figure of its own per app
    record("scale", f"blue-green deploy of {n} hosts{of}", row["deploy_s"], unit="s",
           goal="< 60" if n >= 1000 else None, detail=detail)
    record("scale", f"controller CPU for a blue-green deploy of {n} hosts{of}",
           row["deploy_cpu_s"], unit="s", detail=detail)
    record("scale", f"switch p50 at {n} hosts{of}", row["switch_p50_ms"], unit="ms", detail=detail)
    record("scale", f"switch p99 at {n} hosts{of}", row["switch_p99_ms"], unit="ms",
           goal="< 10" if n >= 1000 else None, detail=detail)
    cpu_goal = "<= 5" if n == 100 and interval == "200ms" else \
        "<= 25" if n >= 1000 and interval == "default" else None
    record("scale", f"idle controller CPU at {n} hosts{of}", row["idle_cpu_pct"], unit="% core",
           goal=cpu_goal, detail=f"{detail}; {row['idle_sys_pct']:.1f} of it in the kernel")
    record("scale", f"idle controller CPU per health look at {n} hosts{of}",
           row["idle_us_per_look"], unit="us",
           detail=f"{detail}; idle CPU / (hosts / interval), load {row['load']:.1f}")
    record("scale", f"controller RSS at {n} hosts{of}", row["rss_mib"], unit="MiB", detail=detail)
    record("scale", f"hinotori status at {n} hosts{of}", row["status_s"] * 1000, unit="ms",
           goal="< 300" if n >= 1000 else None,
           detail=f"{detail}; a whole CLI process (--help: {row['help_s'] * 1000:.0f} ms)")
    record("scale", f"GET /v1/status at {n} hosts{of}", row["status_api_s"] * 1000, unit="ms",
           goal="< 300" if n >= 1000 else None,
           detail=f"{detail}; what `hinotori status` asks the controller")
    record("scale", f"GET /v1/hosts at {n} hosts{of}", row["hosts_api_s"] * 1000, unit="ms",
           detail=detail)
    record("scale", f"state.db at {n} hosts{of}", row["db_mib"], unit="MiB", detail=detail)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100", help="e.g. 10,100,300,1000")
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of idle CPU")
    parser.add_argument("--switches", type=int, default=4, help="instant rollbacks per size")
    parser.add_argument("--reads", type=int, default=5, help="status/API reads per size")
    parser.add_argument("--interval", default="auto",
                        help="health interval: auto (200ms up to 100 hosts, else the spec's "
                             "default), default, or a duration")
    parser.add_argument("--router", default="builtin", help="builtin or haproxy")
    parser.add_argument("--app", default="busybox",
                        help="the hosts' server, or a list of them (each runs every size): "
                             + ", ".join(sorted(COMMANDS)))
    args = parser.parse_args()
    apps = args.app.split(",")
    for app in apps:
        if app not in COMMANDS:
            raise SystemExit(f"--app {app}: not one of {', '.join(sorted(COMMANDS))}")
        binary, package = BINARIES.get(app, (None, None))
        if binary is not None and not Path(binary).exists():
            raise SystemExit(f"--app {app} needs {binary} (apt-get install {package})")
    print(f"load: {os.getloadavg()[0]:.1f} (1 min), {os.cpu_count()} cores", flush=True)
    for app in apps:
        run_app(app, args)


def run_app(app: str, args: argparse.Namespace) -> None:
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        try:
            row = run_size(n, app, args)
        except SystemExit as e:  # a failed deploy at this size: say so, go on to the next
            print(f"{n} {APP_NAMES[app]} hosts failed: {str(e)[-600:]}", flush=True)
            continue
        rows.append(row)
        interval = args.interval if args.interval != "auto" else \
            ("200ms" if n <= 100 else "default")
        print(f"{n} {APP_NAMES[app]} hosts done ({int(row['switches'])} switches, "
              f"{int(row['procs'])} controller processes, health interval {interval})",
              flush=True)
        record_row(row, interval, app)
        show(rows)  # so far: a later size that fails leaves these
        print(flush=True)


if __name__ == "__main__":
    main()
