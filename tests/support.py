"""Helpers shared by the test suites: a throwaway project driven through the real CLI, waiting,
skipping only outside CI, specs for container and canary tests, and small builders of log and
metric rows. Fixtures live in the conftest files; everything a test imports lives here."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from hinotori.errors import SpecError
from hinotori.model import LATENCY_BUCKETS_MS, HealthCheck, Host, HostState
from hinotori.observe.logs import LogStore
from hinotori.observe.logs.store import Batch
from hinotori.observe.metrics import Counts, Point
from hinotori.spec import parse_spec

ROOT = Path(__file__).resolve().parents[1]  # the repository (this file is tests/support.py)
HELLO = ROOT / "examples" / "hello"
DEBIAN_APP = ROOT / "examples" / "debian-web" / "app.py"  # the app of the container tests
TAR_CACHE = Path.home() / ".cache" / "hinotori-test"  # the Debian base's tarball, kept across runs
# Health checks for hosts a test boots by hand: probed every 50 ms, healthy at the first answer.
FAST_HEALTH = HealthCheck(path="/healthz", interval=0.05, healthy=1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CliProject:
    """A project directory plus helpers to drive it through the real CLI."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.router = ""

    def cli(self, *args: str, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "hinotori", *args, "--spec", str(self.path)]
        result = subprocess.run(argv,
                                capture_output=True, text=True, timeout=timeout,
                                env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"})
        if check and result.returncode != 0:
            raise AssertionError(f"hinotori {' '.join(args)} exited {result.returncode}\n"
                                 f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
        return result

    def json(self, *args: str) -> object:
        return json.loads(self.cli(*args, "--json").stdout)

    def set_version(self, version: str) -> None:
        (self.path / "VERSION").write_text(version + "\n")

    def controller_pid(self) -> int:
        return json.loads((self.path / ".hinotori" / "controller.json").read_text())["pid"]

    def stop_controller(self, timeout: float = 20) -> None:
        """SIGTERM the controller alone (hosts stay) and wait for it to be gone; a slow stop
        fails with the controller's log, whose "stopping: ..." lines say where it waited."""
        os.kill(self.controller_pid(), signal.SIGTERM)
        if not wait_until(lambda: not (self.path / ".hinotori" / "controller.json").exists(),
                          timeout=timeout):
            log = self.path / ".hinotori" / "controller.log"
            tail = log.read_text(errors="replace")[-4000:] if log.exists() else "(no log)"
            raise AssertionError(f"the controller did not stop in {timeout}s; its log:\n{tail}")

    def serving(self) -> list[dict]:
        return [h for h in self.json("hosts") if h["state"] == "serving"]  # type: ignore[union-attr]


def make_project(tmp_path: Path, replicas: int = 2, extra: str = "") -> CliProject:
    path = tmp_path / "proj"
    shutil.copytree(HELLO, path, ignore=shutil.ignore_patterns("__pycache__", ".hinotori"))
    port = free_port()
    text = (path / "hinotori.toml").read_text()
    text = text.replace('listen = "127.0.0.1:8080"', f'listen = "127.0.0.1:{port}"')
    text = text.replace("replicas = 3", f"replicas = {replicas}")
    text = text.replace('command = ["python3", "app.py"]',
                        f'command = ["{sys.executable}", "app.py"]')
    (path / "hinotori.toml").write_text(text + extra)
    project = CliProject(path)
    project.router = f"127.0.0.1:{port}"
    return project


def serve_v1(p: CliProject, *, bake: str | None = None) -> CliProject:
    """Controller up, v1 baked and deployed (serving); with ``bake``, that version baked too
    (not deployed)."""
    p.cli("up", "-d")
    p.cli("bake", "web")
    p.cli("deploy", "web")
    if bake is not None:
        p.set_version(bake)
        p.cli("bake", "web")
    return p


def teardown(p: CliProject, timeout: float = 120) -> None:
    state = p.path / ".hinotori"
    if not state.exists():
        return
    result = p.cli("down", check=False, timeout=timeout)
    if result.returncode != 0:  # leave nothing running whatever happened
        for pidfile in [*state.glob("router/*.pid")]:
            with contextlib.suppress(ValueError, ProcessLookupError):
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):  # and its controller
            os.kill(int(json.loads((state / "controller.json").read_text())["pid"]),
                    signal.SIGKILL)
    # Belt and braces: no host process of this project may outlive the test.
    for hostjson in state.glob("hosts/*/host.json"):
        pid = json.loads(hostjson.read_text()).get("pid")
        if pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def spec_error(text: str, environment: str | None = None) -> SpecError:
    """The error parsing ``text`` as hinotori.toml (in ``environment``) must raise."""
    with pytest.raises(SpecError) as info:
        parse_spec(text, file="hinotori.toml", environment=environment)
    return info.value


def require(ok: bool, message: str) -> None:
    """Skip with ``message`` when a real part is missing, except in CI (CI=true), where a test
    that silently does not run is a failure: integration tests must run there."""
    if ok:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI must run this test, not skip it; .ci/run installs it)")
    pytest.skip(message)


