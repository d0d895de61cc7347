"""Untrusted persistence. Only the barrier and the composition root import this package."""

from coffer.storage.base import (
    CredentialRow,
    IssuerRow,
    ObjectRow,
    PrincipalRow,
    RoleAssignmentRow,
    RoleDefinitionRow,
    Storage,
    StorageError,
    TenantRow,
    Transaction,
    VaultRow,
    VersionRow,
)

__all__ = [
    "CredentialRow",
    "IssuerRow",
    "ObjectRow",
    "PrincipalRow",
    "RoleAssignmentRow",
    "RoleDefinitionRow",
    "Storage",
    "StorageError",
    "TenantRow",
    "Transaction",
    "VaultRow",
    "VersionRow",
]
