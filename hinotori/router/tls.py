"""TLS certificates at the front door, as both data planes use them.

A router's certificates are a list of (cert, key) PEM file pairs from ``[router]`` (spec/tls.py):
the first is the default, served to a client that sends no SNI or a name no certificate has;
the others are picked by the names in them (subjectAltName DNS entries, else the CN; ``*.x``
covers one label). ``load`` reads and checks one pair: both files readable, PEM, the key
unencrypted and matching the certificate. An expired certificate still loads (refusing it would
take HTTPS down entirely), but ``Certificate.expired`` lets the caller warn.

Both data planes check a pair *before* serving it: at start a bad pair is a CertificateError
naming the file; at a reload it is refused and the previous certificates keep serving.
"""

from __future__ import annotations

import hashlib
import json
import os
import ssl
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hinotori.errors import CertificateError

if TYPE_CHECKING:
    from cryptography import x509

EXPIRY_WARNING_DAYS = 14  # a certificate closer than this to its end is worth an event


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path

    def to_dict(self) -> dict[str, str]:
        return {"cert": str(self.cert), "key": str(self.key)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CertPair:
        return cls(Path(d["cert"]), Path(d["key"]))


@dataclass(frozen=True)
class Certificate:
    """One checked pair: what it serves and until when, and its PEM bytes."""

    pair: CertPair
    names: tuple[str, ...]
    not_after: float  # epoch seconds
    fingerprint: str  # SHA-256 of the leaf, hex
    chain_pem: bytes
    key_pem: bytes

    @property
    def expired(self) -> bool:
        return self.not_after <= time.time()

    @property
    def expires_soon(self) -> bool:
        return self.not_after - time.time() < EXPIRY_WARNING_DAYS * 86400

    def combined_pem(self) -> bytes:
        """Certificate chain then key in one file: what HAProxy's ``crt`` reads."""
        return self.chain_pem.rstrip(b"\n") + b"\n" + self.key_pem.rstrip(b"\n") + b"\n"

    def view(self) -> dict[str, Any]:
        return {"cert": str(self.pair.cert), "key": str(self.pair.key), "names": list(self.names),
                "not_after": self.not_after, "expired": self.expired,
                "fingerprint": self.fingerprint}


def pairs_json(pairs: Sequence[CertPair]) -> bytes:
    """The pair list as the built-in router's workers read it (``read_pairs``)."""
    return json.dumps({"certs": [p.to_dict() for p in pairs]}).encode()


def read_pairs(path: Path) -> list[CertPair]:
    return [CertPair.from_dict(d) for d in json.loads(path.read_text())["certs"]]


def pairs_of(settings: Any, root: Path | None) -> list[CertPair]:
    """The pairs a [router] table (spec.schema.RouterSpec) names, the default first; relative
    paths are taken from ``root`` (the spec's directory). Empty when TLS is off."""
    if getattr(settings, "tls_listen", None) is None:
        return []
    base = root or Path(".")
    raw = ([(settings.tls_cert, settings.tls_key)] if settings.tls_cert else []) + \
        [(t.cert, t.key) for t in settings.tls]
    return [CertPair((base / c).absolute(), (base / k).absolute()) for c, k in raw]


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CertificateError(f"cannot read the TLS {what} file {path}: {exc.strerror or exc}",
                               hint="fix the path in [router] of hinotori.toml, or the "
                                    "file's permissions") from None


def load(pair: CertPair) -> Certificate:
    """Read and check one pair; CertificateError names the file and what is wrong with it."""
    # Imported here: a router without TLS (and every worker start) does not pay for it.
    import cryptography.exceptions
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    cert_bytes = _read(pair.cert, "certificate")
    key_bytes = _read(pair.key, "key")
    try:
        chain = x509.load_pem_x509_certificates(cert_bytes)
    except ValueError:
        raise CertificateError(f"{pair.cert} holds no PEM certificate",
                               hint="tls_cert must be a PEM file starting with "
                                    "-----BEGIN CERTIFICATE-----") from None
    try:
        key = serialization.load_pem_private_key(key_bytes, password=None)
    except TypeError:
        raise CertificateError(f"the private key {pair.key} is encrypted",
                               hint="give the router an unencrypted key (e.g. `openssl pkey "
                                    "-in KEY -out KEY.plain`) with mode 0600") from None
    except (ValueError, cryptography.exceptions.UnsupportedAlgorithm) as exc:
        raise CertificateError(f"{pair.key} holds no usable PEM private key ({exc})",
                               hint="tls_key must be a PEM file starting with "
                                    "-----BEGIN PRIVATE KEY----- (or RSA/EC)") from None
    leaf = chain[0]
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if leaf.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise CertificateError(f"the key {pair.key} does not match the certificate {pair.cert}",
                               hint="give the key that was issued with this certificate")
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    chain_pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
    return Certificate(pair, names_of(leaf), leaf.not_valid_after_utc.timestamp(),
                       leaf.fingerprint(hashes.SHA256()).hex(), chain_pem, key_pem)


def load_all(pairs: Sequence[CertPair]) -> list[Certificate]:
    return [load(p) for p in pairs]


def names_of(cert: x509.Certificate) -> tuple[str, ...]:
    """The DNS names a certificate serves (SAN, else CN), lowercased."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = san.value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return tuple(n.lower() for n in names)


def match(names_to_index: dict[str, int], server_name: str | None) -> int:
    """The index of the certificate for ``server_name``: exact name, then ``*.parent``, else 0
    (the default)."""
    if not server_name:
        return 0
    name = server_name.lower().rstrip(".")
    hit = names_to_index.get(name)
    if hit is None and "." in name:
        hit = names_to_index.get("*." + name.split(".", 1)[1])
    return hit or 0


def name_index(certs: Iterable[Certificate]) -> dict[str, int]:
    """Name -> index of the first certificate that has it."""
    out: dict[str, int] = {}
    for i, c in enumerate(certs):
        for n in c.names:
            out.setdefault(n, i)
    return out


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server-side context serving one pair (ssl.SSLError if OpenSSL refuses them)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.load_cert_chain(cert, key)
    return ctx


def stamps(pairs: Sequence[CertPair]) -> tuple[tuple[int, int, int] | None, ...]:
    """What says a file changed: (inode, mtime ns, size) per file; None if it is missing. An
    ACME client renames a new file into place: a new inode even within one mtime tick."""
    out: list[tuple[int, int, int] | None] = []
    for p in pairs:
        for path in (p.cert, p.key):
            try:
                st = os.stat(path)
            except OSError:
                out.append(None)
                continue
            out.append((st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)


def digest(certs: Sequence[Certificate]) -> str:
    """One value that changes when any served certificate or key changes."""
    h = hashlib.sha256()
    for c in certs:
        h.update(c.chain_pem)
        h.update(c.key_pem)
    return h.hexdigest()
