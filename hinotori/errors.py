"""Errors a user can cause, as one family, every one of them defined here (a module that raises
one may re-export it under its old name).

The CLI prints any ``HinotoriError`` as its message (plus hint) without a traceback and exits with
``exit_code``. Anything else escaping is a bug. The controller's API sends one as
``{"error", "hint", "type", …}`` and the CLI's client turns it back into the same class
(:func:`error_class`, :meth:`HinotoriError.from_wire`).

    HinotoriError                 exit 1
    ├── SpecError                 exit 2   bad hinotori.toml: file, line, key
    ├── BakeError                          a recipe step failed or reached outside its context
    ├── ImageNotFound                      no image for that reference
    ├── ImageArchiveError                  an image archive is damaged, hostile or not its digest
    ├── StoreError                         state store unreadable, or newer than this hinotori
    ├── NotFound                           no such service, release, host or deployment
    ├── UnknownName                        no provider, router, strategy… has that name
    ├── EngineError                        the container engine cannot be reached, or refused
    ├── ProviderError                      a host could not be booted, adopted or destroyed
    │   └── MachineUnreachable             a machine's sshd or engine cannot be reached/trusted
    ├── RouterError                        the data plane could not be started or reached
    │   ├── RuntimeApiError                HAProxy's runtime socket did not answer, or refused
    │   └── CertificateError               a TLS certificate or key file is unusable
    ├── ControllerError                    controller not running, unreachable, or refused us
    │   ├── Unauthorised                   missing or wrong API token or webhook signature
    │   ├── ControllerUnreachable          nothing answered, or it stopped answering mid-call
    │   └── Forbidden                      signed in, but not allowed that (read-only, cross-site)
    ├── DeployError                        a deployment failed; traffic stayed where it was
    │   ├── LockedError                    another deployment of the service holds the lock
    │   ├── CanaryFailed                   the canary was judged worse, or aborted: rolled back
    │   ├── SecretError                    a secret could not be resolved: the boot was refused
    │   ├── PromotionRefused               promote_only refused it: not a promotion, or a condition
    │   └── HoldEnded                      a held release aborted or its hold expired: burned
    ├── MetricsError                       metrics.db unreadable
    │   └── BadQuery              exit 2   a history query got wrong (--since, --release, --step)
    ├── LogsError                          logs.db unreadable, or a query got wrong
    │   └── ForwardError                   a log receiver refused or could not be reached
    │       └── Rejected                   … and refused these lines for good
    ├── LabError                           `hinotori lab` could not make or reach a machine
    └── MaintenanceError                   maintenance mode asked with a bad message or delay

ForwardError and Rejected never reach a user: the log forward loop turns them into back-off (or
a dropped batch) and an event.
"""

from __future__ import annotations

from typing import Any


class HinotoriError(Exception):
    """Base of every error a user can cause. ``hint`` says what to do about it."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message

    def to_wire(self) -> dict[str, Any]:
        """What the controller's API sends for this error."""
        return {"error": self.message, "hint": self.hint, "type": type(self).__name__}

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> HinotoriError:
        """The error ``to_wire`` described, rebuilt on the client's side (``body["error"]`` is
        the full message: constructors that decorate a message must not do it twice)."""
        exc = cls.__new__(cls)
        HinotoriError.__init__(exc, str(body["error"]), hint=body.get("hint"))
        return exc


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

    def to_wire(self) -> dict[str, Any]:
        return {**super().to_wire(), "file": self.file, "line": self.line, "key": self.key}

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> HinotoriError:
        exc = super().from_wire(body)
        assert isinstance(exc, SpecError)
        line = body.get("line")
        exc.file, exc.line, exc.key = (body.get("file"), line if isinstance(line, int) else None,
                                       body.get("key"))
        return exc


class BakeError(HinotoriError):
    pass


class ImageNotFound(HinotoriError):
    pass


class ImageArchiveError(HinotoriError):
    pass


class StoreError(HinotoriError):
    pass


class NotFound(HinotoriError):
    pass


class UnknownName(HinotoriError):
    """A name no registry entry (built-in, registered or installed entry point) answers to."""


class EngineError(HinotoriError):
    """The container engine cannot be reached, or refused what was asked."""


class ProviderError(HinotoriError):
    pass


class MachineUnreachable(ProviderError):
    """A machine's sshd cannot be reached, refuses our key, or shows a host key we do not know;
    or its engine does not answer at the socket the spec names."""


class RouterError(HinotoriError):
    pass


class RuntimeApiError(RouterError):
    pass


class CertificateError(RouterError):
    pass


class ControllerError(HinotoriError):
    pass


class Unauthorised(ControllerError):
    pass


class ControllerUnreachable(ControllerError):
    """The controller did not answer: ``sent`` when it may have taken the request (it stopped
    mid-call) rather than nothing listening; ``timed_out`` when it was too slow."""

    def __init__(self, message: str, *, hint: str | None = None, sent: bool = False,
                 timed_out: bool = False) -> None:
        super().__init__(message, hint=hint)
        self.sent, self.timed_out = sent, timed_out


class Forbidden(ControllerError):
    """Good credentials that may not do this (a read-only dashboard session; a request from
    another site): HTTP 403."""


class DeployError(HinotoriError):
    pass


class LockedError(DeployError):
    pass


class CanaryFailed(DeployError):
    pass


class SecretError(DeployError):
    pass


class PromotionRefused(DeployError):
    """An environment refused an image: promote_only, and the image is not a promotion from
    its promote_from that served there long enough without trouble (the message says which)."""


class HoldEnded(DeployError):
    """`deploy --hold`: aborted by an operator or expired; the held release is burned."""

    expired = False  # the hold's time ran out (else an operator aborted it)


class MetricsError(HinotoriError):
    """metrics.db unreadable (exit 1); see BadQuery for a user's wrong arguments."""


class BadQuery(MetricsError):
    """A history query a user got wrong (--since, --release, --step): exit 2, HTTP 400."""

    exit_code = 2


class LogsError(HinotoriError):
    pass


class ForwardError(LogsError):
    pass


class Rejected(ForwardError):
    """The receiver refused these lines for good."""


class LabError(HinotoriError):
    pass


class MaintenanceError(HinotoriError):
    pass


def error_class(name: str) -> type[HinotoriError] | None:
    """The HinotoriError class called ``name`` (as an API error's ``type`` says), if any."""
    return _BY_NAME.get(name)


def _family(cls: type[HinotoriError]) -> list[type[HinotoriError]]:
    return [cls, *(c for sub in cls.__subclasses__() for c in _family(sub))]


# Every class of the family is defined above, so the table is complete once this module loaded.
_BY_NAME = {c.__name__: c for c in _family(HinotoriError)}
