"""hinotori.toml: schema (pydantic) and loading with errors that point at file, line and key."""

from hinotori.spec.load import LoadedSpec, load_spec, parse_spec
from hinotori.spec.read import SPEC_FILE
from hinotori.spec.schema import HealthSpec, ServiceSpec, Spec

__all__ = ["SPEC_FILE", "HealthSpec", "LoadedSpec", "ServiceSpec", "Spec", "load_spec",
           "parse_spec"]
