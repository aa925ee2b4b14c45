"""Logs: ingest into the central store, forwarding, and lines lost when hosts are SIGKILLed.

    python bench/logs.py [--hosts 4] [--lines 100000] [--runs 3]

1. **Ingest.** --hosts output.log files of --lines numbered lines each (~80 bytes, like an
   access log) are shipped into a fresh logs.db by hinotori's Shipper (FTS5 index, dedup
   constraint and offsets included). Side by side, a real rsyslog reads the same files with
   imfile and writes them to one flat file with omfile: less work (no index, no dedup), but
   the usual yardstick for "file tail to store". Both are measured in lines per CPU-second
   (all threads of the process: /proc utime+stime for rsyslogd, process_time for us), and
   wall-clock.
2. **Forwarding.** The store just filled is forwarded, from a fresh cursor, to a real rsyslog
   (imtcp, RFC 5424 with octet counting) and to the protocol receivers for Loki and Fluentd
   (hinotori.observe.logs.forward.receivers, each in its own process: neither Loki nor Fluentd
   is installable here). Lines/s from the first send until the receiver has every line.
3. **Loss under SIGKILL.** --hosts real processes, started like process hosts (own session,
   stdout appended to output.log), write numbered lines at up to ~100,000 lines/s each (two
   write()s per line, so a kill can split one); a shipper passes every 200 ms as the
   controller does; each host is SIGKILLed at a random moment, then flushed as Fleet.destroy
   does. Every line the files hold must be in the store exactly once: lost and duplicated
   must both be 0.

Medians of --runs runs. Needs rsyslog (apt-get install -y rsyslog) for the rsyslog columns;
without it they are left out.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from results import record  # bench/results.py, beside this script

from hinotori.model import Host, HostState
from hinotori.observe.logs import LogQuery, LogStore, Shipper, search
from hinotori.observe.logs.forward import FluentdSink, ForwardLoop, LokiSink, SyslogSink
from hinotori.processes import cpu_seconds

WRITER = r"""
import os, sys, time
i = 0
while True:
    i += 1
    os.write(1, b"%s line %d " % (sys.argv[1].encode(), i))
    os.write(1, b"GET /api/items status=200 took=3ms\n")
    if i % 1000 == 0:
        time.sleep(0.01)  # at most ~100,000 lines/s per host: a very noisy host, not a disk test
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def host_at(state_dir: Path, host_id: str) -> Host:
    return Host(id=host_id, service="web", release=1, provider="process",
                state=HostState.SERVING, born_at=time.time(),
                data={"state_dir": str(state_dir), "log": str(state_dir / "output.log")})


def make_files(root: Path, hosts: int, lines: int) -> list[Host]:
    found = []
    for h in range(hosts):
        d = root / f"web-{h}"
        d.mkdir(parents=True)
        with open(d / "output.log", "wb") as f:
            for start in range(0, lines, 10_000):
                f.write(b"".join(b"2024-05-01T12:00:00Z INFO web-%d request %d GET /api/items/%d "
                                 b"status=200 took=3ms\n" % (h, i, i * 7)
                                 for i in range(start, min(lines, start + 10_000))))
        found.append(host_at(d, f"web-{h}"))
    return found


# -- rsyslog ---------------------------------------------------------------------------------
class Rsyslog:
    def __init__(self, tmp: Path, body: str) -> None:
        self.tmp = tmp
        (tmp / "work").mkdir(parents=True)
        self.out = tmp / "out.log"
        self.conf = tmp / "rsyslog.conf"
        self.conf.write_text(f'global(workDirectory="{tmp / "work"}" maxMessageSize="64k")\n'
                             f'template(name="msg" type="string" string="%msg%\\n")\n{body}')
        self.proc = subprocess.Popen(["rsyslogd", "-n", "-f", str(self.conf), "-i",
                                      str(tmp / "pid")], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        self._seen, self._count = 0, 0

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def count(self) -> int:
        """Lines in rsyslog's output so far (read incrementally)."""
        if self.out.exists():
            with open(self.out, "rb") as f:
                f.seek(self._seen)
                data = f.read()
            self._seen += len(data)
            self._count += data.count(b"\n")
        return self._count

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)


def wait_listening(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port}")


# -- 1. ingest -------------------------------------------------------------------------------
def ingest_hinotori(root: Path, hosts: list[Host], total: int) -> tuple[float, float, Path]:
    db = root / "logs.db"
    store = LogStore(db)
    shipper = Shipper(store, pass_bytes=1 << 30)

    async def ship_all() -> int:
        n = 0
        while stored := await shipper.ship(hosts):
            n += stored
        return n

    cpu0, t0 = time.process_time(), time.perf_counter()
    stored = asyncio.run(ship_all())
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    assert stored == total, (stored, total)
    store.close()
    return total / cpu, total / wall, db


