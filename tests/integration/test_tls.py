"""TLS at the front door, through the real CLI, controller, router (both data planes) and hosts.

A throwaway CA signs leaf certificates for two names (a.test, the default, and b.test). Under a
steady HTTPS load that verifies every handshake against the CA: a deploy, a renewal of a.test's
certificate picked up by the controller's file watch, and one through `hinotori router
reload-certs`, fail no request. curl verifies the chain; SNI picks the certificate, an unknown
or missing name gets the default; the plain listener answers 308 to https; a bad pair at a
reload is refused with an event and the previous certificate keeps serving; a bad pair at `up`
is a clear error naming the file.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from hinotori.loadgen import BackgroundLoad
from hinotori.router.haproxy import runtime
from hinotori.router.haproxy.router import socket_dir
from tests.support import (
    CliProject,
    free_port,
    make_ca,
    make_leaf,
    make_project,
    require,
    served_serial,
    teardown,
    wait_until,
)

pytestmark = pytest.mark.integration


def tls_project(tmp_path: Path, kind: str) -> tuple[CliProject, int, tuple]:
    if kind == "haproxy":
        require(shutil.which("haproxy") is not None, "haproxy is not installed")
    certs = tmp_path / "certs"
    ca = make_ca(certs)
    make_leaf(ca, ["a.test"], certs / "a.pem", certs / "a.key")
    make_leaf(ca, ["b.test", "*.b.test"], certs / "b.pem", certs / "b.key")
    tls_port = free_port()
    p = make_project(tmp_path, replicas=2)
    spec = p.path / "hinotori.toml"
    spec.write_text(spec.read_text().replace("[router]\n", (
        f'[router]\nkind = "{kind}"\nworkers = 2\ntls_listen = "127.0.0.1:{tls_port}"\n'
        f'tls_cert = "{certs / "a.pem"}"\ntls_key = "{certs / "a.key"}"\n'
        f'redirect_http = true\n'
        f'tls = [{{ cert = "{certs / "b.pem"}", key = "{certs / "b.key"}" }}]\n'), 1))
    return p, tls_port, ca


def haproxy_worker_pid(p: CliProject, kind: str) -> int | None:
    """HAProxy's current worker pid (a reload would change it); None for the built-in router."""
    if kind != "haproxy":
        return None
    sock = socket_dir(p.path / ".hinotori" / "router") / "haproxy.sock"
    (info,) = asyncio.run(runtime.run(sock, ["show info"]))
    return int(runtime.parse_info(info)["Pid"])


def every_connection_serves(port: int, name: str, ca_file: Path, serial: str) -> bool:
    """Ten new connections (spread over the workers by SO_REUSEPORT) all get ``serial``."""
    return all(served_serial(port, name, ca_file) == serial for _ in range(10))


def https_load(port: int, ca_file: Path, name: str) -> BackgroundLoad:
    ctx = ssl.create_default_context(cafile=str(ca_file))
    return BackgroundLoad(f"127.0.0.1:{port}", clients=20, rate=200, host_header=f"{name}:{port}",
                          tls=ctx, server_name=name)


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", "--max-time", "10", *args], capture_output=True,
                          text=True, timeout=20)


