"""Rows of both SQL backends as the storage dataclasses (the same columns in SQLite and PostgreSQL)."""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from coffer.storage.base import (
    CredentialRow,
    IssuerRow,
    ObjectRow,
    PrincipalRow,
    RoleAssignmentRow,
    RoleDefinitionRow,
    VaultRow,
    VersionRow,
)


class Row(Protocol):
    """A result row by column name (sqlite3.Row, psycopg's dict rows)."""

    def __getitem__(self, key: str, /) -> Any: ...


def row_values(row: Any) -> Any:
    """A row's values in the order of its SELECT: by position, which is much cheaper than by name (sqlite3.Row looks
    a name up by comparing it with every column's)."""
    return row.values() if isinstance(row, dict) else row


def version_row(row: Any) -> VersionRow:
    """A row of `SELECT {VERSION_COLUMNS}` (sql_transaction.py), whose order this unpacking follows."""
    (vault, kind, name, version, created, updated, enabled, nbf, exp, content_type, tags, managed, kid, payload, seq,
     extra) = row_values(row)
    return VersionRow(
        vault=vault,
        kind=kind,
        name=name,
        version=version,
        created=created,
        updated=updated,
        enabled=bool(enabled),
        nbf=nbf,
        exp=exp,
        content_type=content_type,
        tags=orjson.loads(tags) if tags is not None else None,
        managed=bool(managed),
        kid=kid,
        payload=bytes(payload),
        seq=seq,
        extra=orjson.loads(extra) if extra else {},
    )


def object_row(row: Any) -> ObjectRow:
    """A row of `SELECT {OBJECT_COLUMNS}`."""
    vault, kind, name, latest, deleted, purge_at, data = row_values(row)
    return ObjectRow(
        vault=vault,
        kind=kind,
        name=name,
        latest=latest,
        deleted=deleted,
        purge_at=purge_at,
        data=orjson.loads(data) if data else {},
    )


def vault_row(row: Any) -> VaultRow:
    """A row of `SELECT {VAULT_COLUMNS}`."""
    (name, tenant_id, created, updated, retention_days, purge_protection, sku, rbac_authorization, wrapped_key,
     key_term, access_policies) = row_values(row)
    return VaultRow(
        name=name,
        tenant_id=tenant_id,
        created=created,
        updated=updated,
        retention_days=retention_days,
        purge_protection=bool(purge_protection),
        sku=sku,
        rbac_authorization=bool(rbac_authorization),
        wrapped_key=bytes(wrapped_key),
        key_term=key_term,
        access_policies=orjson.loads(access_policies) if access_policies else [],
    )


def role_definition_row(row: Row) -> RoleDefinitionRow:
    return RoleDefinitionRow(
        id=row["id"],
        scope=row["scope"],
        role_name=row["role_name"],
        description=row["description"],
        permissions=orjson.loads(row["permissions"]),
        assignable_scopes=orjson.loads(row["assignable_scopes"]),
        created=row["created"],
        updated=row["updated"],
    )


def role_assignment_row(row: Row) -> RoleAssignmentRow:
    return RoleAssignmentRow(
        id=row["id"],
        scope=row["scope"],
        role_definition_id=row["role_definition_id"],
        principal_id=row["principal_id"],
        created=row["created"],
    )


def principal_row(row: Row) -> PrincipalRow:
    return PrincipalRow(
        object_id=row["object_id"],
        tenant_id=row["tenant_id"],
        client_id=row["client_id"],
        kind=row["kind"],
        display_name=row["display_name"],
        created=row["created"],
    )


def credential_row(row: Row) -> CredentialRow:
    return CredentialRow(
        id=row["id"],
        object_id=row["object_id"],
        kind=row["kind"],
        secret_hash=row["secret_hash"],
        created=row["created"],
        expires=row["expires"],
        lookup=row["lookup"],
        data=orjson.loads(row["data"]) if row["data"] else {},
    )


def issuer_row(row: Row) -> IssuerRow:
    return IssuerRow(
        id=row["id"],
        tenant_id=row["tenant_id"],
        issuer=row["issuer"],
        jwks=row["jwks"],
        audience=row["audience"],
        created=row["created"],
    )