def ingest_rsyslog(root: Path, hosts: list[Host], total: int) -> tuple[float, float]:
    inputs = "".join(f'input(type="imfile" File="{h.data["log"]}" Tag="{h.id}" '
                     f'ruleset="r")\n' for h in hosts)
    rs = Rsyslog(root / "rsyslog-imfile", 'module(load="imfile" mode="inotify")\n' + inputs +
                 'ruleset(name="r") { action(type="omfile" file="' + str(root /
                 "rsyslog-imfile" / "out.log") + '" template="msg" asyncWriting="on" '
                 'ioBufferSize="1m") }\n')
    t0 = time.perf_counter()
    try:
        while rs.count() < total:
            if time.perf_counter() - t0 > 300 or rs.proc.poll() is not None:
                raise RuntimeError("rsyslog imfile did not read every line")
            time.sleep(0.02)
        wall = time.perf_counter() - t0
        cpu = rs.cpu()
    finally:
        rs.stop()
    return total / cpu, total / wall


# -- 2. forwarding ---------------------------------------------------------------------------
async def forward(db: Path, name: str, sink: object, count: Callable[[], int],
                  total: int) -> float:
    store = LogStore(db)
    loop = ForwardLoop(store, sink, name=name, batch=2000, max_backlog=10 * total,  # type: ignore[arg-type]
                       retry_min=0.05, retry_max=0.5)
    t0 = time.perf_counter()
    task = asyncio.create_task(loop.run())
    while count() < total:
        if task.done():
            task.result()
        if time.perf_counter() - t0 > 300:
            raise RuntimeError(f"{name}: only {count()} of {total} lines arrived")
        await asyncio.sleep(0.01)
    wall = time.perf_counter() - t0
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    store.close()
    return total / wall


async def forward_to_receiver(db: Path, kind: str, total: int) -> float:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hinotori.observe.logs.forward.receivers", kind, str(port),
        stdout=asyncio.subprocess.PIPE)
    got = [0]

    async def read_counts() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            if raw.startswith(b"count "):
                got[0] = int(raw.split()[1])

    reader = asyncio.create_task(read_counts())
    await asyncio.to_thread(wait_listening, port)
    sink = (LokiSink(f"http://127.0.0.1:{port}") if kind == "loki"
            else FluentdSink(f"127.0.0.1:{port}"))
    try:
        return await forward(db, f"bench {kind} {port}", sink, lambda: got[0], total)
    finally:
        proc.terminate()
        await proc.wait()
        reader.cancel()


def forward_to_rsyslog(root: Path, db: Path, total: int) -> float:
    port = free_port()
    tmp = root / f"rsyslog-tcp-{port}"
    rs = Rsyslog(tmp, 'module(load="imtcp")\n'
                 f'input(type="imtcp" port="{port}" address="127.0.0.1" ruleset="r")\n'
                 'ruleset(name="r") { action(type="omfile" file="' + str(tmp / "out.log") +
                 '" template="msg" asyncWriting="on" ioBufferSize="1m") }\n')
    try:
        wait_listening(port)
        return asyncio.run(forward(db, f"bench syslog {port}", SyslogSink(f"127.0.0.1:{port}"),
                                   rs.count, total))
    finally:
        rs.stop()


