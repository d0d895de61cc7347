"""Untrusted persistence. Only the barrier and the composition root import this package."""

from pathlib import Path

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


def open_storage(location: str | Path) -> Storage:
    """A backend by location: a `postgresql://` URL, else a SQLite database file (or a data directory holding
    coffer.db)."""
    text = str(location)
    if text.startswith(("postgresql://", "postgres://")):
        from coffer.storage.postgres import PostgresStorage

        return PostgresStorage(text)
    from coffer.storage.sqlite import SqliteStorage

    path = Path(text)
    return SqliteStorage(path / "coffer.db" if path.is_dir() else path)


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
    "open_storage",
]
