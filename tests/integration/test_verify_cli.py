"""`hinotori verify` and `hinotori checks generate` end to end: the real CLI in a subprocess, a
baked examples/hello project, throwaway process hosts that are always destroyed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hinotori.project import Project as HinotoriProject
from tests.support import CliProject

pytestmark = pytest.mark.integration

# The CLI with the verify commands registered (a no-op once cli/app.py registers them).
RUNNER = """
from hinotori.cli import verifycmds
from hinotori.cli.app import app, main
if "verify" not in {c.name for c in app.registered_commands}:
    app.command("verify")(verifycmds.verify)
if "checks" not in {g.name for g in app.registered_groups}:
    app.add_typer(verifycmds.checks_app, name="checks")
main()
"""

FAILING = """
[[services.web.checks]]
file = "VERSION"
contains = ["42"]
"""


def cli(project: CliProject, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", RUNNER, *args, "--spec", str(project.path)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"})


def add(project: CliProject, text: str) -> None:
    spec = project.path / "hinotori.toml"
    spec.write_text(spec.read_text() + text)


def without_checks(project: CliProject) -> None:
    """Drop the checks examples/hello ships with."""
    spec = project.path / "hinotori.toml"
    text = re.sub(r"\[\[services\.web\.checks\]\].*?(?=\[services\.web\.image\])", "",
                  spec.read_text(), flags=re.S)
    assert "[[services.web.checks]]" not in text
    spec.write_text(text)


def assert_no_live_host(project: CliProject) -> None:
    store = HinotoriProject.load(project.path).store
    hosts = store.hosts()
    assert hosts and all(h.state == "destroyed" for h in hosts), hosts
    for h in hosts:
        assert h.pid is not None and not Path(f"/proc/{h.pid}").exists()
        assert not Path(h.root or "/nonexistent").exists()


@pytest.fixture
def baked(project: CliProject) -> CliProject:
    project.cli("bake", "web")
    return project


def test_verify_exits_0_when_every_check_passes_and_1_when_one_fails(baked: CliProject) -> None:
    ok = cli(baked, "verify", "web")  # the checks examples/hello ships with
    assert ok.returncode == 0, ok.stderr
    assert "4 checks, 4 passed, 0 failed" in ok.stdout  # the health check plus three
    assert "file app.py" in ok.stdout

    add(baked, FAILING)
    bad = cli(baked, "verify", "web", "--release", "v1", "--format", "json")
    assert bad.returncode == 1, bad.stderr
    doc = json.loads(bad.stdout)
    assert (doc["ok"], doc["failed"], doc["release"]) == (False, 1, "v1")
    failure = next(r for r in doc["results"] if not r["ok"])
    assert failure["description"] == "file VERSION"
    assert (failure["expected"], failure["got"]) == ("contains 42", "contains not found")

    junit = cli(baked, "verify", "web", "--format", "junit")
    assert junit.returncode == 1
    suite = ET.fromstring(junit.stdout).find("testsuite")
    assert suite is not None and suite.get("failures") == "1" and suite.get("tests") == "5"

    tap = cli(baked, "verify", "web", "--format", "tap")
    assert tap.returncode == 1 and "not ok 5 - file VERSION" in tap.stdout

    assert_no_live_host(baked)
    events = [e["action"] for e in baked.json("audit", "--limit", "100")]  # type: ignore[index, union-attr]
    assert events.count("host.verifying") == 4 and events.count("host.destroyed") == 4
    assert "verify.passed" in events and "verify.failed" in events


def test_retry_timeout_and_sleep_reach_the_evaluator(baked: CliProject, tmp_path: Path) -> None:
    never = tmp_path / "never"
    add(baked, f'\n[[services.web.checks]]\nfile = "{never}"\n')
    done = cli(baked, "verify", "web", "--retry-timeout", "600ms", "--sleep", "100ms",
               "--json")
    assert done.returncode == 1
    result = json.loads(done.stdout)["results"][-1]
    assert result["description"] == f"file {never}"
    assert result["attempts"] >= 3
    bad = cli(baked, "verify", "web", "--retry-timeout", "soon")
    assert bad.returncode == 2 and "'--retry-timeout': invalid duration" in bad.stderr


def test_generated_checks_pass_when_verified(baked: CliProject) -> None:
    out = baked.path / "checks.toml"
    gen = cli(baked, "checks", "generate", "web", "--output", str(out))
    assert gen.returncode == 0, gen.stderr
    text = out.read_text()
    assert 'port = "$PORT"' in text and 'http = "/healthz"' in text and "sha256 = " in text
    assert 'file = "app.py"' in text
    add(baked, "\n" + text)
    ok = cli(baked, "verify", "web", "--json")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["ok"] and doc["total"] >= 8
    assert cli(baked, "checks", "generate", "web").stdout.count("[[services.web.checks]]") \
        == text.count("[[services.web.checks]]")  # to stdout too
    assert_no_live_host(baked)


def test_testinfra_files_in_the_spec_are_folded_in(baked: CliProject) -> None:
    pytest.importorskip("testinfra")
    (baked.path / "infra").mkdir()
    (baked.path / "infra" / "test_web.py").write_text(
        "def test_version_file(host):\n    assert host.file('VERSION').content_string == '1\\n'\n"
        "\n\ndef test_listens(host):\n    assert host.run('test -n \"$PORT\"').rc == 0\n")
    spec = baked.path / "hinotori.toml"
    spec.write_text(spec.read_text().replace(
        'port_env = "PORT"', 'port_env = "PORT"\ntestinfra = ["infra/test_web.py"]'))
    done = cli(baked, "verify", "web", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    names = [r["description"] for r in json.loads(done.stdout)["results"]]
    assert names == ["health /healthz", "http GET /healthz", "file app.py", "port $PORT/tcp",
                     "testinfra test_web.py::test_version_file",
                     "testinfra test_web.py::test_listens"]


def test_user_errors_are_messages_not_tracebacks(baked: CliProject) -> None:
    without_checks(baked)
    none = cli(baked, "verify", "web")
    assert none.returncode == 2 and "service 'web' has no checks" in none.stderr
    assert "checks generate web" in none.stderr and "Traceback" not in none.stderr
    add(baked, '\n[[services.web.checks]]\nfile = "app.py"\nmod = "0444"\n')
    bad = cli(baked, "verify", "web")
    lines = (baked.path / "hinotori.toml").read_text().splitlines()
    line = lines.index('mod = "0444"') + 1
    assert bad.returncode == 2 and f"hinotori.toml:{line}: services.web.checks.0.mod" in bad.stderr
    spec = baked.path / "hinotori.toml"
    spec.write_text(spec.read_text().replace('mod = "0444"', 'mode = "0444"'))
    missing = cli(baked, "verify", "web", "--release", "v9")
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    fmt = cli(baked, "verify", "web", "--format", "yaml")
    assert fmt.returncode == 2 and "'yaml' is not a format" in fmt.stderr


def test_generate_from_a_running_host(baked: CliProject) -> None:
    """--host surveys a live host of the store (here booted and recorded by the test the way
    the fleet does) instead of booting a throwaway one; the host is left running."""
    import asyncio

    from hinotori.health import wait_healthy
    from hinotori.model import HealthCheck, HostState
    from hinotori.providers.base import BootRequest
    from hinotori.providers.process import ProcessProvider

    project = HinotoriProject.load(baked.path)
    release = project.store.latest_release("web")
    assert release is not None
    provider = ProcessProvider(project.hosts_dir)
    host = asyncio.run(provider.boot(BootRequest(
        "web-live", release, project.images.rootfs(release.image),
        project.hosts_dir / "web-live")))
    try:
        healthy = asyncio.run(wait_healthy(host.address or "", HealthCheck(interval=0.05),
                                           deadline=15))
        assert healthy.ok, provider.logs(host)
        host.state = HostState.SERVING
        project.store.save_host(host, actor="test")
        gen = cli(baked, "checks", "generate", "web", "--host", "web-live")
        assert gen.returncode == 0, gen.stderr
        assert "from host web-live (web v1)" in gen.stdout and 'port = "$PORT"' in gen.stdout
        as_json = json.loads(cli(baked, "checks", "generate", "web", "--host", "web-live",
                                 "--json").stdout)
        assert {"port": "$PORT", "listening": True} in as_json
        assert asyncio.run(provider.adopt(host))  # still running: surveyed, not touched
        wrong = cli(baked, "checks", "generate", "web", "--host", "web-nope")
        assert wrong.returncode == 1 and "no host web-nope" in wrong.stderr
    finally:
        asyncio.run(provider.destroy(host, grace=3))


def test_examples_hello_verifies_as_shipped(project: CliProject) -> None:
    """The example's own checks pass on a deployed release: up, bake, deploy (gated by the
    same checks), then verify on a throwaway host."""
    project.cli("up", "-d")
    project.cli("bake", "web")
    assert "now serves v1" in project.cli("deploy", "web").stdout
    done = cli(project, "verify", "web", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    doc = json.loads(done.stdout)
    assert doc["ok"] and [r["description"] for r in doc["results"]] == [
        "health /healthz", "http GET /healthz", "file app.py", "port $PORT/tcp"]
    passed = project.json("audit", "--action", "host.ready")
    assert len(passed) == 2 and all("passed its checks" in str(e) for e in passed)  # type: ignore[arg-type]