CONTAINER_SPEC = """\
[project]
name = "{name}"

[router]
listen = "{listen}"

[services.web]
provider = "container"
replicas = 2
command = ["python3", "app.py"]
env = {{ BIND = "0.0.0.0" }}  # in its container the app listens on all its interfaces
health = {{ path = "/healthz", status = 200, interval = "100ms", timeout = "2s", healthy = 2 }}
boot_timeout = "60s"
stop_grace = "10s"
keep_previous = "10m"

[services.web.image]
os = {{ suite = "bookworm", variant = "minbase", workdir = "/app" }}
steps = [
  {{ copy = "app.py", to = "app.py", mode = "0644" }},
  {{ copy = "VERSION", to = "VERSION", mode = "0644" }},
]

[[services.web.checks]]
process = "app.py"
running = true

[[services.web.checks]]
command = "python3 -c 'import os; print(os.environ[\\"HINOTORI_SERVICE\\"])'"
exit_status = 0
stdout = "web"
"""


def ensure_debian_base(docker_client: Any) -> str:
    """The Debian base image (bookworm minbase + python3) in the engine, built by mmdebstrap
    once and its tarball cached in TAR_CACHE; mmdebstrap is required (failing in CI)."""
    from hinotori.bake.osimage import BaseSpec, ensure_base

    require(shutil.which("mmdebstrap") is not None,
            "mmdebstrap is not installed (apt-get install mmdebstrap)")
    TAR_CACHE.mkdir(parents=True, exist_ok=True)
    return ensure_base(docker_client, BaseSpec(), tar_cache=TAR_CACHE)


def write_container_project(path: Path, name: str, app: str, version: str, *,
                            replicas: int = 2, extra: str = "") -> CliProject:
    """A CONTAINER_SPEC project ``name`` in the new directory ``path``, serving ``app``."""
    path.mkdir()
    (path / "app.py").write_text(app)
    (path / "VERSION").write_text(version + "\n")
    listen = f"127.0.0.1:{free_port()}"
    spec = CONTAINER_SPEC.format(name=name, listen=listen)
    (path / "hinotori.toml").write_text(spec.replace("replicas = 2", f"replicas = {replicas}")
                                        + extra)
    project = CliProject(path)
    project.router = listen
    return project


def run_once(docker_client: Any, image: str, command: list[str], **options: Any) -> bytes:
    """The standard output of ``command`` run once in ``image``, read after it exited. Not
    ``containers.run``: it follows the logs while the container runs, and Podman's follow can
    end before the last lines are read (podman#10596), which cut a CI run's output short."""
    container = docker_client.containers.create(image, command, **options)
    try:
        container.start()
        status = container.wait(timeout=180)["StatusCode"]
        if status != 0:
            said = container.logs(stdout=False, stderr=True).decode(errors="replace")
            raise AssertionError(f"{command} in {image} exited {status}: {said[-2000:]}")
        return container.logs(stdout=True, stderr=False)
    finally:
        container.remove(force=True)


def remove_containers(docker_client: Any, project: str) -> None:
    """No container of ``project`` (running or not) left in the engine, nor its volumes."""
    for c in docker_client.containers.list(all=True,
                                           filters={"label": f"hinotori.project={project}"}):
        c.remove(force=True, v=True)


def container_teardown(p: CliProject, docker_client: Any, name: str) -> None:
    """``teardown``, then no container or image tag of project ``name`` left in the engine."""
    teardown(p, timeout=180)
    remove_containers(docker_client, name)
    remove_project_tags(docker_client, name)


def project_tags(docker_client: Any, name: str) -> set[str]:
    """The engine's tags of project ``name``'s ``web`` images. Asked through the engine's image
    store race (another test's gc may remove an image while Podman lists them all)."""
    from hinotori.engine_storage import retrying

    images = retrying(lambda: docker_client.images.list(name=f"localhost/hinotori/{name}-web"))
    return {tag for image in images for tag in image.tags}


def remove_project_tags(docker_client: Any, name: str) -> None:
    """No image tag of project ``name``'s ``web`` service left in the engine."""
    from hinotori.engine_storage import retrying

    for tag in project_tags(docker_client, name):
        retrying(lambda tag=tag: docker_client.images.remove(tag))


def fetch(request: Any, timeout: float = 10) -> tuple[int, Any, bytes]:
    """Status, headers and body of a urllib request, an HTTP error status included."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


# A canary strategy for the web service, judged quickly on error rate (5%) with a lenient p99
# ratio: fill in steps ("[10, 50, 100]"), pause and deadline.
CANARY_SPEC = """
[services.web.strategy]
kind = "canary"
steps = {steps}
pause = "{pause}"

[services.web.strategy.analysis]
interval = "300ms"
min_requests = 20
max_error_rate = 0.05
max_p99_ratio = 10.0
deadline = "{deadline}"
"""


# -- TLS: a private CA and leaf certificates (the `cryptography` library) --------------------

def make_ca(directory: Path) -> tuple[Any, Any, Path]:
    """A throwaway CA in ``directory``: (certificate, key, path of ca.pem)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hinotori test CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key, path


