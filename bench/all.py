"""Every bench with modest defaults, one after the other, into one report: bench/RESULTS.md.

    python bench/all.py [--quick] [--only router,verify] [--skip fleet,ship] [--out PATH]

Each bench runs as its own process (in a session of its own) with the arguments BENCHES gives
it (--quick: the smallest sensible run) and $HINOTORI_BENCH_RESULTS pointing at a fresh
JSON-lines file, which it fills through results.record(). RESULTS.md then holds the date, the
machine (CPU, cores, memory, kernel, Python, load average before and after, tool versions),
a headline of goals met, and per bench each figure with its goal and met / not met / no goal,
and how much of the machine's CPU time the hypervisor took while it ran (steal time, from
/proc/stat: on a shared virtual machine, a run that lost a lot of it is not comparable).
A bench whose tool is missing, that needs root, or whose script is not there is listed as
skipped with the reason; one that fails or times out with the tail of its output.

Nothing is left running: all.py makes itself the child subreaper (prctl), so whatever a bench
starts in a session of its own (a detached controller, process hosts, a podman service) is
adopted by all.py if its parent goes first; after each bench every process still under all.py
is listed in the report and killed. On a timeout or Ctrl-C the bench gets SIGINT (its own
cleanup runs), then its process group SIGTERM and SIGKILL. Full outputs stay in a temporary
directory, printed at the end. soak.py is long: it runs only when named (--only soak).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import importlib.metadata
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from report import (
    FAILED,
    INTERRUPTED,
    OK,
    SKIPPED,
    TIMED_OUT,
    Outcome,
    markdown,
    read_figures,
    summary,
)
from results import RESULTS_ENV

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
HELPERS = {"all", "report", "results", "backend", "probe"}  # bench/*.py that are not benches
PR_SET_CHILD_SUBREAPER = 36
GRACE = 60.0  # seconds a bench gets to clean up after SIGINT
SETTLE = 5.0  # seconds what a bench stopped may take to exit before it counts as left behind
TAIL_LINES = 40


@dataclass(frozen=True)
class Bench:
    args: tuple[str, ...]          # modest defaults: minutes, not tens of them
    quick: tuple[str, ...]         # --quick: the smallest run that still says something
    tools: tuple[str, ...] = ()    # on PATH, or the bench is skipped
    root: bool = False
    default: bool = True           # False: runs only when --only names it
    timeout: float = 900.0         # seconds, then it is stopped


# what a lab of machines runs on (hinotori.lab), and what ships images to it
LAB = ("podman", "dockerd", "docker", "docker-registry", "/usr/sbin/sshd", "ssh", "ip", "nsenter",
       "unshare")
BENCHES: dict[str, Bench] = {
    "router": Bench(("--runs", "3", "--duration", "3", "--impl", "builtin,haproxy-hinotori"),
                    ("--runs", "1", "--duration", "2", "--switches", "50",
                     "--impl", "builtin,haproxy-hinotori"), ("wrk", "haproxy")),
    "router_profile": Bench(("--requests", "4000"), ("--requests", "2000", "--warmup", "500"),
                            ("valgrind",)),
    "haproxy_profile": Bench(("--requests", "4000"), ("--requests", "2000"),
                             ("valgrind", "haproxy")),
    "tls": Bench(("--runs", "2", "--duration", "3"),
                 ("--runs", "1", "--duration", "2", "--workers", "1"), ("wrk", "hey", "haproxy")),
    "hostile": Bench(("--runs", "1", "--duration", "12"),
                     ("--runs", "1", "--duration", "11", "--slowloris", "100"), ("haproxy",)),
    "canary": Bench(("--runs", "3", "--duration", "3"), ("--runs", "2", "--duration", "2"),
                    ("wrk",)),
    "drift": Bench(("--runs", "3"), ("--runs", "1"), ("aide",)),
    "verify": Bench(("--runs", "3"), ("--runs", "1"), ("rspec", "curl")),
    "logs": Bench(("--lines", "50000", "--runs", "2"),
                  ("--hosts", "2", "--lines", "20000", "--runs", "1")),
    "bake": Bench(("--runs", "3", "--cold-runs", "2"),
                  ("--runs", "1", "--cold-runs", "1", "--files", "1000", "--modules", "500")),
    "osimage": Bench(("--runs", "3", "--cold-runs", "1"), ("--runs", "1", "--cold-runs", "1"),
                     ("podman", "mmdebstrap"), timeout=1800),
    "clistart": Bench(("--runs", "7"), ("--runs", "3")),
    "container_boot": Bench(("--boots", "10",), ("--boots", "3"), ("podman", "mmdebstrap"),
                            timeout=1200),
    "secret_masking": Bench(("--runs", "3",), ("--runs", "1",)),
    "jobs": Bench(("--runs", "10",), ("--runs", "3",)),
    "promote": Bench(("--runs", "3", "--files", "1000"), ("--runs", "1", "--files", "500"),
                     timeout=1200),
    "hold": Bench(("--runs", "2", "--duration", "2"), ("--runs", "2", "--duration", "1"),
                  ("wrk", "haproxy")),
    "scale": Bench(("--sizes", "10,100,1000", "--app", "busybox,webfs"),
                   ("--sizes", "10", "--app", "busybox,webfs"), ("busybox", "webfsd"),
                   timeout=2400),
    "ship": Bench(("--runs", "2",), ("--runs", "1", "--deps-mb", "10"), (*LAB, "busybox"),
                  root=True),
    "fleet": Bench(("--runs", "2", "--losses", "4"), ("--runs", "1", "--losses", "2"),
                   (*LAB, "mmdebstrap"), root=True, timeout=2400),
    "soak": Bench(("--minutes", "3",), ("--minutes", "1",), default=False, timeout=1800),
}

A = tuple[str, ...]
# name, the command whose first line says its version (stdout or stderr)
TOOLS: tuple[tuple[str, A], ...] = (
    ("haproxy", ("haproxy", "-v")), ("wrk", ("wrk", "-v")),
    ("hey", ("dpkg-query", "-W", "-f=${Version}", "hey")), ("podman", ("podman", "--version")),
    ("docker", ("docker", "--version")), ("dockerd", ("dockerd", "--version")),
    ("mmdebstrap", ("mmdebstrap", "--version")), ("aide", ("aide", "--version")),
    ("rsyslogd", ("rsyslogd", "-v")), ("rspec", ("rspec", "--version")),
    ("docker-registry", ("docker-registry", "--version")), ("ssh", ("ssh", "-V")),
)


def bench_files() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.py") if p.stem not in HELPERS)


def selected(only: list[str], skip: list[str]) -> list[str]:
    """Bench names to list in the report, in BENCHES' order (then any bench file the table
    does not know, listed as skipped so it gets noticed)."""
    known = list(BENCHES) + [n for n in bench_files() if n not in BENCHES]
    unknown = [n for n in only + skip if n not in known]
    if unknown:
        raise SystemExit(f"no bench called {', '.join(unknown)}; choose from {', '.join(known)}")
    if only:
        return [n for n in known if n in only]
    return [n for n in known if n not in skip and (n not in BENCHES or BENCHES[n].default)]


def command_of(name: str, quick: bool) -> list[str]:
    bench = BENCHES.get(name)
    args = () if bench is None else (bench.quick if quick else bench.args)
    return [sys.executable, str(HERE / f"{name}.py"), *args]


def why_skipped(name: str) -> str:
    """Why ``name`` cannot run here, or ''."""
    if not (HERE / f"{name}.py").exists():
        return f"bench/{name}.py is not there"
    bench = BENCHES.get(name)
    if bench is None:
        return "not in bench/all.py's BENCHES table (add a row with its arguments)"
    missing = [t for t in bench.tools if shutil.which(t) is None]
    if missing:
        return f"needs {', '.join(missing)} (not installed)"
    if bench.root and os.geteuid() != 0:
        return "needs root (a lab of machines)"
    return ""


# -- processes ---------------------------------------------------------------------------------
def become_subreaper() -> None:
    """Orphans of what a bench starts become all.py's children, so none escapes the sweep."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print("note: could not become the child subreaper; detached leftovers may escape",
              file=sys.stderr)


