"""``hinotori image export`` and ``image import``: images between controllers (the AMI copy).

Both run in the CLI process on the image store (no controller needed), as ``bake`` does. An
import with ``--service`` also makes a release of the imported image, so ``hinotori deploy``
can roll it out; without one the image is stored, and ``gc`` removes it once no release keeps
it (as it does any image no release names).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from hinotori.cli import render
from hinotori.cli.imagecmds import RefArg, resolve_image, size_text
from hinotori.cli.options import EnvOpt, JsonOpt, SpecOpt
from hinotori.cli.render import console, err_console

# As hinotori.bake.archive.COMPRESSIONS (a test checks): that module is not imported at start.
COMPRESSIONS = ("none", "gzip", "zstd")

OutputOpt = Annotated[str, typer.Option("--output", "-o", metavar="FILE",
                                        help="FILE.tar, .tar.gz or .tar.zst; - for stdout")]


def compression(text: str) -> str:
    if text not in COMPRESSIONS:
        raise ValueError(f"{text!r} is not one of {', '.join(COMPRESSIONS)}")
    return text


CompressOpt = Annotated[str | None, typer.Option(
    "--compress", metavar="KIND", parser=compression,
    help=f"{' | '.join(COMPRESSIONS)} (default: by -o's suffix; none for stdout)")]


def full_digest(text: str) -> str:
    """A whole digest, "sha256:<64 hex>" (or the 64 hex): a prefix could match another image."""
    hex_ = text.strip().lower().removeprefix("sha256:")
    if len(hex_) != 64 or any(c not in "0123456789abcdef" for c in hex_):
        raise ValueError(f"{text!r} is not a whole digest: give sha256: and all 64 hex "
                         "characters")
    return f"sha256:{hex_}"


def image_export(ref: RefArg, output: OutputOpt, spec: SpecOpt = Path("."),
                 environment: EnvOpt = None, compress: CompressOpt = None,
                 json_out: JsonOpt = False) -> None:
    """Write one image (files or OS) to a portable archive: manifest, content, provenance.

    The same image always gives the same bytes. `hinotori image import` on another controller
    checks it against its digest."""
    from hinotori.bake.archive import compression_for
    from hinotori.project import Project

    to_stdout = output == "-"
    if compress is None:
        try:
            compress = "none" if to_stdout else compression_for(output)
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint="'--output' / '-o'") from None
    if to_stdout and json_out:
        raise typer.BadParameter("--json needs stdout: write the archive to a file",
                                 param_hint="'--json'")
    if to_stdout and sys.stdout.isatty():
        raise typer.BadParameter("refusing to write an archive to a terminal: redirect "
                                 "stdout or give a file", param_hint="'--output' / '-o'")
    from hinotori.bake.transfer import export_image

    project = Project.load(spec, environment, shared=True)
    image = resolve_image(project, ref)
    dest = None if to_stdout else Path(output)
    result = export_image(project.images, image, dest, compression=compress,
                          engine=project.engine)
    size = None if dest is None else dest.stat().st_size
    if json_out:
        render.print_json({"digest": image.digest, "kind": image.kind, "output": str(dest),
                           "compression": compress, "bytes": size,
                           "seconds": round(result.seconds, 3)})
        return
    where = "stdout" if dest is None else f"{dest} ({size_text(size or 0)})"
    (err_console if dest is None else console).print(
        f"exported {image.digest} ({image.kind}) to {where} in "
        f"{render.seconds(result.seconds)}", highlight=False, markup=False, soft_wrap=True)


def image_import(file: Annotated[str, typer.Argument(metavar="FILE",
                                                     help="an archive, or - for stdin")],
                 spec: SpecOpt = Path("."), environment: EnvOpt = None,
                 service: Annotated[str | None, typer.Option(
                     "--service", metavar="SERVICE", help="also make a release of SERVICE "
                     "from the image, ready for `hinotori deploy`")] = None,
                 digest: Annotated[str | None, typer.Option(
                     "--digest", metavar="DIGEST", parser=full_digest,
                     help="refuse the archive unless it holds this image (a digest got from "
                     "the exporting side)")] = None,
                 json_out: JsonOpt = False) -> None:
    """Store an image from an archive, verified against its digest before it appears.

    A damaged or changed archive is refused and leaves nothing behind; an image already
    stored is left as it is. Provenance travels with it, plus where it was imported from."""
    from hinotori.bake.cache import BuildCache
    from hinotori.bake.transfer import import_image
    from hinotori.project import Project
    from hinotori.releases import ensure_release

    # The image store is shared; a release (--service) is one environment's.
    project = Project.load(spec, environment, shared=service is None)
    if service is not None:
        project.service(service)  # an unknown service refuses before anything is read
    source = None if file == "-" else Path(file)
    origin = "stdin" if source is None else str(source.absolute())
    release = None
    # Held until the release exists, as a bake does, so `gc` cannot remove the image between.
    with BuildCache.beside(project.images.root).lock():
        result = import_image(project.images, source, origin=origin, engine=project.engine,
                              project=project.spec.project.name, expect=digest)
        image = result.image
        if service is not None:
            release = ensure_release(project, service, image=image.digest,
                                     config=project.service(service).release_config(),
                                     reason=f"image import from {origin}").release
    if json_out:
        render.print_json({"digest": image.digest, "kind": image.kind,
                           "imported": result.imported, "from": origin,
                           "checked": result.checked, "seconds": round(result.seconds, 3),
                           "release": release.name if release else None})
        return
    if result.imported:
        checked = result.checked
        what = f"{checked.get('entries', 0)} entries, {checked.get('files', 0)} files" \
            if image.kind == "files" else f"{checked.get('layers', 0)} layers"
        console.print(f"imported {image.digest} ({image.kind}) from {origin} in "
                      f"{render.seconds(result.seconds)}; verified against its digest: "
                      f"{what}, {size_text(checked.get('bytes', 0))}",
                      highlight=False, markup=False, soft_wrap=True)
    else:
        console.print(f"{image.digest} is already stored here; nothing imported",
                      highlight=False, markup=False, soft_wrap=True)
    if release is not None:
        console.print(f"{service}: release {release.name} of {render.short_digest(image.digest)}"
                      f" — deploy it with `hinotori deploy {service}`", highlight=False,
                      markup=False)
    elif result.imported:
        console.print("no release uses it yet: `--service NAME` makes one (until then "
                      "`hinotori gc` may remove it)", highlight=False, markup=False)
