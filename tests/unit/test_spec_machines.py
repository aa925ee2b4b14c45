"""`[machines.NAME]` and a service's `machines`: what cannot work is refused at its key."""

from __future__ import annotations

import pytest

from hinotori.errors import SpecError
from hinotori.spec import parse_spec

BASE = """
[machines.m1]
address = "10.0.0.11"
ssh = {{ user = "deploy", port = 2222, key = "~/.ssh/id_ed25519" }}
labels = {{ zone = "a" }}

[machines.m2]
address = "build-2.example.internal"

[services.web]
provider = "{provider}"
machines = {machines}
command = ["python3", "app.py"]
{image}
"""
OS = '[services.web.image]\nos = { suite = "bookworm" }'


def spec(machines: str = '["m1", "m2"]', provider: str = "container", image: str = OS) -> str:
    return BASE.format(machines=machines, provider=provider, image=image)


def test_machines_and_their_defaults() -> None:
    s = parse_spec(spec())
    m1, m2 = s.machines["m1"], s.machines["m2"]
    assert (m1.ssh.user, m1.ssh.port, m1.labels) == ("deploy", 2222, {"zone": "a"})
    assert (m2.ssh.user, m2.ssh.port, m2.engine) == ("root", 22, "unix:///run/podman/podman.sock")
    assert s.services["web"].machines == ["m1", "m2"]


@pytest.mark.parametrize(("text", "where", "says"), [
    (spec('["m1", "m9"]'), ":12: services.web.machines", "no [machines.NAME] table for m9"),
    (spec(provider="process", image=""), ":12: services.web.machines",
     "machines run containers, not 'process' hosts"),
    (spec().replace('port = 2222', 'port = "2222"'), "machines.m1.ssh.port", "integer"),
    (spec().replace('"10.0.0.11"', '"10.0.0.11; rm -rf /"'), "machines.m1.address",
     "IP address or a host name"),
    (spec().replace('[machines.m2]', '[machines.m2]\nengine = "tcp://10.0.0.12:2375"'),
     "machines.m2.engine", "unix:///"),
])
def test_what_cannot_work_is_refused_at_its_key(text: str, where: str, says: str) -> None:
    with pytest.raises(SpecError) as e:
        parse_spec(text)
    assert where in str(e.value) and says in str(e.value), str(e.value)
