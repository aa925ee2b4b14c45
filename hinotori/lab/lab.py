"""A lab: N machines on this computer for rehearsing a fleet (`hinotori lab up|down|kill|cut|mend`).

The lab keeps what it made in ``lab.json`` inside its state directory, with the client key and a
``known_hosts`` file that lists each machine's own host key (written here, so nothing is ever
accepted blindly), and prints a `[machines.NAME]` snippet to paste into a spec. Killing a
machine kills its PID namespace's init, and with it sshd, the engine and every container;
cutting one takes its cable down while everything on it keeps running.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from hinotori.errors import LabError
from hinotori.lab import plan
from hinotori.lab.plan import LabMachine
from hinotori.processes import log_tail, pid_alive
from hinotori.statefiles import private_dir, write_private

READY_TIMEOUT = 30.0


def _run(argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        raise LabError(f"`{' '.join(argv)}` failed: {result.stderr.strip() or result.stdout}")
    return result


def require_root_and_tools(engines: set[str]) -> None:
    if os.geteuid() != 0:
        raise LabError("hinotori lab needs root: it makes network namespaces, a bridge and "
                       "runs sshd and a container engine in each machine",
                       hint="run it as root (sudo hinotori lab up 3)")
    tools = {"ip": "iproute2", "nsenter": "util-linux", "unshare": "util-linux",
             "/usr/sbin/sshd": "openssh-server", "ssh-keygen": "openssh-client",
             "ssh": "openssh-client"}
    tools.update({"podman": "podman"} if "podman" in engines else {})
    tools.update({"dockerd": "docker.io"} if "docker" in engines else {})
    missing = sorted({pkg for tool, pkg in tools.items() if shutil.which(tool) is None})
    if missing:
        raise LabError(f"the lab needs {', '.join(missing)}",
                       hint=f"apt-get install {' '.join(missing)}")


@dataclass
class Lab:
    dir: Path
    index: int
    machines: list[LabMachine] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)  # machine -> its PID namespace's init

    # -- state on disk -------------------------------------------------------------------
    @property
    def key(self) -> Path:
        return self.dir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.dir / "known_hosts"

    def save(self) -> None:
        data = {"index": self.index, "pids": self.pids,
                "machines": [{"name": m.name, "number": m.number, "engine": m.engine}
                             for m in self.machines]}
        write_private(self.dir / "lab.json", json.dumps(data, indent=2),
                      tmp=self.dir / "lab.json.tmp")

    @classmethod
    def load(cls, directory: Path) -> Lab:
        try:
            data = json.loads((directory / "lab.json").read_text())
        except FileNotFoundError:
            raise LabError(f"no lab in {directory}",
                           hint="`hinotori lab up 3` makes one") from None
        lab = cls(dir=directory, index=data["index"], pids=data.get("pids", {}))
        lab.machines = [LabMachine(m["name"], m["number"], lab.index, m["engine"],
                                   directory / m["name"]) for m in data["machines"]]
        return lab

    def machine(self, name: str) -> LabMachine:
        for m in self.machines:
            if m.name == name:
                return m
        known = ", ".join(m.name for m in self.machines)
        raise LabError(f"the lab has no machine {name!r} (machines: {known})")

    # -- making and unmaking -------------------------------------------------------------
    @classmethod
    def up(cls, directory: Path, count: int, docker: set[str] | None = None) -> Lab:
        if not 1 <= count <= 9:
            raise LabError(f"a lab has 1 to 9 machines, not {count}")
        names = {f"m{i}" for i in range(1, count + 1)}
        docker = docker or set()
        if docker - names:
            raise LabError(f"--docker names {', '.join(sorted(docker - names))}, which the lab "
                           f"will not have (machines m1..m{count})")
        require_root_and_tools({"docker" if f"m{i}" in docker else "podman"
                                for i in range(1, count + 1)})
        if (directory / "lab.json").exists():
            raise LabError(f"a lab already lives in {directory}",
                           hint="`hinotori lab down` removes it first")
        private_dir(directory)
        lab = cls(dir=directory, index=_claim_index())
        lab.machines = [LabMachine(f"m{i}", i, lab.index,
                                   "docker" if f"m{i}" in docker else "podman",
                                   directory / f"m{i}") for i in range(1, count + 1)]
        try:
            lab.save()
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hinotori-lab",
                  "-f", str(lab.key)])
            for argv in plan.network_up(lab.index)[1:]:  # the bridge itself: _claim_index
                _run(argv)
            for m in lab.machines:
                lab._make(m)
            # Each machine's own host key, recorded here: nothing is ever accepted blindly.
            write_private(lab.known_hosts, "".join(
                "{} {} {}\n".format(m.address, *(m.dir / "ssh_host_ed25519_key.pub")
                                     .read_text().split()[:2]) for m in lab.machines))
            for m in lab.machines:
                lab.start(m)
            for m in lab.machines:
                lab.wait_ready(m)
        except BaseException:
            lab.down()
            raise
        return lab

    def _make(self, m: LabMachine) -> None:
        private_dir(m.dir)
        (m.dir / "storage").mkdir(exist_ok=True)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", m.name, "-f",
              str(m.host_key)])
        shutil.copyfile(f"{self.key}.pub", m.dir / "authorized_keys")
        write_private(m.dir / "init.sh", plan.init_script(m))
        for argv in plan.machine_network_up(m):
            _run(argv)

    def start(self, m: LabMachine) -> None:
        log = open(m.dir / "init.log", "ab")  # noqa: SIM115 (handed to the child)
        proc = subprocess.Popen(plan.start(m), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        # unshare --fork: the machine's init is unshare's child, PID 1 inside.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
            found = children.read_text().split() if children.exists() else []
            if found:
                self.pids[m.name] = int(found[0])
                self.save()
                return
            if proc.poll() is not None:
                break
            time.sleep(0.02)
        raise LabError(f"machine {m.name} did not start: "
                       f"{log_tail(m.dir / 'init.log', 0)}")

    def wait_ready(self, m: LabMachine) -> None:
        """sshd answers on the machine's address and the engine's socket exists."""
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            pid = self.pids.get(m.name)
            if pid is None or not pid_alive(pid):
                break
            if _sshd_listening(pid) and _run(
                    ["nsenter", "-t", str(pid), "-m", "test", "-S", m.engine_socket],
                    check=False).returncode == 0:
                return
            time.sleep(0.1)
        raise LabError(f"machine {m.name} is not ready after {READY_TIMEOUT:g}s: "
                       f"sshd: {log_tail(m.dir / 'sshd.log', 0)}; "
                       f"{m.engine}: {log_tail(m.dir / 'engine.log', 0)}")

    def kill(self, name: str) -> None:
        """Everything on the machine dies at once, as in a power cut."""
        m = self.machine(name)
        pid = self.pids.pop(m.name, None)
        if pid is not None and pid_alive(pid):
            os.kill(pid, 9)  # PID 1 of its namespace: the kernel kills every process in it
            while pid_alive(pid):
                time.sleep(0.01)
        self.save()

    def cut(self, name: str) -> None:
        _run(plan.cut(self.machine(name)))

    def mend(self, name: str) -> None:
        """Reconnect a cut machine; start a killed one again (empty: its tmpfs died with it).
        Returns once its sshd answers from here: right after the cable comes back up, a first
        connection could be reset."""
        m = self.machine(name)
        _run(plan.mend(m))
        pid = self.pids.get(m.name)
        if pid is None or not pid_alive(pid):
            self.start(m)
            self.wait_ready(m)
        deadline = time.monotonic() + READY_TIMEOUT
        while not _sshd_answers(m.address):
            if time.monotonic() > deadline:
                raise LabError(f"machine {m.name} does not answer on {m.address}:22 after "
                               f"{READY_TIMEOUT:g}s: sshd: {log_tail(m.dir / 'sshd.log', 0)}")
            time.sleep(0.1)

    def down(self) -> None:
        for m in self.machines:
            self.kill(m.name)
            for argv in plan.machine_network_down(m):
                _run(argv, check=False)
        for argv in plan.network_down(self.index):
            _run(argv, check=False)
        # The kernel frees a namespace (and its cable) asynchronously: wait, so the next lab
        # can reuse the names.
        deadline = time.monotonic() + 10
        while _cables(self.index) and time.monotonic() < deadline:
            time.sleep(0.05)
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- telling -------------------------------------------------------------------------
    def status(self) -> list[dict[str, object]]:
        rows = []
        for m in self.machines:
            pid = self.pids.get(m.name)
            flags = Path(f"/sys/class/net/{m.veth}/flags")
            rows.append({"name": m.name, "address": m.address, "engine": m.engine,
                         "zone": m.zone, "running": bool(pid and pid_alive(pid)),
                         # IFF_UP: the cable is plugged in (`lab cut` takes it down)
                         "connected": flags.exists() and bool(int(flags.read_text(), 16) & 1)})
        return rows

    def snippet(self) -> str:
        """The spec tables that point hinotori at this lab's machines."""
        return "".join(
            f'[machines.{m.name}]\naddress = "{m.address}"\n'
            f'ssh = {{ user = "root", port = 22, key = "{self.key}", '
            f'known_hosts = "{self.known_hosts}" }}\n'
            f'engine = "{m.engine_url}"\nlabels = {{ zone = "{m.zone}" }}\n\n'
            for m in self.machines)


