"""Secrets: resolved when a host boots, fingerprinted for releases, masked wherever text is kept.

A service's ``[services.NAME.secrets]`` (spec/secrets.py) says where each value comes from: an
environment variable, a file (relative to the spec's directory) or a command (run through
hinotori/command.py, with a timeout). Nothing here ever writes a value to disk:

- **Releases** keep a keyed fingerprint of each value (HMAC-SHA256 with a per-project key in
  ``.hinotori/secrets.key``, 0600, not in state.db): equal values give equal fingerprints, so a
  changed secret is a changed config and makes a config-only release ("secret X changed"),
  and a fingerprint tells nothing of the value without the key.
- **Hosts** get the values at boot (``Secrets.boot``), as env vars or 0400 files on a tmpfs
  (providers/secretfiles.py); a value that cannot be resolved (unset, missing, failing, empty)
  refuses the boot with an error naming the key and its source.
- **Text that is kept** (log lines, captured output, error reports) goes through a ``Masker``
  that knows every value this process resolved: each occurrence becomes ``***``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from hinotori.errors import SecretError
from hinotori.model import Release, ReleaseConfig
from hinotori.processes import CommandResult
from hinotori.providers.base import ResolvedSecret
from hinotori.statefiles import open_private, private_dir

MASK = "***"
KEY_FILE = "secrets.key"  # in .hinotori/: the fingerprints' HMAC key


def project_key(state_dir: Path) -> bytes:
    """The project's fingerprint key, made (0600 from creation) on first use. Two processes
    racing to make it agree on the first one (hard link, as the API token)."""
    path = state_dir / KEY_FILE
    if not path.exists():
        private_dir(state_dir)
        tmp = path.with_name(f"{KEY_FILE}.{os.getpid()}.{threading.get_ident()}.tmp")
        with open_private(tmp, "wb") as f:
            f.write(os.urandom(32))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_bytes()


def fingerprint(key: bytes, name: str, value: str) -> str:
    """A keyed hash of ``name``'s value: equal for equal values, useless without the key."""
    mac = hmac.new(key, f"{name}\0{value}".encode(), hashlib.sha256)
    return "hmac-sha256:" + mac.hexdigest()[:32]


def describe(source: Mapping[str, Any]) -> str:
    """A source as an error names it: env DB_PASS, file db.txt, command pass show db."""
    if "env" in source:
        return f"env {source['env']}"
    if "file" in source:
        return f"file {source['file']}"
    return "command " + " ".join(source.get("command", []))


def _value(name: str, source: Mapping[str, Any], raw: str | None, why: str) -> str:
    """The value (one trailing newline dropped, as `pass` and editors add one) or SecretError."""
    if raw is None:
        raise SecretError(f"secret {name} ({describe(source)}): {why}",
                          hint="nothing was booted and traffic stayed where it was: make the "
                               "source answer (in the environment of the command or controller "
                               "that resolves it), then try again")
    value = raw.removesuffix("\n").removesuffix("\r")
    if not value:
        raise SecretError(f"secret {name} ({describe(source)}) is empty",
                          hint="an empty secret is never handed to a host: give it a value")
    if "\0" in value:
        raise SecretError(f"secret {name} ({describe(source)}) holds a NUL byte",
                          hint="a secret is text: no NUL bytes")
    return value


def _read_file(base: Path, rel: str) -> tuple[str | None, str]:
    path = (base / os.path.expanduser(rel))
    try:
        return path.read_bytes().decode("utf-8"), ""
    except FileNotFoundError:
        return None, f"{path} does not exist"
    except UnicodeDecodeError:
        return None, f"{path} is not UTF-8 text"
    except OSError as e:
        return None, f"cannot read {path}: {e.strerror or e}"


def _command_outcome(result: CommandResult, timeout: float) -> tuple[str | None, str]:
    if result.timed_out:
        return None, f"did not finish within {timeout:g}s; killed"
    if result.rc != 0:
        # stderr only: stdout may hold (part of) the value
        err = result.stderr.strip().splitlines()[-3:]
        return None, f"exited {result.rc}" + (f": {' | '.join(err)}" if err else "")
    return result.stdout, ""


