"""hinotori verify against serverspec and pytest-testinfra: the same 200 checks, the same host.

    python bench/verify.py [--runs 5] [--kernel 200] [--checks 1000] [--only-checks]

Boots one process host of examples/hello (plus a static/ tree of 130 small read-only files),
writes the same 200 checks three times (hinotori check tables; a serverspec spec file for the
exec backend run by rspec; a pytest-testinfra file for the local:// backend) and times each
tool verifying that host, as a whole process each time, medians of --runs:

- serverspec and testinfra run in the host's view with the host's env (from the process
  provider's env.json), exactly where hinotori's evaluator runs;
- hinotori is timed three ways: ``verify_host`` from a process that is already up (what the
  controller's verify gate and the CLI pay per host: one exec, the evaluator, the checks); the
  in-host evaluator alone as a cold process on a ready plan (what runs in the host, like a
  goss binary); and a cold ``python -c`` that first imports hinotori (pydantic and all),
  parses the checks and calls verify_host (the strictest comparison);
- every tool must pass all 200 checks, or the bench fails: the three suites check the same
  things, written in each tool's own idiom (serverspec has no HTTP resource: curl, as its users
  do; testinfra has none either: urllib in the test).

The mix: 100 files (exists, mode), 30 file contents, 15 directories, 10 users, 5 groups,
10 listening ports, 10 HTTP requests, 10 commands, 5 processes, 5 packages.

A second case, ``--kernel N`` (default 200; 0 skips it), times N of the kernel and network
resources on the same host, a quarter each: kernel_param (sysctls, values read from /proc/sys
beforehand), mount (/proc is proc), interface (lo exists with 127.0.0.1) and dns (localhost
resolves; /etc/hosts only, nothing leaves the machine), written in each tool's idiom
(serverspec's linux_kernel_parameter, be_mounted, interface and host resources; testinfra's
host.sysctl, mount_point, interface and addr), and prints the time per check of both cases,
so the new resources are seen to cost what today's do.

A third case, ``--checks N`` (default 1000; 0 skips it), times hinotori alone on N checks of
today's mix (the 200 repeated) on the same host, the goal being under 0.5 s for 1,000 with the
host up (``verify_host``: one exec into the host, the evaluator's start, the checks). It also
prints the checks alone (the evaluator's own clock) and the whole cold process.

Needs: ``apt-get install -y ruby-serverspec curl`` and ``pip install pytest-testinfra``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results import record  # bench/ is on sys.path: the script's directory

from hinotori.health import wait_healthy
from hinotori.model import HealthCheck, Host, Release, ReleaseConfig
from hinotori.providers.base import BootRequest
from hinotori.providers.process import ProcessProvider
from hinotori.verify import evaluator, parse_checks
from hinotori.verify.runner import build_plan

HELLO = Path(__file__).resolve().parents[1] / "examples" / "hello"
N_STATIC = 130


def make_image(root: Path) -> Path:
    image = root / "image"
    shutil.copytree(HELLO, image, ignore=shutil.ignore_patterns("__pycache__", ".hinotori"))
    static = image / "static"
    static.mkdir()
    for i in range(N_STATIC):
        (static / f"f{i:03d}.txt").write_text(f"asset {i}\n")
    (static / "sub").mkdir()
    for p in sorted(image.rglob("*"), reverse=True):
        p.chmod(0o555 if p.is_dir() else 0o444)
    return image


def suite(comm: str) -> list[dict]:
    """The 200 checks as neutral descriptions, rendered by each tool's writer below."""
    checks: list[dict] = []
    checks += [{"kind": "file", "path": f"static/f{i:03d}.txt", "mode": "0444"}
               for i in range(100)]
    checks += [{"kind": "content", "path": f"static/f{i:03d}.txt", "text": f"asset {i}"}
               for i in range(100, 130)]
    checks += [{"kind": "dir", "path": p} for p in ["static", "static/sub", "."] * 5]
    checks += [{"kind": "user", "name": "root", "uid": 0}] * 10
    checks += [{"kind": "group", "name": "root", "gid": 0}] * 5
    checks += [{"kind": "port"}] * 10
    checks += [{"kind": "http", "path": "/healthz", "body": "ok"}] * 10
    checks += [{"kind": "command", "argv": ["cat", "VERSION"], "stdout": "^1$"}] * 10
    checks += [{"kind": "process", "name": comm}] * 5
    checks += [{"kind": "package", "name": p} for p in ["dpkg", "bash", "coreutils", "ruby",
                                                         "curl"]]
    assert len(checks) == 200
    return checks


