"""verify_host against a real process host of examples/hello: every resource passes and fails
with expected versus got, a thousand checks in one evaluation, retries, testinfra files."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from hinotori.errors import ProviderError
from hinotori.health import wait_healthy
from hinotori.model import HealthCheck, Host, Release, ReleaseConfig
from hinotori.providers.base import BootRequest, CommandResult
from hinotori.providers.process import ProcessProvider
from hinotori.verify import Report, VerifyPlan, fleet_verifier, parse_checks, verify_host

pytestmark = pytest.mark.integration

HELLO = Path(__file__).resolve().parents[2] / "examples" / "hello"
PY = sys.executable


def make_image(tmp_path: Path) -> Path:
    """examples/hello as a read-only tree, the way the image store keeps images."""
    image = tmp_path / "image"
    shutil.copytree(HELLO, image, ignore=shutil.ignore_patterns("__pycache__", ".hinotori"))
    for p in sorted(image.rglob("*"), reverse=True):
        p.chmod(0o555 if p.is_dir() else 0o444)
    image.chmod(0o555)
    return image


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[ProcessProvider]:
    p = ProcessProvider(tmp_path / "hosts")
    yield p
    for hostjson in p.hosts_root.glob("*/host.json"):  # no host may outlive its test
        pid = json.loads(hostjson.read_text()).get("pid")
        with contextlib.suppress(ProcessLookupError, PermissionError, TypeError):
            os.killpg(pid, signal.SIGKILL)


async def boot_host(provider: ProcessProvider, tmp_path: Path, **env: str) -> Host:
    rel = Release("web", 1, "sha256:" + "0" * 64,
                  ReleaseConfig(command=(PY, "app.py"), env=env), time.time())
    req = BootRequest("web-1", rel, make_image(tmp_path), provider.hosts_root / "web-1")
    host = await provider.boot(req)
    result = await wait_healthy(host.address or "", HealthCheck(interval=0.05, healthy=1),
                                deadline=15)
    assert result.ok, provider.logs(host)
    return host


@pytest.fixture
def host(provider: ProcessProvider, tmp_path: Path) -> Iterator[Host]:
    h = asyncio.run(boot_host(provider, tmp_path, HELLO_VERSION="7"))
    yield h
    asyncio.run(provider.destroy(h, grace=3))


def verify(provider: ProcessProvider, host: Host, checks: list[dict], **kw: object) -> Report:
    return asyncio.run(verify_host(provider, host, parse_checks(checks), python=PY,
                                   **kw))  # type: ignore[arg-type]


def exec_(provider: ProcessProvider, host: Host, argv: list[str], **kw: object
          ) -> CommandResult:
    return asyncio.run(provider.exec(host, argv, **kw))  # type: ignore[arg-type]


def _comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def test_every_resource_passes_and_fails(provider: ProcessProvider, host: Host) -> None:
    comm = _comm(host.pid or 0)
    port = str(host.data["port"])
    cases: list[tuple[dict, bool]] = [
        ({"file": "app.py", "type": "file", "mode": "0444", "contains": ["ThreadingHTTPServer"],
          "matches": "^def main", "size": (HELLO / "app.py").stat().st_size}, True),
        ({"file": "app.py", "mode": "0644"}, False),
        ({"directory": "."}, True),
        ({"directory": "app.py"}, False),
        ({"command": [PY, "-c", "import os; print(os.environ['PORT'])"], "stdout": f"^{port}$"},
         True),
        ({"command": ["cat", "VERSION"], "stdout": "^2$"}, False),
        ({"port": "$PORT"}, True),
        ({"port": port, "listening": False}, False),
        ({"http": "/healthz", "status": 200, "body": "^ok$", "header": {"X-Hello-Version": "^7$"}},
         True),
        ({"http": "/", "body": "from v8"}, False),
        ({"process": "app.py", "count": 1}, True),
        ({"process": "nginx"}, False),
        ({"env": "HELLO_VERSION", "value": "^7$"}, True),
        ({"env": "HINOTORI_HOST_ID", "value": "^web-2$"}, False),
        ({"package": "dpkg"}, Path("/var/lib/dpkg/status").exists()),
        ({"package": "no-such-package-anywhere"}, False),
        ({"user": "root", "uid": 0, "home": "/root"}, True),
        ({"user": "root", "shell": "/bin/false"}, False),
        ({"group": "root", "gid": 0}, True),
        ({"group": "no-such-group"}, False),
        ({"service": comm, "running": True}, not Path("/run/systemd/system").is_dir()),
        ({"service": "no-such-daemon", "running": True}, False),
    ]
    report = verify(provider, host, [c for c, _ in cases])
    assert report.total == len(cases)
    for (check, want), result in zip(cases, report.results, strict=True):
        assert result.ok is want, (check, result)
        if not want:
            assert result.expected and result.got and result.expected != result.got, result
    mode = report.results[1]
    assert (mode.description, mode.expected, mode.got) == ("file app.py", "mode 0644",
                                                            "mode 0444")
    http = next(r for r in report.results if r.description == "http GET /" and not r.ok)
    assert http.expected == "body /from v8/" and http.got.startswith("body hello from v7")


def test_a_thousand_checks_take_one_exec(provider: ProcessProvider, host: Host) -> None:
    calls: list[Sequence[str]] = []
    real_exec = provider.exec

    async def counting(h: Host, argv: Sequence[str], **kw: object) -> CommandResult:
        calls.append(argv)
        return await real_exec(h, argv, **kw)  # type: ignore[arg-type]

    provider.exec = counting  # type: ignore[method-assign]
    kinds = [{"file": "app.py", "mode": "0444"}, {"directory": "."}, {"port": "$PORT"},
             {"env": "PORT"}, {"file": "VERSION", "contains": ["1"]}]
    checks = [kinds[i % len(kinds)] for i in range(1000)]
    report = verify(provider, host, checks)
    assert len(calls) == 1
    assert (report.total, report.passed) == (1000, 1000)


def test_retry_timeout_lets_an_initially_failing_check_pass(
        provider: ProcessProvider, host: Host, tmp_path: Path) -> None:
    late = tmp_path / "appears-later"
    timer = threading.Timer(0.4, late.touch)
    timer.start()
    report = verify(provider, host, [{"file": str(late)}, {"file": "app.py"}],
                          retry_timeout=10.0, sleep=0.1)
    timer.join()
    late_result, app = report.results
    assert late_result.ok and late_result.attempts > 1
    assert app.ok and app.attempts == 1
    never = verify(provider, host, [{"file": str(tmp_path / "never")}],
                         retry_timeout=0.3, sleep=0.1)
    assert not never.ok and never.results[0].attempts >= 2


def test_exec_runs_in_the_view_with_the_hosts_env(provider: ProcessProvider,
                                                        host: Host) -> None:
    done = exec_(provider, host, [PY, "-c", "import os, sys; print(os.getcwd()); "
                                      "print(os.environ['PORT'], os.environ['HELLO_VERSION']); "
                                      "print(sys.stdin.read())"], stdin=b"from stdin")
    assert done.succeeded
    assert done.stdout.splitlines() == [host.root, f"{host.data['port']} 7", "from stdin"]
    failed = exec_(provider, host, [PY, "-c", "import sys; sys.exit('no')"])
    assert (failed.rc, failed.succeeded, failed.stderr.strip()) == (1, False, "no")


def test_exec_timeout_kills_what_the_command_started(provider: ProcessProvider,
                                                           host: Host, tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    script = ("import subprocess, sys; p = subprocess.Popen(['sleep', '60']); "
              "open(sys.argv[1], 'w').write(str(p.pid)); p.wait()")
    with pytest.raises(ProviderError, match=r"did not finish within 0\.5s"):
        exec_(provider, host, [PY, "-c", script, str(pidfile)], timeout=0.5)
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and Path(f"/proc/{child}").exists():
        stat = Path(f"/proc/{child}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            break  # killed; waiting for its reaper
        time.sleep(0.05)
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(
        f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_exec_errors_are_provider_errors(provider: ProcessProvider, host: Host) -> None:
    with pytest.raises(ProviderError, match="cannot run 'no-such-program'"):
        exec_(provider, host, ["no-such-program"])
    with pytest.raises(ProviderError, match=r"cannot run 'no-such-python' in host web-1"):
        asyncio.run(verify_host(provider, host, parse_checks([{"file": "app.py"}]),
                                python="no-such-python"))
    asyncio.run(provider.destroy(host, grace=3))
    with pytest.raises(ProviderError, match="no view to run in"):
        exec_(provider, host, [PY, "-V"])


TESTINFRA_FILE = '''
import os


def test_app_is_read_only(host):
    assert host.file("app.py").mode == 0o444


def test_runs_with_the_hosts_env(host):
    assert host.check_output("echo $HELLO_VERSION") == "7"
    assert os.environ["PORT"].isdigit()


def test_a_missing_file(host):
    assert host.file("missing.txt").exists
'''


def test_testinfra_files_fold_into_the_report(provider: ProcessProvider, host: Host,
                                                    tmp_path: Path) -> None:
    pytest.importorskip("testinfra")
    test_file = tmp_path / "test_host.py"
    test_file.write_text(TESTINFRA_FILE)
    report = verify(provider, host, [{"file": "app.py"}], testinfra=[test_file])
    by_name = {r.description: r for r in report.results}
    assert set(by_name) == {"file app.py", "testinfra test_host.py::test_app_is_read_only",
                            "testinfra test_host.py::test_runs_with_the_hosts_env",
                            "testinfra test_host.py::test_a_missing_file"}
    assert by_name["testinfra test_host.py::test_app_is_read_only"].ok
    assert by_name["testinfra test_host.py::test_runs_with_the_hosts_env"].ok
    missing = by_name["testinfra test_host.py::test_a_missing_file"]
    assert not missing.ok and missing.source == "testinfra"
    assert "assert False" in missing.got and missing.expected == "result pass"
    assert not list(Path(host.root or "").glob("**/hinotori-testinfra-*"))  # view untouched


def test_fleet_verifier_gates_a_host(provider: ProcessProvider, host: Host) -> None:
    """The Fleet's verify gate: None when every check passes, else what failed."""
    passing = VerifyPlan(checks=tuple(parse_checks([{"file": "app.py", "mode": "0444"}])),
                         python=PY)
    failing = VerifyPlan(checks=tuple(parse_checks([{"file": "app.py", "mode": "0600"},
                                                    {"port": "$PORT"}])), python=PY)
    plans = {"web": passing}
    gate = fleet_verifier({"process": provider}, plans.get)
    assert asyncio.run(gate(host)) is None
    plans["web"] = failing
    assert asyncio.run(gate(host)) == "  ✗ file app.py: expected mode 0600, got mode 0444"
    plans["web"] = VerifyPlan(checks=passing.checks, python="no-such-python")
    assert "cannot run 'no-such-python'" in (asyncio.run(gate(host)) or "")
    del plans["web"]
    assert asyncio.run(gate(host)) is None  # a service without checks passes