def reap(watch: int) -> int | None:
    """Reap every child that has exited (adopted orphans too: a zombie still answers kill(0),
    which would fool a bench waiting for a process to go); ``watch``'s exit code if it did."""
    code = None
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return code
        if pid == 0:
            return code
        if pid == watch:
            code = os.waitstatus_to_exitcode(status)


def wait_exit(pid: int, seconds: float) -> int | None:
    deadline = time.monotonic() + seconds
    while True:
        code = reap(pid)
        if code is not None or time.monotonic() >= deadline:
            return code
        time.sleep(0.1)


def descendants() -> dict[int, str]:
    """Live processes under all.py (pid -> command line), zombies left out."""
    parent: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2:].split()
            if fields[0] not in "ZX":
                parent[int(entry.name)] = int(fields[1])
    found, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, ppid in parent.items() if ppid in frontier} - found
        found |= frontier
    out = {}
    for pid in sorted(found):
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        out[pid] = " ".join(raw.replace(b"\0", b" ").decode(errors="replace").split())[:200]
    return out


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def sweep(bench_pid: int, settle: float = SETTLE) -> list[str]:
    """Kill what a bench left running under all.py; returns their command lines."""
    deadline = time.monotonic() + settle  # what is on its way out is not a leftover
    while (left := descendants()) and time.monotonic() < deadline:
        reap(bench_pid)
        time.sleep(0.2)
    if not left:
        return []
    signal_all(list(left), signal.SIGTERM)
    deadline = time.monotonic() + 10
    while (alive := descendants()) and time.monotonic() < deadline:
        reap(bench_pid)
        time.sleep(0.2)
    signal_all(list(alive), signal.SIGKILL)
    wait_exit(bench_pid, 2)
    return [f"{pid} {cmd}" for pid, cmd in left.items()]


