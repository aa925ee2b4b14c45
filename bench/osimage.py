"""OS image bakes: hinotori (through the Engine API) versus `podman build --layers`.

    python bench/osimage.py [--runs 5] [--cold-runs 1]

Both build the same thing on the same engine storage and the same Debian base
(examples/debian-web's recipe: an apt step with curl, a useradd run step, two copy steps): the
Containerfile hinotori generates for the recipe, written out with its build context, is what
`podman build` gets, so the comparison is of the tools, not of two recipes.

    cold                  every step runs: `hinotori bake --no-cache` vs
                          `podman build --layers --no-cache` (the apt step downloads, so this
                          one depends on the mirror more than on either tool; --cold-runs 0
                          skips it)
    one-line change       VERSION (copied by the last step) gets new content before each run:
                          three layers come from the cache, one is built

The one-line change is timed four ways, interleaved round by round with `podman build` (so a
busy machine slows all of them alike), medians of the runs. The rounds' orders are the rows of
a balanced Latin square (Williams): over four rounds every way comes right after each other
way once. It matters: the engine's service re-reads its storage after another process (`podman
build`) changed it, a cost that lands on whichever way comes next; rotating one order instead
put the controller right after `podman build` in three rounds of four.

    controller            `hinotori bake web` with the project's controller up: the CLI hands
                          the bake to it (a warm process) before loading the full CLI
    command, no ctl       `hinotori bake web --local`: the whole CLI starts and bakes itself,
                          as it does when no controller runs
    in-process            `releases.bake_service()`, what the controller runs: no interpreter
                          start, CLI imports or request

CPU seconds are also counted per way (medians of the runs): the command's own and its
children's, plus what the engine's service spent meanwhile (the bench starts a private one, so
nothing else uses it) and, for the controller way, what the project's controller spent. On a
busy shared machine wall time follows CPU time, and CPU time barely moves with the load.

Times are whole commands as a user runs them. PYTHONDONTWRITEBYTECODE is dropped from the
commands' environment: an installed hinotori has its bytecode compiled, and recompiling every
module on each start would be a cost no user pays. Ratios printed are podman/hinotori (above 1:
hinotori is faster); the figures recorded for bench/all.py are seconds ratios hinotori/podman,
goal (the controller path) <= 1.0, i.e. no slower than `podman build`.

Needs podman and mmdebstrap; the base is bootstrapped once (and kept in the engine).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from results import record  # noqa: E402
from router import free_port  # noqa: E402

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
    parser.add_argument("--cold-runs", type=int, default=1)
    args = parser.parse_args()
    for tool in ("podman", "mmdebstrap"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")

    if args.runs < 1:
        raise SystemExit("--runs must be at least 1")
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
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # see the docstring
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
    if args.cold_runs:
        print(f"cold: {args.cold_runs} runs each (apt downloads from the mirror)", flush=True)
        cold: tuple[list[float], list[float]] = ([], [])
        for _ in range(args.cold_runs):
            bump()
            cold[0].append(timed([*hinotori, "--no-cache"], env))
            cold[1].append(timed([*podman[:2], "--no-cache", *podman[2:]], env))
        results["cold"] = cold
    timed(hinotori, env)  # warm both caches for the scenario below
    timed(podman, env)
    spec_file = project / "hinotori.toml"
    spec_file.write_text(spec_file.read_text().replace(
        'listen = "127.0.0.1:8080"', f'listen = "127.0.0.1:{free_port()}"'))
    timed([sys.executable, "-m", "hinotori", "up", "-d", "--spec", str(project)], env)
    try:
        rounds, cpu = measure_one_line_change(args.runs, project, hinotori, podman, env, bump,
                                              len(image.steps), tmp / "podman.pid")
    finally:
        timed([sys.executable, "-m", "hinotori", "down", "--spec", str(project)], env)
    theirs = rounds.pop("podman")
    for label, ours in rounds.items():
        results[label] = (ours, theirs)
    print("\nCPU seconds per one-line rebake (medians; command + controller + engine service):")
    for label, seconds in cpu.items():
        print(f"  {label.rsplit(', ', 1)[-1]:<16} {statistics.median(seconds):.3f}s")
    print(f"\n{'scenario':<34} {'hinotori':>10} {'podman':>10} {'podman/hinotori':>16}")
    for scenario, (ours, theirs) in results.items():
        a, b = statistics.median(ours), statistics.median(theirs)
        print(f"{scenario:<34} {a:>9.2f}s {b:>9.2f}s {b / a:>15.2f}x")
    for label in ("controller", "command, no ctl", "in-process"):
        ours, theirs = results[f"one-line change, {label}"]
        goal = statistics.median(theirs) / statistics.median(ours)
        print(f"goal (cached rebake no slower than podman's), {label}: "
              f"{'met' if goal >= 1 else 'NOT met'} ({goal:.2f}x)")
    record_figures(results, args.runs)
    ours, theirs = cpu["one-line change, controller"], cpu["podman"]
    record("osimage", "CPU seconds of hinotori bake (controller up: command, controller and "
           "engine service) / podman build's, after a one-line change",
           statistics.median(ours) / statistics.median(theirs), unit="x",
           detail=f"medians of {args.runs} runs: {statistics.median(ours):.3f} vs "
                  f"{statistics.median(theirs):.3f} s")
    for img in client.images.list(name=f"localhost/hinotori/{name}-web"):
        for tag in img.tags:
            client.images.remove(tag)
    for img in client.images.list(name=f"localhost/bench/{name}"):
        for tag in img.tags:
            client.images.remove(tag)
    client.close()


def williams(n: int) -> list[list[int]]:
    """A balanced Latin square for an even ``n``: its rows are orders of 0..n-1 in which every
    item comes right after each other item exactly once."""
    first = [0]
    for i in range(1, n):
        first.append((i + 1) // 2 if i % 2 else n - i // 2)
    return [[(x + r) % n for x in first] for r in range(n)]


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its waited-for children, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def measure_one_line_change(runs: int, project: Path, hinotori: list[str], podman: list[str],
                            env: dict[str, str], bump: Callable[[], None], steps: int,
                            service_pidfile: Path
                            ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Seconds of each way to rebake after a one-line change, and podman's, round by round;
    and the CPU seconds of each (see the docstring)."""
    print(f"one-line change: {runs} runs each, interleaved", flush=True)
    os.environ["DOCKER_HOST"] = env["DOCKER_HOST"]
    loaded = Project.load(project)
    controller = json.loads((project / ".hinotori" / "controller.json").read_text())["pid"]
    service = int(service_pidfile.read_text())

    import hinotori.bake.osimage.bake as os_bake

    engine_build = os_bake.build
    build_calls: list[float] = []  # the engine's build call alone, in the in-process way

    def timed_build(*args: object, **kwargs: object) -> object:
        began = time.perf_counter()
        try:
            return engine_build(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            build_calls.append(time.perf_counter() - began)

    def in_process() -> float:
        began = time.perf_counter()
        os_bake.build = timed_build  # type: ignore[assignment]
        try:
            result, _outcome = bake_service(loaded, "web")
        finally:
            os_bake.build = engine_build
        assert result.cache_hits == steps - 1, result
        return time.perf_counter() - began

    ways: dict[str, Callable[[], float]] = {
        "podman": lambda: timed(podman, env),
        "one-line change, controller": lambda: timed(hinotori, env),
        "one-line change, command, no ctl": lambda: timed([*hinotori, "--local"], env),
        "one-line change, in-process": in_process,
    }
    seconds: dict[str, list[float]] = {label: [] for label in ways}
    cpu: dict[str, list[float]] = {label: [] for label in ways}
    labels = list(ways)
    orders = williams(len(labels))
    for n in range(runs):
        for label in (labels[i] for i in orders[n % len(orders)]):
            bump()
            before = (resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(
                resource.RUSAGE_SELF), cpu_seconds(controller), cpu_seconds(service))
            seconds[label].append(ways[label]())
            after = (resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(
                resource.RUSAGE_SELF), cpu_seconds(controller), cpu_seconds(service))
            own = sum(a.ru_utime + a.ru_stime - b.ru_utime - b.ru_stime
                      for a, b in zip(after[:2], before[:2], strict=True))
            # The controller's only where it does the work: idling beside the others it costs
            # them nothing.
            ctl = after[2] - before[2] if label.endswith("controller") else 0.0
            cpu[label].append(own + ctl + after[3] - before[3])
    events = loaded.store.events(action="image.baked", limit=1000)
    served = [e.detail["seconds"] for e in events if e.detail.get("via") == "controller"]
    assert len(served) >= runs, events  # the controller path did go through it
    print(f"  the controller's own bake (image.baked seconds): median "
          f"{statistics.median(served[-runs:]):.2f}s; every round: "
          + " ".join(f"{label.rsplit(', ', 1)[-1]} {' '.join(f'{x:.2f}' for x in xs)};"
                     for label, xs in seconds.items()), flush=True)
    # What hinotori's part is around the engine's build: the controller's own bake (request
    # in, image recorded, release made) against a whole `podman build` command, and the
    # engine's build call alone (POST /build to the end of its stream) against it too.
    own, podman = statistics.median(served[-runs:]), statistics.median(seconds["podman"])
    call = statistics.median(build_calls)
    around = statistics.median(a - b for a, b in zip(
        seconds["one-line change, in-process"], build_calls, strict=True))
    print(f"  the engine's build call alone (in-process way): median {call:.3f}s; the rest of "
          f"bake_service(): {around * 1000:.0f} ms", flush=True)
    record("osimage", "the controller's own bake (image.baked seconds) / podman build seconds "
           "after a one-line change", own / podman, unit="x",
           detail=f"medians of {runs} runs: {own:.3f} s")
    record("osimage", "the engine's build call alone / podman build seconds after a one-line "
           "change", call / podman, unit="x",
           detail=f"medians of {runs} runs: {call:.3f} vs {podman:.3f} s")
    record("osimage", "bake_service() around the engine's build call (hinotori's own part, "
           "in process)", around * 1000, unit="ms", detail=f"median of {runs} runs")
    return seconds, cpu


def record_figures(results: dict[str, tuple[list[float], list[float]]], runs: int) -> None:
    """The figures for bench/all.py: seconds ratios hinotori/podman (see the docstring)."""
    def ratio(label: str) -> float:
        ours, theirs = results[label]
        return statistics.median(ours) / statistics.median(theirs)

    detail = f"medians of {runs} interleaved runs"
    record("osimage", "hinotori bake / podman build seconds after a one-line change "
           "(controller up)", ratio("one-line change, controller"), unit="x", goal="<= 1.0",
           detail=detail)
    record("osimage", "hinotori bake / podman build seconds after a one-line change "
           "(no controller: the CLI bakes)", ratio("one-line change, command, no ctl"),
           unit="x", detail=detail)
    record("osimage", "bake_service() in process / podman build seconds after a one-line "
           "change", ratio("one-line change, in-process"), unit="x", detail=detail)
    podman = statistics.median(results["one-line change, controller"][1])
    record("osimage", "podman build seconds after a one-line change", podman, unit="s",
           detail=detail)
    if "cold" in results:
        ours, theirs = results["cold"]
        record("osimage", "cold bake: hinotori bake --no-cache / podman build --no-cache "
               "seconds", statistics.median(ours) / statistics.median(theirs), unit="x",
               detail=f"medians of {len(ours)} runs; the mirror's speed dominates")
        record("osimage", "cold bake seconds (hinotori bake --no-cache)",
               statistics.median(ours), unit="s")


if __name__ == "__main__":
    main()