def test_kernel_resources_pass_and_fail_on_a_process_host(provider: ProcessProvider,
                                                          host: Host) -> None:
    """A process host shares the machine's kernel, mounts and network: what it sees is what
    this test sees from outside (read here independently of the evaluator)."""
    somaxconn = Path("/proc/sys/net/core/somaxconn").read_text().strip()
    proc = next(line.split() for line in Path("/proc/self/mountinfo").read_text().splitlines()
                if line.split()[4] == "/proc")
    lo_mtu = int(Path("/sys/class/net/lo/mtu").read_text())
    cases: list[tuple[dict, bool]] = [
        ({"kernel_param": "net.core.somaxconn", "value": somaxconn}, True),
        ({"kernel_param": "net.core.somaxconn", "value": str(int(somaxconn) + 1)}, False),
        ({"kernel_param": "kernel.no_such_setting"}, False),
        ({"mount": "/proc", "filesystem": "proc", "options": [proc[5].split(",")[0]]}, True),
        ({"mount": "/proc", "filesystem": "tmpfs"}, False),
        ({"interface": "lo", "up": True, "mtu": lo_mtu, "addresses": ["127.0.0.1/8"]}, True),
        ({"interface": "lo", "addresses": ["192.0.2.1"]}, False),
        ({"dns": "localhost", "addresses": ["127.0.0.1"]}, True),
        ({"dns": "localhost", "addresses": ["192.0.2.1"]}, False),
    ]
    report = verify(provider, host, [c for c, _ in cases])
    for (check, want), result in zip(cases, report.results, strict=True):
        assert result.ok is want, (check, result)
        if not want:
            assert result.expected and result.got and result.expected != result.got, result
