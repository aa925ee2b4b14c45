"""The TLS keys of ``[router]``: the HTTPS listener, its certificates, the redirect.

    [router]
    tls_listen = "0.0.0.0:443"
    tls_cert = "certs/shop.example.pem"   # the default: clients with no SNI or an unknown name
    tls_key = "certs/shop.example.key"
    redirect_http = true                  # the plain listener answers 308 to https

    [[router.tls]]                        # more certificates, chosen by SNI (their names)
    cert = "certs/api.example.pem"
    key = "certs/api.example.key"

Paths are relative to the spec's directory. The files are read (and checked: PEM, the key
matches the certificate, expiry) when the router starts and each time they change.
"""

from __future__ import annotations

from typing import Any

from hinotori.spec.base import Strict


class TlsCertSpec(Strict):
    cert: str  # PEM: the certificate, then its chain
    key: str   # PEM: the private key (unencrypted)


def check_tls(router: Any) -> None:
    """Cross-key rules of [router]'s TLS keys (ValueError names the key to fix)."""
    if (router.tls_cert is None) != (router.tls_key is None):
        raise ValueError("router.tls_cert and router.tls_key go together: set both")
    has_certs = router.tls_cert is not None or bool(router.tls)
    if router.tls_listen is None:
        for key in ("tls_cert", "tls", "redirect_http"):
            if key in router.model_fields_set:
                raise ValueError(f"router.{key} needs router.tls_listen = \"HOST:PORT\"")
        return
    if not has_certs:
        raise ValueError("router.tls_listen needs a certificate: set router.tls_cert and "
                         "router.tls_key (or [[router.tls]] cert/key)")
    if router.tls_listen == router.listen:
        raise ValueError("router.tls_listen must differ from router.listen")
