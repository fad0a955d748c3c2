"""TLS: the private CA, the server certificate's life cycle, pinning, and real handshakes."""

from __future__ import annotations

import hashlib
import shutil
import socket
import ssl
import stat
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from shoal.core.errors import ConnectError, InputError
from shoal.tls import (
    ServerCertificates,
    ca_expires_soon,
    certificate_expiry,
    ensure_server_certificates,
    local_names,
    reload_server_context,
    server_context,
)
from shoal.trust import (
    PIN_PREFIX,
    client_context,
    fetch_pinned_ca,
    fingerprint,
    parse_pin,
)
from tests.ports import free_port

NAMES = ["localhost"]
ADDRESSES = ["127.0.0.1", "::1"]


class CAServer:
    """A real HTTPS server on loopback that serves `body` at /api/v1/ca and records headers."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.body = b""
        self.status = 200
        self.seen_headers: list[dict[str, str]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.seen_headers.append({k.lower(): v for k, v in self.headers.items()})
                status = owner.status if self.path == "/api/v1/ca" else 404
                body = owner.body if status == 200 else b"not here"
                self.send_response(status)
                self.send_header("Content-Type", "application/x-pem-file")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        # Handshakes happen in the handler threads, so a client that rejects us cannot stall it.
        self.httpd.socket = context.wrap_socket(
            self.httpd.socket, server_side=True, do_handshake_on_connect=False
        )
        self.httpd.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
        self.port = self.httpd.server_address[1]
        self.url = f"https://127.0.0.1:{self.port}"
        # A short poll keeps shutdown() quick.
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)

    def __enter__(self) -> CAServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


def handshake(port: int, context: ssl.SSLContext, server_hostname: str) -> bytes:
    """Complete a TLS handshake against 127.0.0.1:port and return the server's leaf (DER)."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        peer = tls.getpeercert(binary_form=True)
        assert peer is not None
        return peer


def leaf_of(certs: ServerCertificates) -> x509.Certificate:
    return x509.load_pem_x509_certificate(certs.cert_file.read_bytes())


def sans_of(certs: ServerCertificates) -> tuple[set[str], set[str]]:
    san = leaf_of(certs).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return (
        set(san.get_values_for_type(x509.DNSName)),
        {str(a) for a in san.get_values_for_type(x509.IPAddress)},
    )


@pytest.fixture(scope="module")
def issued(tmp_path_factory: pytest.TempPathFactory) -> ServerCertificates:
    return ensure_server_certificates(tmp_path_factory.mktemp("home") / "tls", NAMES, ADDRESSES)


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> ServerCertificates:
    return ensure_server_certificates(tmp_path_factory.mktemp("other") / "tls", NAMES, ADDRESSES)


@pytest.fixture(scope="module")
def server(issued: ServerCertificates) -> Iterator[CAServer]:
    with CAServer(server_context(issued.cert_file, issued.key_file)) as running:
        running.body = issued.ca_file.read_bytes()
        yield running


@pytest.fixture
def ca_server(issued: ServerCertificates) -> Iterator[CAServer]:
    """A server of its own, for tests that change what it serves."""
    with CAServer(server_context(issued.cert_file, issued.key_file)) as running:
        running.body = issued.ca_file.read_bytes()
        yield running


# --- fingerprints and pins ---------------------------------------------------------------------


def test_fingerprint_is_the_sha256_of_the_der_encoding(issued: ServerCertificates) -> None:
    pem = issued.ca_file.read_bytes()
    der = ssl.PEM_cert_to_DER_cert(pem.decode())
    assert fingerprint(pem) == PIN_PREFIX + hashlib.sha256(der).hexdigest()
    assert issued.fingerprint == fingerprint(pem)


@pytest.mark.parametrize("garbage", [b"", b"hello", b"-----BEGIN CERTIFICATE-----\nAAAA\n"])
def test_fingerprint_rejects_what_is_not_a_certificate(garbage: bytes) -> None:
    with pytest.raises(ValueError, match="not a PEM certificate"):
        fingerprint(garbage)


HEX = "0123456789abcdef" * 4
PAIRS = ":".join(HEX[i : i + 2] for i in range(0, 64, 2))


