"""Bake: a build context plus recipe steps become an immutable, content-addressed image.

Configuration happens here and only here, never on a live host. The modules, one job each:

    ignore.py      which context paths stay out (.hinotoriignore, gitignore semantics)
    tree.py        walking a tree as an image sees it; what an image may hold; removing trees
    context.py     copying the context into a scratch build directory
    steps.py       recipe steps (RunStep) and their registry; the clean step environment
    normalise.py   uniform modes and mtimes before the manifest is taken
    manifest.py    manifest entries, canonical serialisation, digest
    provenance.py  recipe hash and git source for image.json (outside the digest)
    images.py      the image store: Image, ImageStore, atomic commit
    builder.py     bake(), tying the above together

Same inputs give the same digest in another directory, on another machine: see manifest.py for
exactly what the digest covers.
"""

from hinotori.bake.builder import BakeResult, bake
from hinotori.bake.ignore import IgnoreRules
from hinotori.bake.images import Image, ImageStore
from hinotori.bake.manifest import ManifestEntry, build_manifest, manifest_digest
from hinotori.bake.provenance import recipe_hash
from hinotori.bake.steps import STEP_KINDS, RunStep, Step, step_from_dict

__all__ = [
    "STEP_KINDS",
    "BakeResult",
    "IgnoreRules",
    "Image",
    "ImageStore",
    "ManifestEntry",
    "RunStep",
    "Step",
    "bake",
    "build_manifest",
    "manifest_digest",
    "recipe_hash",
    "step_from_dict",
]