# -- 3. loss under SIGKILL ---------------------------------------------------------------------
def kill_run(root: Path, hosts: int, rng: random.Random) -> tuple[int, int, int]:
    """(lines written, lost, duplicated) over --hosts writers killed at random moments."""
    store = LogStore(root / "logs.db")
    shipper = Shipper(store)
    procs, found = [], []
    for h in range(hosts):
        d = root / f"kill-{h}"
        d.mkdir()
        with open(d / "output.log", "ab") as out:
            procs.append(subprocess.Popen([sys.executable, "-c", WRITER, f"k{h}"], stdout=out,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True))
        found.append(host_at(d, f"kill-{h}"))

    async def scenario() -> None:
        live = list(found)

        async def ship_loop() -> None:
            while live:
                await shipper.ship(list(live))
                await asyncio.sleep(0.2)

        shipping = asyncio.create_task(ship_loop())
        order = list(range(hosts))
        rng.shuffle(order)
        for h in order:
            await asyncio.sleep(rng.uniform(0.3, 1.0))
            os.killpg(procs[h].pid, signal.SIGKILL)
            procs[h].wait()
            async with shipper.destroying(found[h]):  # what Fleet.destroy does
                live.remove(found[h])
        await shipping

    asyncio.run(scenario())
    written = lost = dup = 0
    for host in found:
        data = Path(host.data["log"]).read_bytes().decode()
        expected = data.split("\n")
        if expected[-1] == "":
            expected.pop()
        stored = [ln.line for ln in search(store, LogQuery(host=host.id, limit=None))]
        written += len(expected)
        have, want = set(stored), set(expected)
        lost += len(want - have)
        dup += len(stored) - len(have)
        if stored != expected and not (want - have) and len(stored) == len(have):
            raise AssertionError(f"{host.id}: same lines in another order")
    store.close()
    return written, lost, dup


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=4)
    ap.add_argument("--lines", type=int, default=100_000, help="lines per host file")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    have_rsyslog = shutil.which("rsyslogd") is not None
    total = args.hosts * args.lines
    rng = random.Random(7)
    res: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        res.setdefault(key, []).append(value)

    kills = []
    with tempfile.TemporaryDirectory(prefix="hinotori-bench-logs-") as tmp:
        for run in range(args.runs):
            root = Path(tmp) / f"run{run}"
            hosts = make_files(root / "hosts", args.hosts, args.lines)
            cpu_rate, wall_rate, db = ingest_hinotori(root, hosts, total)
            add("ingest hinotori cpu", cpu_rate)
            add("ingest hinotori wall", wall_rate)
            if have_rsyslog:
                cpu_rate, wall_rate = ingest_rsyslog(root, hosts, total)
                add("ingest rsyslog cpu", cpu_rate)
                add("ingest rsyslog wall", wall_rate)
                add("forward syslog", forward_to_rsyslog(root, db, total))
            add("forward loki", asyncio.run(forward_to_receiver(db, "loki", total)))
            add("forward fluentd", asyncio.run(forward_to_receiver(db, "fluentd", total)))
            (root / "kill").mkdir()
            kills.append(kill_run(root / "kill", args.hosts, rng))
            shutil.rmtree(root)
    med = {k: statistics.median(v) for k, v in res.items()}
    print(f"{args.hosts} hosts x {args.lines:,} lines (~85 bytes), {args.runs} runs, "
          f"medians; {os.cpu_count()} cores shared")
    print(f"{'ingest (file tail -> store)':<40}{'lines/CPU-s':>14}{'lines/s wall':>14}")
    print(f"{'  hinotori Shipper -> logs.db (FTS5)':<40}"
          f"{med['ingest hinotori cpu']:>14,.0f}{med['ingest hinotori wall']:>14,.0f}")
    if have_rsyslog:
        print(f"{'  rsyslog imfile -> omfile (flat file)':<40}"
              f"{med['ingest rsyslog cpu']:>14,.0f}{med['ingest rsyslog wall']:>14,.0f}")
        print(f"  ratio hinotori/rsyslog per CPU-second: "
              f"{med['ingest hinotori cpu'] / med['ingest rsyslog cpu']:.2f}x")
    print(f"{'forward (store -> receiver, batch 2000)':<40}{'':>14}{'lines/s wall':>14}")
    for kind, label in (("syslog", "RFC 5424/TCP -> real rsyslog imtcp"),
                        ("loki", "Loki push JSON -> receiver"),
                        ("fluentd", "Fluentd forward+ack -> receiver")):
        if f"forward {kind}" in med:
            print(f"{'  ' + label:<40}{'':>14}{med[f'forward {kind}']:>14,.0f}")
    written = [k[0] for k in kills]
    print(f"{'SIGKILL while writing':<40}{'written':>14}{'lost':>7}{'dup':>7}")
    print(f"{'  ' + str(args.hosts) + ' hosts killed at random, per run':<40}"
          f"{statistics.median(written):>14,.0f}{max(k[1] for k in kills):>7}"
          f"{max(k[2] for k in kills):>7}   (max over runs)")
    record("logs", "ingest, hinotori Shipper -> logs.db", med["ingest hinotori cpu"],
           unit="lines/CPU-s")
    if have_rsyslog:
        record("logs", "ingest per CPU-second, hinotori / rsyslog imfile->omfile",
               med["ingest hinotori cpu"] / med["ingest rsyslog cpu"], unit="x")
    for kind in ("syslog", "loki", "fluentd"):
        if f"forward {kind}" in med:
            record("logs", f"forward to {kind}", med[f"forward {kind}"], unit="lines/s")
    record("logs", "lines lost with hosts SIGKILLed while writing (worst run)",
           max(k[1] for k in kills), goal="== 0", detail=f"{statistics.median(written):,.0f} "
           f"lines written per run")
    record("logs", "lines stored twice with hosts SIGKILLed (worst run)",
           max(k[2] for k in kills), goal="== 0")
    if any(k[1] or k[2] for k in kills):
        sys.exit("lines were lost or duplicated")


if __name__ == "__main__":
    main()
