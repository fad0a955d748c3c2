"""A refused certificate is explained for what it is: expired, not valid yet, for another name,
or not from the pinned CA, each its own line; only the last one speaks of the pin.

Real TLS servers on loopback, with certificates made by shoal's own issuer at other times.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shoal import Client, ConnectError
from shoal.cli.errors import error_line
from shoal.home import format_connection_string
from shoal.tls import ServerCertificates, ensure_server_certificates, server_context

from .test_tls import CAServer

NOW = datetime.now(UTC)
TOKEN = "shoal-worker-not-a-real-one"


def issue(directory: Path, *, at: datetime, names: tuple[str, ...] = ("localhost",),
          addresses: tuple[str, ...] = ("127.0.0.1",), leaf_days: int = 90) -> ServerCertificates:
    """A CA made now, and a leaf issued as if the clock read `at`."""
    ensure_server_certificates(directory, ["localhost"], ["127.0.0.1"], now=NOW)
    for leaf in ("server.pem", "server-key.pem"):
        (directory / leaf).unlink()
    return ensure_server_certificates(directory, list(names), list(addresses), now=at,
                                      leaf_days=leaf_days)


@pytest.fixture(autouse=True)
def own_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOAL_HOME", str(tmp_path / "client-home"))
    monkeypatch.delenv("SHOAL_SERVER", raising=False)
    monkeypatch.delenv("SHOAL_TOKEN", raising=False)


def serving(certificates: ServerCertificates) -> CAServer:
    running = CAServer(server_context(certificates.cert_file, certificates.key_file))
    running.body = certificates.ca_file.read_bytes()  # what a pinned client fetches first
    return running


@pytest.fixture
def expired(tmp_path: Path) -> Iterator[tuple[CAServer, ServerCertificates]]:
    certificates = issue(tmp_path / "expired", at=NOW - timedelta(days=30), leaf_days=10)
    with serving(certificates) as running:
        yield running, certificates


def pinned_client(server: CAServer, pin: str) -> Client:
    return Client(format_connection_string(server.url, TOKEN, pin), timeout=5)


def refusal(client: Client) -> str:
    with client, pytest.raises(ConnectError) as caught:
        client.version()
    line = error_line(caught.value)
    assert "\n" not in line
    return line


def test_an_expired_certificate_is_called_expired_not_a_pin_mismatch(
        expired: tuple[CAServer, ServerCertificates]) -> None:
    server, certificates = expired
    before = datetime.now(UTC)
    line = refusal(pinned_client(server, certificates.fingerprint))
    assert "its certificate has expired" in line
    # The day the clock read while refusing: a run may cross midnight (NOW is older).
    days = {moment.strftime("%Y-%m-%d") for moment in (before, datetime.now(UTC))}
    assert any("this host's clock reads " + day in line for day in days), line
    assert "pin" not in line


def test_a_certificate_not_valid_yet_says_so(tmp_path: Path) -> None:
    certificates = issue(tmp_path / "future", at=NOW + timedelta(days=30))
    with serving(certificates) as server:
        line = refusal(pinned_client(server, certificates.fingerprint))
    assert "its certificate is not valid yet" in line and "clock" in line
    assert "pin" not in line


def test_a_certificate_for_another_name_says_which_name(tmp_path: Path) -> None:
    certificates = issue(tmp_path / "named", at=NOW, names=("elsewhere.example",), addresses=())
    with serving(certificates) as server:
        line = refusal(pinned_client(server, certificates.fingerprint))
    assert "its certificate is not for '127.0.0.1'" in line
    assert "--tls-san 127.0.0.1" in line
    assert "pin" not in line


def test_a_certificate_from_another_ca_is_a_pin_mismatch(tmp_path: Path) -> None:
    pinned = issue(tmp_path / "pinned", at=NOW)
    presented = issue(tmp_path / "presented", at=NOW)
    # The client has trusted the pinned CA before (as after a first connection).
    trusted = tmp_path / "client-home" / "trusted"
    trusted.mkdir(parents=True)
    pin_hex = pinned.fingerprint.removeprefix("sha256:")
    shutil.copy(pinned.ca_file, trusted / f"{pin_hex}.pem")
    with serving(presented) as server:
        line = refusal(pinned_client(server, pinned.fingerprint))
    assert f"its certificate is not signed by the pinned CA {pinned.fingerprint}" in line
    assert "expired" not in line


def test_a_pin_that_does_not_match_the_ca_offered_is_named_at_once(tmp_path: Path) -> None:
    pinned = issue(tmp_path / "pinned", at=NOW)
    presented = issue(tmp_path / "presented", at=NOW)
    with serving(presented) as server, pytest.raises(ConnectError) as caught:
        pinned_client(server, pinned.fingerprint)
    assert f"presents CA {presented.fingerprint} but the pin is {pinned.fingerprint}" in str(
        caught.value)


def test_without_a_pin_an_unknown_ca_is_not_trusted_here(tmp_path: Path) -> None:
    certificates = issue(tmp_path / "unknown", at=NOW)
    with serving(certificates) as server:
        line = refusal(Client(server.url, token=TOKEN, timeout=5))
    assert "its certificate is not trusted here" in line
    assert "pins its CA" in line


def test_a_worker_facing_an_expired_certificate_says_it_expired(
        expired: tuple[CAServer, ServerCertificates], tmp_path: Path) -> None:
    server, certificates = expired
    join = tmp_path / "join"
    join.write_text(format_connection_string(server.url, TOKEN, certificates.fingerprint))
    join.chmod(0o600)
    result = subprocess.run(
        [sys.executable, "-m", "shoal.cli.main", "worker", "--join-file", str(join),
         "--name", "late", "--cores", "1"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 3, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"shoal: the server at {server.url}: its certificate has expired")
    assert "pin" not in last
