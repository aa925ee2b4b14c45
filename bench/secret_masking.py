"""What secrets cost: the mask relay a process host with secrets writes through, the log
store's masking of every line, and resolving each kind of source at a boot.

    python bench/secret_masking.py [--values 10] [--runs 3]

Prints MB/s of the relay (against `cat`, the floor of a pipe relay), lines/s of LogStore.ingest
with and without a masker, and the median time to resolve an env, file and command secret.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results import record  # bench/results.py, beside this script

from hinotori.observe.logs import LogStore
from hinotori.observe.logs.store import Batch
from hinotori.providers import maskpipe
from hinotori.secrets import Masker, Secrets

LINE = b"GET /api/items?id=12345 200 1.2ms user=alice agent=curl/8.5 ref=- cache=miss x=1"
DATA = (LINE + b"\n") * 400_000


def relay_seconds(values: list[str]) -> float:
    r, w = os.pipe()
    os.write(w, json.dumps(values).encode())
    os.close(w)
    began = time.perf_counter()
    subprocess.run([sys.executable, "-I", maskpipe.__file__, str(r)], input=DATA,
                   stdout=subprocess.DEVNULL, pass_fds=(r,), check=True)
    os.close(r)
    return time.perf_counter() - began


def cat_seconds() -> float:
    began = time.perf_counter()
    subprocess.run(["cat"], input=DATA, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - began


def ingest_rate(masker: Masker | None, lines: int = 100_000) -> float:
    with tempfile.TemporaryDirectory() as d:
        store = LogStore(Path(d) / "logs.db")
        store.mask = masker.mask if masker else None
        s = store.open_stream(host="h", service="web", release=1, source="stdout", inode=None)
        text, off, began = LINE.decode(), 0, time.perf_counter()
        for _ in range(lines // 2000):
            rows = [(s.id, off + i * 100, 1000.0, text) for i in range(2000)]
            off += 2000 * 100
            store.ingest([Batch(s.id, rows, off)], 1000.0)
        elapsed = time.perf_counter() - began
        store.close()
    return lines / elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--values", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    values = [secrets.token_hex(16) for _ in range(args.values)]
    mb = len(DATA) / 1e6
    cat = statistics.median(cat_seconds() for _ in range(args.runs))
    record("secret_masking", "cat, the floor of a pipe relay", mb / cat, unit="MB/s")
    for n in (1, args.values):
        t = statistics.median(relay_seconds(values[:n]) for _ in range(args.runs))
        print(f"mask relay, {n:>2} values: {mb / t:6.0f} MB/s ({mb / cat:.0f} MB/s through cat)")
        record("secret_masking", f"mask relay, {n} value(s)", mb / t, unit="MB/s")
    masker = Masker()
    masker.add(values)
    for label, m in (("no masker", None), (f"{args.values} values", masker)):
        rate = statistics.median(ingest_rate(m) for _ in range(args.runs))
        print(f"LogStore.ingest, {label:>10}: {rate / 1e3:5.0f}k lines/s")
        record("secret_masking", f"LogStore.ingest, {label}", rate, unit="lines/s")
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "f").write_text("value\n")
        s = Secrets(Path(d), Path(d) / ".hinotori", environ={"V": "value"})
        for kind, source in (("env", {"env": "V"}), ("file", {"file": "f"}),
                             ("command", {"command": ["cat", "f"], "timeout": 5})):
            times = []
            for _ in range(7):
                began = time.perf_counter()
                asyncio.run(s.resolve("K", source))
                times.append(time.perf_counter() - began)
            print(f"resolve {kind:>7}: {statistics.median(times) * 1e3:6.2f} ms")
            record("secret_masking", f"resolve a secret ({kind} source)",
                   statistics.median(times) * 1e3, unit="ms")


if __name__ == "__main__":
    main()
