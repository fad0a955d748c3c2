"""How clients and workers trust a server: a CA pinned by its fingerprint, or the system store.

Only the standard `ssl` module and httpx: every CLI command passes through here, and the
certificate machinery of the server (`shoal.tls`, with cryptography) would cost each one a
tenth of a second to import.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import ssl
from datetime import UTC, datetime
from urllib.parse import urlsplit

import httpx

from shoal.core.errors import ConnectError, InputError

PIN_PREFIX = "sha256:"
CA_PATH = "/api/v1/ca"

_MAX_CA_BYTES = 64 * 1024  # the CA is fetched unverified, so a hostile peer must not flood us
_PIN_HEX = re.compile(r"[0-9a-f]{64}|[0-9a-f]{2}(?::[0-9a-f]{2}){31}")
# Ours, and what `openssl x509 -fingerprint -sha256` prints.
_PIN_PREFIXES = ("sha256:", "sha256 fingerprint=")
_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\s*([A-Za-z0-9+/=\s]+?)\s*-----END CERTIFICATE-----")


# --- fingerprints and pins ---------------------------------------------------------------------


def parse_pin(text: str) -> str:
    """Normalise a pin to `sha256:<64 lowercase hex>`; colon-separated byte pairs are accepted."""
    lowered = text.strip().lower()
    for prefix in _PIN_PREFIXES:
        if lowered.startswith(prefix):
            digits = lowered[len(prefix) :].strip()
            if _PIN_HEX.fullmatch(digits):
                return PIN_PREFIX + digits.replace(":", "")
    shown = text if len(text) <= 80 else text[:77] + "..."
    raise InputError(f"not a CA pin: expected sha256: followed by 64 hex digits, got {shown!r}")


def certificates_der(cert_pem: bytes) -> list[bytes]:
    """The DER encodings of the PEM certificate blocks in `cert_pem`, each checked by OpenSSL
    to be a certificate; ValueError if there is none or one is not."""
    found = []
    for match in _PEM_CERTIFICATE.finditer(cert_pem):
        try:
            der = base64.b64decode(b"".join(match.group(1).split()), validate=True)
            ssl.create_default_context(cadata=der)  # parses it: refuses what is not one
        except (binascii.Error, ssl.SSLError, ValueError):
            raise ValueError("not a PEM certificate") from None
        found.append(der)
    if not found:
        raise ValueError("not a PEM certificate")
    return found


def fingerprint(cert_pem: bytes) -> str:
    """`sha256:` + hex SHA-256 of the DER encoding of the first certificate in `cert_pem`."""
    return PIN_PREFIX + hashlib.sha256(certificates_der(cert_pem)[0]).hexdigest()


# --- SSL contexts -----------------------------------------------------------------------------


def client_context(ca_pem: bytes | None) -> ssl.SSLContext:
    """A verifying client context: trusts exactly `ca_pem` if given, else the system store."""
    if ca_pem is None:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    else:
        # DER, so that whatever text surrounds the PEM blocks cannot confuse the loader.
        der = b"".join(certificates_der(ca_pem))
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=der)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


# --- bootstrapping trust from a pin -----------------------------------------------------------


def fetch_pinned_ca(base_url: str, pin: str, *, timeout: float = 10.0) -> bytes:
    """Fetch the server's CA without verification and return it if it matches `pin`."""
    wanted, origin, url = _pinned_request(base_url, pin)
    try:
        # trust_env=False: no proxy and, above all, no .netrc credentials on an unverified channel.
        with (
            httpx.Client(verify=False, timeout=timeout, trust_env=False) as client,
            client.stream("GET", url) as response,
        ):
            _check_status(response, origin)
            body = bytearray()
            for chunk in response.iter_bytes():
                _append_capped(body, chunk, origin)
    except httpx.HTTPError as exc:
        raise ConnectError(f"cannot reach {origin}: {_reason(exc)}") from None
    return _check_pin(bytes(body), wanted, origin)


def _pinned_request(base_url: str, pin: str) -> tuple[str, str, str]:
    wanted = parse_pin(pin)
    origin = base_url.strip().rstrip("/")
    try:
        scheme = httpx.URL(origin).scheme
    except httpx.InvalidURL as exc:
        raise InputError(f"not a server URL: {origin!r} ({exc})") from None
    if scheme != "https":
        raise InputError(f"a CA pin needs an https:// server URL, not {origin!r}")
    return wanted, origin, origin + CA_PATH


def _check_status(response: httpx.Response, origin: str) -> None:
    if response.status_code != 200:
        raise ConnectError(
            f"the server at {origin} answered {response.status_code} to {CA_PATH}; "
            "it does not offer a CA to pin"
        )


def _append_capped(body: bytearray, chunk: bytes, origin: str) -> None:
    body += chunk
    if len(body) > _MAX_CA_BYTES:
        raise ConnectError(f"the server at {origin} sent more than {_MAX_CA_BYTES} bytes as its CA")


