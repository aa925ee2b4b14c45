"""OS image bakes: hinotori (through the Engine API) versus `podman build --layers`.

    python bench/osimage.py [--runs 5] [--cold-runs 3]

Both build the same thing on the same engine storage and the same Debian base
(examples/debian-web's recipe: an apt step with curl, a useradd run step, two copy steps): the
Containerfile hinotori generates for the recipe, written out with its build context, is what
`podman build` gets, so the comparison is of the tools, not of two recipes.

    cold                  every step runs: `hinotori bake --no-cache` vs
                          `podman build --layers --no-cache` (the apt step downloads, so this
                          one depends on the mirror more than on either tool)
    one-line change       VERSION (copied by the last step) gets new content before each run:
                          three layers come from the cache, one is built

Times are whole commands as a user runs them (`python -m hinotori bake web` and `podman build`),
medians of the runs, alternating the tools; the one-line change is also timed in-process
(`releases.bake_service()`, what the controller runs when a push ships a service: no
interpreter start and no CLI imports, which cost hinotori ~0.5 s a command). Ratios are
podman / hinotori (above 1: hinotori is faster). Goal: the cached rebake no slower than
podman's (ratio >= 1).

Needs podman and mmdebstrap; the base is bootstrapped once (and kept in the engine).
"""

from __future__ import annotations

import argparse
import os
import shutil
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

from hinotori.bake.context import BuildSource  # noqa: E402
from hinotori.bake.ignore import IgnoreRules  # noqa: E402
from hinotori.bake.osimage import BaseSpec, context_tar, translate  # noqa: E402
from hinotori.bake.osimage.base import ensure_base  # noqa: E402
from hinotori.bake.runsteps import ZIP_EPOCH  # noqa: E402
from hinotori.engine import (  # noqa: E402
    ensure_podman_service,
    stop_podman_service,
)
from hinotori.project import Project  # noqa: E402
from hinotori.releases import bake_service  # noqa: E402
from hinotori.spec import load_spec  # noqa: E402

EXAMPLE = ROOT / "examples" / "debian-web"



def timed(argv: list[str], env: dict[str, str]) -> float:
    began = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - began
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{result.stdout}\n{result.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cold-runs", type=int, default=3)
    args = parser.parse_args()
    for tool in ("podman", "mmdebstrap"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")

    with tempfile.TemporaryDirectory(prefix="bench-osimage-") as tmp_dir:
        tmp = Path(tmp_dir)
        url = ensure_podman_service(tmp / "podman.sock")  # a private one, stopped below
        try:
            run(tmp, url, args)
        finally:
            stop_podman_service(tmp / "podman.sock")


def run(tmp: Path, url: str, args: argparse.Namespace) -> None:
    import docker

    project = tmp / "proj"
    shutil.copytree(EXAMPLE, project)
    spec_text = (project / "hinotori.toml").read_text()
    name = f"bench-{uuid.uuid4().hex[:8]}"
    spec_text = spec_text.replace('name = "debian-web"', f'name = "{name}"')
    (project / "hinotori.toml").write_text(spec_text)
    image = load_spec(project).spec.services["web"].image
    assert image.os is not None
    base = BaseSpec(suite=image.os.suite, variant=image.os.variant,
                    packages=tuple(image.os.packages), mirror=image.os.mirror, arch=image.os.arch)
    client = docker.DockerClient(base_url=url)
    t0 = time.perf_counter()
    ensure_base(client, base, on_progress=lambda m: print(f"  {m}", flush=True))
    print(f"base ready in {time.perf_counter() - t0:.1f}s: {base.tag}")

    # The peer's input: hinotori's own Containerfile and context, unpacked into a directory.
    peer = tmp / "peer"
    peer.mkdir()
    source = BuildSource(project, IgnoreRules.load(project, ".hinotoriignore"))
    translation = translate(image.recipe(), base=base.tag, workdir=image.os.workdir,
                            source=source)
    with context_tar(translation, source) as f, tarfile.open(fileobj=f) as tar:
        tar.extractall(peer, filter="tar")
    version_copies = [peer / n / "VERSION" for n, (src, *_k) in translation.copies.items()
                      if src == "VERSION"]

    env = {**os.environ, "DOCKER_HOST": url, "NO_COLOR": "1"}
    hinotori = [sys.executable, "-m", "hinotori", "bake", "web", "--spec", str(project)]
    podman = ["podman", "build", "--layers", "--timestamp", str(ZIP_EPOCH), "-q",
              "-f", str(peer / "Containerfile"), "-t", f"localhost/bench/{name}:peer",
              str(peer)]

    def bump() -> None:
        text = f"{uuid.uuid4().hex}\n"
        (project / "VERSION").write_text(text)
        for path in version_copies:
            path.write_text(text)

    results: dict[str, tuple[list[float], list[float]]] = {}
    print(f"cold: {args.cold_runs} runs each (apt downloads from the mirror)", flush=True)
    cold: tuple[list[float], list[float]] = ([], [])
    for _ in range(args.cold_runs):
        bump()
        cold[0].append(timed([*hinotori, "--no-cache"], env))
        cold[1].append(timed([*podman[:2], "--no-cache", *podman[2:]], env))
    results["cold"] = cold
    timed(hinotori, env)  # warm both caches for the scenario below
    timed(podman, env)
    print(f"one-line change: {args.runs} runs each", flush=True)
    warm: tuple[list[float], list[float]] = ([], [])
    inproc: tuple[list[float], list[float]] = ([], [])
    os.environ["DOCKER_HOST"] = url
    loaded = Project.load(project)
    for _ in range(args.runs):
        bump()
        warm[0].append(timed(hinotori, env))
        bump()
        warm[1].append(timed(podman, env))
        bump()
        began = time.perf_counter()
        result, _outcome = bake_service(loaded, "web")
        inproc[0].append(time.perf_counter() - began)
        assert result.cache_hits == len(image.steps) - 1, result
        bump()
        inproc[1].append(timed(podman, env))
    results["one-line change"] = warm
    results["  in-process"] = inproc

    print(f"\n{'scenario':<18} {'hinotori':>10} {'podman':>10} {'podman/hinotori':>16}")
    for scenario, (ours, theirs) in results.items():
        a, b = statistics.median(ours), statistics.median(theirs)
        print(f"{scenario:<18} {a:>9.2f}s {b:>9.2f}s {b / a:>15.2f}x")
    for label, (ours, theirs) in (("command", warm), ("in-process", inproc)):
        goal = statistics.median(theirs) / statistics.median(ours)
        print(f"goal (cached rebake no slower than podman's), {label}: "
              f"{'met' if goal >= 1 else 'NOT met'} ({goal:.2f}x)")
    for img in client.images.list(name=f"localhost/hinotori/{name}-web"):
        for tag in img.tags:
            client.images.remove(tag)
    for img in client.images.list(name=f"localhost/bench/{name}"):
        for tag in img.tags:
            client.images.remove(tag)
    client.close()


if __name__ == "__main__":
    main()
