"""Bake with the build cache: cold, no-change and one-file-change bakes of a realistic context.

    python bench/bake.py [--files 3000] [--modules 1500] [--runs 5] [--cold-runs 3]

The context (built under a temp dir, nothing from the network):

    wheels/benchdep-1.0-py3-none-any.whl   a local wheel of --modules modules, made with zipfile
    src/                                   --files files of an application (modules, templates,
                                           assets) in nested packages
    requirements.txt, .hinotoriignore, build/ (ignored)

and the recipe a service would write::

    { copy = "wheels", to = "wheels/" }
    { run = "python -m pip install --no-index --find-links wheels --no-compile --target deps
             benchdep && python -m compileall -q -d deps deps" }
    { remove = "wheels" }
    { env = { APP_ENV = "prod" } }
    { copy = "src", to = "app/" }
    { run = "python -c '<write app/INDEX listing every app file and its size>'" }
    { file = "etc/app.conf", content = "..." }

Scenarios, each timed around ``bake()`` in this process (medians of --runs; cold bakes start
from an empty store and cache, --cold-runs of them):

    cold                   nothing cached, nothing stored
    cold, --no-cache       the same without taking snapshots: what the cache costs a cold bake
    no change              everything cached and the image stored
    one-file change        one source file edited (new content each run): the pip step and all
                           before the source copy come from the cache
    one-file, --no-cache   the same edit, every step run (what a bake without the cache pays)
    one-file, no copy steps  the old recipe shape (the whole context is the start, no copy
                           steps): any edit invalidates every step, so pip runs again

Ratios are cold time / scenario time (higher is faster). Each scenario also checks the result:
cached and uncached bakes of the same inputs must give the same digest, or the bench fails.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

from results import record  # bench/results.py, beside this script

from hinotori.bake import (
    BakeResult,
    CopyStep,
    EnvStep,
    FileStep,
    ImageStore,
    RemoveStep,
    RunStep,
    Step,
    bake,
)

WHEEL = "benchdep-1.0-py3-none-any.whl"
INDEX = ("import os\n"
         "rows = sorted(f'{os.path.join(d, n)} {os.path.getsize(os.path.join(d, n))}'"
         " for d, _, ns in os.walk('app') for n in ns)\n"
         "open('app/INDEX', 'w').write('\\n'.join(rows) + '\\n')\n")


def make_wheel(path: Path, modules: int, rng: random.Random) -> None:
    """A pure-Python wheel pip accepts: modules, METADATA, WHEEL and RECORD."""
    files: dict[str, bytes] = {"benchdep/__init__.py": b"VERSION = '1.0'\n"}
    for i in range(modules):
        body = "".join(f"def f{j}(x):\n    return x * {rng.randint(1, 999)}\n\n"
                       for j in range(rng.randint(5, 40)))
        files[f"benchdep/sub{i % 25:02d}/m{i:04d}.py"] = body.encode()
    for i in range(25):
        files[f"benchdep/sub{i:02d}/__init__.py"] = b""
    info = "benchdep-1.0.dist-info"
    files[f"{info}/METADATA"] = b"Metadata-Version: 2.1\nName: benchdep\nVersion: 1.0\n"
    files[f"{info}/WHEEL"] = (b"Wheel-Version: 1.0\nGenerator: bench\nRoot-Is-Purelib: true\n"
                              b"Tag: py3-none-any\n")
    files[f"{info}/RECORD"] = "".join(f"{n},,\n" for n in [*files, f"{info}/RECORD"]).encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in sorted(files.items()):
            z.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), data)
    path.write_bytes(buf.getvalue())


def make_context(root: Path, files: int, modules: int) -> None:
    rng = random.Random(7)
    (root / "wheels").mkdir(parents=True)
    make_wheel(root / "wheels" / WHEEL, modules, rng)
    (root / "requirements.txt").write_text("benchdep==1.0\n")
    (root / ".hinotoriignore").write_text("/build/\n*.pyc\n")
    (root / "build").mkdir()
    (root / "build" / "junk.bin").write_bytes(rng.randbytes(1 << 20))
    for i in range(files):
        pkg = root / "src" / f"pkg{i % 30:02d}" / f"mod{i % 7}"
        pkg.mkdir(parents=True, exist_ok=True)
        kind = i % 10
        if kind < 7:
            (pkg / f"f{i:05d}.py").write_text(f"# module {i}\n" + "x = 1\n" * rng.randint(5, 300))
        elif kind < 9:
            (pkg / f"t{i:05d}.html").write_text("<p>{{ x }}</p>\n" * rng.randint(10, 200))
        else:
            (pkg / f"a{i:05d}.png").write_bytes(rng.randbytes(rng.choice((2048, 16384, 65536))))
    (root / "src" / "app.py").write_text("print('app')\n")


def recipe(*, copy_steps: bool) -> list[Step]:
    # By name from a local index, not by file path, and compiled with a relative -d: a wheel
    # installed by path records that absolute path (direct_url.json), and pip's own compile
    # embeds absolute source paths in every .pyc, so the build directory's name would end up
    # in the image and no two bakes would agree.
    pip = (f"{sys.executable} -m pip install --quiet --no-index --find-links wheels --no-deps "
           f"--no-cache-dir --no-compile --disable-pip-version-check --target deps benchdep "
           f"&& {sys.executable} -m compileall -q -d deps deps")
    if not copy_steps:  # the whole context is the start; paths are the context's own
        return [RunStep(pip), RemoveStep("wheels"),
                EnvStep({"APP_ENV": "prod"}), RunStep((sys.executable, "-c",
                                                       INDEX.replace("'app", "'src")
                                                       .replace("app/INDEX", "src/INDEX"))),
                FileStep("etc/app.conf", "debug = false\n")]
    return [CopyStep("wheels", "wheels/"), RunStep(pip), RemoveStep("wheels"),
            EnvStep({"APP_ENV": "prod"}), CopyStep("src", "app/"),
            RunStep((sys.executable, "-c", INDEX)), FileStep("etc/app.conf", "debug = false\n")]


def creation_cost(folder: Path, files: int = 500) -> float:
    """Microseconds to create (and write 4 KiB to) one file here: what restoring a tree and
    running a step that writes many files both pay per file."""
    folder.mkdir()
    began = time.perf_counter()
    for i in range(files):
        (folder / f"f{i}").write_bytes(b"x" * 4096)
    cost = (time.perf_counter() - began) / files * 1e6
    shutil.rmtree(folder)
    return cost


class Bench:
    def __init__(self, work: Path, files: int, modules: int) -> None:
        self.work = work
        self.context = work / "ctx"
        make_context(self.context, files, modules)
        self.edits = 0

    def store(self, name: str) -> ImageStore:
        return ImageStore(self.work / name / ".hinotori" / "images")

    def fresh(self, name: str) -> ImageStore:
        shutil.rmtree(self.work / name, ignore_errors=True)
        return self.store(name)

    def edit(self) -> None:
        """One source file gets new content (so every edit is a real change)."""
        self.edits += 1
        (self.context / "src" / "pkg03" / "mod3" / "f00003.py").write_text(
            f"# module 3, edit {self.edits}\nx = {self.edits}\n")

    def timed(self, fn: Callable[[], BakeResult]) -> tuple[float, BakeResult]:
        began = time.perf_counter()
        result = fn()
        return time.perf_counter() - began, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=3000, help="source files in src/")
    ap.add_argument("--modules", type=int, default=1500, help="modules in the local wheel")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cold-runs", type=int, default=3)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="hinotori-bench-bake-"))
    try:
        b = Bench(work, args.files, args.modules)
        src_files = sum(1 for p in (b.context / "src").rglob("*") if p.is_file())
        print(f"context: {src_files} source files, a wheel of {args.modules} modules; "
              f"runs: {args.runs} (cold: {args.cold_runs})")
        rows: list[tuple[str, list[float], str]] = []

        def scenario(name: str, runs: int, fn: Callable[[], BakeResult],
                     before: Callable[[], None] = lambda: None) -> BakeResult:
            times, result = [], None
            for _ in range(runs):
                before()
                t, result = b.timed(fn)
                times.append(t)
            assert result is not None
            steps = result.cache_hits + result.cache_misses
            rows.append((name, times, f"{result.cache_hits}/{steps}"))
            print(f"  {name}: {statistics.median(times):.2f}s", file=sys.stderr)
            return result

        steps = recipe(copy_steps=True)
        cold = scenario("cold", args.cold_runs,
                        lambda: bake(b.context, steps, b.fresh("cold")))
        nocache = scenario("cold, --no-cache", args.cold_runs,
                           lambda: bake(b.context, steps, b.fresh("nocache"), use_cache=False))
        assert nocache.image.digest == cold.image.digest, "cached and uncached digests differ"

        store = b.store("cold")  # warm: the last cold run's store and cache
        same = scenario("no change", args.runs, lambda: bake(b.context, steps, store))
        assert same.reused and same.image.digest == cold.image.digest
        one = scenario("one-file change", args.runs, lambda: bake(b.context, steps, store),
                       before=b.edit)
        assert one.cache_hits == 4, one
        check = bake(b.context, steps, b.fresh("check"), use_cache=False)
        assert check.image.digest == one.image.digest, "cached and uncached digests differ"
        nocache_store = b.store("nocache")
        scenario("one-file, --no-cache", args.runs,
                 lambda: bake(b.context, steps, nocache_store, use_cache=False),
                 before=b.edit)

        old = recipe(copy_steps=False)
        old_store = b.fresh("old")
        bake(b.context, old, old_store)
        scenario("one-file, no copy steps", args.runs,
                 lambda: bake(b.context, old, old_store), before=b.edit)

        base = statistics.median(rows[0][1])
        print()
        print(f"{'scenario':<26} {'median':>8} {'min':>8} {'runs':>5} {'cached':>7} "
              f"{'vs cold':>8}")
        for name, times, cached in rows:
            med = statistics.median(times)
            print(f"{name:<26} {med:>7.2f}s {min(times):>7.2f}s {len(times):>5} {cached:>7} "
                  f"{base / med:>7.1f}x")
            record("bake", f"{name}: median", med, unit="s", detail=f"{cached} steps cached")
        one_file = statistics.median(next(t for n, t, _ in rows if n == "one-file change"))
        record("bake", "one-file change vs cold (speed-up)", base / one_file, unit="x")
        image = cold.image
        print(f"\nimage: {image.file_count} files, {image.total_size / 2**20:.1f} MiB; "
              f"cpus: {os.cpu_count()}; creating a file here: "
              f"{creation_cost(work / 'probe'):.0f} us")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