@pytest.mark.parametrize("kind", ["builtin", "haproxy"])
def test_https_under_load_through_deploys_and_renewals(tmp_path: Path, kind: str) -> None:
    p, port, ca = tls_project(tmp_path, kind)
    certs, ca_file = tmp_path / "certs", ca[2]
    try:
        p.cli("up", "-d")
        p.cli("bake", "web")
        p.cli("deploy", "web")

        # curl verifies the chain against the CA, for the name it asks (SNI).
        for name in ("a.test", "b.test", "x.b.test"):
            r = curl("--cacert", str(ca_file), "--resolve", f"{name}:{port}:127.0.0.1",
                     "-D", "-", f"https://{name}:{port}/")
            assert r.returncode == 0, r.stderr
            assert "200" in r.stdout.splitlines()[0] and "x-hello-host" in r.stdout.lower()
        a_serial = served_serial(port, "a.test", ca_file)
        assert served_serial(port, "b.test", ca_file) != a_serial
        assert served_serial(port, None, ca_file) == a_serial  # no SNI: the default
        assert served_serial(port, "unknown.test", ca_file) == a_serial

        # redirect_http: the plain listener sends clients to https, same host and URL.
        r = curl("-D", "-", "-o", "/dev/null", f"http://{p.router}/some/path?q=1",
                 "-H", "Host: a.test")
        assert " 308" in r.stdout.splitlines()[0]
        assert f"location: https://a.test:{port}/some/path?q=1" in r.stdout.lower()

        p.set_version("2")
        p.cli("bake", "web")
        load = https_load(port, ca_file, "a.test")
        load.start()
        try:
            time.sleep(1)
            p.cli("deploy", "web", "--release", "v2")
            worker = haproxy_worker_pid(p, kind)
            # A renewal as an ACME client does it: new files renamed into place; the
            # controller's watch picks it up by itself.
            renewed = make_leaf(ca, ["a.test"], certs / "a.pem", certs / "a.key")
            assert wait_until(lambda: served_serial(port, "a.test", ca_file) == renewed,
                              timeout=20), "the renewed certificate was not picked up"
            assert every_connection_serves(port, "a.test", ca_file, renewed)  # every worker
            assert served_serial(port, "b.test", ca_file) != renewed  # SNI still picks b
            time.sleep(1)
            again = make_leaf(ca, ["a.test"], certs / "a.pem", certs / "a.key")
            out = json.loads(p.cli("router", "reload-certs", "--json").stdout)
            assert [c["names"] for c in out["certs"]] == [["a.test"], ["b.test", "*.b.test"]]
            assert every_connection_serves(port, "a.test", ca_file, again)
            assert haproxy_worker_pid(p, kind) == worker  # HAProxy: replaced without a reload
            p.cli("rollback", "web")
            time.sleep(1)
        finally:
            stats = load.stop()
        assert stats.total > 500, stats
        assert stats.failed == 0, stats.failures

        # A new controller adopts the running data plane, TLS listener and certificates too.
        p.stop_controller()
        p.cli("up", "-d")
        assert every_connection_serves(port, "a.test", ca_file, again)
        r = curl("--cacert", str(ca_file), "--resolve", f"b.test:{port}:127.0.0.1",
                 f"https://b.test:{port}/")
        assert r.returncode == 0, r.stderr

        # A bad pair at a reload: refused, an event says why, the previous one keeps serving.
        (certs / "a.key").write_bytes((certs / "b.key").read_bytes())
        r = p.cli("router", "reload-certs", check=False)
        assert r.returncode != 0
        assert "does not match" in r.stderr + r.stdout and str(certs / "a.key") in r.stderr
        assert served_serial(port, "a.test", ca_file) == again
        refused = p.json("audit", "--action", "router.certs-refused")
        assert refused and "does not match" in refused[0]["detail"]["error"]  # type: ignore[index]
        reloaded = p.json("audit", "--action", "router.certs-reloaded")
        assert len(reloaded) >= 2  # type: ignore[arg-type]
    finally:
        teardown(p)


@pytest.mark.parametrize("kind", ["builtin", "haproxy"])
def test_bad_certificates_at_up_are_clear_errors(tmp_path: Path, kind: str) -> None:
    p, port, ca = tls_project(tmp_path, kind)
    certs = tmp_path / "certs"
    try:
        (certs / "b.pem").write_text("not a certificate\n")
        r = p.cli("up", "-d", check=False)
        assert r.returncode != 0
        assert f"{certs / 'b.pem'} holds no PEM certificate" in r.stderr + r.stdout
        assert "Traceback" not in r.stderr

        make_leaf(ca, ["b.test"], certs / "b.pem", certs / "b.key")
        (certs / "a.key").unlink()
        r = p.cli("up", "-d", check=False)
        assert r.returncode != 0 and f"cannot read the TLS key file {certs / 'a.key'}" in r.stderr

        # An expired certificate still serves (refusing it would take HTTPS down) with an event.
        expired_serial = make_leaf(ca, ["a.test"], certs / "a.pem", certs / "a.key", days=-1)
        p.cli("up", "-d")
        expired = p.json("audit", "--action", "router.cert-expired")
        assert expired and expired[0]["detail"]["cert"] == str(certs / "a.pem")  # type: ignore[index]
        assert served_serial(port, "a.test", ca[2], verify=False) == expired_serial
    finally:
        teardown(p)