def stop(proc: subprocess.Popen[bytes]) -> int | None:
    """SIGINT to the bench (its cleanup runs), then SIGTERM and SIGKILL to its process group.
    A second Ctrl-C skips the grace."""
    try:
        os.kill(proc.pid, signal.SIGINT)
        code = wait_exit(proc.pid, GRACE)
    except KeyboardInterrupt:
        code = None
    if code is None:
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            code = wait_exit(proc.pid, wait)
            if code is not None:
                break
    return code


def tail(log: Path) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(line[:300] for line in lines[-TAIL_LINES:])


def run(name: str, quick: bool, work: Path) -> Outcome:
    argv = command_of(name, quick)
    shown = shlex.join(["python", f"bench/{name}.py", *argv[2:]])
    reason = why_skipped(name)
    if reason:
        return Outcome(name, shown, SKIPPED, reason)
    bench = BENCHES[name]
    results, log = work / f"{name}.jsonl", work / f"{name}.log"
    results.unlink(missing_ok=True)  # this run's figures only
    env = {**os.environ, RESULTS_ENV: str(results), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH"))
                                         if p)}
    print(f"{name}: {shown}", flush=True)
    started, cpu_before = time.monotonic(), cpu_ticks()
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, cwd=ROOT,
                                start_new_session=True)
    status, interrupted = OK, False
    try:
        code = wait_exit(proc.pid, bench.timeout)
        if code is None:
            status, code = TIMED_OUT, stop(proc)
    except KeyboardInterrupt:
        interrupted = True
        status, code = INTERRUPTED, stop(proc)
    proc.returncode = code if code is not None else -9  # reaped here, not by Popen
    seconds, stolen = time.monotonic() - started, stolen_pct(cpu_before, cpu_ticks())
    try:
        leftovers = sweep(proc.pid)
    except KeyboardInterrupt:  # the bench has ended: still sweep, without waiting
        interrupted = True
        leftovers = sweep(proc.pid, settle=0)
    figures, problems = read_figures(results)
    reason = {TIMED_OUT: f"after {bench.timeout:.0f} s",
              INTERRUPTED: "Ctrl-C or SIGTERM"}.get(status, "")
    if status == OK and code != 0:
        status, reason = FAILED, f"exit {code}"
    if problems:
        reason = "; ".join([r for r in (reason, "unreadable figures: " + ", ".join(problems))
                            if r])
    outcome = Outcome(name, shown, status, reason, seconds, figures, tail(log), leftovers,
                      stolen)
    goals = outcome.goals()
    print(f"{name}: {status}{' (' + reason + ')' if reason else ''} in {seconds:.0f} s, "
          f"{len(figures)} figures, {sum(1 for f in goals if f['met'])} of {len(goals)} goals "
          f"met" + (f"; killed {len(leftovers)} leftover process(es)" if leftovers else "")
          + (f"; CPU stolen {stolen:.1f}%" if stolen is not None else ""), flush=True)
    if interrupted:
        raise KeyboardInterrupt(outcome)
    return outcome


