"""A project on disk: its spec and its state directory (.hinotori/ beside hinotori.toml).

    .hinotori/
      state.db          the store (SQLite, WAL)
      images/           content-addressed images (sha256-<hex>/rootfs, manifest.json, image.json)
      hosts/<id>/       each host's own image view, scratch dir and captured output
      router/           data-plane workers: control sockets, pid files, last table, logs
      controller.json   where the running controller listens (pid, address)
      token             the API token (mode 0600)
      controller.log    output of a detached controller
"""

from __future__ import annotations

import secrets
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from hinotori.bake import ImageStore
from hinotori.errors import NotFound
from hinotori.spec import LoadedSpec, ServiceSpec, Spec, load_spec
from hinotori.store import Store

if TYPE_CHECKING:
    import docker

STATE_DIR = ".hinotori"


class Project:
    def __init__(self, loaded: LoadedSpec) -> None:
        self.loaded = loaded
        self.spec: Spec = loaded.spec
        self.root: Path = loaded.root
        self.state_dir = self.root / STATE_DIR

    @classmethod
    def load(cls, spec_path: Path | str = ".") -> Project:
        return cls(load_spec(spec_path))

    @property
    def images_dir(self) -> Path:
        return self.state_dir / "images"

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

    @cached_property
    def store(self) -> Store:
        return Store(self.state_dir / "state.db")

    @cached_property
    def images(self) -> ImageStore:
        return ImageStore(self.images_dir)

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

    def token(self) -> str:
        """The API token, created (mode 0600) on first use."""
        path = self.state_dir / "token"
        if not path.exists():
            self.state_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(secrets.token_urlsafe(32))
            tmp.chmod(0o600)
            tmp.replace(path)
        return path.read_text().strip()
