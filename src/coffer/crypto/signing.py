"""The RSA token-signing key: generation, JWK export and key id."""

from __future__ import annotations

import base64
import hashlib

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

__all__ = ["generate_rsa_private_pem", "key_id", "public_jwk"]


def generate_rsa_private_pem() -> bytes:
    """Return a new RSA-2048 private key as unencrypted PKCS#8 PEM."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_jwk(private_pem: bytes, kid: str) -> dict[str, str]:
    """Return the public half of ``private_pem`` as an RS256 signing JWK."""
    numbers = _load(private_pem).public_key().public_numbers()
    return {
        "kty": "RSA",
        "use": "sig",
        "alg": "RS256",
        "kid": kid,
        "n": _b64_uint(numbers.n),
        "e": _b64_uint(numbers.e),
    }


def key_id(private_pem: bytes) -> str:
    """Return a stable key id: base64url SHA-256 of the DER public key, 27 chars."""
    der = (
        _load(private_pem)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return _b64(hashlib.sha256(der).digest())[:27]


def _load(private_pem: bytes) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(private_pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("token-signing key must be an RSA private key")
    return key


def _b64_uint(value: int) -> str:
    return _b64(value.to_bytes((value.bit_length() + 7) // 8 or 1, "big"))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