def _claim_index() -> int:
    """The first lab index whose bridge we could create (one subnet per lab). Creating it is
    the claim: two labs starting at once (parallel tests) never get the same one."""
    for index in range(1, 250):
        if Path(f"/sys/class/net/{plan.bridge_name(index)}").exists() or _cables(index):
            continue
        if _run(plan.network_up(index)[0], check=False).returncode == 0:
            return index
    raise LabError("250 labs already exist on this computer", hint="`hinotori lab down` some")


def _cables(lab_index: int) -> list[str]:
    """The root namespace's ends of a lab's cables still there."""
    return [p.name for p in Path("/sys/class/net").glob(f"hl{lab_index}m*")]


def _sshd_answers(address: str) -> bool:
    """sshd at ``address`` greets a new connection with its banner."""
    try:
        with socket.create_connection((address, 22), timeout=1.0) as conn:
            conn.settimeout(1.0)
            return conn.recv(8).startswith(b"SSH-")
    except OSError:
        return False


def _sshd_listening(pid: int) -> bool:
    """Port 22 listens in the machine's network namespace (read from its TCP table, so sshd's
    log is not filled with probes that never speak SSH)."""
    try:
        table = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(f[1].endswith(":0016") and f[3] == "0A" for f in (row.split() for row in table))
