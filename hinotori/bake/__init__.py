"""Bake: a build context plus recipe steps become an immutable, content-addressed image.

Configuration happens here and only here, never on a live host. The modules, one job each:

    ignore.py      which context paths stay out (.hinotoriignore, gitignore semantics)
    tree.py        walking a tree as an image sees it; what an image may hold; removing trees
    paths.py       paths named by steps: relative, no "..", never resolving out of their tree
    context.py     the build context as a source: reading it, hashing it, copying from it
    place.py       putting files, links and directories into a build tree (never in place)
    stepbase.py    what a step is (the Step interface, StepContext)
    runsteps.py    run and env steps; the clean step environment
    filesteps.py   copy, file and remove steps
    steps.py       the registry of step kinds; a step from its dict form
    normalise.py   uniform modes and mtimes before the manifest is taken
    manifest.py    manifest entries, canonical serialisation, digest
    provenance.py  recipe hash and git source for image.json (outside the digest)
    cache.py       the build cache: chained step keys, snapshots, blobs, lock, prune
    blobs.py       the cache's file contents: loose blobs (hard links) and packs (copies)
    snapshot.py    a build tree into the cache and back (verified copies)
    images.py      the image store: Image, ImageStore, atomic commit
    builder.py     bake(), tying the above together
    diff.py        what changed between two images' manifests
    gc.py          which images are in use; removing the rest, and unreachable cache

Same inputs give the same digest in another directory, on another machine, and with or without
the build cache: see manifest.py for exactly what the digest covers.

The names below load their submodule on first use (PEP 562): the spec's schema needs only the
step kinds, and every command that loads a spec would otherwise import the builder, the cache
and the image store too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hinotori.lazynames import lazy_names

if TYPE_CHECKING:
    from hinotori.bake.builder import BakeResult, bake
    from hinotori.bake.cache import BuildCache
    from hinotori.bake.ignore import IgnoreRules
    from hinotori.bake.images import Image, ImageStore
    from hinotori.bake.manifest import ManifestEntry, build_manifest, manifest_digest
    from hinotori.bake.provenance import recipe_hash
    from hinotori.bake.steps import (
        STEP_KINDS,
        CopyStep,
        EnvStep,
        FileStep,
        RemoveStep,
        RunStep,
        Step,
        step_from_dict,
        step_kind,
    )

# submodule -> the names it gives this package
_EXPORTS = {"builder": ("BakeResult", "bake"), "cache": ("BuildCache",), "ignore": ("IgnoreRules",),
            "images": ("Image", "ImageStore"),
            "manifest": ("ManifestEntry", "build_manifest", "manifest_digest"),
            "provenance": ("recipe_hash",),
            "steps": ("STEP_KINDS", "CopyStep", "EnvStep", "FileStep", "RemoveStep", "RunStep",
                      "Step", "step_from_dict", "step_kind")}

__all__ = [
    "STEP_KINDS",
    "BakeResult",
    "BuildCache",
    "CopyStep",
    "EnvStep",
    "FileStep",
    "IgnoreRules",
    "Image",
    "ImageStore",
    "ManifestEntry",
    "RemoveStep",
    "RunStep",
    "Step",
    "bake",
    "build_manifest",
    "manifest_digest",
    "recipe_hash",
    "step_from_dict",
    "step_kind",
]


__getattr__ = lazy_names(__name__, _EXPORTS)
