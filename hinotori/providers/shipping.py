"""Shipping images to machines: a registry on this machine's loopback, reached from each machine
through its SSH connection (a reverse forward), so a machine pulls only the layers it lacks.

    bake (local engine) ──push──▶ registry 127.0.0.1:P ◀──pull (SSH -R P)── machine's engine

Why a registry and not `save | load`: an image's layers are content-addressed, and a registry
pull asks for each layer by digest and skips the ones the engine has, so a one-line change ships
one small layer, not the whole image again. No public registry is needed or reached: the
registry is Debian's `docker-registry` (the CNCF distribution registry), started here on
127.0.0.1 with its storage under `.hinotori/registry/`, and machines see it on their own
127.0.0.1 through the tunnel. Loopback registries are plain HTTP for both engines (Docker
trusts 127.0.0.0/8; Podman is told `tlsVerify=false`).

The pulled image's id is checked against the release's digest: a machine never runs an image
that is not the one baked.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hinotori.engine_storage import inspect_image
from hinotori.errors import ProviderError
from hinotori.processes import log_tail, pid_alive
from hinotori.statefiles import private_dir, write_private

REGISTRY_START_TIMEOUT = 15.0
_BLOB_GET = re.compile(r'"GET /v2/[^ ]+/blobs/sha256:[0-9a-f]+ HTTP/[0-9.]+" 200 (\d+)')


def is_podman(client: Any) -> bool:
    components = client.version().get("Components") or [{}]
    return "podman" in str(components[0].get("Name", "")).lower()


@dataclass
class LocalRegistry:
    """The project's registry: one process, adopted across controller restarts by its pid
    file, listening on a port that stays the same (the machines' tunnels forward it)."""

    dir: Path

    @property
    def _info(self) -> Path:
        return self.dir / "registry.json"

    @property
    def log(self) -> Path:
        return self.dir / "registry.log"

    def port(self) -> int | None:
        try:
            return int(json.loads(self._info.read_text())["port"])
        except (FileNotFoundError, ValueError, KeyError):
            return None

    def _pid(self) -> int | None:
        try:
            return int(json.loads(self._info.read_text())["pid"])
        except (FileNotFoundError, ValueError, KeyError):
            return None

    def answering(self) -> bool:
        port = self.port()
        if port is None:
            return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def ensure(self) -> int:
        """The registry's port, started (on the port it had before, if any) when needed."""
        pid = self._pid()
        if pid is not None and pid_alive(pid) and self.answering():
            return self.port()  # type: ignore[return-value]
        exe = shutil.which("docker-registry")
        if exe is None:
            raise ProviderError("shipping images to machines needs a registry on this machine",
                                hint="apt-get install docker-registry")
        private_dir(self.dir)
        port = self.port() or _free_port()
        config = self.dir / "config.yml"
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: false\n"
                    f"storage:\n  filesystem:\n    rootdirectory: {self.dir / 'data'}\n"
                    "  delete:\n    enabled: true\n"
                    f"http:\n  addr: 127.0.0.1:{port}\n")
        out = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        offset = os.fstat(out).st_size
        try:
            proc = subprocess.Popen([exe, "serve", str(config)], stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=out, start_new_session=True)
        finally:
            os.close(out)
        write_private(self._info, json.dumps({"pid": proc.pid, "port": port}),
                      tmp=self._info.with_suffix(".tmp"))
        deadline = time.monotonic() + REGISTRY_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.answering():
                return port
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise ProviderError(f"the image registry did not start on 127.0.0.1:{port}: "
                            f"{log_tail(self.log, offset)}")

    def stop(self) -> None:
        pid = self._pid()
        if pid is not None and pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            if pid_alive(pid):
                os.killpg(pid, signal.SIGKILL)

    def blob_bytes_served(self, since: int = 0) -> tuple[int, int]:
        """(bytes of layer and config blobs served since log offset ``since``, new offset):
        what shipping moved, read from the registry's own access log."""
        try:
            with open(self.log, "rb") as f:
                f.seek(since)
                text = f.read().decode("utf-8", "replace")
                end = f.tell()
        except FileNotFoundError:
            return 0, since
        return sum(int(m.group(1)) for m in _BLOB_GET.finditer(text)), end

    def log_offset(self) -> int:
        try:
            return self.log.stat().st_size
        except FileNotFoundError:
            return 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def repository(project: str, service: str) -> str:
    return f"hinotori/{project}-{service}"


def tag_of(image_id: str) -> str:
    """An image's tag in the registry: its id's first 12 hex digits."""
    return image_id.removeprefix("sha256:")[:12]


def machine_ref(repo: str, image_id: str, port: int) -> str:
    """The image's reference as a machine pulls it: the registry on the machine's loopback, at
    the port its end of the tunnel got."""
    return f"127.0.0.1:{port}/{repo}:{tag_of(image_id)}"


def push(local: Any, image_id: str, port: int, repo: str) -> str:
    """Put ``image_id`` from the local engine into the registry; its reference there."""
    tag = tag_of(image_id)
    ref = f"127.0.0.1:{port}/{repo}:{tag}"
    local.api.tag(image_id, f"127.0.0.1:{port}/{repo}", tag)
    if is_podman(local):
        # The compat push cannot be told to skip TLS; libpod's can.
        r = local.api._post(local.api._url("/v4.0.0/libpod/images/{0}/push", ref,
                                           versioned_api=False),
                            params={"tlsVerify": "false", "destination": ref})
        _check(r, f"pushing {image_id[:19]} to the registry")
    else:
        for line in local.api.push(f"127.0.0.1:{port}/{repo}", tag=tag, stream=True,
                                   decode=True):
            if "error" in line:
                raise ProviderError(f"pushing {image_id[:19]} to the registry: {line['error']}")
    return ref


def pull(machine: Any, ref: str, image_id: str, machine_name: str) -> None:
    """Pull ``ref`` into the machine's engine (only layers it lacks travel) and check that what
    arrived is ``image_id``."""
    if is_podman(machine):
        r = machine.api._post(machine.api._url("/v4.0.0/libpod/images/pull",
                                                  versioned_api=False),
                              params={"reference": ref, "tlsVerify": "false"})
        _check(r, f"pulling {ref} on machine {machine_name}")
    else:
        repo, _, tag = ref.rpartition(":")
        for line in machine.api.pull(repo, tag=tag, stream=True, decode=True):
            if "error" in line:
                raise ProviderError(f"pulling {ref} on machine {machine_name}: "
                                    f"{line['error']}")
    got = inspect_image(machine, ref)["Id"]
    if not got.startswith("sha256:"):
        got = "sha256:" + got
    if got != image_id:
        raise ProviderError(f"machine {machine_name} pulled {got[:19]} for {ref}, not the baked "
                            f"image {image_id[:19]}: refusing to run it",
                            hint="the registry under .hinotori/registry may be corrupt: stop "
                                 "the controller and remove it; it is rebuilt on the next ship")


def _check(response: Any, what: str) -> None:
    """libpod streams JSON lines and reports a failure inside the stream, with status 200."""
    body = response.text
    if response.status_code >= 400:
        raise ProviderError(f"{what}: {body.strip()[:300]}")
    for line in body.splitlines():
        with contextlib.suppress(ValueError):
            message = json.loads(line)
            if isinstance(message, dict) and message.get("error"):
                raise ProviderError(f"{what}: {message['error']}")


def has_image(client: Any, image_id: str) -> bool:
    import docker.errors

    try:
        inspect_image(client, image_id)
        return True
    except docker.errors.NotFound:
        return False
