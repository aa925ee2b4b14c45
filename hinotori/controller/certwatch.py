"""Certificates at the front door, watched: reloaded into the router when their files change.

The controller polls the (inode, mtime, size) of every cert and key file every
``WATCH_EVERY`` seconds; an ACME client renames new files into place, so a renewal is a new
inode. A change is acted on once the files have held still for one more poll: a client that
renames the certificate and then the key is seen once, with both, rather than as a mismatched
pair in between. ``hinotori router reload-certs`` (the API) does the same at once.

Either way the router checks the files first: a bad one is refused, the previous certificates
keep serving, and an event (``router.certs-refused``) says which file and why. A reload that
worked is ``router.certs-reloaded``; a served certificate past its end (or within
``tls.EXPIRY_WARNING_DAYS`` of it) is ``router.cert-expired`` / ``router.cert-expiring``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from hinotori.errors import CertificateError, RouterError
from hinotori.project import Project
from hinotori.router import tls
from hinotori.router.base import Router

log = logging.getLogger("hinotori.controller")

WATCH_EVERY = 2.0  # seconds between two looks at the files


class CertWatch:
    def __init__(self, project: Project, router: Router,
                 record: Callable[[str, str, dict[str, Any]], None]) -> None:
        self.project = project
        self.router = router
        self.record = record  # (action, subject, detail) -> the event log
        self.pairs = tls.pairs_of(project.spec.router, project.root)
        self._seen: tuple[Any, ...] | None = None    # the stamps at the last poll
        self._served: tuple[Any, ...] | None = None  # the stamps of the last reload tried

    @property
    def enabled(self) -> bool:
        return bool(self.pairs) and callable(getattr(self.router, "reload_certs", None))

    def started(self) -> None:
        """After the router started (it checked and loaded the files): note what it serves."""
        if not self.enabled:
            return
        self._seen = self._served = tls.stamps(self.pairs)
        self._warn(tls.load_all(self.pairs))

    async def watch_once(self) -> None:
        if not self.enabled:
            return
        now = tls.stamps(self.pairs)
        if now != self._seen:  # changed: wait until the files hold still for one poll
            self._seen = now
            return
        if now == self._served:
            return
        self._served = now
        with contextlib.suppress(RouterError):  # recorded; the previous ones keep serving
            await self.reload("controller", why="the certificate files changed")

    async def reload(self, actor: str, why: str = "asked") -> list[dict[str, Any]]:
        """Have the router serve the files as they are now; the served certificates."""
        if not self.enabled:
            raise RouterError("this router serves no TLS certificates",
                              hint="set [router] tls_listen, tls_cert and tls_key in "
                                   "hinotori.toml, then `hinotori down` and `hinotori up`")
        subject = self.project.spec.project.name
        try:
            views: list[dict[str, Any]] = await self.router.reload_certs()  # type: ignore[attr-defined]
        except (CertificateError, RouterError) as exc:
            log.warning("certificates refused (%s): %s", why, exc.message)
            self.record("router.certs-refused", subject,
                        {"actor": actor, "why": why, "error": exc.message,
                         "note": "the previous certificates keep serving"})
            raise
        self.record("router.certs-reloaded", subject, {
            "actor": actor, "why": why,
            "certs": [{k: v[k] for k in ("cert", "names", "not_after", "fingerprint")}
                      for v in views]})
        self._warn_views(views)
        return views

    def _warn(self, certs: list[tls.Certificate]) -> None:
        self._warn_views([c.view() for c in certs])

    def _warn_views(self, views: list[dict[str, Any]]) -> None:
        subject = self.project.spec.project.name
        for v in views:
            left = v["not_after"] - time.time()
            if left <= 0:
                log.warning("TLS certificate %s expired", v["cert"])
                self.record("router.cert-expired", subject,
                            {"cert": v["cert"], "names": v["names"], "not_after": v["not_after"],
                             "note": "still served: renew it"})
            elif left < tls.EXPIRY_WARNING_DAYS * 86400:
                self.record("router.cert-expiring", subject,
                            {"cert": v["cert"], "names": v["names"], "not_after": v["not_after"],
                             "days_left": round(left / 86400, 1)})
