"""Errors a user can cause, as one family.

The CLI prints any ``HinotoriError`` as its message (plus hint) without a traceback and exits with
``exit_code``. Anything else escaping is a bug.

    HinotoriError                 exit 1
    ├── SpecError                 exit 2   bad hinotori.toml: file, line, key
    ├── BakeError                          a recipe step failed or reached outside its context
    ├── ImageNotFound                      no image for that reference
    ├── StoreError                         state store unreadable, or newer than this hinotori
    ├── NotFound                           no such service, release, host or deployment
    ├── ProviderError                      a host could not be booted, adopted or destroyed
    ├── RouterError                        the data plane could not be started or reached
    ├── ControllerError                    controller not running, unreachable, or refused us
    │   └── Unauthorised                   missing or wrong API token or webhook signature
    └── DeployError                        a deployment failed; traffic stayed where it was
        └── LockedError                    another deployment of the service holds the lock
"""

from __future__ import annotations


class HinotoriError(Exception):
    """Base of every error a user can cause. ``hint`` says what to do about it."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class SpecError(HinotoriError):
    """The spec file is wrong. Carries where: file, line (1-based, if known) and dotted key."""

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        key: str | None = None,
        hint: str | None = None,
    ) -> None:
        where = file or "<spec>"
        if line is not None:
            where += f":{line}"
        if key:
            where += f": {key}"
        super().__init__(f"{where}: {message}", hint=hint)
        self.file, self.line, self.key = file, line, key


class BakeError(HinotoriError):
    pass


class ImageNotFound(HinotoriError):
    pass


class StoreError(HinotoriError):
    pass


class NotFound(HinotoriError):
    pass


class ProviderError(HinotoriError):
    pass


class RouterError(HinotoriError):
    pass


class ControllerError(HinotoriError):
    pass


class Unauthorised(ControllerError):
    pass


class DeployError(HinotoriError):
    pass


class LockedError(DeployError):
    pass