# -- the machine -------------------------------------------------------------------------------
def first_line(argv: A) -> str:
    if shutil.which(argv[0]) is None:
        return ""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    lines = (done.stdout.strip() or done.stderr.strip()).splitlines()
    line = lines[0].strip() if lines else ""
    for noise in (" - http", " Copyright", " compiled with"):  # the version, not the blurb
        line = line.split(noise)[0]
    return line.strip()[:90]


def machine() -> list[tuple[str, str]]:
    def grep(path: str, key: str) -> str:
        try:
            for line in Path(path).read_text().splitlines():
                if line.startswith(key):
                    return line.split(":", 1)[1].strip() if ":" in line else line
        except OSError:
            pass
        return ""

    mem_kb = grep("/proc/meminfo", "MemTotal").split()
    os_name = grep("/etc/os-release", "PRETTY_NAME=").partition("=")[2].strip('"')
    rows = [("CPU", grep("/proc/cpuinfo", "model name") or platform.processor()),
            ("cores", f"{os.cpu_count()} (usable here: {len(os.sched_getaffinity(0))})"),
            ("memory", f"{int(mem_kb[0]) / 2**20:.1f} GiB" if mem_kb else "?"),
            ("kernel", platform.release()), ("OS", os_name or platform.platform()),
            ("Python", platform.python_version()), ("user", "root" if os.geteuid() == 0
                                                      else "not root")]
    rows += [(name, v) for name, argv in TOOLS if (v := first_line(argv))]
    for dist in ("pytest-testinfra", "uvloop"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            rows.append((dist, importlib.metadata.version(dist)))
    return rows


def cpu_ticks() -> tuple[int, int] | None:
    """(steal, all) ticks of every CPU since boot, from /proc/stat's first line; None where
    there is no such file."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
    return (ticks[7], sum(ticks[:8])) if len(ticks) >= 8 else None


def stolen_pct(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """% of the CPU time between two cpu_ticks() that the hypervisor took."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return 100 * (after[0] - before[0]) / (after[1] - before[1])


def load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated benches to run (soak too)")
    ap.add_argument("--skip", default="", help="comma-separated benches to leave out")
    ap.add_argument("--quick", action="store_true", help="the smallest sensible runs")
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    args = ap.parse_args()
    names = selected([n.strip() for n in args.only.split(",") if n.strip()],
                     [n.strip() for n in args.skip.split(",") if n.strip()])
    # Both stop a run the same way. SIGINT explicitly: started in the background by a shell,
    # all.py and so every bench would ignore it, and a bench's cleanup starts with SIGINT.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    work = Path(tempfile.mkdtemp(prefix="hinotori-bench-all-"))
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows = machine()
    before, started, cpu_before = load(), time.monotonic(), cpu_ticks()
    become_subreaper()
    outcomes: list[Outcome] = []
    stopped = False
    try:
        for name in names:
            outcomes.append(run(name, args.quick, work))
    except KeyboardInterrupt as exc:
        stopped = True
        if exc.args and isinstance(exc.args[0], Outcome):
            outcomes.append(exc.args[0])
        done = {o.name for o in outcomes}
        outcomes += [Outcome(n, shlex.join(["python", f"bench/{n}.py",
                                            *command_of(n, args.quick)[2:]]),
                             SKIPPED, "not run: all.py was interrupted")
                     for n in names if n not in done]
    rows.append(("load average (1/5/15 min)", f"before {before}; after {load()}"))
    stolen = stolen_pct(cpu_before, cpu_ticks())
    if stolen is not None:
        rows.append(("CPU time stolen by the hypervisor", f"{stolen:.1f}% over the whole run"))
    command = shlex.join(["python", "bench/all.py", *sys.argv[1:]])
    text = markdown(outcomes, rows, when=when, command=command,
                    seconds=time.monotonic() - started)
    args.out.write_text(text)
    print(f"\n{summary(outcomes)}\nwrote {args.out}; full outputs in {work}")
    if stopped:
        sys.exit(130)


if __name__ == "__main__":
    main()
