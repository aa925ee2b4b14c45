"""`deploy --from ENV`: make the promoted release (no bake) and say where it came from."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hinotori.cli import render
from hinotori.cli.render import console

if TYPE_CHECKING:
    from hinotori.project import Project


def promote_and_deploy(project: Project, service: str, source: str, json_out: bool) -> int:
    """The number of the release to deploy: ``source``'s serving image with this
    environment's config (made once; promoting it again reuses it)."""
    from hinotori.promotion import promote

    found, outcome = promote(project, service, source)
    if not json_out:
        console.print(f"promoting {render.short_digest(found.release.image)} from {source} "
                      f"{found.release.name} (serving there for "
                      f"{render.seconds(found.served_for)}) as [bold]{outcome.release.name}[/]"
                      f"{'' if outcome.created else ' (made before)'}; no bake")
    return outcome.release.number
