"""Kernel settings without an engine: the `sysctls` spec key and its refusals, the `sysctl`
recipe step (spec, Containerfile, context, recipe hash), the release config that carries them
and the image label the container provider reads."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from hinotori import sysctls
from hinotori.bake import ImageStore, bake, step_from_dict
from hinotori.bake.osimage import context_tar, translate
from hinotori.bake.provenance import recipe_hash
from hinotori.errors import BakeError, SpecError
from hinotori.model import ReleaseConfig
from hinotori.spec import parse_spec
from hinotori.spec.schema import ServiceSpec

CONTAINER = """\
[services.web]
provider = "container"
command = ["python3", "app.py"]
{service}
[services.web.image]
os = {{ suite = "bookworm" }}
{image}
"""
PROCESS = '[services.web]\ncommand = ["python3", "app.py"]\n'


def load(service: str = "", image: str = "") -> ServiceSpec:
    return parse_spec(CONTAINER.format(service=service, image=image),
                      file="hinotori.toml").services["web"]


def error(text: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        parse_spec(text, file="hinotori.toml")
    return info.value


def test_container_sysctls_go_into_the_release_config() -> None:
    svc = load('sysctls = { "net.ipv4.ip_unprivileged_port_start" = "0", '
               '"kernel.shmmni" = 8192, "net.ipv4.ip_local_port_range" = "2000 3000" }')
    config = svc.release_config()
    assert config.sysctls == {"net.ipv4.ip_unprivileged_port_start": "0",
                              "kernel.shmmni": "8192",
                              "net.ipv4.ip_local_port_range": "2000 3000"}
    assert ReleaseConfig.from_dict(config.to_dict()) == config
    assert config != load().release_config()  # a sysctl change is a new release


def test_no_sysctls_leave_the_release_config_as_before() -> None:
    d = load().release_config().to_dict()
    assert "sysctls" not in d and ReleaseConfig.from_dict(d).sysctls == {}


@pytest.mark.parametrize("name", ["net.core.somaxconn", "net.ipv4.conf.eth0/100.rp_filter",
                                  "kernel.shmmax", "kernel.msgmnb", "kernel.sem",
                                  "fs.mqueue.msg_max"])
def test_namespaced_names(name: str) -> None:
    assert sysctls.namespaced(name)
    assert load(f'sysctls = {{ "{name}" = "1" }}').sysctls == {name: "1"}


@pytest.mark.parametrize("name", ["vm.swappiness", "kernel.pid_max", "fs.file-max",
                                  "kernel.semaphores", "kernel.hostname"])
def test_a_machine_wide_sysctl_is_an_error_naming_the_allowed_ones(name: str) -> None:
    e = error(CONTAINER.format(service=f'sysctls = {{ "{name}" = "1" }}', image=""))
    assert e.key == f"services.web.sysctls.{name}" and e.line == 4
    assert "not a namespaced sysctl" in e.message
    assert "net.*, kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*" in e.message


@pytest.mark.parametrize(("table", "words"), [
    ('{ somaxconn = "1" }', "not a sysctl name"),
    ('{ "net.core.somaxconn" = "" }', "non-empty one-line string"),
    ('{ "net.core.somaxconn" = true }', "non-empty one-line string"),
    ('{ "net.core.somaxconn" = 1.5 }', "non-empty one-line string"),
])
def test_malformed_sysctls_are_errors_at_their_key(table: str, words: str) -> None:
    e = error(CONTAINER.format(service=f"sysctls = {table}", image=""))
    assert e.key.startswith("services.web.sysctls") and e.line == 4
    assert words in e.message


def test_a_process_host_refuses_sysctls() -> None:
    e = error(PROCESS + 'sysctls = { "net.core.somaxconn" = "1024" }\n')
    assert e.key == "services.web"
    assert "shares the machine's kernel" in e.message and "provider = \"container\"" in e.message


def test_sysctl_steps_load_and_merge_by_priority() -> None:
    svc = load(image='steps = [\n'
                     '  { sysctl = { "net.core.somaxconn" = "2048" }, priority = 70 },\n'
                     '  { sysctl = { "net.core.somaxconn" = "1024", '
                     '"net.unix.max_dgram_qlen" = 64 } },\n]')
    assert svc.image.sysctls() == {"net.core.somaxconn": "2048", "net.unix.max_dgram_qlen": "64"}
    recipe = svc.image.recipe()
    assert [s.to_json() for s in recipe] == [
        {"sysctl": {"net.core.somaxconn": "2048"}, "priority": 70},
        {"sysctl": {"net.core.somaxconn": "1024", "net.unix.max_dgram_qlen": "64"}}]
    assert svc.release_config().sysctls == {}  # the image's go with the image (its label)


@pytest.mark.parametrize(("text", "key", "words"), [
    (PROCESS + '[services.web.image]\nsteps = [{ sysctl = { "net.core.somaxconn" = "1" } }]\n',
     "services.web.image", "sysctl steps set kernel settings of an OS image"),
    (CONTAINER.format(service="", image='steps = [{ sysctl = { "vm.swappiness" = "1" } }]'),
     "services.web", "sets vm.swappiness"),
    (CONTAINER.format(service="", image='steps = [{ sysctl = { "net.core.somaxconn" = "1" } },'
                                        ' { sysctl = { "net.core.rmem_max" = "1" } }]'),
     "services.web.image", "same /etc/sysctl.d file"),
    (CONTAINER.format(service="", image='steps = [{ sysctl = {} }]'),
     "services.web.image.steps.0.sysctl", "at least 1"),
    (CONTAINER.format(service="", image='steps = [{ sysctl = { "a.b" = "1" }, priority = 100 }]'),
     "services.web.image.steps.0.priority", "less than or equal to 99"),
])
def test_sysctl_step_errors(text: str, key: str, words: str) -> None:
    e = error(text)
    assert e.key == key and words in e.message, e


def test_a_sysctl_step_is_a_file_in_etc_and_a_label() -> None:
    steps = [step_from_dict({"run": "true"}),
             step_from_dict({"sysctl": {"net.core.somaxconn": "1024",
                                        "net.ipv4.ip_local_port_range": "2000 3000"}}),
             step_from_dict({"sysctl": {"net.core.somaxconn": "4096"}, "priority": 70})]
    t = translate(steps, base="base")
    lines = t.text.splitlines()
    assert lines[-3:] == [
        'COPY ["f2", "/etc/sysctl.d/60-hinotori.conf"]',
        'COPY ["f3", "/etc/sysctl.d/70-hinotori.conf"]',
        'LABEL "hinotori.sysctls"="{\\"net.core.somaxconn\\":\\"4096\\",'
        '\\"net.ipv4.ip_local_port_range\\":\\"2000 3000\\"}"']
    assert t.owners[len(lines) - 2] == 2 and t.owners[len(lines)] == 0
    with context_tar(t, None) as f, tarfile.open(fileobj=f) as tar:
        member = tar.getmember("f2")
        text = tar.extractfile(member).read().decode()  # type: ignore[union-attr]
    assert member.mode == 0o644
    assert text.splitlines()[1:] == ["net.core.somaxconn = 1024",
                                     "net.ipv4.ip_local_port_range = 2000 3000"]
    assert sysctls.from_label({sysctls.LABEL: sysctls.to_label({"a.b": "1"})}) == {"a.b": "1"}
    assert sysctls.from_label(None) == {} and sysctls.from_label({sysctls.LABEL: "[1]"}) == {}
    assert "sysctl" not in translate(steps[:1], base="base").text.lower()


def test_a_sysctl_step_changes_the_recipe_and_the_containerfile() -> None:
    base = [step_from_dict({"run": "true"})]
    one = [*base, step_from_dict({"sysctl": {"net.core.somaxconn": "1024"}})]
    other = [*base, step_from_dict({"sysctl": {"net.core.somaxconn": "2048"}})]
    hashes = {recipe_hash(s) for s in (base, one, other)}
    texts = {translate(s, base="b").text for s in (base, one, other)}
    assert len(hashes) == 3 and len(texts) == 3


def test_a_sysctl_step_in_a_file_tree_bake_fails_with_advice(tmp_path: Path) -> None:
    (tmp_path / "ctx").mkdir()
    with pytest.raises(BakeError) as info:
        bake(tmp_path / "ctx", [step_from_dict({"sysctl": {"net.core.somaxconn": "1"}})],
             ImageStore(tmp_path / "images"))
    assert "need an OS image" in str(info.value)
