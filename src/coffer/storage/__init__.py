"""Untrusted persistence. Only the barrier and the composition root import this package."""

from coffer.storage.base import (
    CredentialRow,
    ObjectRow,
    PrincipalRow,
    Storage,
    StorageError,
    Transaction,
    VaultRow,
    VersionRow,
)

__all__ = [
    "CredentialRow",
    "ObjectRow",
    "PrincipalRow",
    "Storage",
    "StorageError",
    "Transaction",
    "VaultRow",
    "VersionRow",
]
