"""All cryptography used by coffer; the only package that imports ``cryptography``."""

from coffer.crypto import envelope, passwords, shamir, signing, software, tls, x509
from coffer.crypto.envelope import DecryptionFailed
from coffer.crypto.shamir import InvalidShares
from coffer.crypto.tls import TlsFiles

__all__ = [
    "DecryptionFailed",
    "InvalidShares",
    "TlsFiles",
    "envelope",
    "passwords",
    "shamir",
    "signing",
    "software",
    "tls",
    "x509",
]
