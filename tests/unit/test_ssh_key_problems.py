"""What `shoal up` says when asyncssh cannot load a key: a wrong passphrase is named as one,
whatever asyncssh made of the key it decrypted with it."""

from __future__ import annotations

import asyncssh
import pytest

from shoal.provision.ssh import _key_problem, key_failure

WRONG = "cannot decrypt an SSH key with the passphrase given (wrong passphrase?): "


@pytest.mark.parametrize(("reason", "passphrase_given", "said"), [
    ("Unable to decrypt PKCS#1 private key", True, WRONG),
    ("Unable to decrypt PKCS#8 private key", True, WRONG),
    ("Incorrect passphrase", True, WRONG),
    ("Invalid PEM private key", True, WRONG),
    ("Invalid PKCS#8 private key", True, WRONG),
    ("Invalid PEM private key", False, "cannot use an SSH key: "),
    ("Passphrase must be specified to import encrypted private keys", False,
     "cannot use an SSH key: "),
    ("Unknown PEM key type: FOO", True, "cannot use an SSH key: "),
])
def test_key_problems_are_named(reason: str, passphrase_given: bool, said: str) -> None:
    assert _key_problem(reason, passphrase_given) == said + reason


def test_a_key_that_decrypts_to_bytes_that_are_not_text_is_a_wrong_passphrase() -> None:
    garbage = UnicodeDecodeError("utf-8", b"\x05\xff", 1, 2, "invalid start byte")
    assert _key_problem(key_failure(garbage), passphrase_given=True).startswith(WRONG)
    assert key_failure(asyncssh.KeyImportError("Invalid PEM private key")) == \
        "Invalid PEM private key"


def test_bcrypt_missing_says_what_to_install() -> None:
    said = _key_problem("OpenSSH private key encryption requires bcrypt with KDF support", True)
    assert said.endswith("(install the Python package bcrypt beside shoal)")


def test_every_wrong_passphrase_of_a_pem_key_is_named_wrong() -> None:
    """An old PEM key's encryption has no check value: now and then a wrong passphrase
    decrypts to well-padded garbage, and asyncssh reports an unparsable key instead."""
    key = asyncssh.generate_private_key("ecdsa-sha2-nistp256")
    pem = key.export_private_key("pkcs1-pem", passphrase="right")
    reasons = set()
    for attempt in range(4096):  # the garbage case is about 1 in 256: missing it, 1 in 10^7
        # Rarer still, the garbage holds text that is not UTF-8, and asyncssh lets Python's
        # decoding error out: shoal catches that one too.
        with pytest.raises((asyncssh.KeyImportError, asyncssh.KeyEncryptionError,
                            UnicodeDecodeError)) as caught:
            asyncssh.import_private_key(pem, passphrase=f"wrong-{attempt}")
        reasons.add(key_failure(caught.value))
    assert "Invalid PEM private key" in reasons  # the case this is about was met
    for reason in reasons:
        assert _key_problem(reason, passphrase_given=True).startswith(WRONG), reason
