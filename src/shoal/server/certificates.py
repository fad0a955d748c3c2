"""The certificate the server presents: its own (made and renewed here) or the operator's,
and the checks on how TLS was asked for."""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from shoal.core.errors import InputError, ShoalError

log = logging.getLogger("shoal.server")


@dataclass(frozen=True)
class TlsSettings:
    """How the server speaks: TLS with its own CA (the default), with the operator's own
    certificate, or plain HTTP (loopback only)."""

    cert_file: Path | None = None
    key_file: Path | None = None
    insecure_http: bool = False
    extra_names: tuple[str, ...] = ()  # --tls-san: more names/addresses for the certificate
    advertise: str | None = None  # the address workers on other hosts should dial


_LOOPBACK = ("127.", "::1", "localhost")
CERTIFICATE_CHECK_SECONDS = 60.0
OPERATOR_EXPIRY_WARNING_DAYS = 14


def check_tls_settings(tls: TlsSettings, host: str) -> None:
    if tls.insecure_http and (tls.cert_file or tls.key_file):
        raise InputError("--insecure-http: cannot be combined with --tls-cert/--tls-key")
    if tls.insecure_http and not host.startswith(_LOOPBACK):
        raise InputError(f"--insecure-http: only on a loopback address, not {host}; "
                         "anyone on the network could read tokens and commands")
    if (tls.cert_file is None) != (tls.key_file is None):
        raise InputError("--tls-cert and --tls-key go together")


class Certificates:
    """The certificate the server presents, kept valid while it runs: its own is reissued
    before it expires or when the host gains an address; an operator's is reloaded when the
    files change, with a warning as its expiry nears."""

    def __init__(self, home: Path, host: str, tls: TlsSettings):
        from shoal import tls as tlslib

        self._tls = tls
        self._host = host
        self._dir = home / "tls"
        self.ca_pem: bytes | None = None
        self.fingerprint: str | None = None
        if tls.cert_file is not None and tls.key_file is not None:
            self.cert_file, self.key_file = tls.cert_file, tls.key_file
            try:
                tlslib.server_context(self.cert_file, self.key_file)
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise InputError(f"--tls-cert/--tls-key: cannot use {self.cert_file} and "
                                 f"{self.key_file}: {exc}") from None
            self._stamp = self._mtimes()
        else:
            certs = self._ensure()
            self.cert_file, self.key_file = certs.cert_file, certs.key_file
            self.ca_pem = certs.ca_file.read_bytes()
            self.fingerprint = certs.fingerprint
            if tlslib.ca_expires_soon(certs.ca_file):
                log.warning("the CA in %s expires within a year; move %s aside and restart to "
                            "make a new one (workers then need the new join string)",
                            self._dir, self._dir)
        self._warn_if_expiring()

    def _ensure(self) -> Any:
        from shoal import tls as tlslib

        extra = [*self._tls.extra_names, *([self._tls.advertise] if self._tls.advertise else [])]
        names, addresses = tlslib.local_names(self._host, extra)
        return tlslib.ensure_server_certificates(self._dir, names, addresses)

    def _mtimes(self) -> tuple[float, float]:
        return (os.stat(self.cert_file).st_mtime, os.stat(self.key_file).st_mtime)

    def _warn_if_expiring(self) -> None:
        from shoal import tls as tlslib

        left = tlslib.certificate_expiry(self.cert_file) - datetime.now(UTC)
        if left < timedelta(days=OPERATOR_EXPIRY_WARNING_DAYS):
            log.warning("the server certificate %s expires in %s; renew it (the server "
                        "reloads it when the file changes)", self.cert_file, left)

    def refresh(self, context: ssl.SSLContext) -> None:
        """Called every minute, off the event loop (finding the host's names may wait on
        DNS): new handshakes get the renewed certificate, open connections keep theirs."""
        from shoal.tls import reload_server_context

        try:
            if self.ca_pem is not None:
                if not self._ensure().renewed:
                    return
                log.info("server certificate renewed")
            else:
                stamp = self._mtimes()
                if stamp == self._stamp:
                    return
                self._stamp = stamp
                log.info("server certificate files changed; reloading them")
                self._warn_if_expiring()
            reload_server_context(context, self.cert_file, self.key_file)
        except (OSError, ssl.SSLError, ValueError, ShoalError) as exc:
            log.error("cannot renew or reload the server certificate: %s", exc)



async def keep_certificate(server: Any, certificates: Certificates | None) -> None:
    if certificates is None:
        return
    while True:
        await asyncio.sleep(CERTIFICATE_CHECK_SECONDS)
        context = getattr(server.config, "ssl", None)
        if context is not None:
            await asyncio.to_thread(certificates.refresh, context)
