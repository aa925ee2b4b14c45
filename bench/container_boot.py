"""Host boot to healthy: the container provider versus `podman run` versus the process provider.

    python bench/container_boot.py [--boots 20]

One host at a time, timed from "boot it" to the first healthy answer on its published address
(GET /healthz = 200, polled every 20 ms by the same loop for all three), then destroyed (not
timed). The app is examples/debian-web/app.py in all three:

    container   hinotori's ContainerProvider.boot through the Engine API (image check, create
                with labels and a 127.0.0.1 port binding, start, inspect), on the Debian base
                plus the app (bootstrapped once and kept in the engine)
    podman-run  the peer: `podman run -d -p 127.0.0.1:PORT:8000` of the same image, as a
                person would, through the CLI (no API service in between)
    process     hinotori's ProcessProvider: a copy of a file tree and a local process

Boots alternate between the three, so drift on this noisy machine hits them alike. Prints
p50/p99 per kind and the ratios container/podman-run and container/process (below 1: the
container provider is faster).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from results import record  # noqa: E402  (bench/results.py, beside this script)

from hinotori.bake.osimage import BaseSpec, ensure_base  # noqa: E402
from hinotori.engine import (  # noqa: E402
    ensure_podman_service,
    stop_podman_service,
    try_connect,
)
from hinotori.health import wait_healthy  # noqa: E402
from hinotori.model import HealthCheck, Release, ReleaseConfig  # noqa: E402
from hinotori.providers.base import BootRequest  # noqa: E402
from hinotori.providers.container import CONTAINER_PORT, ContainerProvider  # noqa: E402
from hinotori.providers.process import ProcessProvider  # noqa: E402

APP = ROOT / "examples" / "debian-web" / "app.py"
CHECK = HealthCheck(path="/healthz", interval=0.02, healthy=1, timeout=2.0)
TAR_CACHE = Path.home() / ".cache" / "hinotori-test"



def app_image(client) -> str:
    base = ensure_base(client, BaseSpec(), tar_cache=TAR_CACHE)
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        dockerfile = f"FROM {base}\nWORKDIR /app\nCOPY app.py /app/app.py\n".encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
        tar.add(APP, arcname="app.py")
    context.seek(0)
    image, _ = client.images.build(fileobj=context, custom_context=True, rm=True,
                                   tag="localhost/hinotori-bench/container-boot:latest")
    return image.id


async def healthy(address: str) -> None:
    result = await wait_healthy(address, CHECK, deadline=60)
    if not result.ok:
        raise SystemExit(f"host at {address} never became healthy: {result.detail}")


async def boot_container(provider: ContainerProvider, image: str, tmp: Path) -> float:
    rel = Release("web", 1, image, ReleaseConfig(command=("python3", "app.py")), time.time())
    host_id = f"web-{uuid.uuid4().hex[:8]}"
    start = time.perf_counter()
    host = await provider.boot(BootRequest(host_id, rel, tmp, tmp / host_id))
    await healthy(host.address or "")
    took = time.perf_counter() - start
    await provider.destroy(host, grace=5)
    return took


async def boot_podman_run(url: str, image: str) -> float:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    name = f"hinotori-bench-{uuid.uuid4().hex[:8]}"
    start = time.perf_counter()
    done = await asyncio.to_thread(
        subprocess.run, ["podman", "run", "-d", "--name", name, "-p",
                         f"127.0.0.1:{port}:{CONTAINER_PORT}", "-e", f"PORT={CONTAINER_PORT}",
                         "--log-driver", "k8s-file", image, "python3", "app.py"],
        capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"podman run failed: {done.stderr}")
    await healthy(f"127.0.0.1:{port}")
    took = time.perf_counter() - start
    await asyncio.to_thread(subprocess.run, ["podman", "rm", "-f", "-t", "5", name],
                            capture_output=True)
    return took


async def boot_process(provider: ProcessProvider, image_root: Path) -> float:
    rel = Release("web", 1, "sha256:" + "0" * 64,
                  ReleaseConfig(command=(sys.executable, "app.py"), env={"BIND": "127.0.0.1"}),
                  time.time())
    host_id = f"web-{uuid.uuid4().hex[:8]}"
    start = time.perf_counter()
    host = await provider.boot(BootRequest(host_id, rel, image_root,
                                           provider.hosts_root / host_id))
    await healthy(host.address or "")
    took = time.perf_counter() - start
    await provider.destroy(host, grace=5)
    return took


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--boots", type=int, default=20)
    args = parser.parse_args()
    if not shutil.which("podman") or not shutil.which("mmdebstrap"):
        raise SystemExit("needs podman and mmdebstrap (apt-get install podman mmdebstrap)")
    with tempfile.TemporaryDirectory(prefix="hinotori-bench-boot-") as tmp_name:
        tmp = Path(tmp_name)
        url = ensure_podman_service(tmp / "podman.sock")  # a private one, stopped below
        client = try_connect(url)
        assert client is not None
        client.api.timeout = 300
        print("preparing the image (Debian base + app; the base is bootstrapped once)...")
        image = app_image(client)
        container = ContainerProvider(f"bench{uuid.uuid4().hex[:6]}", url=url)
        process = ProcessProvider(tmp / "hosts")
        tree = tmp / "tree"
        tree.mkdir()
        shutil.copy(APP, tree / "app.py")
        times: dict[str, list[float]] = {"container": [], "podman-run": [], "process": []}
        # One warm-up each (page cache, first imports), not counted.
        await boot_container(container, image, tmp)
        await boot_podman_run(url, image)
        await boot_process(process, tree)
        try:
            for _ in range(args.boots):
                times["container"].append(await boot_container(container, image, tmp))
                times["podman-run"].append(await boot_podman_run(url, image))
                times["process"].append(await boot_process(process, tree))
        finally:
            for c in client.containers.list(all=True, filters={
                    "label": f"hinotori.project={container.project}"}):
                c.remove(force=True, v=True)
            client.close()
            stop_podman_service(tmp / "podman.sock")
        print(f"\nboot to healthy, {args.boots} boots each (seconds)")
        print(f"{'kind':<12} {'p50':>8} {'p99':>8} {'mean':>8}")
        for kind, values in times.items():
            print(f"{kind:<12} {pct(values, 0.5):8.3f} {pct(values, 0.99):8.3f} "
                  f"{statistics.mean(values):8.3f}")
            record("container_boot", f"{kind}: boot to healthy, p50", pct(values, 0.5), unit="s",
                   detail=f"{args.boots} boots")
        c50, c99 = pct(times["container"], 0.5), pct(times["container"], 0.99)
        for peer in ("podman-run", "process"):
            print(f"container / {peer:<10}  p50 {c50 / pct(times[peer], 0.5):5.2f}x  "
                  f"p99 {c99 / pct(times[peer], 0.99):5.2f}x")
            record("container_boot", f"container / {peer} boot time, p50",
                   c50 / pct(times[peer], 0.5), unit="x")


if __name__ == "__main__":
    asyncio.run(main())
