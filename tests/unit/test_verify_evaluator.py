"""The in-host evaluator on its own: every resource passes and fails with expected versus got,
against real files, processes, sockets and an HTTP server on 127.0.0.1; OS resources against a
made-up OS root (passwd, group, dpkg status, init scripts)."""

from __future__ import annotations

import contextlib
import grp
import hashlib
import json
import os
import pwd
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from hinotori.verify import evaluator
from hinotori.verify.checks import parse_checks


def run(checks: list[dict[str, Any]], **plan: Any) -> list[dict[str, Any]]:
    full = {"checks": [c.plan() for c in parse_checks(checks)], **plan}
    return evaluator.evaluate(full)["results"]


def one(check: dict[str, Any], **plan: Any) -> dict[str, Any]:
    return run([check], **plan)[0]


def failed(result: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """matcher -> (expected, got) of each failed matcher."""
    assert not result["ok"], result
    return {m["matcher"]: (m["expected"], m["got"]) for m in result["matchers"] if not m["ok"]}


@pytest.fixture
def view(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A host view as the working directory: app.py (0444), a directory, a symlink."""
    (tmp_path / "app.py").write_text("import os\nprint('hello')\n")
    (tmp_path / "app.py").chmod(0o444)
    (tmp_path / "static").mkdir(mode=0o755)
    (tmp_path / "link").symlink_to("app.py")
    monkeypatch.chdir(tmp_path)
    return tmp_path


# -- files -------------------------------------------------------------------------------
def test_file_passes_on_every_matcher(view: Path) -> None:
    digest = hashlib.sha256((view / "app.py").read_bytes()).hexdigest()
    me, my_group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
    result = one({"file": "app.py", "type": "file", "mode": "0444", "owner": me,
                  "group": my_group, "contains": ["import os", "hello"],
                  "matches": r"^print\(", "sha256": digest, "size": 25})
    assert result["ok"], result
    assert {m["matcher"] for m in result["matchers"]} == {
        "exists", "type", "mode", "owner", "group", "contains", "matches", "sha256", "size"}
    assert one({"file": "app.py", "owner": str(os.getuid())})["ok"]
    assert one({"file": "link", "type": "symlink"})["ok"]
    assert one({"file": "link", "type": "file", "mode": "0444"})["ok"]  # followed
    assert one({"file": "missing.txt", "exists": False})["ok"]


def test_file_failures_say_expected_and_got(view: Path) -> None:
    result = one({"file": "app.py", "type": "directory", "mode": "0644", "owner": "nobody",
                  "contains": ["import os", "goodbye"], "matches": "^def ", "sha256": "0" * 64,
                  "size": 1})
    assert failed(result) == {
        "type": ("directory", "file"), "mode": ("0644", "0444"),
        "owner": ("nobody", pwd.getpwuid(os.getuid()).pw_name),
        "contains": ("goodbye", "not found"),
        "matches": ("/^def /", "import os\nprint('hello')"),
        "sha256": ("0" * 64, hashlib.sha256((view / "app.py").read_bytes()).hexdigest()),
        "size": ("1", "25")}
    assert failed(one({"file": "nope.py", "mode": "0444"})) == {"exists": ("true", "false")}
    assert failed(one({"file": "app.py", "exists": False})) == {"exists": ("false", "true")}


def test_directory(view: Path) -> None:
    assert one({"directory": "static", "mode": "0755"})["ok"]
    assert failed(one({"directory": "app.py"})) == {"type": ("directory", "file")}
    assert failed(one({"directory": "gone"})) == {"exists": ("true", "false")}


# -- commands ----------------------------------------------------------------------------
def test_command(view: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GREETING", "hi there")
    py = sys.executable
    assert one({"command": [py, "-c", "import os; print(os.environ['GREETING'])"],
                "stdout": "^hi there$"})["ok"]
    assert one({"command": [py, "-c", "open('app.py')"]})["ok"]  # runs in the view
    result = one({"command": [py, "-c", "import sys; print('out'); sys.exit('bad')"],
                  "exit_status": 0, "stdout": "^in$", "stderr": "worse"})
    assert failed(result) == {"exit_status": ("0", "1"), "stdout": ("/^in$/", "out"),
                              "stderr": ("/worse/", "bad")}
    slow = one({"command": [py, "-c", "import time; time.sleep(5)"], "timeout": "200ms"})
    assert failed(slow) == {"exit_status": ("0", "timed out after 0.2s")}
    missing = failed(one({"command": "no-such-program-here"}))
    assert missing["exit_status"][1].startswith("cannot run: No such file")


# -- ports and HTTP ----------------------------------------------------------------------
@pytest.fixture
def listener() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_port(listener: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_PORT", str(listener))
    assert one({"port": listener})["ok"]
    result = one({"port": "$APP_PORT"})
    assert result["ok"] and result["matchers"][0]["got"] == "true (on 127.0.0.1)"
    assert one({"port": "${APP_PORT}", "listening": True})["ok"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # bound, never listening
    assert failed(one({"port": closed})) == {"listening": ("true", "false")}
    assert one({"port": closed, "listening": False})["ok"]
    assert failed(one({"port": listener, "listening": False})) == {
        "listening": ("false", "true (on 127.0.0.1)")}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.bind(("127.0.0.1", 0))
        assert one({"port": u.getsockname()[1], "protocol": "udp"})["ok"]
    unset = one({"port": "$NOT_SET_ANYWHERE"})
    assert not unset["ok"] and unset["error"] == "$NOT_SET_ANYWHERE is not set in the host's env"


def test_sock_diag_and_proc_net_see_the_same_sockets() -> None:
    # The kernel's own filter (sock_diag) and the /proc/net files it replaces must agree on
    # every field of our listeners (known by their inodes), IPv4 and IPv6, TCP and UDP.
    with contextlib.ExitStack() as stack:
        mine = set()
        for family, kind, ip in ((socket.AF_INET, socket.SOCK_STREAM, "127.0.0.1"),
                                 (socket.AF_INET6, socket.SOCK_STREAM, "::1"),
                                 (socket.AF_INET, socket.SOCK_DGRAM, "127.0.0.1")):
            s = stack.enter_context(socket.socket(family, kind))
            s.bind((ip, 0))
            if kind == socket.SOCK_STREAM:
                s.listen()
            mine.add(os.fstat(s.fileno()).st_ino)
        for protocol in ("tcp", "udp"):
            diag = [s for s in evaluator._sock_diag(protocol) if s["inode"] in mine]
            files = [s for s in evaluator._net_file(protocol) + evaluator._net_file(protocol + "6")
                     if s["inode"] in mine]
            assert sorted(map(str, diag)) == sorted(map(str, files))
            assert len(diag) == (2 if protocol == "tcp" else 1)


def test_port_falls_back_to_proc_net_without_sock_diag(listener: int,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(protocol: str) -> list[dict[str, Any]]:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(evaluator, "_sock_diag", refused)
    result = one({"port": listener})
    assert result["ok"] and result["matchers"][0]["got"] == "true (on 127.0.0.1)"
    assert failed(one({"port": listener, "listening": False})) == {
        "listening": ("false", "true (on 127.0.0.1)")}


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    protocol_version = "HTTP/1.1"  # keeps connections open unless asked to close

    def do_GET(self) -> None:
        if self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"6\r\nhello \r\n7\r\nchunked\r\n0\r\n\r\n")
            return
        if self.path == "/sticky":
            self.close_connection = False  # ignores our Connection: close
        status, body = ((200, b"ok\n") if self.path in ("/healthz", "/sticky")
                        else (404, b"not found\n"))
        self.send_response(status)
        self.send_header("X-App", "hello v2")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET


@pytest.fixture
def server() -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_http(server: str) -> None:
    assert one({"http": "/healthz", "body": "^ok$", "header": {"x-app": "v2$"}},
               address=server)["ok"]
    assert one({"http": f"http://{server}/healthz", "method": "HEAD"})["ok"]
    result = one({"http": "/missing", "body": "ok", "header": {"X-App": "v3", "X-None": "."}},
                 address=server)
    assert failed(result) == {"status": ("200", "404"), "body": ("/ok/", "not found"),
                              "header X-App": ("/v3/", "hello v2"),
                              "header X-None": ("/./", "(absent)")}
    assert one({"http": "/chunked", "body": "^hello chunked$"}, address=server)["ok"]
    # A server that keeps the connection open: the response is whole at Content-Length,
    # so this passes instead of waiting out (and failing on) the timeout.
    assert one({"http": "/sticky", "body": "ok", "timeout": "1s"}, address=server)["ok"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    refused = failed(one({"http": "/", "timeout": "1s"}, address=f"127.0.0.1:{port}"))
    assert refused["status"][1].startswith("ConnectionRefusedError")


# -- processes and env -------------------------------------------------------------------
def test_process_in_the_hosts_session_only() -> None:
    proc = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        time.sleep(0.05)
        assert one({"process": "sleep", "count": 1}, session=proc.pid)["ok"]
        assert one({"process": "sleep 30"}, session=proc.pid)["ok"]  # the command line
        assert failed(one({"process": "sleep"}, session=proc.pid + 10**6)) == {
            "running": ("true", "false")}
        assert failed(one({"process": "sleep", "count": 2}, session=proc.pid)) == {
            "count": ("2", "1")}
        assert one({"process": "no-such-daemon", "running": False}, session=proc.pid)["ok"]
    finally:
        proc.kill()
        proc.wait()


def test_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "8123")
    monkeypatch.delenv("NOT_HERE", raising=False)
    assert one({"env": "PORT", "value": r"^\d+$"})["ok"]
    assert failed(one({"env": "PORT", "value": "^9"})) == {"value": ("/^9/", "8123")}
    assert failed(one({"env": "NOT_HERE"})) == {"exists": ("true", "false")}
    assert one({"env": "NOT_HERE", "exists": False})["ok"]


# -- the OS --------------------------------------------------------------------------------
@pytest.fixture
def os_root(tmp_path: Path) -> str:
    root = tmp_path / "os"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/bash\n"
        "www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\n")
    (root / "etc" / "group").write_text("root:x:0:\nwww-data:x:33:\nadm:x:4:www-data,syslog\n")
    (root / "var" / "lib" / "dpkg").mkdir(parents=True)
    (root / "var" / "lib" / "dpkg" / "status").write_text(
        "Package: openssl\nStatus: install ok installed\nVersion: 3.0.15-1~deb12u1\n"
        "Description: toolkit\n multi-line description\n\n"
        "Package: telnet\nStatus: deinstall ok config-files\nVersion: 0.17\n\n")
    (root / "etc" / "init.d").mkdir()
    (root / "etc" / "init.d" / "cron").write_text("#!/bin/sh\n")
    (root / "etc" / "rc2.d").mkdir()
    (root / "etc" / "rc2.d" / "S01cron").symlink_to("../init.d/cron")
    (root / "run").mkdir()
    (root / "run" / "cron.pid").write_text(f"{os.getpid()}\n")  # a live pid
    return str(root)


def test_package(os_root: str) -> None:
    assert one({"package": "openssl", "version": r"^3\.0"}, os_root=os_root)["ok"]
    assert failed(one({"package": "openssl", "version": "^1"}, os_root=os_root)) == {
        "version": ("/^1/", "3.0.15-1~deb12u1")}
    assert failed(one({"package": "telnet"}, os_root=os_root)) == {
        "installed": ("true", "false")}  # removed, config files left: not installed
    assert one({"package": "telnet", "installed": False}, os_root=os_root)["ok"]
    nodb = failed(one({"package": "openssl"}, os_root=os_root + "/etc"))
    assert "no dpkg database" in nodb["installed"][1]


def test_user_and_group(os_root: str) -> None:
    assert one({"user": "www-data", "uid": 33, "home": "/var/www", "shell": "/usr/sbin/nologin",
                "groups": ["www-data", "adm"]}, os_root=os_root)["ok"]
    assert failed(one({"user": "www-data", "uid": 0, "groups": ["root"]}, os_root=os_root)) == {
        "uid": ("0", "33"), "groups": ("root", "adm, www-data")}
    assert failed(one({"user": "mallory"}, os_root=os_root)) == {"exists": ("true", "false")}
    assert one({"group": "adm", "gid": 4}, os_root=os_root)["ok"]
    assert failed(one({"group": "adm", "gid": 5}, os_root=os_root)) == {"gid": ("5", "4")}
    assert one({"group": "wheel", "exists": False}, os_root=os_root)["ok"]


def test_service_without_systemd(os_root: str) -> None:
    """Not systemd: enabled = an S??NAME link in rc2-5.d (or a unit in a *.wants dir);
    running = /run/NAME.pid names a live process (or a process has the name)."""
    assert one({"service": "cron", "running": True, "enabled": True}, os_root=os_root)["ok"]
    # A daemon nobody runs here (not sshd: the fleet tests' lab machines run sshd, and their
    # processes are visible from this PID namespace).
    assert failed(one({"service": "hinotori-nosuchd", "enabled": True}, os_root=os_root)) == {
        "running": ("true", "false"), "enabled": ("true", "false")}
    assert one({"service": "hinotori-nosuchd", "running": False, "enabled": False},
               os_root=os_root)["ok"]


# -- the whole evaluation --------------------------------------------------------------------
def test_retry_timeout_lets_a_late_check_pass(tmp_path: Path) -> None:
    late = tmp_path / "ready"
    threading.Timer(0.3, late.touch).start()
    first = one({"file": str(late)}, retry_timeout=0)
    assert not first["ok"] and first["attempts"] == 1
    (result,) = run([{"file": str(late)}], retry_timeout=5, sleep=0.1)
    assert result["ok"] and result["attempts"] > 1


def test_retry_stops_at_the_timeout(tmp_path: Path) -> None:
    start = time.monotonic()
    passed, never = run([{"file": str(tmp_path)}, {"file": str(tmp_path / "never")}],
                        retry_timeout=0.5, sleep=0.1)
    assert time.monotonic() - start < 3
    assert passed["ok"] and passed["attempts"] == 1  # passed once: not evaluated again
    assert not never["ok"] and never["attempts"] >= 3


def test_a_broken_check_does_not_hide_the_others(view: Path) -> None:
    plan = {"checks": [{"resource": "nope", "target": "x", "matchers": {}},
                       {"resource": "file", "target": "app.py", "matchers": {"exists": True}}]}
    bad, good = evaluator.evaluate(plan)["results"]
    assert not bad["ok"] and bad["error"].startswith("KeyError")
    assert good["ok"]


def test_runs_as_a_script_with_the_plan_on_stdin(view: Path) -> None:
    plan = {"checks": [c.plan() for c in parse_checks([{"file": "app.py"}, {"file": "no"}])]}
    done = subprocess.run([sys.executable, "-I", "-S", evaluator.__file__],
                          input=json.dumps(plan), capture_output=True, text=True, check=True)
    doc = json.loads(done.stdout)
    assert [r["ok"] for r in doc["results"]] == [True, False]
    assert doc["version"] == evaluator.PLAN_VERSION


def test_the_loader_runs_bytecode_on_our_python_and_source_on_another(view: Path) -> None:
    # What the runner execs in a host: the same results whichever way the evaluator arrives.
    # Each way is proved taken by spoiling the other: bytecode with our cache_tag (the source
    # after it is not valid Python), source with another tag (the bytecode is garbage).
    from hinotori.verify.runner import LOADER, evaluator_input

    plan = {"checks": [c.plan() for c in parse_checks([{"file": "app.py"}, {"file": "no"}])]}

    def loaded(tag: bytes, code: bytes, text: bytes) -> list[bool]:
        stdin = b"%s\n%d\n%s%d\n%s%s" % (tag, len(code), code, len(text), text,
                                         json.dumps(plan).encode())
        done = subprocess.run([sys.executable, "-I", "-S", "-c", LOADER], input=stdin,
                              capture_output=True, check=True)
        return [r["ok"] for r in json.loads(done.stdout)["results"]]

    tag, length, rest = evaluator_input(plan).split(b"\n", 2)  # what the runner sends
    assert tag == sys.implementation.cache_tag.encode()
    code, text = rest[:int(length)], Path(evaluator.__file__).read_bytes()
    assert loaded(tag, code, b"not python (") == [True, False]
    assert loaded(b"cpython-0", b"\0garbage", text) == [True, False]
    done = subprocess.run([sys.executable, "-I", "-S", "-c", LOADER],
                          input=evaluator_input(plan, tag="cpython-0"), capture_output=True,
                          check=True)  # all of it, as a host on another Python gets it
    assert [r["ok"] for r in json.loads(done.stdout)["results"]] == [True, False]


def test_survey_lists_files_sockets_and_processes(view: Path, listener: int,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", str(listener))
    doc = evaluator.survey({"mode": "survey", "port_env": "PORT"})
    files = {f["path"]: f for f in doc["files"]}
    assert files["app.py"]["mode"] == "0444" and len(files["app.py"]["sha256"]) == 64
    assert files["static"]["type"] == "directory" and files["link"]["type"] == "symlink"
    assert any(s["port"] == listener for s in doc["sockets"])
    assert doc["port"] == str(listener)
    with contextlib.suppress(StopIteration):
        me = next(p for p in doc["processes"] if p["comm"].startswith("python"))
        assert me["argv"]
    assert doc["sysctls"] == {}


def test_survey_reads_the_sysctls_it_is_asked_for(view: Path) -> None:
    doc = evaluator.survey({"mode": "survey", "sysctls": ["net.core.somaxconn", "net.nope"]})
    somaxconn = Path("/proc/sys/net/core/somaxconn").read_text().strip()
    assert doc["sysctls"] == {"net.core.somaxconn": somaxconn, "net.nope": None}


# -- the kernel: sysctls, mounts, interfaces, name resolution -----------------------------
def test_kernel_param_reads_proc_sys() -> None:
    actual = " ".join(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    assert one({"kernel_param": "net.ipv4.ip_local_port_range", "value": actual,
                "matches": r"^\d+ \d+$"})["ok"]
    assert failed(one({"kernel_param": "net.ipv4.ip_local_port_range", "value": "1 2"})) == {
        "value": ("1 2", actual)}
    assert failed(one({"kernel_param": "net.no_such_setting"})) == {"exists": ("true", "false")}
    assert one({"kernel_param": "net.no_such_setting", "exists": False})["ok"]


def test_kernel_param_paths_follow_sysctl_naming() -> None:
    from hinotori import sysctls

    for name in ("net.core.somaxconn", "net.ipv4.conf.eth0/100.rp_filter"):
        assert evaluator._proc_sys(name) == sysctls.proc_path(name)
    assert sysctls.proc_path("net.ipv4.conf.eth0/100.rp_filter") == (
        "/proc/sys/net/ipv4/conf/eth0.100/rp_filter")


def test_mount() -> None:
    assert one({"mount": "/proc", "filesystem": "proc", "options": ["rw"]})["ok"]
    assert one({"mount": "/proc/", "mounted": True})["ok"]  # normalised
    assert failed(one({"mount": "/proc", "filesystem": "ext4", "options": ["ro", "size=1k"]})
                  ) == {"filesystem": ("ext4", "proc"), "options": ("ro, size=1k", "rw, no size")}
    assert failed(one({"mount": "/no/such/mount"})) == {"mounted": ("true", "false")}
    assert one({"mount": "/no/such/mount", "mounted": False})["ok"]


def test_interface_over_netlink() -> None:
    mtu = int(Path("/sys/class/net/lo/mtu").read_text())
    assert one({"interface": "lo", "up": True, "mtu": mtu, "addresses": ["127.0.0.1",
                                                                        "127.0.0.1/8"]})["ok"]
    bad = failed(one({"interface": "lo", "up": False, "mtu": 1280,
                      "addresses": ["127.0.0.1/16", "10.1.2.3"]}))
    assert bad["up"] == ("false", "true") and bad["mtu"] == ("1280", str(mtu))
    assert bad["addresses"][0] == "127.0.0.1/16, 10.1.2.3" and "127.0.0.1/8" in bad["addresses"][1]
    assert failed(one({"interface": "nosuch0"})) == {"exists": ("true", "false")}
    names = {i.name for i in __import__("os").scandir("/sys/class/net")}
    assert set(evaluator._interfaces(evaluator.Facts({}))) == names


def test_dns_resolves_like_the_hosts_programs() -> None:
    # only names /etc/hosts answers: no query leaves the machine
    assert one({"dns": "localhost", "addresses": ["127.0.0.1"]})["ok"]
    bad = failed(one({"dns": "localhost", "addresses": ["10.9.9.9"]}))
    assert bad["addresses"][0] == "10.9.9.9" and "127.0.0.1" in bad["addresses"][1]
    assert failed(one({"dns": "localhost", "resolvable": False})) == {
        "resolvable": ("false", "true")}


def test_dns_that_times_out_fails_either_way(monkeypatch: pytest.MonkeyPatch) -> None:
    def slow(*_a: object, **_k: object) -> list:
        time.sleep(2)
        return []

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    for resolvable in (True, False):
        (matcher,) = one({"dns": "localhost", "resolvable": resolvable,
                          "timeout": "100ms"})["matchers"]
        assert not matcher["ok"] and matcher["got"] == "timed out after 0.1s"
