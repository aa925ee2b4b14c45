"""TLS at the front door without a data plane: the spec keys, the checks of a certificate and
key pair, SNI matching, the redirect, HAProxy's TLS config and files, the controller's watch."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hinotori.controller.certwatch import CertWatch
from hinotori.errors import CertificateError, RouterError, SpecError
from hinotori.model import RoutingTable
from hinotori.router import tls
from hinotori.router.builtin import http1
from hinotori.router.haproxy import config
from hinotori.router.haproxy import tls as haproxy_tls
from hinotori.spec import parse_spec
from tests.support import make_ca, make_leaf

SPEC = """\
[project]
name = "shop"

[router]
listen = "127.0.0.1:8080"
{router}

[services.web]
command = ["python3", "app.py"]
"""


def spec_error(router: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        parse_spec(SPEC.format(router=router), file="hinotori.toml")
    return info.value


@pytest.fixture
def certs(tmp_path: Path) -> tuple[Any, Path]:
    ca = make_ca(tmp_path)
    make_leaf(ca, ["a.test"], tmp_path / "a.pem", tmp_path / "a.key")
    make_leaf(ca, ["b.test", "*.b.test"], tmp_path / "b.pem", tmp_path / "b.key")
    return ca, tmp_path


def test_spec_without_tls_keys_is_as_before() -> None:
    router = parse_spec(SPEC.format(router="")).router
    assert router.tls_listen is None and not router.redirect_http
    assert tls.pairs_of(router, Path("/x")) == []


def test_spec_tls_keys_give_pairs_relative_to_the_spec() -> None:
    text = SPEC.format(router=(
        'tls_listen = "127.0.0.1:8443"\ntls_cert = "c/a.pem"\ntls_key = "c/a.key"\n'
        'redirect_http = true\n\n[[router.tls]]\ncert = "/abs/b.pem"\nkey = "/abs/b.key"\n'))
    router = parse_spec(text).router
    assert tls.pairs_of(router, Path("/proj")) == [
        tls.CertPair(Path("/proj/c/a.pem"), Path("/proj/c/a.key")),
        tls.CertPair(Path("/abs/b.pem"), Path("/abs/b.key"))]


@pytest.mark.parametrize(("router", "message"), [
    ('tls_listen = "127.0.0.1:8443"', "needs a certificate"),
    ('tls_listen = "127.0.0.1:8443"\ntls_cert = "a.pem"', "go together"),
    ('tls_cert = "a.pem"\ntls_key = "a.key"', "needs router.tls_listen"),
    ("redirect_http = true", "needs router.tls_listen"),
    ('tls_listen = "127.0.0.1:8080"\ntls_cert = "a.pem"\ntls_key = "a.key"', "must differ"),
    ('tls_listen = "nowhere"\ntls_cert = "a.pem"\ntls_key = "a.key"', "HOST:PORT"),
    ('tls_listen = "127.0.0.1:8443"\ntls_cert = 3\ntls_key = "a.key"', "string"),
])
def test_spec_tls_mistakes_name_file_and_key(router: str, message: str) -> None:
    e = spec_error(router)
    assert e.file == "hinotori.toml" and e.key and e.key.startswith("router")
    assert message in str(e)


def test_load_reads_names_expiry_and_pem(certs: tuple[Any, Path]) -> None:
    _, d = certs
    a = tls.load(tls.CertPair(d / "a.pem", d / "a.key"))
    b = tls.load(tls.CertPair(d / "b.pem", d / "b.key"))
    assert a.names == ("a.test",) and b.names == ("b.test", "*.b.test")
    assert not a.expired and not a.expires_soon
    pem = a.combined_pem()
    assert b"BEGIN CERTIFICATE" in pem and b"BEGIN PRIVATE KEY" in pem


def test_load_refuses_bad_pairs_naming_the_file(certs: tuple[Any, Path]) -> None:
    ca, d = certs
    with pytest.raises(CertificateError, match=f"key {d / 'b.key'} does not match"):
        tls.load(tls.CertPair(d / "a.pem", d / "b.key"))
    (d / "junk.pem").write_text("hello\n")
    with pytest.raises(CertificateError, match=f"{d / 'junk.pem'} holds no PEM certificate"):
        tls.load(tls.CertPair(d / "junk.pem", d / "a.key"))
    with pytest.raises(CertificateError, match=f"{d / 'junk.pem'} holds no usable PEM private"):
        tls.load(tls.CertPair(d / "a.pem", d / "junk.pem"))
    with pytest.raises(CertificateError, match=f"cannot read the TLS key file {d / 'none'}"):
        tls.load(tls.CertPair(d / "a.pem", d / "none"))
    from cryptography.hazmat.primitives import serialization
    key = serialization.load_pem_private_key((d / "a.key").read_bytes(), None)
    (d / "enc.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    with pytest.raises(CertificateError, match="is encrypted"):
        tls.load(tls.CertPair(d / "a.pem", d / "enc.key"))
    make_leaf(ca, ["old.test"], d / "old.pem", d / "old.key", days=-1)
    assert tls.load(tls.CertPair(d / "old.pem", d / "old.key")).expired  # loads, flagged


def test_sni_match_exact_then_wildcard_else_default(certs: tuple[Any, Path]) -> None:
    _, d = certs
    index = tls.name_index(tls.load_all([tls.CertPair(d / "a.pem", d / "a.key"),
                                         tls.CertPair(d / "b.pem", d / "b.key")]))
    assert tls.match(index, "b.test") == 1
    assert tls.match(index, "X.B.test.") == 1
    assert tls.match(index, "a.test") == 0
    assert tls.match(index, "c.test") == 0
    assert tls.match(index, None) == 0
    assert tls.match(index, "deep.x.b.test") == 0  # a wildcard covers one label


def test_stamps_change_with_a_renamed_file(certs: tuple[Any, Path]) -> None:
    ca, d = certs
    pairs = [tls.CertPair(d / "a.pem", d / "a.key")]
    before = tls.stamps(pairs)
    make_leaf(ca, ["a.test"], d / "a.pem", d / "a.key")
    assert tls.stamps(pairs) != before
    (d / "a.key").unlink()
    assert tls.stamps(pairs)[1] is None


def test_redirect_keeps_host_and_url_and_names_the_tls_port() -> None:
    r = http1.redirect_response(b"shop.test", b"/a/b?c=1", 8443, close=False)
    assert r.startswith(b"HTTP/1.1 308 ")
    assert b"\r\nLocation: https://shop.test:8443/a/b?c=1\r\n" in r
    r = http1.redirect_response(b"shop.test", b"/", 443, close=True, head=True)
    assert b"Location: https://shop.test/\r\n" in r and b"Connection: close" in r
    assert r.endswith(b"\r\n\r\n")  # HEAD: no body
    # An HTTP/1.0 client that asked to keep the connection is told it is kept, as for the
    # router's other answers (closing is its default).
    r = http1.redirect_response(b"shop.test", b"/", 8443, close=False, http11=False)
    assert b"\r\nConnection: keep-alive\r\n" in r
    assert b"Connection" not in http1.redirect_response(b"shop.test", b"/", 8443, close=False)


def test_request_head_says_https_on_the_tls_listener() -> None:
    head = http1.build_request_head(b"GET", b"/", [(b"Host", b"a.test"),
                                                   (b"X-Forwarded-Proto", b"https")],
                                    b"1.2.3.4", b"x", b"https")
    assert head.data.count(b"X-Forwarded-Proto") == 1 and b"X-Forwarded-Proto: https" in head.data
    plain = http1.build_request_head(b"GET", b"/", [(b"X-Forwarded-Proto", b"https")],
                                     b"1.2.3.4", b"x")
    assert b"X-Forwarded-Proto: http\r\n" in plain.data  # a client cannot claim https


def test_haproxy_config_with_tls_is_valid(tmp_path: Path, certs: tuple[Any, Path]) -> None:
    _, d = certs
    certs_dir = tmp_path / "haproxy-certs"
    loaded = tls.load_all([tls.CertPair(d / "a.pem", d / "a.key"),
                           tls.CertPair(d / "b.pem", d / "b.key")])
    assert haproxy_tls.write(certs_dir, loaded) == [0, 1]
    assert haproxy_tls.write(certs_dir, loaded) == []  # unchanged: nothing to replace
    assert haproxy_tls.crt_list(certs_dir).read_text().splitlines() == [
        str(certs_dir / "0.pem"), str(certs_dir / "1.pem")]
    s = config.Settings(listen="127.0.0.1:8080", stats_socket=tmp_path / "s.sock",
                        maps_dir=tmp_path / "maps", tls_listen="127.0.0.1:8443",
                        certs_dir=certs_dir, redirect_port=8443)
    text = config.render(s, config.plan(RoutingTable(1), {}), loaded=True)
    assert f"bind 127.0.0.1:8443 ssl crt-list {certs_dir / 'crt-list'}" in text
    assert ":8443%[capture.req.uri] code 308 if !{ ssl_fc }" in text
    binary = shutil.which("haproxy")
    if binary is None:
        pytest.skip("haproxy is not installed; the integration tests need it")
    (tmp_path / "maps").mkdir()
    config.sample_file(s).write_text(config.map_text(config.sample_entries(1)))
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(text)
    result = subprocess.run([binary, "-c", "-f", str(cfg)], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr


class FakeTlsRouter:
    def __init__(self) -> None:
        self.calls = 0
        self.fail: str | None = None

    async def reload_certs(self) -> list[dict[str, Any]]:
        self.calls += 1
        if self.fail:
            raise CertificateError(self.fail)
        return [{"cert": "a.pem", "names": ["a.test"], "not_after": 4e9, "fingerprint": "f",
                 "expired": False}]


def test_watch_reloads_once_files_hold_still_and_records_why(certs: tuple[Any, Path]) -> None:
    ca, d = certs
    router_spec = SimpleNamespace(tls_listen="127.0.0.1:8443", tls_cert="a.pem",
                                  tls_key="a.key", tls=[])
    project = SimpleNamespace(spec=SimpleNamespace(router=router_spec,
                                                   project=SimpleNamespace(name="shop")),
                              root=d)
    events: list[tuple[str, dict[str, Any]]] = []
    router = FakeTlsRouter()
    watch = CertWatch(project, router, lambda a, s, detail: events.append((a, detail)))
    assert watch.enabled
    watch.started()
    assert events == []  # a good, fresh certificate: nothing to say

    async def polls(n: int) -> None:
        for _ in range(n):
            await watch.watch_once()

    asyncio.run(polls(3))
    assert router.calls == 0  # nothing changed
    make_leaf(ca, ["a.test"], d / "a.pem", d / "a.key")
    asyncio.run(polls(1))
    assert router.calls == 0  # changed: wait one poll for the files to hold still
    asyncio.run(polls(3))
    assert router.calls == 1 and events[-1][0] == "router.certs-reloaded"
    assert events[-1][1]["why"] == "the certificate files changed"

    router.fail = "the key a.key does not match the certificate a.pem"
    make_leaf(ca, ["a.test"], d / "a.pem", d / "a.key")
    asyncio.run(polls(3))  # refused: recorded, not raised, and not retried until a change
    assert router.calls == 2 and events[-1][0] == "router.certs-refused"
    assert "does not match" in events[-1][1]["error"]
    with pytest.raises(RouterError):
        asyncio.run(watch.reload("alice"))
    assert events[-1][1]["actor"] == "alice"


def test_watch_warns_of_an_expired_certificate(certs: tuple[Any, Path]) -> None:
    ca, d = certs
    make_leaf(ca, ["a.test"], d / "a.pem", d / "a.key", days=-1)
    router_spec = SimpleNamespace(tls_listen="127.0.0.1:8443", tls_cert="a.pem",
                                  tls_key="a.key", tls=[])
    project = SimpleNamespace(spec=SimpleNamespace(router=router_spec,
                                                   project=SimpleNamespace(name="shop")),
                              root=d)
    events: list[str] = []
    CertWatch(project, FakeTlsRouter(), lambda a, s, detail: events.append(a)).started()
    assert events == ["router.cert-expired"]
