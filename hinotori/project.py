"""A project on disk: its spec and its state directory (.hinotori/ beside hinotori.toml).

    .hinotori/
      state.db          the store (SQLite, WAL)
      images/           content-addressed images (sha256-<hex>/rootfs, manifest.json, image.json)
      hosts/<id>/       each host's own image view, scratch dir and captured output
      router/           data-plane workers: control sockets, pid files, last table, logs
      controller.json   where the running controller listens (pid, address)
      token             the API token
      controller.log    output of a detached controller
      env/<NAME>/       with [environments.NAME] declared: each environment's own state.db,
                        hosts/, router/, controller.json, token, logs (the layout above, less
                        images/ and cache/, which every environment shares: a local
                        promotion copies nothing)

Readable by the owner only: the directories hinotori makes here are 0700 and the files 0600 from
creation (hinotori.statefiles); a state directory an older hinotori left readable is tightened
when a project is loaded. Image trees (images/, cache/) and host views keep the modes their
manifests record, part of the digest.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from hinotori.bake import ImageStore
from hinotori.errors import NotFound
from hinotori.spec import LoadedSpec, ServiceSpec, Spec, load_spec
from hinotori.spec.environments import environment_needed
from hinotori.spec.schema import ProjectSpec
from hinotori.statefiles import open_private, private_dir, tighten
from hinotori.store import Store

if TYPE_CHECKING:
    import docker

    from hinotori.secrets import Secrets

STATE_DIR = ".hinotori"
# Trees whose modes are not hinotori's to tighten: images and their build cache (modes are part
# of the digest), host views, and what hosts write themselves (scratch, volumes).
KEEP_MODES = ("images", "cache", "hosts/*/root", "hosts/*/scratch", "volumes",
              "env/*/hosts/*/root", "env/*/hosts/*/scratch", "env/*/volumes")


class Project:
    def __init__(self, loaded: LoadedSpec) -> None:
        self.loaded = loaded
        self.environment: str | None = loaded.environment
        self.spec: Spec = loaded.spec
        self.root: Path = loaded.root
        self.shared_dir = self.root / STATE_DIR  # images and build cache, for every environment
        self.state_dir = self.shared_dir
        if self.environment is not None:
            self.state_dir = self.shared_dir / "env" / self.environment
            # Labels, container names and adoption go by the project name: one per
            # environment, so two environments never adopt (or collide with) each other's hosts.
            name = f"{self.spec.project.name}-{self.environment}"
            self.spec = self.spec.model_copy(update={"project": ProjectSpec(name=name[:40])})
        with contextlib.suppress(FileNotFoundError):
            if self.shared_dir.stat().st_mode & 0o077:  # left readable by an older hinotori
                tighten(self.shared_dir, keep=KEEP_MODES)

    @classmethod
    def load(cls, spec_path: Path | str = ".", environment: str | None = None, *,
             shared: bool = False) -> Project:
        """The project with ``environment``'s overlay. A spec that declares environments needs
        one, except with ``shared`` (commands on the shared image store: images, gc)."""
        loaded = load_spec(spec_path, environment)
        if environment is None and loaded.environments and not shared:
            raise environment_needed(loaded.environments, str(loaded.path))
        return cls(loaded)

    def environment_state(self, name: str) -> Path:
        """The state.db of environment ``name`` of this project."""
        return self.shared_dir / "env" / name / "state.db"

    def all_state_files(self) -> list[tuple[str | None, Path]]:
        """(environment or None, state.db) of every store of this project that exists: the
        top-level one and each declared environment's."""
        found = [(None, self.shared_dir / "state.db")]
        found += [(name, self.environment_state(name)) for name in self.loaded.environments]
        return [(name, path) for name, path in found if path.exists()]

    @property
    def images_dir(self) -> Path:
        return self.shared_dir / "images"

    @property
    def hosts_dir(self) -> Path:
        return self.state_dir / "hosts"

    @property
    def router_dir(self) -> Path:
        return self.state_dir / "router"

    @property
    def controller_file(self) -> Path:
        return self.state_dir / "controller.json"

    @property
    def controller_log(self) -> Path:
        return self.state_dir / "controller.log"

    def ensure_state_dir(self) -> Path:
        """The state directory, created 0700 if missing."""
        return private_dir(self.state_dir)

    @cached_property
    def store(self) -> Store:
        self.ensure_state_dir()
        return Store(self.state_dir / "state.db")

    @cached_property
    def images(self) -> ImageStore:
        # Their top directories 0700 (the trees inside keep their own modes).
        private_dir(self.shared_dir)
        private_dir(self.shared_dir / "cache")
        return ImageStore(private_dir(self.images_dir))

    def service(self, name: str) -> ServiceSpec:
        try:
            return self.spec.services[name]
        except KeyError:
            known = ", ".join(sorted(self.spec.services))
            raise NotFound(f"no service {name!r} in {self.loaded.path.name}",
                           hint=f"services in the spec: {known}") from None

    def engine(self) -> docker.DockerClient:
        """A client of the container engine this project uses (``[engine] url``, else the
        usual places, else a private Podman service under .hinotori/). Close it when done."""
        from hinotori.engine import connect  # the docker SDK only when an engine is needed

        return connect(self.spec.engine.url, state_dir=self.state_dir)

    @cached_property
    def secrets(self) -> Secrets:
        """Resolves the services' secrets (relative files from the spec's directory),
        fingerprints them with the project's key and masks their values (hinotori/secrets.py)."""
        from hinotori.secrets import Secrets

        return Secrets(self.root, self.state_dir)

    def token(self) -> str:
        """The API token, created (mode 0600 from the start) on first use."""
        path = self.state_dir / "token"
        if not path.exists():
            self.ensure_state_dir()
            tmp = path.with_name(f"token.{os.getpid()}.tmp")
            with open_private(tmp, "w") as f:
                f.write(secrets.token_urlsafe(32))
            try:  # link, not rename: when two processes race, the first token wins for both
                os.link(tmp, path)
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        return path.read_text().strip()