@pytest.mark.parametrize(
    "text",
    [
        f"sha256:{HEX}",
        f"SHA256:{HEX.upper()}",
        f"sha256:{PAIRS}",
        f"sha256:{PAIRS.upper()}",
        f"  sha256:{HEX}\n",
        f"SHA256 Fingerprint={PAIRS.upper()}",
    ],
)
def test_parse_pin_accepts_and_normalises(text: str) -> None:
    assert parse_pin(text) == f"sha256:{HEX}"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "sha256:",
        HEX,
        f"sha1:{HEX[:40]}",
        f"md5:{HEX}",
        f"sha256:{HEX[:-1]}",
        f"sha256:{HEX}0",
        f"sha256:{HEX[:-1]}g",
        f"sha256:{HEX[:4]}:{HEX[4:]}",
        f"sha256:{PAIRS}:",
        f"sha256: {HEX[:32]} {HEX[32:]}",
    ],
)
def test_parse_pin_rejects(text: str) -> None:
    with pytest.raises(InputError, match="not a CA pin"):
        parse_pin(text)


# --- issuing and renewing ----------------------------------------------------------------------


def test_first_call_creates_a_ca_and_a_leaf_with_private_files(tmp_path: Path) -> None:
    directory = tmp_path / "tls"
    certs = ensure_server_certificates(directory, NAMES, ADDRESSES)

    assert certs.renewed
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(certs.key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((directory / "ca-key.pem").stat().st_mode) == 0o600
    assert certs.fingerprint == fingerprint(certs.ca_file.read_bytes())
    assert sans_of(certs) == ({"localhost"}, {"127.0.0.1", "::1"})

    ca = x509.load_pem_x509_certificate(certs.ca_file.read_bytes())
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0
    assert ca.not_valid_after_utc - datetime.now(UTC) > timedelta(days=19 * 365)
    chain = x509.load_pem_x509_certificates(certs.cert_file.read_bytes())
    assert chain[1] == ca
    leaf_of(certs).verify_directly_issued_by(ca)
    assert not leaf_of(certs).extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_second_call_changes_nothing(tmp_path: Path) -> None:
    first = ensure_server_certificates(tmp_path / "tls", NAMES, ADDRESSES)
    before = {p.name: p.read_bytes() for p in (tmp_path / "tls").glob("*.pem")}

    second = ensure_server_certificates(tmp_path / "tls", NAMES, ADDRESSES)

    assert not second.renewed
    assert second.fingerprint == first.fingerprint
    assert {p.name: p.read_bytes() for p in (tmp_path / "tls").glob("*.pem")} == before


def test_leaf_is_renewed_within_30_days_of_expiry_and_the_ca_kept(tmp_path: Path) -> None:
    start = datetime.now(UTC)
    first = ensure_server_certificates(tmp_path / "tls", NAMES, ADDRESSES, now=start)
    ca_pem = first.ca_file.read_bytes()
    first_expiry = certificate_expiry(first.cert_file)

    early = ensure_server_certificates(
        tmp_path / "tls", NAMES, ADDRESSES, now=start + timedelta(days=59)
    )
    late = ensure_server_certificates(
        tmp_path / "tls", NAMES, ADDRESSES, now=start + timedelta(days=61)
    )

    assert not early.renewed
    assert late.renewed
    assert late.fingerprint == first.fingerprint
    assert late.ca_file.read_bytes() == ca_pem
    assert certificate_expiry(late.cert_file) > first_expiry


def test_leaf_is_reissued_with_exactly_the_wanted_names_when_one_is_missing(
    tmp_path: Path,
) -> None:
    first = ensure_server_certificates(tmp_path / "tls", NAMES, ADDRESSES)

    wider = ensure_server_certificates(
        tmp_path / "tls", [*NAMES, "Build.Example"], [*ADDRESSES, "192.0.2.10"]
    )
    narrower = ensure_server_certificates(tmp_path / "tls", NAMES, ["127.0.0.1"])

    assert wider.renewed
    assert wider.fingerprint == first.fingerprint
    assert sans_of(wider) == ({"localhost", "build.example"}, {"127.0.0.1", "::1", "192.0.2.10"})
    assert not narrower.renewed  # a leaf carrying more names than wanted still serves


@pytest.mark.parametrize("damage", ["delete", "corrupt", "foreign", "mismatched key"])
def test_broken_leaf_is_reissued_and_the_ca_kept(
    tmp_path: Path, other_ca: ServerCertificates, damage: str
) -> None:
    first = ensure_server_certificates(tmp_path / "tls", NAMES, ADDRESSES)
    ca_pem = first.ca_file.read_bytes()
    if damage == "delete":
        first.cert_file.unlink()
    elif damage == "corrupt":
        first.cert_file.write_bytes(b"-----BEGIN CERTIFICATE-----\ngarbage\n")
    elif damage == "foreign":
        shutil.copy(other_ca.cert_file, first.cert_file)
        shutil.copy(other_ca.key_file, first.key_file)
    else:
        shutil.copy(other_ca.key_file, first.key_file)

    again = ensure_server_certificates(tmp_path / "tls", NAMES, ADDRESSES)

    assert again.renewed
    assert again.ca_file.read_bytes() == ca_pem
    ca = x509.load_pem_x509_certificate(ca_pem)
    leaf_of(again).verify_directly_issued_by(ca)


def test_a_ca_without_its_key_is_an_error_not_a_new_ca(tmp_path: Path) -> None:
    first = ensure_server_certificates(tmp_path / "tls", NAMES, ADDRESSES)
    ca_pem = first.ca_file.read_bytes()
    (tmp_path / "tls" / "ca-key.pem").unlink()

    with pytest.raises(InputError, match="cannot read the CA key"):
        ensure_server_certificates(tmp_path / "tls", NAMES, ADDRESSES)
    assert first.ca_file.read_bytes() == ca_pem


def test_ca_expiry(issued: ServerCertificates) -> None:
    expiry = certificate_expiry(issued.ca_file)
    assert expiry.tzinfo is not None
    assert not ca_expires_soon(issued.ca_file)
    assert ca_expires_soon(issued.ca_file, now=expiry - timedelta(days=364))
    assert not ca_expires_soon(issued.ca_file, now=expiry - timedelta(days=366))
    assert ca_expires_soon(issued.ca_file, now=expiry - timedelta(days=10), within_days=30)


# --- handshakes --------------------------------------------------------------------------------


@pytest.mark.parametrize("hostname", ["localhost", "127.0.0.1", "::1"])
def test_client_trusting_the_ca_verifies_the_leaf(
    issued: ServerCertificates, server: CAServer, hostname: str
) -> None:
    context = client_context(issued.ca_file.read_bytes())
    peer = handshake(server.port, context, hostname)
    assert peer == leaf_of(issued).public_bytes(Encoding.DER)


def test_leaf_passes_strict_x509_verification(issued: ServerCertificates, server: CAServer) -> None:
    context = client_context(issued.ca_file.read_bytes())
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    handshake(server.port, context, "localhost")


def test_client_trusting_another_ca_refuses(other_ca: ServerCertificates, server: CAServer) -> None:
    context = client_context(other_ca.ca_file.read_bytes())
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(server.port, context, "localhost")


def test_client_refuses_a_name_the_leaf_does_not_carry(
    issued: ServerCertificates, server: CAServer
) -> None:
    context = client_context(issued.ca_file.read_bytes())
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        handshake(server.port, context, "elsewhere.example")


def test_system_trust_store_does_not_know_our_ca(server: CAServer) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(server.port, client_context(None), "localhost")


def test_client_context_rejects_a_non_certificate() -> None:
    with pytest.raises(ValueError, match="not a PEM certificate"):
        client_context(b"nope")


def test_reloading_a_live_context_serves_the_new_leaf(tmp_path: Path) -> None:
    first = ensure_server_certificates(tmp_path / "tls", NAMES, ADDRESSES)
    live = server_context(first.cert_file, first.key_file)
    trusting = client_context(first.ca_file.read_bytes())
    with CAServer(live) as running:
        before = handshake(running.port, trusting, "localhost")
        later = datetime.now(UTC) + timedelta(minutes=1)
        wider = [*ADDRESSES, "192.0.2.10"]
        renewed = ensure_server_certificates(tmp_path / "tls", NAMES, wider, now=later)
        assert renewed.renewed

        reload_server_context(live, renewed.cert_file, renewed.key_file)
        after = handshake(running.port, trusting, "localhost")

        assert after != before
        assert after == leaf_of(renewed).public_bytes(Encoding.DER)


def test_a_failed_reload_leaves_the_live_context_serving(
    tmp_path: Path, other_ca: ServerCertificates
) -> None:
    certs = ensure_server_certificates(tmp_path / "tls", NAMES, ADDRESSES)
    live = server_context(certs.cert_file, certs.key_file)
    trusting = client_context(certs.ca_file.read_bytes())
    with CAServer(live) as running:
        before = handshake(running.port, trusting, "localhost")
        with pytest.raises(ssl.SSLError):
            reload_server_context(live, other_ca.cert_file, certs.key_file)
        assert handshake(running.port, trusting, "localhost") == before


# --- pinning -----------------------------------------------------------------------------------


def test_fetch_with_the_right_pin_returns_the_ca(
    issued: ServerCertificates, server: CAServer
) -> None:
    pin = issued.fingerprint.upper().replace("SHA256:", "sha256:")
    ca_pem = fetch_pinned_ca(server.url + "/", pin)

    assert ca_pem == issued.ca_file.read_bytes()
    handshake(server.port, client_context(ca_pem), "127.0.0.1")
    assert all("authorization" not in headers for headers in server.seen_headers)


def test_fetch_with_a_wrong_pin_refuses(other_ca: ServerCertificates, server: CAServer) -> None:
    with pytest.raises(ConnectError, match="refusing to connect") as caught:
        fetch_pinned_ca(server.url, other_ca.fingerprint)
    assert f"the server at {server.url} presents CA sha256:" in str(caught.value)
    assert f"but the pin is {other_ca.fingerprint}" in str(caught.value)


def test_fetch_refuses_extra_certificates_sent_with_the_pinned_one(
    issued: ServerCertificates, other_ca: ServerCertificates, ca_server: CAServer
) -> None:
    ca_server.body = issued.ca_file.read_bytes() + other_ca.ca_file.read_bytes()
    with pytest.raises(ConnectError, match="sent 2 certificates"):
        fetch_pinned_ca(ca_server.url, issued.fingerprint)


@pytest.mark.parametrize(("status", "body"), [(404, b""), (200, b"<html>hello</html>")])
def test_fetch_from_a_server_without_a_ca(
    issued: ServerCertificates, ca_server: CAServer, status: int, body: bytes
) -> None:
    ca_server.status, ca_server.body = status, body
    with pytest.raises(ConnectError, match=f"the server at {ca_server.url}"):
        fetch_pinned_ca(ca_server.url, issued.fingerprint)


def test_fetch_from_nowhere_is_a_connect_error(issued: ServerCertificates) -> None:
    url = f"https://127.0.0.1:{free_port()}"
    with pytest.raises(ConnectError, match=f"cannot reach {url}: "):
        fetch_pinned_ca(url, issued.fingerprint, timeout=2)


@pytest.mark.parametrize(
    ("url", "pin"),
    [("https://127.0.0.1:1", "sha256:abc"), ("http://127.0.0.1:1", "sha256:" + HEX)],
)
def test_fetch_rejects_bad_input_before_connecting(url: str, pin: str) -> None:
    with pytest.raises(InputError):
        fetch_pinned_ca(url, pin)


# --- names -------------------------------------------------------------------------------------


def test_local_names_cover_loopback_and_this_host() -> None:
    names, addresses = local_names("0.0.0.0")

    assert "localhost" in names
    assert socket.gethostname().lower() in names
    assert {"127.0.0.1", "::1"} <= set(addresses)
    assert not any("%" in a or a.startswith("fe80") for a in addresses)
    assert names == sorted(set(names))
    assert len(addresses) == len(set(addresses))
    assert local_names("::") == local_names("[::]") == local_names("") == (names, addresses)


def test_local_names_add_the_bind_host_and_extras() -> None:
    base_names, base_addresses = local_names("0.0.0.0")

    names, addresses = local_names(
        "192.0.2.7", ["Build.Example.", "10.9.8.7", "[fd00::1]", "localhost", "127.0.0.1"]
    )
    named, _ = local_names("head-node.example")

    assert set(names) == {*base_names, "build.example"}
    assert set(addresses) == {*base_addresses, "192.0.2.7", "10.9.8.7", "fd00::1"}
    assert "head-node.example" in named


def test_local_names_reject_a_malformed_extra() -> None:
    with pytest.raises(InputError, match="neither an IP address nor a DNS name"):
        local_names("0.0.0.0", ["two words"])
