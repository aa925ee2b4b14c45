"""The ``container`` provider: a host is a container of the release's engine image.

It drives Docker or Podman through the Docker Engine API (the docker SDK), one code path for
both; every blocking SDK call runs in a thread. Choices, and why:

- **The image is the engine's.** ``release.image`` is the engine image id ("sha256:<hex>") that
  an OS-image bake produced, so boot runs it as is; an image the engine lacks is refused before
  anything is created. The file-tree ``image_root`` of a BootRequest is not used.
- **Findable by label, named by host.** Containers carry ``hinotori.project``,
  ``hinotori.service``, ``hinotori.release`` (number) and ``hinotori.host`` labels plus the
  published port, and are named ``hinotori-<project>-<host id>``. list() asks the engine for this
  project's running containers: nothing on disk is needed to find them again.
- **Identity is the container id.** ``host.data["container"]`` records it, so adopt() and
  destroy() never mistake a later container that reuses the name for the host.
- **Outlives the controller.** Containers are children of the engine (Podman's conmon), never of
  the controller: a controller killed with SIGKILL leaves them running for the next to adopt.
- **127.0.0.1 only.** Inside the container the app listens on ``CONTAINER_PORT`` (given in
  ``port_env``); the engine publishes it on 127.0.0.1 on a free host port, which is the host's
  address. A port taken meanwhile (a race with another program) is retried on another port, then
  refused; a container that could not start is removed, never left behind.
- **Output in a file the engine writes.** Logging is ``json-file`` (Podman writes it in its
  k8s-file format), so the output of a host is a file on this machine (``host.data["log"]``,
  its lines unframed by ``container_logs.decode``) besides ``logs()`` through the API.
- **Sysctls through the engine.** A host gets the namespaced kernel settings of its image (the
  ``hinotori.sysctls`` label its sysctl recipe steps wrote) and of its release's config (the
  service's ``sysctls``, which win) as the container's ``HostConfig.Sysctls``.
- **exec through the API, stdin included.** The SDK's exec_run cannot feed stdin, so exec uses
  the low-level exec API on the hijacked socket: stdin written then half-closed, stdout and
  stderr demultiplexed from the stream's frames. It runs as booted: the container's env and
  working directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import socket
import threading
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from hinotori.engine_storage import inspect_image
from hinotori.errors import HinotoriError, MachineUnreachable, ProviderError
from hinotori.model import Host
from hinotori.providers import secretfiles
from hinotori.providers.base import BootRequest, CommandResult, HostUsage, volume_env
from hinotori.providers.container_exec import exec_create, exec_io, kill_exec
from hinotori.providers.container_inspect import (
    CONTAINER_PORT,
    LABEL,
    container_name,
    host_from_inspect,
)
from hinotori.providers.container_logs import ContainerLogSource
from hinotori.sysctls import from_label

if TYPE_CHECKING:
    import docker

    from hinotori.providers.base import ProviderContext

PORT_ATTEMPTS = 3
T = TypeVar("T")


def _port_taken(error: Exception) -> bool:
    text = str(error).lower()
    return "address already in use" in text or "port is already allocated" in text


class ContainerProvider:
    name = "container"
    evaluator_python = "python3"  # the image's own (an OS image always has it)
    shares_process_table = False  # a container has its own process namespace
    runs_os_image = True  # the engine image an OS-image bake made
    log_source = ContainerLogSource()

    @classmethod
    def create(cls, ctx: ProviderContext) -> ContainerProvider:
        return cls(ctx.project, url=ctx.engine_url, state_dir=ctx.state_dir)

    def __init__(self, project: str, *, url: str | None = None,
                 state_dir: Path | None = None, client: docker.DockerClient | None = None,
                 machine: str | None = None, publish: str = "127.0.0.1",
                 connect: Callable[[], docker.DockerClient] | None = None) -> None:
        """``url``: the engine's API address (``[engine] url``); None: engine.connect's
        discovery, with a private Podman service under ``state_dir`` as the fallback. The engine
        is reached on first use only. On a machine of the fleet: ``machine`` names it,
        ``connect`` reaches its engine (through SSH) and ports are published on ``publish``,
        the machine's address."""
        self.project = project
        self.url = url
        self.state_dir = state_dir
        self.machine, self.publish, self._connect = machine, publish, connect
        self._client = client
        self._lock = threading.Lock()
        self._ports: deque[int] = deque(maxlen=1024)  # recently handed out
        self._scope = str(state_dir or project)  # tells projects' secret files apart

    # -- the engine ----------------------------------------------------------------------------
    def client(self) -> docker.DockerClient:
        with self._lock:
            if self._client is None and self._connect is not None:
                self._client = self._connect()
            if self._client is None:
                from hinotori.engine import EngineError, connect

                try:
                    client = connect(self.url, state_dir=self.state_dir)
                except EngineError as e:
                    raise ProviderError(f"container hosts need a container engine: {e.message}",
                                        hint=e.hint or "start Docker or Podman, or set "
                                        "[engine] url in hinotori.toml") from None
                self._client = client
            return self._client

    def forget_engine(self) -> None:
        """Drop the engine client: the next call connects again (a machine's tunnel died)."""
        with self._lock:
            self._client = None

    @property
    def connected(self) -> bool:
        """The engine was reached and not forgotten since (no call is made to tell)."""
        return self._client is not None

    def _where(self) -> str:
        client = self._client
        return str(client.api.base_url) if client is not None else (self.url or "the engine")

    async def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run a blocking SDK call in a thread; an engine that stopped answering is a
        ProviderError that says so, never a traceback from requests or urllib3."""
        return await asyncio.to_thread(self._sync, what, fn)

    def _sync(self, what: str, fn: Callable[[], T]) -> T:
        import docker.errors
        import requests.exceptions

        try:
            return fn()
        except (HinotoriError, docker.errors.NotFound):
            raise
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as e:
            if self.machine is not None:  # the machine, or the road to it, is away
                raise MachineUnreachable(f"{what}: machine {self.machine}'s engine does not "
                                         f"answer ({type(e).__name__})",
                                         hint="`hinotori machines` shows its state") from None
            raise ProviderError(f"{what}: the container engine at {self._where()} does not "
                                f"answer ({type(e).__name__})",
                                hint="is it still running? `podman system service --time=0 "
                                     "unix:///run/podman/podman.sock &` starts one") from None
        except docker.errors.APIError as e:
            raise ProviderError(f"{what}: the container engine at {self._where()} refused: "
                                f"{e.explanation or e}") from None

    def _free_port(self) -> int:
        """A port free now and not handed to a host recently (two hosts booting at once must
        not be given the same one; the engine binds it only when the container starts). On
        another machine nothing can be probed from here: a random one below the ephemeral
        range, a taken one retried like a race here."""
        if self.machine is not None:
            port = random.randrange(20000, 32000)
            self._ports.append(port)
            return port
        for _ in range(50):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in self._ports:
                self._ports.append(port)
                return port
        raise ProviderError("no free TCP port on 127.0.0.1", hint="too many hosts on this machine?")

    # -- boot ----------------------------------------------------------------------------------
    async def boot(self, req: BootRequest) -> Host:
        rel = req.release
        if not req.argv:
            raise ProviderError(f"release {rel.service} {rel.name} has an empty command")
        client = await asyncio.to_thread(self.client)
        image = await self._call(f"looking up image {rel.image}",
                                 lambda: self._require_image(client, rel))
        sysctls = {**from_label((image.get("Config") or {}).get("Labels")),
                   **rel.config.sysctls}
        env = {**rel.config.env, rel.config.port_env: str(CONTAINER_PORT),
               "HINOTORI_HOST_ID": req.host_id, "HINOTORI_SERVICE": rel.service,
               "HINOTORI_RELEASE": rel.name, "HINOTORI_SCRATCH": "/tmp", **req.extra_env,
               **volume_env(req.volumes)}
        # Volumes are directories on this machine: mounted at the same path inside.
        binds = {str(path): {"bind": str(path), "mode": "rw"} for path in req.volumes.values()}
        with secretfiles.for_container(self._scope, req, self.machine is None) as (more, mount):
            return await self._start(client, req, {**env, **more}, {**binds, **mount}, sysctls)

    async def _start(self, client: docker.DockerClient, req: BootRequest, env: dict[str, str],
                     binds: dict[str, dict[str, str]], sysctls: dict[str, str]) -> Host:
        for attempt in range(1, PORT_ATTEMPTS + 1):
            port = self._free_port()
            try:
                info = await self._call(f"starting host {req.host_id}", lambda p=port: self._run(
                    client, req, env, binds, p, sysctls))
            except _PortTaken as e:
                if attempt == PORT_ATTEMPTS:
                    raise ProviderError(
                        f"cannot start host {req.host_id}: port 127.0.0.1:{e.port} was taken "
                        f"as it started, {PORT_ATTEMPTS} times in a row",
                        hint="another program is grabbing ports on 127.0.0.1; try again") from None
                continue
            host = host_from_inspect(info, self.machine, self.publish)
            assert host is not None  # we labelled it
            return host
        raise AssertionError("unreachable")

    def _require_image(self, client: docker.DockerClient, rel: Any) -> dict[str, Any]:
        import docker.errors

        try:
            return inspect_image(client, rel.image)
        except docker.errors.NotFound:
            pass
        raise ProviderError(
                f"image {rel.image} of {rel.service} {rel.name} is not in the engine at "
                f"{self._where()}",
                hint=f"run `hinotori bake {rel.service}` to build it into this engine (an "
                     "engine's images are its own: a bake against another engine does not "
                     "count)")

    def _run(self, client: docker.DockerClient, req: BootRequest, env: dict[str, str],
             binds: dict[str, dict[str, str]], port: int,
             sysctls: dict[str, str] | None = None) -> dict[str, Any]:
        """Create and start the container; its inspect data. On any failure the container is
        removed before raising: nothing half-started is left behind."""
        import docker.errors

        rel, api = req.release, client.api
        name = container_name(self.project, req.host_id)
        labels = {LABEL + "project": self.project, LABEL + "service": rel.service,
                  LABEL + "release": str(rel.number), LABEL + "release-name": rel.name,
                  LABEL + "host": req.host_id, LABEL + "port": str(port),
                  **({LABEL + "job": req.job} if req.job else {})}
        host_config = api.create_host_config(
            port_bindings={f"{CONTAINER_PORT}/tcp": (self.publish, port)}, binds=binds or None,
            log_config={"type": "json-file", "config": {}}, init=False, sysctls=sysctls or None)
        try:
            created = api.create_container(
                rel.image, command=list(req.argv), name=name, labels=labels,
                environment=env, ports=[CONTAINER_PORT], host_config=host_config,
                stop_signal="SIGTERM", detach=True)
        except docker.errors.APIError as e:
            raise ProviderError(f"the engine refused host {req.host_id} of {rel.service} "
                                f"{rel.name}: {e.explanation or e}",
                                hint="`hinotori hosts` lists what runs; a container named "
                                     f"{name} may be left from elsewhere") from None
        cid = created["Id"]
        try:
            if self.machine is not None and secretfiles.files_wanted(req.secrets):
                api.put_archive(cid, "/", secretfiles.tar_of(req.secrets))
            api.start(cid)
            info = api.inspect_container(cid)
        except docker.errors.APIError as e:
            self._remove(api, cid)
            if _port_taken(e):
                raise _PortTaken(port) from None
            raise ProviderError(
                f"cannot start host {req.host_id} of {rel.service} {rel.name}: "
                f"{e.explanation or e}",
                hint="check the service's command: the program must exist in the image "
                     "(relative paths from its working directory) and be executable") from None
        except BaseException:
            self._remove(api, cid)
            raise
        return info

    @staticmethod
    def _remove(api: Any, cid: str) -> None:
        import docker.errors

        with contextlib.suppress(docker.errors.NotFound):
            api.remove_container(cid, v=True, force=True)

    # -- life and death ------------------------------------------------------------------------
    def _inspect(self, host: Host) -> dict[str, Any] | None:
        """The host's container as the engine sees it, None if gone or not this host's."""
        import docker.errors

        cid = host.data.get("container")
        if not cid:
            return None
        try:
            info = self.client().api.inspect_container(cid)
        except docker.errors.NotFound:
            return None
        labels = info.get("Config", {}).get("Labels") or {}
        if labels.get(LABEL + "host") != host.id or labels.get(LABEL + "project") != self.project:
            return None
        return info

    async def adopt(self, host: Host) -> bool:
        info = await self._call(f"looking for host {host.id}", lambda: self._inspect(host))
        return bool(info and (info.get("State") or {}).get("Running"))

    async def exit_status(self, host: Host) -> int | None:
        info = await self._call(f"looking for host {host.id}", lambda: self._inspect(host))
        state = (info or {}).get("State") or {}
        return None if not info or state.get("Running") else state.get("ExitCode")

    async def destroy(self, host: Host, grace: float = 10.0) -> None:
        def stop_and_remove() -> None:
            import docker.errors

            info = self._inspect(host)
            if info is None:
                return  # gone already: not an error
            api = self.client().api
            if (info.get("State") or {}).get("Running"):
                # SIGTERM, then the engine's SIGKILL after the grace period.
                with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                    api.stop(info["Id"], timeout=max(math.ceil(grace), 0))
            self._remove(api, info["Id"])  # with its anonymous volumes

        await self._call(f"destroying host {host.id}", stop_and_remove)
        if self.machine is None:  # on another machine they went with the container
            secretfiles.remove_files(self._scope, host.id)

    async def kill(self, host: Host) -> None:
        def kill() -> None:
            import docker.errors

            info = self._inspect(host)
            if info is not None and (info.get("State") or {}).get("Running"):
                with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                    self.client().api.kill(info["Id"], signal="SIGKILL")

        await self._call(f"killing host {host.id}", kill)

    async def list(self) -> list[Host]:
        def running() -> list[Host]:
            import docker.errors

            api = self.client().api
            found = []
            for summary in api.containers(filters={"label": f"{LABEL}project={self.project}",
                                                   "status": "running"}):
                with contextlib.suppress(docker.errors.NotFound):  # went meanwhile
                    host = host_from_inspect(api.inspect_container(summary["Id"]),
                                             self.machine, self.publish)
                    if host is not None:
                        found.append(host)
            return sorted(found, key=lambda h: h.id)

        return await self._call("listing container hosts", running)

    # -- looking inside ------------------------------------------------------------------------
    async def exec(self, host: Host, argv: Sequence[str], *, stdin: bytes = b"",
                   timeout: float = 60.0) -> CommandResult:
        if not argv:
            raise ProviderError("exec needs a command (an argv list)")
        info = await self._call(f"looking for host {host.id}", lambda: self._inspect(host))
        if not info or not (info.get("State") or {}).get("Running"):
            raise ProviderError(f"host {host.id} has no running container to run in "
                                "(destroyed or killed?)",
                                hint="`hinotori hosts` lists the live hosts")
        api = self.client().api
        exec_id = await self._call(f"running {argv[0]!r} in host {host.id}",
                                   lambda: exec_create(api, info["Id"], argv, host))
        task = asyncio.ensure_future(self._call(f"running {argv[0]!r} in host {host.id}",
                                                lambda: exec_io(api, exec_id, stdin)))
        try:
            async with asyncio.timeout(timeout):
                out, err = await asyncio.shield(task)
        except BaseException as e:  # timed out or cancelled: leave nothing running
            if self.machine is None:  # the engine's pids are this machine's only here
                await asyncio.to_thread(kill_exec, api, exec_id)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(10.0):
                    await task
            if isinstance(e, TimeoutError):
                raise ProviderError(f"{argv[0]!r} in host {host.id} did not finish within "
                                    f"{timeout:g}s; killed") from None
            raise
        done = await self._call("reading the exit status", lambda: api.exec_inspect(exec_id))
        rc = done.get("ExitCode")
        return CommandResult(rc=rc if isinstance(rc, int) else -1,
                             stdout=out.decode("utf-8", "replace"),
                             stderr=err.decode("utf-8", "replace"))

    async def usage(self, host: Host) -> HostUsage | None:
        def stats() -> HostUsage | None:
            import docker.errors

            cid = host.data.get("container")
            if not cid or self._inspect(host) is None:
                return None
            try:
                s = self.client().api.stats(cid, stream=False, one_shot=True)
            except docker.errors.APIError:
                return None  # stopped meanwhile
            cpu = ((s.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage")
            mem = (s.get("memory_stats") or {}).get("usage")
            if cpu is None or mem is None:
                return None
            return HostUsage(cpu_seconds=cpu / 1e9, memory_bytes=int(mem))

        try:
            return await self._call(f"reading usage of host {host.id}", stats)
        except ProviderError:
            return None  # the engine is away: usage is best effort

    def close(self, *, teardown: bool = False) -> None:
        pass  # the engine's client reconnects per call

    def logs(self, host: Host, tail: int | None = None) -> list[str]:
        """Through the API while the container exists; an unreachable engine or a removed
        container leaves nothing to read here (the central log store has shipped it)."""
        import docker.errors
        import requests.exceptions

        cid = host.data.get("container")
        if not cid:
            return []
        try:
            raw = self.client().api.logs(cid, stdout=True, stderr=True,
                                         tail="all" if tail is None else tail)
        except (docker.errors.APIError, requests.exceptions.RequestException, ProviderError):
            return []
        return raw.decode("utf-8", "replace").splitlines()


class _PortTaken(Exception):
    def __init__(self, port: int) -> None:
        super().__init__(port)
        self.port = port
