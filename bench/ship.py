"""Shipping a one-line change to 3 machines: hinotori's registry + SSH tunnel versus
`podman save | ssh … podman load`.

    python bench/ship.py [--runs 3] [--deps-mb 40]

A lab of 3 machines (two Podman, one Docker; needs root). The image: a static busybox plus a
layer of --deps-mb of incompressible "dependencies", then a release that changes one line
(a VERSION file). Each run makes a fresh v(n+1) from the same base and ships it to every
machine that already has v(n), both ways, and measures bytes moved and seconds:

    hinotori   push to the project's loopback registry, each machine pulls through its SSH
               connection (reverse forward): only the layers it lacks travel (bytes counted
               from the registry's access log: blobs served)
    save|load  the peer people use without a registry: the local engine's `save` stream piped
               into `ssh machine podman load` (docker load on the Docker machine); bytes
               counted on the pipe

Prints medians and the ratio of bytes (goal: hinotori moves ≥ 10x fewer).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from results import record  # noqa: E402  (bench/results.py, beside this script)

from hinotori.engine import ensure_podman_service, stop_podman_service  # noqa: E402
from hinotori.lab.images import busybox_image, one_more_layer  # noqa: E402
from hinotori.lab.lab import Lab  # noqa: E402
from hinotori.providers.shipping import (  # noqa: E402
    LocalRegistry,
    machine_ref,
    pull,
    push,
    repository,
)
from hinotori.providers.tunnel import (  # noqa: E402
    EngineTunnel,
    SshTarget,
    engine_client,
    forward_argv,
)


def save_load(local, image: str, lab: Lab, tunnels: list[EngineTunnel]) -> int:
    """The peer: the whole image, as a save stream, into every machine's engine over ssh."""
    moved = 0
    for m, t in zip(lab.machines, tunnels, strict=True):
        # The same ssh options as the tunnel (strict host keys), running the engine's own CLI
        # on the machine against its socket.
        ssh = forward_argv(t.target, Path("/dev/null"), "/dev/null")
        ssh = [a for a in ssh if a not in ("-N", "-L", "/dev/null:/dev/null")]
        cli = ["docker", "-H", m.engine_url] if m.engine == "docker" else \
            ["podman", "--url", m.engine_url]
        loader = subprocess.Popen([*ssh, *cli, "load"], stdin=subprocess.PIPE,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for chunk in local.api.get_image(image, chunk_size=1 << 20):
            moved += len(chunk)
            loader.stdin.write(chunk)  # type: ignore[union-attr]
        loader.stdin.close()  # type: ignore[union-attr]
        if loader.wait() != 0:
            raise SystemExit(f"load on {m.name} failed: {loader.stderr.read().decode()}")  # type: ignore[union-attr]
    return moved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--deps-mb", type=int, default=40)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("the lab needs root")
    work = Path(tempfile.mkdtemp(prefix="hinotori-bench-ship-"))
    local_url = ensure_podman_service(work / "podman.sock")
    import docker

    local = docker.DockerClient(base_url=local_url, timeout=600)
    lab = Lab.up(work / "lab", 3, docker={"m3"})
    registry = LocalRegistry(work / "registry")
    port = registry.ensure()
    tunnels = [EngineTunnel(SshTarget(m.name, m.address, key=lab.key,
                                      known_hosts=lab.known_hosts),
                            m.engine_socket, work, reverse_ports=(port,))
               for m in lab.machines]
    results: dict[str, list[tuple[int, float]]] = {"hinotori": [], "save|load": []}
    try:
        machines = {t.target.machine: engine_client(t) for t in tunnels}
        ports = {t.target.machine: t.remote_port(port) for t in tunnels}
        deps = os.urandom(args.deps_mb << 20)
        base = busybox_image(local, extra={"opt/deps.bin": deps})
        repo = repository("bench", "web")
        previous = one_more_layer(local, base, "VERSION", "0\n")
        # Every machine starts with the previous release, both ways.
        push(local, previous, port, repo)
        for name, client in machines.items():
            pull(client, machine_ref(repo, previous, ports[name]), previous, name)
        for run in range(1, args.runs + 1):
            image = one_more_layer(local, base, "VERSION", f"{run}\n")
            started, offset = time.perf_counter(), registry.log_offset()
            push(local, image, port, repo)
            pushed = time.perf_counter() - started
            # Machines pull at once, as the provider's parallel boots on them do.
            with ThreadPoolExecutor(len(machines)) as pool:
                list(pool.map(lambda item, image=image: pull(
                    item[1], machine_ref(repo, image, ports[item[0]]), image, item[0]),
                    machines.items()))
            moved, _ = registry.blob_bytes_served(offset)
            results["hinotori"].append((moved, time.perf_counter() - started))
            started = time.perf_counter()
            moved = save_load(local, image, lab, tunnels)
            results["save|load"].append((moved, time.perf_counter() - started))
            print(f"run {run}: hinotori {results['hinotori'][-1][0]:,} B "
                  f"{results['hinotori'][-1][1]:.2f} s (push {pushed:.2f} s); save|load "
                  f"{results['save|load'][-1][0]:,} B {results['save|load'][-1][1]:.2f} s",
                  flush=True)
    finally:
        for t in tunnels:
            t.close()
        registry.stop()
        lab.down()
        local.close()
        stop_podman_service(work / "podman.sock")
        shutil.rmtree(work, ignore_errors=True)  # the registry's blobs, the engine's log
    med = {k: (statistics.median(b for b, _ in v), statistics.median(s for _, s in v))
           for k, v in results.items()}
    print(f"\none-line change to 3 machines (base {args.deps_mb} MB), medians of {args.runs}:")
    for k, (b, s) in med.items():
        print(f"  {k:10} {b / 1e6:10.3f} MB moved  {s:6.2f} s")
    bytes_ratio = med["save|load"][0] / max(med["hinotori"][0], 1)
    print(f"  bytes ratio save|load / hinotori: {bytes_ratio:.0f}x   "
          f"time ratio: {med['save|load'][1] / med['hinotori'][1]:.1f}x")
    for k, (b, s) in med.items():
        record("ship", f"{k}: bytes moved for a one-line change to 3 machines", b / 1e6,
               unit="MB", detail=f"{s:.2f} s")
    record("ship", "bytes moved, save|load / hinotori", bytes_ratio, unit="x", goal=">= 10",
           detail=f"base {args.deps_mb} MB, medians of {args.runs}")
    record("ship", "seconds, save|load / hinotori", med["save|load"][1] / med["hinotori"][1],
           unit="x")


if __name__ == "__main__":
    main()
