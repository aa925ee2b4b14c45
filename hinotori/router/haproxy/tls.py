"""HTTPS on HAProxy: the crt-list and certificate files, and their replacement at runtime.

``bind <tls_listen> ssl crt-list <dir>/crt-list`` names one combined PEM file (chain + key) per
certificate, ``haproxy-certs/<i>.pem``, the default first (HAProxy serves the first certificate
of a bind line to a client with no SNI or an unknown name; the others by the names in them).

A renewed certificate reaches the running worker through the Runtime API, with no reload
(HAProxy >= 2.2)::

    set ssl cert <dir>/0.pem <<
    <chain and key, PEM>
    <empty line>
    commit ssl cert <dir>/0.pem

New handshakes get the new certificate at once; established connections keep theirs. The file
on disk is rewritten too, so a reload or a restart serves the same. Only when the number of
certificates changes is the crt-list rewritten and HAProxy reloaded (seamlessly).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hinotori.errors import RuntimeApiError
from hinotori.router import tls
from hinotori.router.haproxy import runtime
from hinotori.statefiles import private_dir, write_private


def cert_file(certs_dir: Path, i: int) -> Path:
    return certs_dir / f"{i}.pem"


def crt_list(certs_dir: Path) -> Path:
    return certs_dir / "crt-list"


def frontend_lines(tls_listen: str, certs_dir: Path, redirect_port: int | None) -> list[str]:
    """The TLS lines of the frontend: the bind, X-Forwarded-Proto, the optional redirect."""
    lines = [f"  bind {tls_listen} ssl crt-list {crt_list(certs_dir)} alpn http/1.1",
             "  http-request set-header X-Forwarded-Proto https if { ssl_fc }",
             "  http-request set-header X-Forwarded-Proto http if !{ ssl_fc }"]
    if redirect_port is not None:
        port = "" if redirect_port == 443 else f":{redirect_port}"
        lines.append("  http-request redirect location https://%[req.hdr(host),field(1,:)]"
                     f"{port}%[capture.req.uri] code 308 if !{{ ssl_fc }}")
    return lines


def on_disk(certs_dir: Path) -> list[bytes]:
    """The combined PEM files the crt-list names now, in order."""
    try:
        names = [line.split()[0] for line in crt_list(certs_dir).read_text().splitlines()
                 if line.strip()]
    except OSError:
        return []
    out = []
    for name in names:
        try:
            out.append(Path(name).read_bytes())
        except OSError:
            out.append(b"")
    return out


def write(certs_dir: Path, certs: Sequence[tls.Certificate]) -> list[int]:
    """Write the files for ``certs``; the indices whose PEM changed (all, if the count did)."""
    private_dir(certs_dir)
    before = on_disk(certs_dir)
    changed = []
    for i, c in enumerate(certs):
        pem = c.combined_pem()
        if i >= len(before) or before[i] != pem:
            f = cert_file(certs_dir, i)
            write_private(f, pem, tmp=f.with_name(f.name + ".tmp"))
            changed.append(i)
    text = "".join(f"{cert_file(certs_dir, i)}\n" for i in range(len(certs)))
    f = crt_list(certs_dir)
    write_private(f, text, tmp=f.with_name(f.name + ".tmp"))
    return changed


async def replace(stats_socket: Path, certs_dir: Path, certs: Sequence[tls.Certificate],
                  indices: Sequence[int]) -> None:
    """Hand HAProxy the new PEM of ``indices`` and commit each (no reload)."""
    for i in indices:
        f = cert_file(certs_dir, i)
        pem = certs[i].combined_pem().decode()
        answers = await runtime.run_payload(stats_socket, f"set ssl cert {f}", pem,
                                            then=[f"commit ssl cert {f}"])
        if "Transaction created" not in answers[0] and "Transaction updated" not in answers[0]:
            await runtime.run(stats_socket, [f"abort ssl cert {f}"])
            raise RuntimeApiError(f"HAProxy refused the certificate {certs[i].pair.cert}: "
                                  f"{answers[0].strip()}",
                                  hint="the previous certificate keeps serving")
        if "Success!" not in answers[1]:
            raise RuntimeApiError(f"HAProxy could not commit the certificate "
                                  f"{certs[i].pair.cert}: {answers[1].strip()}",
                                  hint="the previous certificate keeps serving")
