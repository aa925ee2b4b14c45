"""hinotori drift against AIDE on the same tree with planted changes (side by side, one run).

    python bench/drift.py [--files 20000] [--runs 5]

Builds a tree of --files files, takes hinotori's image manifest of it (what bake records) and
AIDE's database of it (`aide --init`), plants changes (content with the same size, content with
another size, mode, added, removed, symlink target), then times each tool's check as a process
(hinotori's includes interpreter start and manifest load: what `hinotori drift` pays), medians
of --runs warm-cache runs. Both tools are configured to compare the same attributes (type,
permissions, size, sha256, link target) and both may use every core. Both must find every
planted change, or the bench fails. Besides wall time, each tool's CPU time (user + system, its
own and its threads') is printed: on a machine shared with other work it swings far less.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results import record  # bench/ is on sys.path: the script's directory

from hinotori.bake import build_manifest

CHECKER = """
import json, sys
from pathlib import Path
from hinotori.bake import ManifestEntry
from hinotori.observe.drift import compare
manifest = [ManifestEntry.from_dict(d) for d in json.loads(Path(sys.argv[1]).read_bytes())]
print(json.dumps(compare(manifest, Path(sys.argv[2])).to_dict()))
"""


def make_tree(root: Path, files: int, rng: random.Random) -> None:
    for i in range(files):
        d = root / f"d{i % 200:03d}" / f"s{i % 7}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:05d}.dat").write_bytes(rng.randbytes(rng.choice((512, 2048, 4096, 16384))))
    (root / "d000" / "link").symlink_to("s0")


def plant(root: Path, rng: random.Random) -> set[str]:
    files = sorted(p for p in root.rglob("*.dat"))
    picks = rng.sample(files, 12)
    changed = set()
    for p in picks[:4]:  # same size, other bytes: only a hash catches it
        p.write_bytes(bytes(b ^ 0xFF for b in p.read_bytes()))
        changed.add(p)
    for p in picks[4:6]:
        p.write_bytes(p.read_bytes() + b"x")
        changed.add(p)
    for p in picks[6:9]:
        p.chmod(0o600)
        changed.add(p)
    for p in picks[9:11]:
        p.unlink()
        changed.add(p)
    for i in range(3):
        added = root / "d001" / f"planted{i}.sh"
        added.write_text("#!/bin/sh\n")
        changed.add(added)
    link = root / "d000" / "link"
    link.unlink()
    link.symlink_to("s1")
    changed.add(link)
    return {str(p.relative_to(root)) for p in changed}


def aide_config(work: Path, root: Path) -> Path:
    conf = work / "aide.conf"
    conf.write_text(
        f"database_in=file:{work}/aide.db\n"
        f"database_out=file:{work}/aide.db.new\n"
        "gzip_dbout=no\nreport_url=stdout\n"
        f"num_workers={os.cpu_count() or 1}\n"
        "Same = ftype+p+s+sha256+l\n"
        f"{root} Same\n")
    return conf


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(argv: list[str]) -> tuple[float, float, str]:
    """Wall time, CPU time and stdout of one run of ``argv``."""
    cpu = _children_cpu()
    started = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True)
    took = time.perf_counter() - started
    if result.returncode not in (0, 1, 2, 3, 4, 5, 6, 7):  # aide: bit mask of differences
        sys.exit(f"{argv[0]} failed ({result.returncode}): {result.stderr[-2000:]}")
    return took, _children_cpu() - cpu, result.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    if not shutil.which("aide"):
        sys.exit("aide is not installed: apt-get install aide")
    rng = random.Random(42)
    work = Path(tempfile.mkdtemp(prefix="hinotori-bench-drift-"))
    try:
        root = work / "tree"
        make_tree(root, args.files, rng)
        manifest = work / "manifest.json"
        manifest.write_text(json.dumps([e.to_dict() for e in build_manifest(root)]))
        conf = aide_config(work, root)
        subprocess.run(["aide", "--init", "-c", str(conf)], check=True, capture_output=True)
        (work / "aide.db.new").rename(work / "aide.db")
        planted = plant(root, rng)

        hino_argv = [sys.executable, "-c", CHECKER, str(manifest), str(root)]
        aide_argv = ["aide", "--check", "-c", str(conf)]
        timed(hino_argv), timed(aide_argv)  # warm the page cache for both
        hino, aide, hino_cpu, aide_cpu = [], [], [], []
        for _ in range(args.runs):  # interleaved, so machine noise hits both alike
            t, cpu, hino_out = timed(hino_argv)
            hino.append(t)
            hino_cpu.append(cpu)
            t, cpu, aide_out = timed(aide_argv)
            aide.append(t)
            aide_cpu.append(cpu)

        found = json.loads(hino_out)
        hino_paths = set(found["added"]) | set(found["removed"]) | \
            {c["path"] for c in found["changed"]}
        aide_paths = {rel for rel in planted if f"{root}/{rel}" in aide_out}
        h, a = statistics.median(hino), statistics.median(aide)
        hc, ac = statistics.median(hino_cpu), statistics.median(aide_cpu)
        print(f"tree: {args.files} files, {len(planted)} planted changes, {args.runs} runs each")
        print(f"{'tool':<16}{'median s':>10}{'min s':>10}{'found':>10}{'cpu s':>10}")
        print(f"{'hinotori drift':<16}{h:>10.3f}{min(hino):>10.3f}"
              f"{len(hino_paths & planted):>7}/{len(planted)}{hc:>10.3f}")
        print(f"{'aide --check':<16}{a:>10.3f}{min(aide):>10.3f}"
              f"{len(aide_paths):>7}/{len(planted)}{ac:>10.3f}")
        print(f"ratio aide/hinotori: {a / h:.2f}x (>1 means hinotori is faster)")
        print(f"cpu time ratio aide/hinotori: {ac / hc:.2f}x")
        if hino_paths != planted:
            sys.exit(f"hinotori missed {planted - hino_paths} or invented {hino_paths - planted}")
        if aide_paths != planted:
            sys.exit(f"aide missed {planted - aide_paths}")
        detail = f"{args.files} files, {len(planted)} planted changes, all found by both"
        record("drift", f"aide --check / hinotori drift time, {args.files} files", a / h,
               unit="x", goal=">= 4", detail=detail)
        record("drift", f"aide --check / hinotori drift CPU time, {args.files} files", ac / hc,
               unit="x", detail=detail)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