class Masker:
    """Every secret value this process resolved; ``mask`` replaces each occurrence with ***.
    Values rotated away are kept (a host booted with the old one may still print it)."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        # (pattern, values longest first), swapped whole: a reader never sees half of one
        self._now: tuple[re.Pattern[str], tuple[str, ...]] | None = None
        self._lock = threading.Lock()

    def add(self, values: Iterable[str]) -> None:
        with self._lock:
            new = {v for v in values if v} - self._values
            if new:
                self._values |= new
                # longest first: a value containing another is masked whole
                alts = tuple(sorted(self._values, key=len, reverse=True))
                self._now = re.compile("|".join(map(re.escape, alts))), alts

    def mask(self, text: str) -> str:
        now = self._now
        if now is None or not any(v in text for v in now[1]):  # a plain search first: fast
            return text
        return now[0].sub(MASK, text)

    def __bool__(self) -> bool:
        return bool(self._values)


class Secrets:
    """A project's secrets: resolves them (from ``base``, the spec's directory, and ``environ``),
    fingerprints them with the project's key, and feeds every value to ``masker``."""

    def __init__(self, base: Path, state_dir: Path, *, masker: Masker | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        self.base = base
        self.state_dir = state_dir
        self.masker = masker or Masker()
        self.environ = os.environ if environ is None else environ
        self._key: bytes | None = None

    @property
    def key(self) -> bytes:
        if self._key is None:
            self._key = project_key(self.state_dir)
        return self._key

    # -- resolving ---------------------------------------------------------------------------
    def resolve_sync(self, name: str, source: Mapping[str, Any]) -> str:
        if "command" in source:
            from hinotori import command  # asyncio: not at the CLI's start

            timeout = float(source.get("timeout", 10.0))
            try:
                result = command.run_sync(source["command"], cwd=self.base,
                                          env=dict(self.environ), timeout=timeout)
            except OSError as e:
                return _value(name, source, None, f"cannot run it: {e.strerror or e}")
            return self._keep(_value(name, source, *_command_outcome(result, timeout)))
        return self._keep(self._plain(name, source))

    async def resolve(self, name: str, source: Mapping[str, Any]) -> str:
        if "command" in source:
            from hinotori import command

            timeout = float(source.get("timeout", 10.0))
            try:
                result = await command.run(source["command"], cwd=self.base,
                                           env=dict(self.environ), timeout=timeout)
            except OSError as e:
                return _value(name, source, None, f"cannot run it: {e.strerror or e}")
            return self._keep(_value(name, source, *_command_outcome(result, timeout)))
        return self._keep(self._plain(name, source))

    def _plain(self, name: str, source: Mapping[str, Any]) -> str:
        if "env" in source:
            var = source["env"]
            return _value(name, source, self.environ.get(var),
                          f"{var} is not set in the environment of this process")
        if "file" in source:
            return _value(name, source, *_read_file(self.base, source["file"]))
        raise SecretError(f"secret {name} has no source this hinotori knows: {sorted(source)}")

    def _keep(self, value: str) -> str:
        self.masker.add([value])
        return value

    # -- at boot -----------------------------------------------------------------------------
    async def boot(self, release: Release) -> tuple[ResolvedSecret, ...]:
        """Every secret of ``release``, resolved now (SecretError names the first that is not)."""
        return tuple([ResolvedSecret(name, await self.resolve(name, s["source"]),
                                     bool(s.get("as_file")))
                      for name, s in sorted(release.config.secrets.items())])

    def learn(self, configs: Iterable[ReleaseConfig]) -> None:
        """Resolve what can be resolved of ``configs`` only so the masker knows the values (a
        controller that starts, adopting hosts booted by the one before). Never raises."""
        for config in configs:
            for name, s in config.secrets.items():
                try:
                    self.resolve_sync(name, s["source"])
                except SecretError:
                    continue

    # -- for releases ------------------------------------------------------------------------
    def fingerprinted(self, config: ReleaseConfig) -> ReleaseConfig:
        """``config`` with each secret's fingerprint of its value now."""
        if not config.secrets:
            return config
        secrets = {name: {**s, "fingerprint": fingerprint(
                       self.key, name, self.resolve_sync(name, s["source"]))}
                   for name, s in config.secrets.items()}
        return replace(config, secrets=secrets)


def secrets_reason(old: ReleaseConfig, new: ReleaseConfig) -> str | None:
    """"secret X changed" when only secrets differ between two configs, else None."""
    if replace(old, secrets={}) != replace(new, secrets={}):
        return None
    parts = []
    for name in sorted(set(old.secrets) | set(new.secrets)):
        before, after = old.secrets.get(name), new.secrets.get(name)
        if before == after:
            continue
        if before is None:
            parts.append(f"secret {name} added")
        elif after is None:
            parts.append(f"secret {name} removed")
        else:
            parts.append(f"secret {name} changed")
    return ", ".join(parts) or None
