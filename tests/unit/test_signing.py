import base64

import pytest

from coffer.crypto import signing


@pytest.fixture(scope="module")
def pem() -> bytes:
    return signing.generate_rsa_private_pem()


def b64decode(text: str) -> bytes:
    assert "=" not in text
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_pem_format(pem: bytes) -> None:
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert b"ENCRYPTED" not in pem


def test_public_jwk(pem: bytes) -> None:
    jwk = signing.public_jwk(pem, "kid-1")
    assert set(jwk) == {"kty", "use", "alg", "kid", "n", "e"}
    assert (jwk["kty"], jwk["use"], jwk["alg"], jwk["kid"]) == ("RSA", "sig", "RS256", "kid-1")
    assert jwk["e"] == "AQAB"
    modulus = b64decode(jwk["n"])
    assert len(modulus) == 256 and modulus[0] != 0


def test_key_id(pem: bytes) -> None:
    kid = signing.key_id(pem)
    assert len(kid) == 27
    assert len(b64decode(kid + "A")) >= 20  # url-safe alphabet, no padding
    assert signing.key_id(pem) == kid
    assert signing.key_id(signing.generate_rsa_private_pem()) != kid


def test_jwk_verifies_pyjwt_token(pem: bytes) -> None:
    jwt = pytest.importorskip("jwt")
    kid = signing.key_id(pem)
    token = jwt.encode({"sub": "x"}, pem, algorithm="RS256", headers={"kid": kid})
    public_key = jwt.PyJWK(signing.public_jwk(pem, kid)).key
    assert jwt.decode(token, public_key, algorithms=["RS256"]) == {"sub": "x"}
