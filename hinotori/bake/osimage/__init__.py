"""OS images: a Debian base bootstrapped with mmdebstrap, the recipe's steps as cached layers.

A service whose ``[image]`` has ``os = { suite, variant, packages, mirror, arch, workdir }`` is
baked here instead of as a file tree. The modules, one job each:

    base.py           the base image: mmdebstrap -> tarball -> imported and tagged by input key
    containerfile.py  the recipe as a Containerfile, and the build context tar it reads
    engine_build.py   the engine's build API: layer cache, fixed timestamp, progress, failures
    bake.py           bake_os(): base, build, tag, record in the image store
    files.py          an OS image's manifest, read from the engine on first inspect/diff
    engine_images.py  which engine images hinotori made, and removing them (gc)

The image's digest is its engine id ("sha256:<hex>"), which is what the container provider
runs and a release names.
"""

from hinotori.bake.osimage.bake import OsRecipe, bake_os, image_repository
from hinotori.bake.osimage.base import BaseSpec, ensure_base
from hinotori.bake.osimage.containerfile import Translation, context_tar, translate
from hinotori.bake.osimage.files import os_manifest

__all__ = ["BaseSpec", "OsRecipe", "Translation", "bake_os", "context_tar", "ensure_base",
           "image_repository", "os_manifest", "translate"]
