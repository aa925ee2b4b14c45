"""HTTPS in a worker: the certificates it serves, picked by SNI, swapped without a restart.

asyncio's ``create_server(ssl=...)`` takes one SSLContext for the listener's whole life, so that
context (``Certificates.front``) only dispatches: its SNI callback, which OpenSSL calls during
every handshake (with ``None`` when the client sent no name), points the handshake at the
context of the certificate for that name. A reload builds new contexts and swaps one reference:
handshakes from then on get the new certificate; established connections keep the session they
negotiated and are never touched. A reload that fails (bad PEM, key mismatch, unreadable file)
changes nothing and says why.

The list of pairs is a JSON file the supervisor writes (``router-tls.json``): read at start and
at each ``tls`` control op, so a worker restarted after a crash serves the current list.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import Any

from hinotori.errors import CertificateError
from hinotori.router import tls
from hinotori.router.builtin.downstream import ClientProtocol

log = logging.getLogger("hinotori.router")


class HttpsClient(ClientProtocol):
    """A client connection of the TLS listener (X-Forwarded-Proto: https, never redirected)."""

    __slots__ = ()
    scheme = b"https"


class Certificates:
    """The served certificates of one worker, and the listener's dispatching context."""

    def __init__(self, pairs_file: Path) -> None:
        self.pairs_file = pairs_file
        self.contexts: list[ssl.SSLContext] = []
        self.names: dict[str, int] = {}
        self.served: list[tls.Certificate] = []
        self.load()  # raises CertificateError: the worker cannot start
        self.front = self.contexts[0]
        self.front.sni_callback = self._pick

    def _build(self) -> tuple[list[ssl.SSLContext], list[tls.Certificate]]:
        try:
            pairs = tls.read_pairs(self.pairs_file)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CertificateError(f"cannot read the certificate list {self.pairs_file}: {exc}"
                                   ) from None
        if not pairs:
            raise CertificateError(f"the certificate list {self.pairs_file} is empty")
        certs = tls.load_all(pairs)
        contexts = []
        for c in certs:
            try:
                contexts.append(tls.server_context(c.pair.cert, c.pair.key))
            except (OSError, ssl.SSLError) as exc:
                raise CertificateError(f"OpenSSL refused {c.pair.cert} with {c.pair.key}: "
                                       f"{exc}") from None
        return contexts, certs

    def load(self) -> list[tls.Certificate]:
        """Read the list and its files again; swap them in only if every pair is good."""
        contexts, certs = self._build()
        self.contexts, self.served, self.names = contexts, certs, tls.name_index(certs)
        log.info("serving %d certificate(s): %s", len(certs),
                 "; ".join(f"{c.pair.cert} ({', '.join(c.names)})" for c in certs))
        return certs

    def _pick(self, sslobj: Any, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        sslobj.context = self.contexts[tls.match(self.names, server_name)]

    def describe(self) -> list[str]:
        return [c.fingerprint for c in self.served]

