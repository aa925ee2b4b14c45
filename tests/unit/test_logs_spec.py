"""[logs], [[logs.forward]] and services.*.log_files: defaults, sizes, and errors that say what
to write instead."""

from __future__ import annotations

import pytest

from hinotori.errors import SpecError
from hinotori.spec import parse_spec

BASE = '[services.web]\ncommand = ["python3", "app.py"]\n'


def spec(extra: str = "", service: str = ""):  # type: ignore[no-untyped-def]
    return parse_spec(BASE + service + "\n" + extra)


def error(extra: str = "", service: str = "") -> str:
    with pytest.raises(SpecError) as info:
        spec(extra, service)
    return str(info.value)


def test_defaults() -> None:
    logs = spec().logs
    assert logs.retention == 7 * 86400 and logs.max_size == 1 << 30
    assert logs.ship_interval == 0.2 and logs.forward == []
    assert spec().services["web"].log_files == []


def test_retention_and_size_as_people_write_them() -> None:
    logs = spec('[logs]\nretention = "3d"\nmax_size = "256MiB"\nship_interval = "500ms"').logs
    assert (logs.retention, logs.max_size, logs.ship_interval) == (3 * 86400, 256 << 20, 0.5)
    assert "invalid size" in error('[logs]\nmax_size = "lots"')


def test_forwarders_of_each_kind() -> None:
    logs = spec('''
[[logs.forward]]
kind = "syslog"
address = "127.0.0.1:514"
facility = 3
[[logs.forward]]
kind = "loki"
address = "http://127.0.0.1:3100"
tenant = "team-a"
labels = { env = "prod" }
[[logs.forward]]
kind = "fluentd"
name = "fd"
address = "127.0.0.1:24224"
tag = "apps"
services = ["web"]
retry_max = "30s"
''').logs
    assert [f.kind for f in logs.forward] == ["syslog", "loki", "fluentd"]
    assert logs.forward[2].retry_max == 30.0 and logs.forward[2].services == ["web"]


def test_forwarder_errors() -> None:
    assert "only apply to kind = \"loki\"" in error(
        '[[logs.forward]]\nkind = "syslog"\naddress = "127.0.0.1:514"\ntenant = "x"')
    assert "a loki address is a URL" in error(
        '[[logs.forward]]\nkind = "loki"\naddress = "127.0.0.1:3100"')
    assert "HOST:PORT" in error('[[logs.forward]]\nkind = "fluentd"\naddress = "nowhere"')
    assert "distinct name" in error(
        '[[logs.forward]]\nkind = "fluentd"\nname = "a"\naddress = "127.0.0.1:1"\n'
        '[[logs.forward]]\nkind = "syslog"\nname = "a"\naddress = "127.0.0.1:2"')
    assert "kind" in error('[[logs.forward]]\nkind = "splunk"\naddress = "127.0.0.1:1"')


def test_log_files_are_relative_globs_inside_the_host() -> None:
    web = spec(service='log_files = ["logs/*.log", "app.log"]').services["web"]
    assert web.log_files == ["logs/*.log", "app.log"]
    for bad in ("/var/log/*.log", "../other/*.log", "logs/../../x", ""):
        assert "relative to the host's view or scratch dir" in error(
            service=f'log_files = ["{bad}"]'), bad
