"""Versioned AEAD envelope used by the storage barrier.

Layout of a sealed value (format version 1)::

    0x01 | term (4 bytes, big endian) | nonce (12 bytes) | AES-256-GCM ciphertext + tag (16 bytes)

The 5-byte header is authenticated too: it is prepended to the caller's
associated data before encryption.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "KEY_BYTES",
    "DecryptionFailed",
    "Key",
    "aad",
    "new_key",
    "open",
    "prepare",
    "seal",
    "term_of",
    "unseal",
]

KEY_BYTES = 32
VERSION = 0x01
_AAD_PREFIX = b"coffer\x00v1\x00"
_HEADER_BYTES = 5
_NONCE_BYTES = 12
_TAG_BYTES = 16
_MIN_SEALED_BYTES = _HEADER_BYTES + _NONCE_BYTES + _TAG_BYTES
_MAX_TERM = 2**32 - 1


class DecryptionFailed(Exception):
    """A sealed value could not be opened (malformed, wrong key, wrong aad or tampered)."""


def new_key() -> bytes:
    """Return a fresh random 256-bit key."""
    return os.urandom(KEY_BYTES)


def aad(*parts: str) -> bytes:
    """Build associated data binding a value to its location, e.g. ``aad(vault, kind, name)``."""
    for part in parts:
        if "\x00" in part:
            raise ValueError("aad parts must not contain NUL characters")
    return _AAD_PREFIX + b"\x00".join(part.encode("utf-8") for part in parts)


# A key: its 32 bytes, or the same prepared once (`prepare`) for a key used by many requests (a vault's data key):
# preparing costs about as much as opening a small value.
Key = bytes | AESGCM


def prepare(key: bytes) -> AESGCM:
    return AESGCM(key)


def seal(key: Key, plaintext: bytes, aad: bytes, *, term: int = 0) -> bytes:
    """Encrypt and authenticate ``plaintext`` (and ``aad``) under ``key``, tagged with ``term``."""
    if not 0 <= term <= _MAX_TERM:
        raise ValueError("term must fit in an unsigned 32-bit integer")
    header = bytes([VERSION]) + term.to_bytes(4, "big")
    nonce = os.urandom(_NONCE_BYTES)
    cipher = key if isinstance(key, AESGCM) else AESGCM(key)
    return header + nonce + cipher.encrypt(nonce, plaintext, header + aad)


def open(key: Key, sealed: bytes, aad: bytes) -> bytes:
    """Authenticate and decrypt a value produced by :func:`seal`; raise DecryptionFailed."""
    if len(sealed) < _MIN_SEALED_BYTES or sealed[0] != VERSION:
        raise DecryptionFailed("unsupported or truncated sealed value")
    header = sealed[:_HEADER_BYTES]
    nonce = sealed[_HEADER_BYTES : _HEADER_BYTES + _NONCE_BYTES]
    body = sealed[_HEADER_BYTES + _NONCE_BYTES :]
    try:
        cipher = key if isinstance(key, AESGCM) else AESGCM(key)
        return cipher.decrypt(nonce, body, header + aad)
    except (InvalidTag, ValueError, TypeError):
        raise DecryptionFailed("sealed value failed authentication") from None


unseal = open


def term_of(sealed: bytes) -> int:
    """Return the key term recorded in a sealed value's header (not authenticated here)."""
    if len(sealed) < _MIN_SEALED_BYTES or sealed[0] != VERSION:
        raise DecryptionFailed("unsupported or truncated sealed value")
    return int.from_bytes(sealed[1:_HEADER_BYTES], "big")
