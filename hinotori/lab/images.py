"""Tiny images for rehearsing a fleet in the lab (and for its tests and benches): a static
busybox imported as one layer, and one more layer on top of any image, built by the engine."""

from __future__ import annotations

import io
import shutil
import tarfile
from typing import Any

from hinotori.errors import LabError


def _tar(files: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        for name, body in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(body), 0o755
            tar.addfile(info, io.BytesIO(body))
        for name, target in sorted((links or {}).items()):
            link = tarfile.TarInfo(name)
            link.type, link.linkname = tarfile.SYMTYPE, target
            tar.addfile(link)
    return data.getvalue()


def busybox_image(client: Any, *, extra: dict[str, bytes] | None = None) -> str:
    """A one-layer image holding a static busybox (``sh``, ``httpd``, …) and ``extra`` files,
    imported into the engine; its id."""
    busybox = shutil.which("busybox")
    if busybox is None:
        raise LabError("the lab's sample image needs a static busybox",
                       hint="apt-get install busybox-static")
    with open(busybox, "rb") as f:
        files = {"bin/busybox": f.read(), **(extra or {})}
    links = {f"bin/{name}": "busybox" for name in ("sh", "httpd", "echo", "cat", "mkdir")}
    answer = client.api.import_image_from_data(_tar(files, links), repository="localhost/bb",
                                               tag="1")
    digest = answer[answer.index("sha256:") + 7:][:64]
    return f"sha256:{digest}"


def one_more_layer(client: Any, base: str, path: str, text: str) -> str:
    """``base`` plus one file ``path`` holding ``text``, built by the engine; its id."""
    context = _tar({"Containerfile": f"FROM {base}\nCOPY payload /{path}\n".encode(),
                    "payload": text.encode()})
    image, _ = client.images.build(fileobj=io.BytesIO(context), custom_context=True,
                                   dockerfile="Containerfile", rm=True)
    return str(image.id)
