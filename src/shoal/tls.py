"""TLS for shoal: a private CA per server home, its server certificate, and trust by fingerprint.

The server keeps its own CA (`ca.pem`, valid 20 years, never replaced) and a short-lived leaf
(`server.pem`, full chain) that it re-issues when it nears expiry or the host's names change.
Clients either trust the system store or pin the CA by its SHA-256 fingerprint: the CA is fetched
once without verification, checked against the pin, and from then on verified like any CA.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import secrets
import socket
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shoal.core.errors import InputError
from shoal.trust import PIN_PREFIX

CA_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"
SERVER_CERT_FILE = "server.pem"
SERVER_KEY_FILE = "server-key.pem"

_LOCK_FILE = ".lock"
_CA_DAYS = 20 * 365
_CLOCK_SKEW = timedelta(hours=1)
_CN_MAX = 64  # RFC 5280 upper bound for commonName

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class ServerCertificates:
    ca_file: Path
    cert_file: Path
    key_file: Path
    fingerprint: str
    renewed: bool


# --- fingerprints and pins ---------------------------------------------------------------------


def _fingerprint_of(cert: x509.Certificate) -> str:
    return PIN_PREFIX + cert.fingerprint(hashes.SHA256()).hex()


def _load_certificate(cert_pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise ValueError("not a PEM certificate") from None


# --- which names the server answers to ---------------------------------------------------------


def local_names(bind_host: str, extra: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """The DNS names and IP addresses a certificate for this host should carry, sorted."""
    names: set[str] = {"localhost"}
    addresses: set[IPAddress] = {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
    for discovered in (socket.gethostname(), socket.getfqdn()):
        name = _dns_name(discovered)
        if name is not None:
            names.add(name)
    for interface_addresses in psutil.net_if_addrs().values():
        for entry in interface_addresses:
            if entry.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            address = _ip_address(entry.address)
            # Link-local addresses need a zone id to be dialled, and a certificate cannot carry one.
            if address is not None and not (address.version == 6 and address.is_link_local):
                addresses.add(address)
    host = bind_host.strip().strip("[]")
    bound = _ip_address(host)
    if host and not (bound is not None and bound.is_unspecified):  # 0.0.0.0 and :: name nothing
        _classify(host, names, addresses, source="bind host")
    for item in extra:
        _classify(item.strip().strip("[]"), names, addresses, source="certificate name")
    return sorted(names), [str(a) for a in sorted(addresses, key=_address_order)]


def _classify(text: str, names: set[str], addresses: set[IPAddress], *, source: str) -> None:
    address = _ip_address(text)
    if address is not None:
        addresses.add(address)
        return
    name = _dns_name(text)
    if name is None:
        raise InputError(f"{source} {text!r} is neither an IP address nor a DNS name")
    names.add(name)


def _ip_address(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


def _dns_name(text: str) -> str | None:
    name = text.strip().rstrip(".").lower()
    if not name or len(name) > 253 or not name.isascii() or any(c.isspace() for c in name):
        return None
    return name


def _address_order(address: IPAddress) -> tuple[int, bytes]:
    return address.version, address.packed


# --- the CA and the server certificate ---------------------------------------------------------


def ensure_server_certificates(
    directory: Path,
    names: Sequence[str],
    addresses: Sequence[str],
    *,
    now: datetime | None = None,
    leaf_days: int = 90,
    renew_within_days: int = 30,
) -> ServerCertificates:
    """Make sure `directory` holds a CA and a current server certificate for `names`/`addresses`.

    The CA is created once and never replaced: clients pin its fingerprint. The leaf is
    (re)issued when it is missing, unreadable, not from this CA, not yet or no longer valid within
    `renew_within_days`, or lacks one of the wanted names; it then carries exactly those names.
    """
    moment = _utc(now)
    wanted_names = {n for n in (_dns_name(n) for n in names) if n is not None}
    wanted_addresses = {ipaddress.ip_address(a.strip("[]")) for a in addresses}
    if not wanted_names and not wanted_addresses:
        raise ValueError("a server certificate needs at least one name or address")
    if not directory.exists():
        directory.mkdir(mode=0o700, parents=True)
        directory.chmod(0o700)  # mkdir's mode is filtered by the umask
    ca_file, cert_file, key_file = (
        directory / CA_FILE,
        directory / SERVER_CERT_FILE,
        directory / SERVER_KEY_FILE,
    )
    with _locked(directory):
        ca_cert, ca_key = _load_or_create_ca(directory, moment)
        wanted = wanted_names, wanted_addresses
        renewed = not _leaf_is_current(
            cert_file, key_file, ca_cert, wanted, moment, renew_within_days
        )
        if renewed:
            _issue_leaf(cert_file, key_file, ca_cert, ca_key, wanted, moment, leaf_days)
    return ServerCertificates(ca_file, cert_file, key_file, _fingerprint_of(ca_cert), renewed)


def certificate_expiry(cert_file: Path) -> datetime:
    """When the first certificate in `cert_file` stops being valid (UTC)."""
    return _load_certificate(cert_file.read_bytes()).not_valid_after_utc


def ca_expires_soon(ca_file: Path, *, now: datetime | None = None, within_days: int = 365) -> bool:
    return certificate_expiry(ca_file) - _utc(now) <= timedelta(days=within_days)


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialise issuers (and reloads) so two servers starting at once cannot mint two CAs."""
    fd = os.open(directory / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _load_or_create_ca(directory: Path, now: datetime) -> tuple[x509.Certificate, SigningKey]:
    ca_file, ca_key_file = directory / CA_FILE, directory / CA_KEY_FILE
    # ca.pem is written last, so a key without a certificate is debris from an interrupted
    # first start that nobody can have pinned yet; a certificate without its key is not.
    if not ca_file.exists():
        return _create_ca(ca_file, ca_key_file, now)
    try:
        ca_cert = _load_certificate(ca_file.read_bytes())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the CA certificate: {exc}", source=str(ca_file)) from None
    try:
        ca_key = _load_key(ca_key_file)
    except (OSError, ValueError) as exc:
        raise InputError(
            f"cannot read the CA key ({exc}); restore it, or delete {ca_file.name} to create a "
            "new CA (every pinned client will then need the new fingerprint)",
            source=str(ca_key_file),
        ) from None
    if not _key_matches(ca_key, ca_cert):
        raise InputError(f"the CA key does not belong to {ca_file}", source=str(ca_key_file))
    return ca_cert, ca_key


def _create_ca(ca_file: Path, key_file: Path, now: datetime) -> tuple[x509.Certificate, SigningKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    # The random suffix tells apart CAs of the same host, e.g. after a home was recreated.
    suffix = secrets.token_hex(4)
    host = _hostname()[: _CN_MAX - len("shoal CA  ") - len(suffix)]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"shoal CA {host} {suffix}")])
    public_key = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + timedelta(days=_CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_atomically(key_file, _key_pem(key), mode=0o600)
    _write_atomically(ca_file, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return cert, key


def _leaf_is_current(
    cert_file: Path,
    key_file: Path,
    ca_cert: x509.Certificate,
    wanted: tuple[set[str], set[IPAddress]],
    now: datetime,
    renew_within_days: int,
) -> bool:
    try:
        chain = x509.load_pem_x509_certificates(cert_file.read_bytes())
        key = _load_key(key_file)
    except (OSError, ValueError):
        return False
    leaf = chain[0]
    if chain[1:] != [ca_cert] or not _key_matches(key, leaf):
        return False
    try:
        leaf.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    if leaf.not_valid_before_utc > now:
        return False  # the clock went back; clients would reject it
    if leaf.not_valid_after_utc - now <= timedelta(days=renew_within_days):
        return False
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    carried_names = {n.lower() for n in san.get_values_for_type(x509.DNSName)}
    carried_addresses = set(san.get_values_for_type(x509.IPAddress))
    wanted_names, wanted_addresses = wanted
    return wanted_names <= carried_names and wanted_addresses <= carried_addresses


def _issue_leaf(
    cert_file: Path,
    key_file: Path,
    ca_cert: x509.Certificate,
    ca_key: SigningKey,
    wanted: tuple[set[str], set[IPAddress]],
    now: datetime,
    leaf_days: int,
) -> None:
    names, addresses = wanted
    key = ec.generate_private_key(ec.SECP256R1())
    public_key = key.public_key()
    # A leaf outliving its CA would fail verification anyway; say so in the certificate.
    not_after = min(now + timedelta(days=leaf_days), ca_cert.not_valid_after_utc)
    alternative_names: list[x509.GeneralName] = [x509.DNSName(n) for n in sorted(names)]
    alternative_names += [x509.IPAddress(a) for a in sorted(addresses, key=_address_order)]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, _hostname()[:_CN_MAX])]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(_authority_key_identifier(ca_cert), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    chain = cert.public_bytes(serialization.Encoding.PEM)
    chain += ca_cert.public_bytes(serialization.Encoding.PEM)
    # Key first: a crash in between leaves a pair that does not match, which the next call reissues.
    _write_atomically(key_file, _key_pem(key), mode=0o600)
    _write_atomically(cert_file, chain, mode=0o644)


def _authority_key_identifier(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    # Strict verifiers match this against the CA's own identifier, so reuse it when there is one.
    try:
        ca_key_id = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        public_key = ca_cert.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            raise ValueError(f"unsupported CA key type {type(public_key).__name__}") from None
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key)
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_key_id)


