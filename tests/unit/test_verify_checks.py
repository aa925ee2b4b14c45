"""The check spec: every resource validates, and every mistake is a SpecError at its file, line
and key (through the real spec loader)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from hinotori.errors import SpecError
from hinotori.spec import parse_spec
from hinotori.verify.checks import (
    RESOURCES,
    CommandCheck,
    FileCheck,
    HttpCheck,
    PortCheck,
    parse_checks,
)

HEAD = '[services.web]\ncommand = ["python3", "app.py"]\n'


def spec_error(text: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        parse_spec(HEAD + text, file="hinotori.toml")
    return info.value


def test_every_resource_validates_from_toml() -> None:
    spec = parse_spec(HEAD + r'''
[[services.web.checks]]
file = "app.py"
mode = "0444"
contains = ["ThreadingHTTPServer", "def main"]
matches = "^import os$"
size = "4KiB"

[[services.web.checks]]
command = "python3 -V"
exit_status = 0
stdout = "3\\."
timeout = "5s"

[[services.web.checks]]
port = "$PORT"
listening = true

[[services.web.checks]]
http = "/healthz"
status = 200
body = "ok"
header = { Content-Type = "^text/plain" }

[[services.web.checks]]
directory = "static"

[[services.web.checks]]
process = "app.py"
count = 1

[[services.web.checks]]
env = "PORT"
value = '^\d+$'

[[services.web.checks]]
package = "openssl"
version = "^3\\."

[[services.web.checks]]
user = "www-data"
uid = 33
groups = ["www-data"]

[[services.web.checks]]
group = "adm"
gid = 4

[[services.web.checks]]
service = "ssh"
enabled = true

[[services.web.checks]]
kernel_param = "net.ipv4.ip_local_port_range"
value = "32768\t60999"

[[services.web.checks]]
mount = "/"
filesystem = "overlay"
options = ["rw", "relatime"]

[[services.web.checks]]
interface = "lo"
up = true
mtu = 65536
addresses = ["127.0.0.1/8", "::1"]

[[services.web.checks]]
dns = "localhost"
addresses = ["127.0.0.1"]
timeout = "2s"
''')
    checks = spec.services["web"].checks
    assert [c.resource for c in checks] == ["file", "command", "port", "http", "directory",
                                            "process", "env", "package", "user", "group",
                                            "service", "kernel_param", "mount", "interface",
                                            "dns"]
    assert set(RESOURCES) == {c.resource for c in checks}
    file, command = checks[0], checks[1]
    assert isinstance(file, FileCheck) and file.size == 4096 and file.mode == "0444"
    assert isinstance(command, CommandCheck) and command.command == ["python3", "-V"]
    assert command.timeout == 5.0
    assert checks[3].header == {"Content-Type": "^text/plain"}  # type: ignore[union-attr]


def test_plan_is_what_the_evaluator_reads() -> None:
    file, port, http = parse_checks([{"file": "app.py", "mode": "444"},
                                     {"port": 8080, "title": "the app port"},
                                     {"http": "/x", "body": "ok"}])
    assert file.plan() == {"resource": "file", "target": "app.py", "description": "file app.py",
                           "matchers": {"exists": True, "mode": "0444"}}
    assert isinstance(port, PortCheck) and port.port == "8080"
    assert port.describe() == "the app port"
    assert isinstance(http, HttpCheck) and http.describe() == "http GET /x"
    assert http.matchers() == {"method": "GET", "status": 200, "body": "ok", "timeout": 5.0}


def test_a_command_string_is_split_without_a_shell() -> None:
    (check,) = parse_checks([{"command": "sh -c 'echo $HOME'"}])
    assert check.target == ["sh", "-c", "echo $HOME"]
    assert check.describe() == "command sh -c 'echo $HOME'"


def test_no_resource_is_an_error_at_the_check() -> None:
    e = spec_error('\n[[services.web.checks]]\nmode = "0444"\n')
    assert e.line == 4 and e.key == "services.web.checks.0"
    assert "names exactly one resource" in e.message and "names none" in e.message


def test_two_resources_is_an_error_at_the_check() -> None:
    e = spec_error('checks = [\n  { file = "a" },\n  { file = "b", command = "c" },\n]\n')
    assert e.line == 5 and e.key == "services.web.checks.1"
    assert "names file and command" in e.message


def test_unknown_matcher_points_at_its_own_line_and_key() -> None:
    e = spec_error('\n[[services.web.checks]]\ncommand = "true"\nstdot = "x"\n')
    assert (e.line, e.key) == (6, "services.web.checks.0.stdot")
    assert "unknown key" in e.message


def test_bad_regex_points_at_its_key() -> None:
    e = spec_error('\n[[services.web.checks]]\nfile = "a"\n\n[[services.web.checks]]\n'
                   'http = "/"\nbody = "(unclosed"\n')
    assert (e.line, e.key) == (9, "services.web.checks.1.body")
    assert "not a valid regular expression" in e.message


@pytest.mark.parametrize(("table", "key", "words"), [
    ('{ file = "a", mode = "644x" }', "mode", "octal string"),
    ('{ file = "a", type = "fifo" }', "type", "Input should be"),
    ('{ file = "a", sha256 = "abc" }', "sha256", "should match pattern"),
    ('{ port = "PORT" }', "port", "a port is a number"),
    ('{ port = 70000 }', "port", "a port is a number"),
    ('{ http = "healthz" }', None, "path such as"),
    ('{ command = "" }', "command", "cannot be empty"),
    ('{ command = "x", timeout = 5 }', "timeout", "durations are strings"),
    ('{ env = "1BAD" }', "env", "should match pattern"),
    ('{ file = "a", exists = false, mode = "0644" }', None, "drop mode"),
    ('{ kernel_param = "somaxconn" }', "kernel_param", "not a sysctl name"),
    ('{ kernel_param = "net.core.somaxconn", value = "" }', "value", "non-empty"),
    ('{ kernel_param = "net.core.somaxconn", value = true }', "value", "non-empty"),
    ('{ mount = "tmp" }', "mount", "should match pattern"),
    ('{ mount = "/", mounted = false, filesystem = "tmpfs" }', None, "drop filesystem"),
    ('{ interface = "eth0", addresses = ["10.0.0.300"] }', "addresses.0", "not an IP"),
    ('{ interface = "a-very-long-interface-name" }', "interface", "should match pattern"),
    ('{ interface = "lo", mtu = 10 }', "mtu", "greater than or equal"),
    ('{ dns = "localhost", addresses = ["127.0.0.1/8"] }', "addresses.0", "not an IP"),
    ('{ dns = "a b" }', "dns", "should match pattern"),
    ('{ dns = "localhost", resolvable = false, addresses = ["127.0.0.1"] }', None,
     "drop addresses"),
])
def test_malformed_matchers_are_spec_errors(table: str, key: str | None, words: str) -> None:
    e = spec_error(f"checks = [\n  {table},\n]\n")
    assert e.line == 4
    assert e.key == "services.web.checks.0" + (f".{key}" if key else "")
    assert words in e.message


def test_kernel_resources_normalise_what_they_compare() -> None:
    param, iface, dns = parse_checks([
        {"kernel_param": "net.ipv4.ip_local_port_range", "value": "32768\t 60999"},
        {"interface": "lo", "addresses": ["::0001", "127.0.0.1/8"]},
        {"dns": "localhost", "addresses": ["0:0::1"]}])
    assert param.plan()["matchers"] == {"exists": True, "value": "32768 60999"}
    assert parse_checks([{"kernel_param": "kernel.shmmni", "value": 4096}])[0].matchers() == {
        "exists": True, "value": "4096"}
    assert iface.matchers()["addresses"] == ["::1", "127.0.0.1/8"]
    assert dns.matchers() == {"resolvable": True, "addresses": ["::1"], "timeout": 5.0}
    assert param.describe() == "kernel_param net.ipv4.ip_local_port_range"


def test_checks_default_to_none_and_testinfra_is_a_list_of_paths() -> None:
    svc = parse_spec(HEAD).services["web"]
    assert svc.checks == [] and svc.testinfra == []
    svc = parse_spec(HEAD + 'testinfra = ["tests/test_host.py"]\n').services["web"]
    assert svc.testinfra == ["tests/test_host.py"]


def test_parse_checks_raises_validation_errors() -> None:
    with pytest.raises(ValidationError):
        parse_checks([{"nope": 1}])


def test_the_first_resource_key_names_the_resource() -> None:
    """`group` is a resource and a matcher of `file`: the first resource key decides."""
    file, group = parse_checks([{"file": "a", "group": "adm"}, {"group": "adm", "gid": 4}])
    assert file.resource == "file" and file.group == "adm"  # type: ignore[union-attr]
    assert group.resource == "group"
    e = spec_error('checks = [\n  { group = "adm", file = "x" },\n]\n')
    assert "names group and file" in e.message and e.key == "services.web.checks.0"
