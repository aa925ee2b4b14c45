"""The ``process`` provider: a host is a local process group running in its own copy of the image.

The embedded default, needing nothing beyond this machine. Choices, and why:

- **A copy, never links.** The host's view (``state_dir/root``) is ``cp -a --reflink=auto`` of
  the image (``shutil.copytree`` where that cp is missing): cheap on CoW filesystems, and a write
  made inside one host, even by root, can never reach the image or another host. Hardlinks
  would share inodes and let exactly that happen.
- **Outlives the controller.** The command starts in a new session (its own process group), with
  stdout/stderr appended to ``state_dir/output.log``, a file rather than a pipe: a controller
  that dies takes neither the host nor its output with it.
- **Identity is pid + start time.** ``host.data["start_ticks"]`` is field 22 of
  ``/proc/PID/stat``; a pid reused by another process has other ticks, so adopt() and destroy()
  never mistake (or signal) a stranger. A zombie counts as dead.
- **Findable.** ``state_dir/host.json`` records the Host; list() scans ``hosts_root/*/host.json``,
  so boot with ``state_dir = hosts_root / host_id``. destroy() keeps host.json (marked destroyed)
  and output.log: the logs of dead hosts are still wanted.
- **exec runs where the host runs.** boot() keeps the env it computed (port included) in
  ``state_dir/env.json`` (mode 0600; not in the store), so exec() runs a command in the host's
  view with exactly the host's env, in a session of its own that a timeout kills whole.
  destroy() removes the file with the view.
- **Secrets never rest here.** A release's secrets (``BootRequest.secrets``) are left out of
  env.json: exec() takes their values from the host's own ``/proc/PID/environ``; ``as_file``
  ones are files on a tmpfs (secretfiles.py). A host with secrets writes its output through a
  mask relay (maskpipe.py, its own session, ends at the host's EOF), so a value it prints
  reaches output.log as ``***``.

Children we booted are kept as Popen objects and polled, so they are reaped instead of lingering
as zombies; adopted hosts (booted by an earlier controller) are not our children.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from hinotori import command
from hinotori.errors import ProviderError
from hinotori.model import Host, HostState
from hinotori.providers import secretfiles
from hinotori.providers.base import (
    BootRequest,
    CommandResult,
    HostUsage,
    ProviderContext,
    volume_env,
)
from hinotori.providers.ports import SPAWN_LOCK, PortPool
from hinotori.providers.proc_usage import proc_stat as _proc_stat
from hinotori.providers.proc_usage import session_usage, session_usages
from hinotori.providers.process_exits import ExitWatch
from hinotori.providers.process_files import (
    copy_tree,
    read_host,
    remove_tree,
    write_env,
    write_host,
)
from hinotori.providers.process_logs import ProcessLogSource
from hinotori.statefiles import open_private, private_dir

BOOT_THREADS = 16
_BASE_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "SYSTEMROOT")


def _start_relay(out: object, values: list[str]) -> tuple[subprocess.Popen[bytes] | None,
                                                         int | None]:
    """With secret values: the mask relay writing to ``out`` and the pipe end the host writes
    to; without: (None, None), the host writes to ``out`` itself."""
    if not values:
        return None, None
    read_end, write_end = os.pipe()
    values_r, values_w = os.pipe()
    try:
        relay = subprocess.Popen(
            [sys.executable, "-I", str(Path(__file__).with_name("maskpipe.py")), str(values_r)],
            stdin=read_end, stdout=out, stderr=subprocess.DEVNULL,  # type: ignore[arg-type]
            pass_fds=(values_r,), start_new_session=True, env={})
    except OSError:
        os.close(write_end)
        os.close(values_w)
        raise
    finally:
        os.close(read_end)
        os.close(values_r)
    with os.fdopen(values_w, "wb") as f:  # through a pipe: never in a file or an argv
        f.write(json.dumps(values).encode())
    return relay, write_end


def _environ_of(pid: int, names: list[str]) -> dict[str, str]:
    """``names`` as process ``pid`` was started with them (a host's secret env vars)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    found = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep and key.decode(errors="replace") in names:
            found[key.decode()] = value.decode(errors="replace")
    return found


class ProcessProvider:
    name = "process"
    evaluator_python = sys.executable  # hosts share this machine, and so its interpreter
    shares_process_table = True  # a host is the session its pid leads
    runs_os_image = False  # a copy of a file-tree image
    log_source = ProcessLogSource()

    @classmethod
    def create(cls, ctx: ProviderContext) -> ProcessProvider:
        return cls(ctx.hosts_dir)

    def __init__(self, hosts_root: Path) -> None:
        self.hosts_root = Path(hosts_root)
        self._children: dict[int, subprocess.Popen[bytes]] = {}  # pid -> our own child
        self._child_ticks: dict[int, int | None] = {}  # pid -> its start ticks, at boot
        self._ports = PortPool()
        # Boots' own threads (not the loop's default executor, which the observers share):
        # as many as the fleet lets boot at once; mostly waiting on cp and fork/exec.
        self._pool = ThreadPoolExecutor(BOOT_THREADS, thread_name_prefix="hinotori-boot")
        self._relays: dict[int, subprocess.Popen[bytes]] = {}  # pid -> our mask relay
        self._exits: dict[int, int] = {}  # pid -> exit status of our child reaped lately
        self.exit_watch = ExitWatch(self._reap)  # live hosts' pidfds: told when one ends

    async def boot(self, req: BootRequest) -> Host:
        if not req.argv:
            rel = req.release
            raise ProviderError(f"release {rel.service} {rel.name} has an empty command")
        # All of a boot is blocking work (copy the image, write files, fork and exec): in a
        # thread, so 1,000 boots never stall the event loop (health probes, the API, switches).
        started = asyncio.get_running_loop().run_in_executor(self._pool, self._boot, req)
        try:
            return await asyncio.shield(started)
        except asyncio.CancelledError:
            started.add_done_callback(self._abandon)  # nobody will record it: end it
            raise

    def _abandon(self, started: asyncio.Future[Host]) -> None:
        """A boot whose caller was cancelled: kill the host it started (its files stay, as a
        crashed boot's do, for the sweep of orphans)."""
        if started.cancelled() or started.exception() is not None:
            return
        host = started.result()
        if host.pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(host.pid, signal.SIGKILL)

    def _boot(self, req: BootRequest) -> Host:
        rel, state_dir = req.release, req.state_dir
        private_dir(state_dir)
        view, scratch, log = state_dir / "root", state_dir / "scratch", state_dir / "output.log"
        try:
            copy_tree(req.image_root, view)
        except OSError as e:
            remove_tree(state_dir)
            raise ProviderError(f"cannot copy image {rel.image} into host {req.host_id}: {e}",
                                hint="is the image still in the image store? "
                                     "`hinotori images` lists them") from e
        private_dir(scratch)
        port = self._ports.take()
        env = {k: os.environ[k] for k in _BASE_ENV if k in os.environ}
        env.update(rel.config.env)
        env.update({rel.config.port_env: str(port), "HINOTORI_HOST_ID": req.host_id,
                    "HINOTORI_SERVICE": rel.service, "HINOTORI_RELEASE": rel.name,
                    "HINOTORI_SCRATCH": str(scratch), "TMPDIR": str(scratch)})
        env.update(req.extra_env)
        env.update(volume_env(req.volumes))  # on this machine already: the paths as they are
        hidden = [s.name for s in req.secrets if not s.as_file]  # values: never in env.json
        write_env({k: v for k, v in env.items() if k not in hidden}, state_dir)
        relay: subprocess.Popen[bytes] | None = None
        try:
            files = secretfiles.write_files(
                secretfiles.host_dir(self.hosts_root, req.host_id), req.secrets)
            env.update(secretfiles.secret_env(req.secrets,
                                              {k: str(p) for k, p in files.items()}))
            with open_private(log, "ab") as out:
                with SPAWN_LOCK:
                    relay, sink = _start_relay(out, [s.value for s in req.secrets])
                try:
                    with SPAWN_LOCK:  # see ports.py
                        proc = subprocess.Popen(list(req.argv), cwd=view, env=env,
                                                stdin=subprocess.DEVNULL,
                                                stdout=out if sink is None else sink,
                                                stderr=subprocess.STDOUT, start_new_session=True)
                finally:
                    if sink is not None:
                        os.close(sink)  # the host holds it now: the relay ends at its EOF
        except (OSError, ProviderError) as e:
            if relay is not None:
                relay.wait()
            secretfiles.remove_files(self.hosts_root, req.host_id)
            remove_tree(state_dir)
            if isinstance(e, ProviderError):
                raise
            raise ProviderError(
                f"cannot start host {req.host_id} of {rel.service} {rel.name}: "
                f"{req.argv[0]!r}: {e.strerror or e}",
                hint="check the service's command: the program must exist in the image (paths "
                     "are relative to the image root) or on PATH, and be executable") from e
        self._children[proc.pid] = proc
        st = _proc_stat(proc.pid)
        self._child_ticks[proc.pid] = st[1] if st else None
        data = {"port": port, "log": str(log), "state_dir": str(state_dir),
                "start_ticks": st[1] if st else None}
        if hidden:
            data["secrets"] = hidden  # names only: exec() reads the values from /proc
        if req.job:
            data["job"] = req.job
        if relay is not None:
            self._relays[relay.pid] = relay
            rst = _proc_stat(relay.pid)
            data["relay"] = [relay.pid, rst[1] if rst else None]
        host = Host(id=req.host_id, service=rel.service, release=rel.number,
                    provider=self.name, state=HostState.BOOTING, born_at=time.time(),
                    address=f"127.0.0.1:{port}", pid=proc.pid, root=str(view), data=data)
        write_host(host, state_dir)
        return host

    def _reap(self, pid: int) -> None:
        """Collect our dead child, if it is one, so it does not linger as a zombie."""
        child = self._children.get(pid)
        if child is not None and child.poll() is not None:
            del self._children[pid]
            self._child_ticks.pop(pid, None)
            code = child.returncode
            self._exits[pid] = 128 - code if code < 0 else code  # killed by N: 128+N

    def alive_now(self, host: Host) -> bool:
        """``adopt`` without an await: the health monitor asks at every look."""
        return self._alive(host)

    def _alive(self, host: Host) -> bool:
        if host.pid is None:
            return False
        ticks = host.data.get("start_ticks")
        if self.exit_watch.alive(host.pid, ticks):
            return True  # a pidfd watches it: the loop is told when it ends (process_exits)
        if self._asked_alive(host):
            self.exit_watch.watch(host.pid, ticks)
            return True
        return False

    def _asked_alive(self, host: Host) -> bool:
        assert host.pid is not None
        self._reap(host.pid)
        if host.pid in self._children and \
                self._child_ticks.get(host.pid, -1) == host.data.get("start_ticks"):
            return True  # this host's process, our child, not exited (_reap just asked)
        try:
            os.kill(host.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # exists, but not ours to signal: the start ticks decide
        st = _proc_stat(host.pid)
        if st is None:  # no /proc (not Linux): the pid is all we can check
            return host.pid in self._children or "start_ticks" not in host.data
        if st[0] in "ZX":
            self._reap(host.pid)  # it died since the first look
            return False
        return st[1] == host.data.get("start_ticks")

    def _group_alive(self, pgid: int) -> bool:
        self._reap(pgid)
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        if not Path("/proc").is_dir():
            return True
        leader = _proc_stat(pgid)
        if leader is not None and leader[0] not in "ZX":
            return True  # the leader itself runs: no need to look through every process
        for p in Path("/proc").iterdir():  # a group of zombies only is a dead group
            if p.name.isdigit():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    f = p.joinpath("stat").read_text().rsplit(")", 1)[1].split()
                    if int(f[2]) == pgid and f[0] not in "ZX":
                        return True
        return False

    async def destroy(self, host: Host, grace: float = 10.0) -> None:
        pgid = host.pid
        # Signal the group only if its leader is our host (alive or a zombie) or is gone: a pid
        # still in use as a process group id is never handed out again, so killpg then reaches
        # only leftovers of this host, never a stranger that reused the pid.
        leader = _proc_stat(pgid) if pgid is not None else None
        ours = leader is None or leader[1] == host.data.get("start_ticks")
        if pgid is not None and ours:
            for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, sig)
                deadline = time.monotonic() + wait
                while self._group_alive(pgid) and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                if not self._group_alive(pgid):
                    break
        await self._relay_done(host)
        secretfiles.remove_files(self.hosts_root, host.id)
        state_dir = Path(host.data.get("state_dir") or Path(host.root or ".").parent)
        await asyncio.to_thread(remove_tree, state_dir / "root")
        await asyncio.to_thread(remove_tree, state_dir / "scratch")
        with contextlib.suppress(FileNotFoundError):
            (state_dir / "env.json").unlink()
        if state_dir.is_dir():
            write_host(replace(host, state=HostState.DESTROYED), state_dir)

    async def _relay_done(self, host: Host, wait: float = 5.0) -> None:
        """Wait until the host's mask relay wrote its last bytes (it ends at the host's EOF),
        so the flush after a destroy finds all of output.log."""
        pid, ticks = (host.data.get("relay") or [None, None])[:2]
        deadline = time.monotonic() + wait
        while pid is not None and time.monotonic() < deadline:
            child = self._relays.get(pid)
            if child is not None and child.poll() is not None:
                del self._relays[pid]
                return
            st = _proc_stat(pid)
            if st is None or st[1] != ticks or (st[0] in "ZX" and child is None):
                return  # gone, another process, or a zombie of another parent: done writing
            await asyncio.sleep(0.02)

    async def kill(self, host: Host) -> None:
        if host.pid is not None and self._alive(host):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(host.pid, signal.SIGKILL)

    async def adopt(self, host: Host) -> bool:
        return self._alive(host)

    async def exit_status(self, host: Host) -> int | None:
        """Known for a host we booted (our child); an adopted one's status died with the
        controller that booted it."""
        if host.pid is None or self._alive(host):
            return None
        return self._exits.pop(host.pid, None)

    async def exec(self, host: Host, argv: Sequence[str], *, stdin: bytes = b"",
                   timeout: float = 60.0) -> CommandResult:
        if not argv:
            raise ProviderError("exec needs a command (an argv list)")
        state_dir = Path(host.data.get("state_dir") or Path(host.root or ".").parent)
        if not host.root or not Path(host.root).is_dir():
            raise ProviderError(f"host {host.id} has no view to run in (destroyed?)",
                                hint="`hinotori hosts` lists the live hosts")
        try:
            env = json.loads((state_dir / "env.json").read_text())
        except (OSError, ValueError):
            # Booted before env.json existed: the base env and its port are all we know.
            env = {k: os.environ[k] for k in _BASE_ENV if k in os.environ}
            env.update({"PORT": str(host.data.get("port", "")), "HINOTORI_HOST_ID": host.id})
        if host.data.get("secrets") and host.pid is not None and self._alive(host):
            env.update(_environ_of(host.pid, host.data["secrets"]))
        try:
            done = await command.run(argv, cwd=host.root, env=env, stdin=stdin, timeout=timeout)
        except OSError as e:
            raise ProviderError(f"cannot run {argv[0]!r} in host {host.id}: "
                                f"{e.strerror or e}",
                                hint="the program must exist in the host's view or on its "
                                     "PATH") from e
        if done.timed_out:
            raise ProviderError(f"{argv[0]!r} in host {host.id} did not finish within "
                                f"{timeout:g}s; killed")
        return done

    async def list(self) -> list[Host]:
        found = (read_host(p) for p in sorted(self.hosts_root.glob("*/host.json")))
        return [h for h in found if h and h.state != HostState.DESTROYED and self._alive(h)]

    async def usage(self, host: Host) -> HostUsage | None:
        """Summed over every process of the host's session (its command and all it started)."""
        if host.pid is None or not self._alive(host):
            return None
        return await asyncio.to_thread(session_usage, host.pid)

    async def usages(self, hosts: Sequence[Host]) -> dict[str, HostUsage]:
        """``usage`` of many hosts from one /proc scan (the metrics sampler's pass)."""
        alive = {h.pid: h.id for h in hosts if h.pid is not None and self._alive(h)}
        found = await asyncio.to_thread(session_usages, alive)
        return {alive[sid]: u for sid, u in found.items()}

    def close(self, *, teardown: bool = False) -> None:
        """Only pidfds are held open; on `down`, secret files no live host owns (left by a
        controller killed mid-boot) are removed."""
        self.exit_watch.close()
        if teardown:
            live = {h.id for p in self.hosts_root.glob("*/host.json") if (h := read_host(p))
                    and h.state != HostState.DESTROYED and self._alive(h)}
            secretfiles.sweep(self.hosts_root, keep=live)

    def logs(self, host: Host, tail: int | None = None) -> list[str]:
        path = Path(host.data.get("log") or Path(host.root or ".").parent / "output.log")
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                lines = deque(f, maxlen=tail) if tail is not None else list(f)
        except FileNotFoundError:
            return []
        return [line.rstrip("\n") for line in lines]