def _hostname() -> str:
    return socket.gethostname() or "localhost"


def _load_key(path: Path) -> SigningKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError(f"unsupported key type {type(key).__name__}")
    return key


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _key_matches(key: SigningKey, cert: x509.Certificate) -> bool:
    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return key.public_key().public_bytes(der, spki) == cert.public_key().public_bytes(der, spki)


def _write_atomically(path: Path, content: bytes, *, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    os.fchmod(fd, mode)  # O_CREAT's mode is filtered by the umask, and tmp may be stale
    with os.fdopen(fd, "wb") as out:
        out.write(content)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


# --- SSL contexts -----------------------------------------------------------------------------


def server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


def reload_server_context(context: ssl.SSLContext, cert_file: Path, key_file: Path) -> None:
    """Swap the chain of a live server context; new handshakes use it, open connections keep theirs.

    A failed `load_cert_chain` (say, a key that does not match) leaves a context with the new
    certificate and no key, and every later handshake fails; so the pair is proven on a scratch
    context first, under the issuer's lock (when the files are ours) so they cannot change between.
    """
    managed = (cert_file.parent / _LOCK_FILE).exists()
    with _locked(cert_file.parent) if managed else contextlib.nullcontext():
        server_context(cert_file, key_file)
        context.load_cert_chain(cert_file, key_file)



