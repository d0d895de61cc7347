"""Slow (scrypt) hashes for client secrets and managed-identity endpoint secrets.

Encoding: ``scrypt$<n>$<r>$<p>$<salt b64url>$<hash b64url>`` (unpadded base64url).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

__all__ = ["hash_secret", "random_secret", "verify_secret"]

_N, _R, _P = 2**14, 8, 1
_SALT_BYTES = 16
_HASH_BYTES = 32
# Upper bounds accepted when verifying (<= 256 MiB of scrypt memory).
_MAX_N, _MAX_R, _MAX_P = 2**17, 16, 16


def random_secret(nbytes: int = 32) -> str:
    """Return ``nbytes`` of randomness as unpadded base64url."""
    if nbytes < 1:
        raise ValueError("nbytes must be positive")
    return secrets.token_urlsafe(nbytes)


def hash_secret(secret: str) -> str:
    """Hash ``secret`` with scrypt and a random salt."""
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = _scrypt(secret.encode("utf-8"), salt, _N, _R, _P, _HASH_BYTES)
    return f"scrypt${_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def verify_secret(secret: str, encoded: str) -> bool:
    """Check ``secret`` against an encoding from :func:`hash_secret`; never raises."""
    try:
        scheme, n_text, r_text, p_text, salt_text, hash_text = encoded.split("$")
        n, r, p = int(n_text), int(r_text), int(p_text)
        salt, expected = _unb64(salt_text), _unb64(hash_text)
        if scheme != "scrypt" or not (1 < n <= _MAX_N and 0 < r <= _MAX_R and 0 < p <= _MAX_P):
            return False
        if n & (n - 1) or not salt or not 16 <= len(expected) <= 64:
            return False
        actual = _scrypt(secret.encode("utf-8"), salt, n, r, p, len(expected))
    except (ValueError, TypeError, AttributeError, MemoryError):
        return False
    return hmac.compare_digest(actual, expected)


def _scrypt(secret: bytes, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    return Scrypt(salt=salt, length=length, n=n, r=r, p=p).derive(secret)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except binascii.Error as exc:
        raise ValueError("invalid base64url") from exc
