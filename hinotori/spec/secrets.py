"""`[services.NAME.secrets]`: values a host gets at boot that never rest in plain text here.

    [services.web.secrets]
    DB_PASSWORD = { env = "DB_PASS" }                    # the environment of who resolves it
    API_KEY = { file = "secrets/api.key" }              # relative to the spec's directory
    TOKEN = { command = ["pass", "show", "db"], timeout = "10s" }
    TLS_KEY = { file = "tls.key", as_file = true }      # a 0400 file on a tmpfs: TLS_KEY_FILE

Exactly one source per key. A value is read at each boot (a rotated file is seen by the next
one); releases keep only a keyed fingerprint of it (hinotori/secrets.py).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, model_validator

from hinotori.spec.base import Duration, EnvName, Strict


class SecretSpec(Strict):
    env: EnvName | None = None
    file: Annotated[str, Field(min_length=1)] | None = None
    command: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] | None = None
    timeout: Duration = 10.0  # a command's longest run; then it is killed and the boot refused
    as_file: bool = False  # a 0400 file on a tmpfs, its path in KEY_FILE, instead of KEY

    @model_validator(mode="after")
    def _one_source(self) -> SecretSpec:
        given = [k for k in ("env", "file", "command") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("a secret has exactly one source: { env = \"VAR\" }, { file = "
                             "\"path\" } or { command = [\"pass\", \"show\", \"db\"] } (got "
                             f"{', '.join(given) or 'none'})")
        if "timeout" in self.model_fields_set and self.command is None:
            raise ValueError("timeout only applies to a command secret")
        return self

    def source(self) -> dict[str, Any]:
        """How a release records where the value comes from (never the value)."""
        if self.env is not None:
            return {"env": self.env}
        if self.file is not None:
            return {"file": self.file}
        return {"command": list(self.command or ()), "timeout": self.timeout}


def check_secret_keys(env: dict[str, str], secrets: dict[str, SecretSpec]) -> None:
    """A secret's variable (KEY, or KEY_FILE with as_file) must not clash with the env's."""
    for key, secret in secrets.items():
        var = f"{key}_FILE" if secret.as_file else key
        if var in env:
            raise ValueError(f"secret {key} sets {var}, which env sets too: rename one of them")
