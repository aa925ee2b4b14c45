"""Kernel and network settings on container hosts, on both engines (Podman and Docker): a
service's sysctls reach the container through the engine and kernel_param checks see them,
a sysctl recipe step changes the OS image's digest and its settings reach the hosts of that
image, the new check resources pass and fail inside a container, and `checks generate`'s
survey proposes the changed settings as checks the host passes.

The images are baked for real (``bake_os`` on the Debian base every OS-image test shares,
bootstrapped once per machine and cached, see test_osimage.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hinotori.bake import ImageStore, step_from_dict
from hinotori.bake.osimage import BaseSpec, OsRecipe, bake_os
from hinotori.health import wait_healthy
from hinotori.model import Host, Release, ReleaseConfig
from hinotori.providers.base import BootRequest
from hinotori.providers.container import ContainerProvider
from hinotori.verify import Report, parse_checks, verify_host
from hinotori.verify.survey import starter_checks, survey_host
from tests.support import (
    CONTAINER_SPEC,
    DEBIAN_APP,
    FAST_HEALTH,
    CliProject,
    ensure_debian_base,
    free_port,
    remove_containers,
    teardown,
)

pytestmark = [pytest.mark.integration,
              pytest.mark.parametrize("engine_url", ["podman", "docker"], indirect=True)]

# Values neither the kernel (1024, 4096) nor an engine (Docker: port start 0) picks itself.
PORT_START, SOMAXCONN = "80", "1234"


@pytest.fixture
def bake(docker_client, tmp_path: Path) -> Iterator:
    """bake(*steps) -> engine image id of app.py on the Debian base plus ``steps``."""
    ensure_debian_base(docker_client)
    context = tmp_path / "ctx"
    context.mkdir()
    shutil.copy(DEBIAN_APP, context / "app.py")
    store = ImageStore(tmp_path / "images")
    made: list[str] = []

    def run(*steps: dict) -> str:
        recipe = [step_from_dict({"copy": "app.py", "to": "app.py"}),
                  *(step_from_dict(s) for s in steps)]
        result = bake_os(docker_client, context, recipe, OsRecipe(BaseSpec()), store,
                         project="kerneltest", service="web")
        made.append(result.image.digest)
        return result.image.digest

    yield run
    for image in set(made):
        # Not forced: a forced removal also takes the build containers of a concurrent bake
        # whose step stands on this image (same steps, same cached layer).
        with contextlib.suppress(Exception):  # in use by another test, or gone: not ours
            docker_client.images.remove(image)


@pytest.fixture
def provider(engine_url: str, docker_client) -> Iterator[ContainerProvider]:
    p = ContainerProvider(f"kt{uuid.uuid4().hex[:8]}", url=engine_url)
    yield p
    remove_containers(docker_client, p.project)  # no container may outlive its test


async def boot(provider: ContainerProvider, tmp_path: Path, image: str, host_id: str,
               sysctls: dict[str, str] | None = None) -> Host:
    rel = Release("web", 1, image, ReleaseConfig(command=("python3", "app.py"),
                                                 sysctls=sysctls or {}), time.time())
    host = await provider.boot(BootRequest(host_id, rel, tmp_path, tmp_path / host_id))

    async def alive() -> bool:
        return await provider.adopt(host)

    result = await wait_healthy(host.address or "", FAST_HEALTH, deadline=30, alive=alive)
    assert result.ok, (result, provider.logs(host))
    return host


def verify(provider: ContainerProvider, host: Host, checks: list[dict]) -> Report:
    return asyncio.run(verify_host(provider, host, parse_checks(checks)))


def assert_outcomes(report: Report, cases: list[tuple[dict, bool]]) -> None:
    for (check, want), result in zip(cases, report.results, strict=True):
        assert result.ok is want, (check, result)
        if not want:
            assert result.expected and result.got and result.expected != result.got, result


def test_service_sysctls_reach_the_container_and_checks_see_them(
        provider: ContainerProvider, bake, tmp_path: Path) -> None:
    image = bake()
    sysctls = {"net.ipv4.ip_unprivileged_port_start": PORT_START,
               "net.core.somaxconn": SOMAXCONN}
    tuned = asyncio.run(boot(provider, tmp_path, image, "web-k1", sysctls))
    plain = asyncio.run(boot(provider, tmp_path, image, "web-k2"))
    checks = [{"kernel_param": "net.ipv4.ip_unprivileged_port_start", "value": PORT_START},
              {"kernel_param": "net.core.somaxconn", "value": SOMAXCONN}]
    assert verify(provider, tuned, checks).ok
    # the same checks on a host without them: expected versus got, per setting
    report = verify(provider, plain, checks)
    assert not any(r.ok for r in report.results)
    assert report.results[1].got == "value 4096"
    assert report.results[1].expected == f"value {SOMAXCONN}"


def test_kernel_resources_pass_and_fail_in_a_container(provider: ContainerProvider, bake,
                                                       tmp_path: Path) -> None:
    host = asyncio.run(boot(provider, tmp_path, bake(), "web-k3",
                            {"net.core.somaxconn": SOMAXCONN}))
    cases: list[tuple[dict, bool]] = [
        ({"kernel_param": "net.core.somaxconn", "value": SOMAXCONN}, True),
        ({"kernel_param": "net.core.somaxconn", "matches": "^4096$"}, False),
        ({"kernel_param": "net.no_such_setting", "exists": False}, True),
        ({"mount": "/proc", "filesystem": "proc", "options": ["rw"]}, True),
        ({"mount": "/", "mounted": True}, True),
        ({"mount": "/proc", "filesystem": "ext4"}, False),
        ({"mount": "/no/such/mount"}, False),
        ({"interface": "lo", "up": True, "mtu": 65536, "addresses": ["127.0.0.1/8"]}, True),
        ({"interface": "lo", "mtu": 1500}, False),
        ({"interface": "nosuch0"}, False),
        ({"dns": "localhost", "addresses": ["127.0.0.1"]}, True),
        ({"dns": "localhost", "addresses": ["192.0.2.7"]}, False),
        ({"dns": "localhost", "resolvable": False}, False),
    ]
    assert_outcomes(verify(provider, host, [c for c, _ in cases]), cases)


def test_sysctl_step_changes_the_digest_and_reaches_the_hosts(provider: ContainerProvider,
                                                             bake, tmp_path: Path) -> None:
    plain = bake()
    tuned = bake({"sysctl": {"net.core.somaxconn": "2345"}})
    other = bake({"sysctl": {"net.core.somaxconn": "2346"}})
    assert len({plain, tuned, other}) == 3  # the settings are part of the image's identity
    assert bake({"sysctl": {"net.core.somaxconn": "2345"}}) == tuned  # and only they
    host = asyncio.run(boot(provider, tmp_path, tuned, "web-k4"))
    report = verify(provider, host, [
        {"kernel_param": "net.core.somaxconn", "value": "2345"},
        {"file": "/etc/sysctl.d/60-hinotori.conf", "mode": "0644",
         "contains": ["net.core.somaxconn = 2345"]}])
    assert report.ok, report.results
    # the service's own sysctls win over the image's
    host = asyncio.run(boot(provider, tmp_path, tuned, "web-k5", {"net.core.somaxconn": "999"}))
    assert verify(provider, host, [{"kernel_param": "net.core.somaxconn", "value": "999"}]).ok


def test_checks_generate_proposes_the_changed_settings(provider: ContainerProvider, bake,
                                                       tmp_path: Path) -> None:
    declared = {"net.ipv4.tcp_fin_timeout": "15"}
    host = asyncio.run(boot(provider, tmp_path, bake(), "web-k6",
                            {**declared, "net.core.somaxconn": SOMAXCONN}))
    survey = asyncio.run(survey_host(provider, host, sysctls=list(declared)))
    checks = starter_checks(survey, port=survey.get("port"), port_env="PORT", health=None,
                            command=["python3", "app.py"], declared=declared)
    kernel = {c["kernel_param"]: c for c in checks if "kernel_param" in c}
    assert kernel["net.core.somaxconn"]["value"] == SOMAXCONN
    assert kernel["net.core.somaxconn"]["title"].endswith("(kernel default 4096)")
    assert kernel["net.ipv4.tcp_fin_timeout"]["title"].endswith("(set by the service)")
    assert "net.ipv4.tcp_syncookies" not in kernel  # left at its default: nothing to say
    report = verify(provider, host, list(kernel.values()))
    assert report.ok and report.total == len(kernel)


def test_spec_sysctls_through_bake_verify_and_generate(engine_url: str, tmp_path: Path,
                                                       docker_client) -> None:
    """The whole path through the real CLI: the spec's `sysctls` and sysctl step -> `bake`
    (the release carries the service's, the image the step's) -> `verify` on a throwaway
    container host -> `checks generate` proposing them."""
    ensure_debian_base(docker_client)  # the CLI's bake finds it
    p = CliProject(tmp_path / "proj")
    p.path.mkdir()
    shutil.copy(DEBIAN_APP, p.path / "app.py")
    p.set_version("1")
    p.router = f"127.0.0.1:{free_port()}"
    spec = CONTAINER_SPEC.format(name=f"k{uuid.uuid4().hex[:6]}", listen=p.router).replace(
        'keep_previous = "10m"\n',
        f'keep_previous = "10m"\nsysctls = {{ "net.ipv4.ip_unprivileged_port_start" = '
        f'"{PORT_START}" }}\n').replace(
        '  { copy = "VERSION"',
        '  { sysctl = { "net.core.somaxconn" = "2345" } },\n  { copy = "VERSION"')
    check = ('\n[[services.web.checks]]\nkernel_param = "net.ipv4.ip_unprivileged_port_start"\n'
             f'value = "{PORT_START}"\n\n[[services.web.checks]]\n'
             'kernel_param = "net.core.somaxconn"\nvalue = "{somaxconn}"\n')
    (p.path / "hinotori.toml").write_text(spec + check.format(somaxconn="2345"))
    try:
        p.cli("bake", "web", timeout=300)
        (release,) = p.json("releases", "web")  # type: ignore[misc]
        assert release["config"]["sysctls"] == {
            "net.ipv4.ip_unprivileged_port_start": PORT_START}
        done = p.cli("verify", "web", "--json", timeout=180)
        assert json.loads(done.stdout)["failed"] == 0
        # the same check with another value fails, saying what the host has
        (p.path / "hinotori.toml").write_text(spec + check.format(somaxconn="4096"))
        done = p.cli("verify", "web", "--json", check=False, timeout=180)
        assert done.returncode == 1, done.stderr
        failed = [r for r in json.loads(done.stdout)["results"] if not r["ok"]]
        assert [m["got"] for r in failed for m in r["matchers"] if not m["ok"]] == ["2345"]
        generated = p.cli("checks", "generate", "web", "--json", timeout=180).stdout
        kernel = {c["kernel_param"]: c["value"] for c in json.loads(generated)
                  if "kernel_param" in c}
        assert kernel["net.ipv4.ip_unprivileged_port_start"] == PORT_START
        assert kernel["net.core.somaxconn"] == "2345"
    finally:
        teardown(p)
