"""Base images: a Debian root filesystem from mmdebstrap, imported into the container engine.

A base is named by what went into it, never by when it was made::

    key = sha256 of {suite, variant, packages (sorted, python3 always among them), mirror,
                     architecture, SOURCE_DATE_EPOCH, format}
    tag = localhost/hinotori-base:<first 24 hex of key>

The engine is the cache: when the tag exists the base is reused, by every service of every
project on this engine, without running mmdebstrap. Otherwise mmdebstrap writes a tarball
(SOURCE_DATE_EPOCH set, so file times and generated files do not depend on the clock), it is
imported through the Engine API (``images/create?fromSrc=-``) and tagged, and the tarball is
deleted unless the caller keeps tarballs (``tar_cache``; the integration tests do, so a fresh
engine imports in seconds instead of bootstrapping again).

Two bakes needing the same base at once would both bootstrap it; an exclusive ``flock`` per key
(under the user's cache directory, so it spans projects) makes the second wait and then find
the tag. Note the key does not pin the mirror's contents: the same key bootstrapped a month
later may hold newer packages. The base is bootstrapped once and then reused until removed, so
a project's images only change when its own inputs do.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hinotori.bake.runsteps import ZIP_EPOCH
from hinotori.engine_storage import inspect_image
from hinotori.errors import BakeError

if TYPE_CHECKING:
    import docker

Progress = Callable[[str], None]
BASE_REPOSITORY = "localhost/hinotori-base"
ALWAYS = ("python3",)  # verify runs its evaluator with the host's python3
FORMAT = 1  # bump when the way a base is made changes, so old bases are not reused
TAIL_LINES = 20
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class BaseSpec:
    suite: str = "bookworm"
    variant: str = "minbase"
    packages: tuple[str, ...] = ()
    mirror: str = "http://deb.debian.org/debian"
    arch: str | None = None

    @property
    def all_packages(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.packages) | set(ALWAYS)))

    def architecture(self) -> str:
        return self.arch or host_architecture()

    def epoch(self) -> int:
        value = os.environ.get("SOURCE_DATE_EPOCH", "")
        return int(value) if value.isdigit() else ZIP_EPOCH

    def inputs(self) -> dict[str, object]:
        return {"format": FORMAT, "suite": self.suite, "variant": self.variant,
                "packages": list(self.all_packages), "mirror": self.mirror,
                "arch": self.architecture(), "source_date_epoch": self.epoch()}

    def key(self) -> str:
        blob = json.dumps(self.inputs(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    @property
    def tag(self) -> str:
        return f"{BASE_REPOSITORY}:{self.key()[:24]}"


@functools.cache  # a base's tag and key ask for it several times a bake: one dpkg run
def host_architecture() -> str:
    """Debian's name for this machine's architecture (amd64, arm64, …)."""
    dpkg = shutil.which("dpkg")
    if dpkg:
        out = subprocess.run([dpkg, "--print-architecture"], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "armhf"}.get(machine, machine)


def cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hinotori"


@contextlib.contextmanager
def _key_lock(key: str) -> Iterator[None]:
    locks = cache_home() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"base-{key[:24]}.lock", "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def find_base(client: docker.DockerClient, base: BaseSpec) -> str | None:
    """The engine image id of ``base`` if the engine has it."""
    import docker.errors

    try:
        return str(inspect_image(client, base.tag)["Id"])
    except docker.errors.ImageNotFound:
        return None


# (the client's URL, base tag) -> the base's image id as this process last saw it. A warm
# process (the controller) need not ask the engine on every bake: an inspect of a base with
# hundreds of images built on it is ~15 ms of Podman's CPU. Only a hint (the SDK names every
# unix socket alike): a bake checks it against the new image's history (in_history) and asks
# the engine when it is not there.
_SEEN: dict[tuple[str, str], str] = {}


def remembered_base(client: docker.DockerClient, base: BaseSpec) -> str | None:
    return _SEEN.get((str(client.api.base_url), base.tag))


def remember_base(client: docker.DockerClient, base: BaseSpec, image_id: str) -> None:
    _SEEN[(str(client.api.base_url), base.tag)] = image_id


def in_history(image_id: str | None, history: list[dict[str, object]]) -> bool:
    """Whether ``image_id`` is one of the images in ``history`` (the engine's history of an
    image: the image and those it was built on, newest first). Podman names them by bare
    hex, Docker with "sha256:"."""
    return bool(image_id) and any(same_image(h.get("Id"), image_id) for h in history)


def same_image(engine_id: object, image_id: str) -> bool:
    """Whether the engine's ``engine_id`` names ``image_id``: Podman names images by bare hex
    (in a history), Docker with "sha256:"."""
    return str(engine_id or "").removeprefix("sha256:") == image_id.removeprefix("sha256:")


def ensure_base(client: docker.DockerClient, base: BaseSpec, *,
                on_progress: Progress | None = None, tar_cache: Path | None = None) -> str:
    """The engine image id of ``base``, bootstrapping and importing it first if needed."""
    say = on_progress or (lambda _m: None)
    found = find_base(client, base)
    if found is not None:
        say(f"base {base.tag} (cached)")
        return found
    key = base.key()
    with _key_lock(key):
        found = find_base(client, base)  # another bake made it while we waited
        if found is not None:
            say(f"base {base.tag} (made meanwhile by another bake)")
            return found
        kept = tar_cache / f"base-{key[:24]}.tar" if tar_cache else None
        if kept is not None and kept.is_file():
            say(f"base {base.tag}: importing {kept}")
            return _import(client, base, kept)
        with tempfile.TemporaryDirectory(prefix="hinotori-base-",
                                         dir=tar_cache or None) as tmp:
            tarball = Path(tmp) / "rootfs.tar"
            bootstrap(base, tarball, say)
            say(f"base {base.tag}: importing into the engine")
            image_id = _import(client, base, tarball)
            if kept is not None:
                os.replace(tarball, kept)
        return image_id


def bootstrap(base: BaseSpec, tarball: Path, say: Progress) -> None:
    """Run mmdebstrap for ``base``, writing a tarball; BakeError with its output on failure."""
    mmdebstrap = shutil.which("mmdebstrap")
    if mmdebstrap is None:
        raise BakeError("mmdebstrap is not installed, so no Debian base image can be made",
                        hint="install it (apt-get install mmdebstrap), or bake the service "
                             "without `os` as a file-tree image")
    argv = [mmdebstrap, f"--variant={base.variant}", f"--architectures={base.architecture()}",
            f"--include={','.join(base.all_packages)}", "--format=tar",
            base.suite, str(tarball), base.mirror]
    say(f"base {base.tag}: mmdebstrap {base.suite} ({base.variant}, "
        f"{' '.join(base.all_packages)})")
    log = tarball.with_suffix(".log")
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(base.epoch()), "LANG": "C.UTF-8"}
    from hinotori import command  # asyncio: not on every CLI command's start-up path

    done = command.run_sync(argv, cwd=None, env=env, output=log)
    if not done.succeeded:
        tail = done.tail(TAIL_LINES)
        shown = "\n".join(f"  | {line}" for line in tail) or "  | (no output)"
        raise BakeError(f"mmdebstrap {base.suite} failed with exit code {done.rc}; "
                        f"last {len(tail)} lines of output:\n{shown}",
                        hint=f"check the suite, the package names and that {base.mirror} "
                             "is reachable")


def _import(client: docker.DockerClient, base: BaseSpec, tarball: Path) -> str:
    try:
        # The whole reference as `repository`: Podman's compat import ignores `tag`; Docker
        # takes the reference whole as well.
        client.api.import_image(src=str(tarball), repository=base.tag,
                                changes=[f"ENV PATH={DEFAULT_PATH}"])
    except Exception as e:  # the SDK raises its own and requests' errors alike
        raise BakeError(f"the engine refused to import the base image: {e}",
                        hint="check the engine (`podman info`) and its free disk space") from e
    found = find_base(client, base)
    if found is None:
        raise BakeError(f"the engine imported {tarball} but has no {base.tag}",
                        hint="check the engine's log")
    return found
