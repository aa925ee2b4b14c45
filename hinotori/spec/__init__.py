"""hinotori.toml: schema (pydantic) and loading with errors that point at file, line and key.

The names below are loaded on first use (PEP 562): building the schema's pydantic models is
~130 ms, and a module that needs only hinotori.spec.read (the CLI's start) must not pay it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hinotori.lazynames import lazy_names

if TYPE_CHECKING:
    from hinotori.spec.load import LoadedSpec, load_spec, parse_spec
    from hinotori.spec.read import SPEC_FILE
    from hinotori.spec.schema import HealthSpec, ServiceSpec, Spec

# submodule -> the names it gives this package
_EXPORTS = {"load": ("LoadedSpec", "load_spec", "parse_spec"), "read": ("SPEC_FILE",),
            "schema": ("HealthSpec", "ServiceSpec", "Spec")}

__all__ = ["SPEC_FILE", "HealthSpec", "LoadedSpec", "ServiceSpec", "Spec", "load_spec",
           "parse_spec"]


__getattr__ = lazy_names(__name__, _EXPORTS)
