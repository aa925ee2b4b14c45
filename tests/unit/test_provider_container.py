"""Pure parts of the container provider: the Host a container's inspect data describes, and
the engines' log-file framings (the lines are what Podman 4 and Docker write)."""

from __future__ import annotations

import pytest

from hinotori.errors import SpecError
from hinotori.model import HostState
from hinotori.providers.container import container_name, host_from_inspect
from hinotori.providers.container_logs import EngineLine, decode
from hinotori.spec import parse_spec

INSPECT = {
    "Id": "d3e01c3dfbbbf7b36e349c1a09bd3a5222463c185e8a2927f8e18c1838bbd9cd",
    "Name": "hinotori-shop-web-1a2b3c4d",
    "Created": "2026-11-25T10:20:51.226499416Z",
    "Image": "sha256:" + "b4" * 32,
    "LogPath": "/var/lib/containers/storage/overlay-containers/d3e0/userdata/ctr.log",
    "State": {"Running": True, "Pid": 15512},
    "HostConfig": {"LogConfig": {"Type": "k8s-file", "Config": None}},
    "GraphDriver": {"Data": {"MergedDir": "/var/lib/containers/storage/overlay/34/merged"}},
    "Config": {"Labels": {"hinotori.project": "shop", "hinotori.service": "web",
                          "hinotori.release": "3", "hinotori.release-name": "v3",
                          "hinotori.host": "web-1a2b3c4d", "hinotori.port": "41234"}},
}


def test_host_from_inspect() -> None:
    host = host_from_inspect(INSPECT)
    assert host is not None
    assert (host.id, host.service, host.release, host.provider) == ("web-1a2b3c4d", "web", 3,
                                                                     "container")
    assert host.state == HostState.BOOTING
    assert host.address == "127.0.0.1:41234" and host.pid == 15512
    assert host.root == "/var/lib/containers/storage/overlay/34/merged"
    assert host.born_at == 1795602051.226499
    assert host.data["container"] == INSPECT["Id"] and host.data["port"] == 41234
    assert host.data["log"] == INSPECT["LogPath"]
    assert container_name("shop", "web-1a2b3c4d") == INSPECT["Name"]


def test_a_container_without_our_labels_is_not_a_host() -> None:
    assert host_from_inspect({**INSPECT, "Config": {"Labels": {"other": "x"}}}) is None
    bad = {**INSPECT["Config"]["Labels"], "hinotori.port": "eighty"}  # type: ignore[index]
    assert host_from_inspect({**INSPECT, "Config": {"Labels": bad}}) is None
    stopped = host_from_inspect({**INSPECT, "State": {"Running": False, "Pid": 0}})
    assert stopped is not None and stopped.pid is None


def test_decode_podman_k8s_file() -> None:
    assert decode("2026-11-25T10:20:51.226499416+00:00 stderr F err here") == \
        EngineLine("stderr", "err here", True)
    assert decode("2026-11-25T10:20:51.2+00:00 stdout P  two  spaces ") == \
        EngineLine("stdout", " two  spaces ", False)
    assert decode("2026-11-25T10:20:51.2+00:00 stdout F") == \
        EngineLine("stdout", "", True)


def test_decode_docker_json_file() -> None:
    line = '{"log":"GET /healthz 200\\n","stream":"stdout","time":"2026-11-25T10:20:51.2Z"}'
    assert decode(line) == EngineLine("stdout", "GET /healthz 200", True)
    piece = '{"log":"no newline","stream":"stderr","time":"2026-11-25T10:20:51.2Z"}'
    assert decode(piece) == EngineLine("stderr", "no newline", False)


def test_unknown_framing_is_kept_whole() -> None:
    assert decode("just text") == EngineLine("stdout", "just text", True)
    assert decode("{not json") == EngineLine("stdout", "{not json", True)
    assert decode("2026 stdout X x") == EngineLine("stdout", "2026 stdout X x", True)
    assert decode('{"no": "log"}') == EngineLine("stdout", '{"no": "log"}', True)


CONTAINER_SPEC = """\
[engine]
url = "unix:///run/podman/podman.sock"

[services.web]
provider = "container"
command = ["python3", "app.py"]
{image}
"""


def test_spec_container_service_and_engine_url() -> None:
    spec = parse_spec(CONTAINER_SPEC.format(image='image = { os = { suite = "bookworm" } }'))
    assert spec.services["web"].provider == "container"
    assert spec.engine.url == "unix:///run/podman/podman.sock"
    assert parse_spec('[services.web]\ncommand = ["x"]\n').engine.url is None  # discovery


def test_spec_container_service_needs_an_os_image() -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(CONTAINER_SPEC.format(image=""))
    assert "a container host runs an OS image" in str(err.value)
    assert "os = {" in str(err.value)


def test_spec_engine_url_must_be_an_address() -> None:
    with pytest.raises(SpecError) as err:
        parse_spec('[engine]\nurl = "/run/podman.sock"\n[services.web]\ncommand = ["x"]\n')
    assert "engine.url" in str(err.value)
