import base64
import re

import pytest

from coffer.crypto import passwords


def test_random_secret() -> None:
    secret = passwords.random_secret()
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", secret)
    assert len(base64.urlsafe_b64decode(secret + "=")) == 32
    assert passwords.random_secret() != secret
    assert len(passwords.random_secret(16)) == 22
    with pytest.raises(ValueError):
        passwords.random_secret(0)


def test_hash_format() -> None:
    encoded = passwords.hash_secret("s3cret")
    assert re.fullmatch(r"scrypt\$16384\$8\$1\$[A-Za-z0-9_-]{22}\$[A-Za-z0-9_-]{43}", encoded)
    assert "s3cret" not in encoded
    assert passwords.hash_secret("s3cret") != encoded  # random salt


def test_verify() -> None:
    encoded = passwords.hash_secret("s3cret")
    assert passwords.verify_secret("s3cret", encoded)
    assert not passwords.verify_secret("s3cret ", encoded)
    assert not passwords.verify_secret("", encoded)
    unicode = passwords.hash_secret("pässwörd🔑")
    assert passwords.verify_secret("pässwörd🔑", unicode)
    assert not passwords.verify_secret("passwort", unicode)


def test_verify_tampered_hash() -> None:
    encoded = passwords.hash_secret("s3cret")
    head, digest = encoded.rsplit("$", 1)
    flipped = ("B" if digest[0] == "A" else "A") + digest[1:]
    assert not passwords.verify_secret("s3cret", f"{head}${flipped}")


@pytest.mark.parametrize(
    "encoded",
    [
        "",
        "garbage",
        "scrypt$16384$8$1$abc",
        "bcrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "scrypt$x$8$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "scrypt$1000$8$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "scrypt$1073741824$8$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "scrypt$16384$0$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "scrypt$16384$8$1$!!!!$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "scrypt$16384$8$1$$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA$",
        "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA$extra",
    ],
)
def test_verify_malformed_never_raises(encoded: str) -> None:
    assert passwords.verify_secret("s3cret", encoded) is False


def test_verify_unencodable_secret() -> None:
    assert passwords.verify_secret("\ud800", passwords.hash_secret("x")) is False