KERNEL_PARAMS = ("net.core.somaxconn", "net.ipv4.tcp_syncookies", "net.ipv4.tcp_fin_timeout",
                 "net.ipv4.ip_default_ttl", "net.ipv4.ip_unprivileged_port_start")


def kernel_suite(n: int) -> list[dict]:
    """``n`` checks of the kernel resources, a quarter each, on what this machine has."""
    values = {k: int(Path("/proc/sys/" + k.replace(".", "/")).read_text()) for k in KERNEL_PARAMS}
    kinds = [{"kind": "sysctl", "name": k, "value": v} for k, v in values.items()]
    one = [kinds, [{"kind": "mount", "path": "/proc", "fs": "proc"}],
           [{"kind": "iface", "name": "lo", "addr": "127.0.0.1"}],
           [{"kind": "dns", "name": "localhost"}]]
    return [one[i % 4][(i // 4) % len(one[i % 4])] for i in range(n)]


# -- hinotori --------------------------------------------------------------------------------
def hinotori_checks(checks: list[dict]) -> list[dict]:
    out = []
    for c in checks:
        out.append({
            "file": lambda c: {"file": c["path"], "mode": c["mode"]},
            "content": lambda c: {"file": c["path"], "contains": [c["text"]]},
            "dir": lambda c: {"directory": c["path"]},
            "user": lambda c: {"user": c["name"], "uid": c["uid"]},
            "group": lambda c: {"group": c["name"], "gid": c["gid"]},
            "port": lambda c: {"port": "$PORT", "listening": True},
            "http": lambda c: {"http": c["path"], "status": 200, "body": c["body"]},
            "command": lambda c: {"command": c["argv"], "exit_status": 0, "stdout": c["stdout"]},
            "process": lambda c: {"process": c["name"], "running": True},
            "package": lambda c: {"package": c["name"], "installed": True},
            "sysctl": lambda c: {"kernel_param": c["name"], "value": str(c["value"])},
            "mount": lambda c: {"mount": c["path"], "filesystem": c["fs"]},
            "iface": lambda c: {"interface": c["name"], "addresses": [c["addr"]]},
            "dns": lambda c: {"dns": c["name"]},
        }[c["kind"]](c))
    return out


WARM = """
import asyncio, json, resource, sys, time
from hinotori.model import Host, HostState
from hinotori.providers.process import ProcessProvider
from hinotori.verify import parse_checks, verify_host
host_doc, checks_path, runs = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
host_doc["state"] = HostState(host_doc["state"])
host = Host(**host_doc)
checks = parse_checks(json.load(open(checks_path)))
provider = ProcessProvider(__import__("pathlib").Path(host.data["state_dir"]).parent)
def cpu():  # this process's and its waited-for children's (the evaluator's): user + system
    return sum(getattr(resource.getrusage(who), f) for who in
               (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN) for f in ("ru_utime", "ru_stime"))
times = []
for _ in range(runs):
    c, t = cpu(), time.perf_counter()
    report = asyncio.run(verify_host(provider, host, checks, python=sys.executable))
    times.append((time.perf_counter() - t, cpu() - c))
    assert report.total == len(checks) and report.ok, [r for r in report.results if not r.ok][:3]
print(json.dumps(times))
"""


# -- serverspec ------------------------------------------------------------------------------
def _rb(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid Ruby double-quoted string here


def serverspec_file(checks: list[dict]) -> str:
    lines = ["require 'serverspec'", "set :backend, :exec", ""]
    for c in checks:
        k = c["kind"]
        if k == "file":
            body = ["it { should exist }", f"it {{ should be_mode {int(c['mode'], 8):o} }}"]
            head = f"file({_rb(c['path'])})"
        elif k == "content":
            body, head = [f"its(:content) {{ should contain({_rb(c['text'])}) }}"], \
                f"file({_rb(c['path'])})"
        elif k == "dir":
            body, head = ["it { should be_directory }"], f"file({_rb(c['path'])})"
        elif k == "user":
            body = ["it { should exist }", f"it {{ should have_uid {c['uid']} }}"]
            head = f"user({_rb(c['name'])})"
        elif k == "group":
            body = ["it { should exist }", f"it {{ should have_gid {c['gid']} }}"]
            head = f"group({_rb(c['name'])})"
        elif k == "port":
            body, head = ["it { should be_listening }"], "port(ENV['PORT'].to_i)"
        elif k == "http":
            url = "\"http://127.0.0.1:#{ENV['PORT']}" + c["path"] + "\""
            head = f"command(\"curl -s -w ' %{{http_code}}' \" + {url})"
            body = [f"its(:stdout) {{ should match(/{c['body']} 200$/) }}"]
        elif k == "command":
            head = f"command({_rb(' '.join(c['argv']))})"
            body = ["its(:exit_status) { should eq 0 }",
                    f"its(:stdout) {{ should match(/{c['stdout']}/) }}"]
        elif k == "process":
            body, head = ["it { should be_running }"], f"process({_rb(c['name'])})"
        elif k == "sysctl":
            body = [f"its(:value) {{ should eq {c['value']} }}"]
            head = f"linux_kernel_parameter({_rb(c['name'])})"
        elif k == "mount":
            body = [f"it {{ should be_mounted.with(type: {_rb(c['fs'])}) }}"]
            head = f"file({_rb(c['path'])})"
        elif k == "iface":
            body = ["it { should exist }", f"it {{ should have_ipv4_address({_rb(c['addr'])}) }}"]
            head = f"interface({_rb(c['name'])})"
        elif k == "dns":
            body, head = ["it { should be_resolvable }"], f"host({_rb(c['name'])})"
        else:
            body, head = ["it { should be_installed }"], f"package({_rb(c['name'])})"
        lines += [f"describe {head} do", *(f"  {b}" for b in body), "end", ""]
    return "\n".join(lines)


# -- testinfra -------------------------------------------------------------------------------
def testinfra_file(checks: list[dict]) -> str:
    lines = ["import os", "import re", "import urllib.request", ""]
    for n, c in enumerate(checks):
        k = c["kind"]
        lines.append(f"def test_{n:03d}_{k}(host):")
        if k == "file":
            lines += [f"    f = host.file({c['path']!r})", "    assert f.exists",
                      f"    assert f.mode == 0o{c['mode'][1:]}"]
        elif k == "content":
            lines += [f"    assert host.file({c['path']!r}).contains({c['text']!r})"]
        elif k == "dir":
            lines += [f"    assert host.file({c['path']!r}).is_directory"]
        elif k == "user":
            lines += [f"    u = host.user({c['name']!r})", "    assert u.exists",
                      f"    assert u.uid == {c['uid']}"]
        elif k == "group":
            lines += [f"    g = host.group({c['name']!r})", "    assert g.exists",
                      f"    assert g.gid == {c['gid']}"]
        elif k == "port":
            lines += ["    assert host.socket('tcp://127.0.0.1:' + os.environ['PORT'])"
                      ".is_listening"]
        elif k == "http":
            lines += ["    url = 'http://127.0.0.1:' + os.environ['PORT'] + " + repr(c["path"]),
                      "    with urllib.request.urlopen(url, timeout=5) as r:",
                      f"        assert r.status == 200 and {c['body']!r} in r.read().decode()"]
        elif k == "command":
            lines += [f"    out = host.run({' '.join(c['argv'])!r})", "    assert out.rc == 0",
                      f"    assert re.search({c['stdout']!r}, out.stdout, re.M)"]
        elif k == "process":
            lines += [f"    assert host.process.filter(comm={c['name']!r})"]
        elif k == "sysctl":
            lines += [f"    assert host.sysctl({c['name']!r}) == {c['value']!r}"]
        elif k == "mount":
            lines += [f"    m = host.mount_point({c['path']!r})", "    assert m.exists",
                      f"    assert m.filesystem == {c['fs']!r}"]
        elif k == "iface":
            lines += [f"    i = host.interface({c['name']!r})", "    assert i.exists",
                      f"    assert {c['addr']!r} in i.addresses"]
        elif k == "dns":
            lines += [f"    assert host.addr({c['name']!r}).is_resolvable"]
        else:
            lines += [f"    assert host.package({c['name']!r}).is_installed"]
        lines.append("")
    return "\n".join(lines)


# -- running ---------------------------------------------------------------------------------
def timed(argv: list[str], cwd: str, env: dict[str, str],
          stdin: str | None = None) -> tuple[float, str]:
    t = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, input=stdin)
    elapsed = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"{argv[0]} failed (exit {done.returncode}):\n"
                         f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return elapsed, done.stdout


async def boot(work: Path) -> tuple[ProcessProvider, Host]:
    provider = ProcessProvider(work / "hosts")
    release = Release("web", 1, "sha256:" + "0" * 64,
                      ReleaseConfig(command=(sys.executable, "app.py")), time.time())
    host = await provider.boot(BootRequest("web-bench", release, make_image(work),
                                           work / "hosts" / "web-bench"))
    result = await wait_healthy(host.address or "", HealthCheck(interval=0.05, healthy=1),
                                deadline=15)
    if not result.ok:
        raise SystemExit(f"host did not come up: {result.detail}")
    return provider, host


def measure(provider: ProcessProvider, host: Host, checks: list[dict], work: Path,
            runs: int, others: bool = True) -> list[tuple[str, list[float]]]:
    """Each tool's times verifying ``checks`` on ``host`` (every run must pass them all);
    hinotori's alone without ``others``."""
    n = len(checks)
    env = json.loads((Path(host.data["state_dir"]) / "env.json").read_text())
    root = host.root or ""
    shutil.rmtree(work, ignore_errors=True)
    (work / "spec").mkdir(parents=True)
    (work / "checks.json").write_text(json.dumps(hinotori_checks(checks)))
    (work / "spec" / "host_spec.rb").write_text(serverspec_file(checks))
    (work / "ti").mkdir()
    (work / "ti" / "test_host.py").write_text(testinfra_file(checks))
    (work / "ti" / "pytest.ini").write_text("[pytest]\n")

    host_doc = json.dumps(host.to_dict())
    warm_argv = [sys.executable, "-c", WARM, host_doc, str(work / "checks.json")]
    plan = json.dumps(build_plan(provider, host, parse_checks(hinotori_checks(checks))))
    cold, alone, inside, spec_t, ti_t = [], [], [], [], []
    _, out = timed([*warm_argv, str(runs)], root, dict(os.environ))
    warm, warm_cpu = ([pair[i] for pair in json.loads(out)] for i in (0, 1))
    for _ in range(runs):
        cold.append(timed([*warm_argv, "1"], root, dict(os.environ))[0])
        t, out = timed([sys.executable, "-I", "-S", evaluator.__file__], root, env, plan)
        doc = json.loads(out)
        assert all(r["ok"] for r in doc["results"]), out[-500:]
        alone.append(t)
        inside.append(doc["duration"])
        if not others:
            continue
        t, out = timed(["rspec", "--format", "progress", str(work / "spec" / "host_spec.rb")],
                       root, env)
        assert " 0 failures" in out, out[-500:]
        spec_t.append(t)
        t, out = timed([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "-c", str(work / "ti" / "pytest.ini"), "--rootdir", str(work / "ti"),
                        "--hosts=local://", str(work / "ti" / "test_host.py")], root, env)
        assert f"{n} passed" in out, out[-500:]
        ti_t.append(t)
    rows = [("hinotori verify_host (warm process)", warm),
            ("hinotori evaluator alone (cold process)", alone),
            ("hinotori cold python -c (imports hinotori)", cold)]
    if not others:  # the checks alone: the evaluator's own clock, its start-up left out
        rows.append(("hinotori checks alone (in the evaluator)", inside))
        rows.append(("hinotori verify_host CPU time (+ evaluator)", warm_cpu))
    if others:
        rows += [("serverspec 2.42 (rspec, exec backend)", spec_t),
                 ("pytest-testinfra 10 (local backend)", ti_t)]
    return rows


def report(title: str, rows: list[tuple[str, list[float]]]) -> dict[str, float]:
    med = {name: statistics.median(ts) for name, ts in rows}
    print(f"\n{title}\n")
    if not any(name.startswith("serverspec") for name, _ in rows):  # hinotori's rows only
        print(f"{'tool':44} {'median':>10} {'min':>10}")
        for name, ts in rows:
            print(f"{name:44} {med[name] * 1000:8.1f}ms {min(ts) * 1000:8.1f}ms")
        return med
    spec, ti = med[rows[3][0]], med[rows[4][0]]
    print(f"{'tool':44} {'median':>10} {'min':>10}   {'serverspec / it':>15} "
          f"{'testinfra / it':>15}")
    for name, ts in rows:
        m = med[name]
        print(f"{name:44} {m * 1000:8.1f}ms {min(ts) * 1000:8.1f}ms   "
              f"{spec / m:14.1f}x {ti / m:14.1f}x")
    return med


def many(comm: str, n: int) -> list[dict]:
    """``n`` checks of today's mix: the 200 repeated (the whole mix, so every kind counts)."""
    return (suite(comm) * (n // 200 + 1))[:n]


WARM_ROW, COLD_ROW, SPEC_ROW, TI_ROW = 0, 2, 3, 4


def record_ratios(case: str, rows: list[tuple[str, list[float]]], med: dict[str, float]) -> None:
    for row in (WARM_ROW, COLD_ROW):
        name = rows[row][0]
        for other in (SPEC_ROW, TI_ROW):
            tool = rows[other][0].split()[0]
            record("verify", f"{case}: {tool} time / {name}", med[rows[other][0]] / med[name],
                   unit="x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--kernel", type=int, default=200,
                        help="kernel and network checks in the second case (0: skip it)")
    parser.add_argument("--checks", type=int, default=1000,
                        help="checks of today's mix in the third case, hinotori alone (0: skip)")
    parser.add_argument("--only-checks", action="store_true",
                        help="the third case alone: no serverspec or testinfra (a quick run)")
    args = parser.parse_args()
    if args.only_checks:
        args.kernel = 0
    for tool in ("rspec", "curl"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: apt-get install -y ruby-serverspec curl")
    work = Path(tempfile.mkdtemp(prefix="hinotori-bench-verify-"))
    provider, host = asyncio.run(boot(work))
    try:
        comm = Path(f"/proc/{host.pid}/comm").read_text().strip()
        today = (None if args.only_checks else
                 measure(provider, host, suite(comm), work / "today", args.runs))
        kernel = (measure(provider, host, kernel_suite(args.kernel), work / "kernel", args.runs)
                  if args.kernel else None)
        big = (measure(provider, host, many(comm, args.checks), work / "many", args.runs,
                       others=False) if args.checks else None)
    finally:
        asyncio.run(provider.destroy(host, grace=3))
        if host.pid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(host.pid, signal.SIGKILL)
        shutil.rmtree(work, ignore_errors=True)

    if today is not None:
        med = report(f"200 checks against one process host of examples/hello, median of "
                     f"{args.runs} runs (each tool passed all 200 every run)", today)
        record_ratios("200 checks", today, med)
    if today is not None and kernel is not None:
        kmed = report(f"{args.kernel} kernel and network checks (kernel_param, mount, "
                      f"interface, dns; a quarter each) against the same host, median of "
                      f"{args.runs} runs", kernel)
        record_ratios(f"{args.kernel} kernel checks", kernel, kmed)
        print("\nper check, kernel checks / today's mix (1.0x: the same cost; the evaluator's "
              "start-up is in both)")
        for name, _ in today:
            per_today, per_kernel = med[name] / 200, kmed[name] / args.kernel
            print(f"{name:44} {per_today * 1e6:8.1f}us {per_kernel * 1e6:8.1f}us "
                  f"{per_kernel / per_today:8.2f}x")
    if big is not None:
        n = args.checks
        bmed = report(f"{n} checks of today's mix against the same host, hinotori alone, "
                      f"median of {args.runs} runs (all {n} passed every run)", big)
        warm, alone, cold, inside, cpu = (bmed[name] for name, _ in big)
        print(f"\n{n} checks on one host: {warm:.3f} s with the host up (verify_host: one exec, "
              f"the evaluator's start, the checks; {cpu:.3f} s of CPU); {inside:.3f} s of "
              f"checks in the evaluator; {cold:.3f} s as a whole cold process (python start, "
              f"import hinotori, parse)")
        record("verify", f"{n} checks on one host, host up (verify_host)", warm, unit="s",
               goal="< 0.5", detail="one exec into the host, the evaluator's start, the checks")
        record("verify", f"{n} checks on one host, host up: CPU time (verify_host + evaluator)",
               cpu, unit="s", detail="user + system of verify_host and the evaluator, the "
               "commands it runs included (not the app serving its HTTP checks)")
        record("verify", f"{n} checks on one host, the checks alone (evaluator's clock)", inside,
               unit="s")
        record("verify", f"{n} checks on one host, evaluator as a cold process", alone, unit="s")
        record("verify", f"{n} checks on one host, whole cold process (imports hinotori)", cold,
               unit="s")


if __name__ == "__main__":
    main()