def _check_pin(body: bytes, wanted: str, origin: str) -> bytes:
    try:
        certificates = certificates_der(body)
    except ValueError:
        raise ConnectError(f"the server at {origin} did not send a CA certificate") from None
    # Only one certificate is pinned; trusting anything sent alongside it would let a
    # man in the middle append his own CA to the genuine one.
    if len(certificates) != 1:
        raise ConnectError(
            f"the server at {origin} sent {len(certificates)} certificates as its CA, expected 1"
        )
    presented = PIN_PREFIX + hashlib.sha256(certificates[0]).hexdigest()
    if not hmac.compare_digest(presented.encode(), wanted.encode()):
        raise ConnectError(
            f"the server at {origin} presents CA {presented} but the pin is {wanted}; "
            "refusing to connect"
        )
    return ssl.DER_cert_to_PEM_cert(certificates[0]).encode("ascii")


def _reason(exc: httpx.HTTPError) -> str:
    return str(exc) or type(exc).__name__


# --- saying why a certificate was refused -----------------------------------------------------

# OpenSSL's verification results (X509_V_ERR_*) that each have their own explanation.
_NOT_YET_VALID = 9
_EXPIRED = 10
_WRONG_NAME = (62, 64)  # HOSTNAME_MISMATCH, IP_ADDRESS_MISMATCH
# UNABLE_TO_GET_ISSUER_CERT, DEPTH_ZERO_SELF_SIGNED_CERT, SELF_SIGNED_CERT_IN_CHAIN,
# UNABLE_TO_GET_ISSUER_CERT_LOCALLY, UNABLE_TO_VERIFY_LEAF_SIGNATURE
_UNKNOWN_ISSUER = (2, 18, 19, 20, 21)
_OPENSSL_PLACE = re.compile(r"\s*\(_ssl\.c:\d+\)")  # where in CPython the error arose
# The same, as the text of an error that no longer carries the code.
_CODES_BY_TEXT = (("certificate has expired", _EXPIRED),
                  ("certificate is not yet valid", _NOT_YET_VALID),
                  ("hostname mismatch", _WRONG_NAME[0]), ("ip address mismatch", _WRONG_NAME[1]),
                  ("self-signed certificate", 18), ("self signed certificate", 18),
                  ("unable to get local issuer certificate", 20),
                  ("unable to verify the first certificate", 21))


def certificate_problem(error: BaseException, url: str, *, pinned: str | None,
                        now: datetime | None = None) -> str | None:
    """What is wrong with the server's certificate, when `error` (or an error it arose from)
    is a TLS verification failure; None when it is not one.

    Expired, not yet valid, for another name, and not from the pinned CA each have their own
    sentence, with what to do about it: only the last is a matter of the pin."""
    found = _verification_failure(error)
    if found is None:
        return None
    code, message = found
    clock = (now or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    if code == _EXPIRED:
        return (f"its certificate has expired (this host's clock reads {clock}); if the clock "
                "is right, the certificate must be renewed: a server renews its own while it "
                "runs, one given with --tls-cert is replaced by whoever manages it")
    if code == _NOT_YET_VALID:
        return (f"its certificate is not valid yet (this host's clock reads {clock}); the "
                "clock here or on the server is wrong")
    if code in _WRONG_NAME:
        host = urlsplit(url).hostname or url
        return (f"its certificate is not for {host!r}; dial a name or address it carries, or "
                f"add this one with `shoal server --tls-san {host}`")
    if code in _UNKNOWN_ISSUER and pinned is not None:
        return (f"its certificate is not signed by the pinned CA {pinned}: the server has a "
                "new CA, or another server answers at this address; take the connection "
                "string again from the server ($SHOAL_HOME/join)")
    if code in _UNKNOWN_ISSUER:
        return (f"its certificate is not trusted here ({message}): its CA is not in this "
                "host's store; use the connection string `shoal server` printed, which pins "
                "its CA")
    return f"its certificate was refused ({message})"


def _verification_failure(error: BaseException) -> tuple[int | None, str] | None:
    """(OpenSSL's code, its message) of the certificate verification failure behind `error`."""
    chain: list[BaseException] = []
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is not None and all(current is not seen for seen in chain):
            chain.append(current)
            pending += [current.__cause__, current.__context__]
    for current in chain:
        if isinstance(current, ssl.SSLCertVerificationError):
            message = _OPENSSL_PLACE.sub("", str(current.verify_message or current.reason))
            return current.verify_code or _code_from_text(message), message
    for current in chain:  # flattened into text by a library on the way
        text = str(current)
        if "CERTIFICATE_VERIFY_FAILED" in text:
            message = _OPENSSL_PLACE.sub("", text.split("certificate verify failed:")[-1])
            return _code_from_text(message), message.strip(" ()")
    return None


def _code_from_text(message: str) -> int | None:
    lowered = message.lower()
    return next((code for text, code in _CODES_BY_TEXT if text in lowered), None)