def make_leaf(ca: tuple[Any, Any, Path], names: list[str], cert_path: Path, key_path: Path, *,
              days: int = 30) -> str:
    """A leaf certificate for ``names`` signed by ``ca``, written as two PEM files (renamed into
    place, as an ACME client does). ``days`` < 0: already expired. Returns its serial (hex)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca_cert, ca_key, _ = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    start = now + datetime.timedelta(days=min(days, 0) - 1)
    serial = x509.random_serial_number()
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(serial)
            .not_valid_before(start).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    for path, data in ((cert_path, cert.public_bytes(serialization.Encoding.PEM)),
                       (key_path, key.private_bytes(serialization.Encoding.PEM,
                                                    serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))):
        tmp = path.with_name(path.name + ".new")
        tmp.write_bytes(data)
        tmp.rename(path)
    return format(serial, "x")


def served_serial(port: int, name: str | None, ca_file: Path, *, verify: bool = True) -> str:
    """The serial (hex) of the certificate a TLS listener on 127.0.0.1 serves for SNI ``name``,
    verified against ``ca_file`` (unless ``verify`` is False: e.g. an expired one)."""
    import ssl

    from cryptography import x509

    ctx = ssl.create_default_context(cafile=str(ca_file))
    ctx.check_hostname = False  # the chain is verified; which name it serves is the question
    if not verify:
        ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=name) as s:
        der = s.getpeercert(binary_form=True)
    return format(x509.load_der_x509_certificate(der).serial_number, "x")


# -- rows for the log and metric stores (unit tests) ----------------------------------------

def make_host(state_dir: Path, host_id: str = "web-1", service: str = "web",
              release: int = 1, provider: str = "process") -> Host:
    """A process host as the provider records it, without a process (files only)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "root").mkdir(exist_ok=True)
    (state_dir / "scratch").mkdir(exist_ok=True)
    return Host(id=host_id, service=service, release=release, provider=provider,
                state=HostState.SERVING, born_at=0.0, root=str(state_dir / "root"),
                data={"state_dir": str(state_dir), "log": str(state_dir / "output.log")})



def put(store: LogStore, host: str, lines: list[str], *, service: str = "web",
        release: int = 1, source: str = "stdout", ts: float = 1000.0) -> None:
    s = store.stream(host, source) or store.open_stream(host=host, service=service,
                                                        release=release, source=source,
                                                        inode=None)
    off = s.shipped
    rows = []
    for text in lines:
        rows.append((s.id, off, ts, text))
        off += len(text.encode()) + 1
    store.ingest([Batch(s.id, rows, off)], ts)



N = len(LATENCY_BUCKETS_MS) + 1


def lat(**at: int) -> tuple[int, ...]:
    """A histogram with counts at bucket bounds, e.g. lat(b5=3, b100=1)."""
    out = [0] * N
    for name, count in at.items():
        out[LATENCY_BUCKETS_MS.index(int(name[1:]))] = count
    return tuple(out)



def point(ts: float, release: int = 1, requests: int = 10, *, s5: int = 0,
          memory: int = 100, hosts: int = 2, cpu: float = 1.0, span: float = 10.0,
          latency: tuple[int, ...] | None = None) -> Point:
    counts = Counts(requests=requests, statuses={"2xx": requests - s5, "5xx": s5},
                    latency=list(latency or lat(b5=requests)), latency_sum_ms=5.0 * requests,
                    cpu_seconds=cpu)
    return Point(service="web", release=release, ts=ts, span=span, counts=counts,
                 memory_sum=memory, memory_max=memory, hosts_sum=hosts, hosts_max=hosts)


def up_lab(tmp_path_factory: pytest.TempPathFactory, count: int, docker: set[str],
           tools: tuple[str, ...]) -> Any:
    """A lab of ``count`` machines (those in ``docker`` on Docker) for a test module; the
    caller yields it and calls ``down()``. Root and ``tools`` are required (failing in CI)."""
    from hinotori.lab.lab import Lab

    require(os.geteuid() == 0, "the lab needs root")
    for tool in tools:
        require(shutil.which(tool) is not None, f"{tool} is not installed")
    return Lab.up(tmp_path_factory.mktemp("lab") / "lab", count, docker=docker)


def haproxy_checks_config(settings: Any, plan: Any, directory: Path) -> None:
    """HAProxy itself (`haproxy -c`) accepts the config rendered for ``plan``, with the map
    files it reads written into ``settings``' maps dir first."""
    from hinotori.router.haproxy import config
    from hinotori.router.haproxy.files import Files

    binary = shutil.which("haproxy")
    require(binary is not None, "haproxy is not installed")
    assert binary is not None
    settings.maps_dir.mkdir()
    cfg = directory / "haproxy.cfg"
    for f, entries in Files(settings, cfg, directory / "state").targets(plan).items():
        f.write_text(config.map_text(entries))
    config.sample_file(settings).write_text(config.map_text(config.sample_entries(7)))
    cfg.write_text(config.render(settings, plan, loaded=True))
    result = subprocess.run([binary, "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr + result.stdout
