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


def version_row(row: Row) -> VersionRow:
    return VersionRow(
        vault=row["vault"],
        kind=row["kind"],
        name=row["name"],
        version=row["version"],
        created=row["created"],
        updated=row["updated"],
        enabled=bool(row["enabled"]),
        nbf=row["nbf"],
        exp=row["exp"],
        content_type=row["content_type"],
        tags=orjson.loads(row["tags"]) if row["tags"] is not None else None,
        managed=bool(row["managed"]),
        kid=row["kid"],
        payload=bytes(row["payload"]),
        seq=row["seq"],
        extra=orjson.loads(row["extra"]) if row["extra"] else {},
    )


def object_row(row: Row) -> ObjectRow:
    return ObjectRow(
        vault=row["vault"],
        kind=row["kind"],
        name=row["name"],
        latest=row["latest"],
        deleted=row["deleted"],
        purge_at=row["purge_at"],
        data=orjson.loads(row["data"]) if row["data"] else {},
    )


def vault_row(row: Row) -> VaultRow:
    return VaultRow(
        name=row["name"],
        tenant_id=row["tenant_id"],
        created=row["created"],
        updated=row["updated"],
        retention_days=row["retention_days"],
        purge_protection=bool(row["purge_protection"]),
        sku=row["sku"],
        rbac_authorization=bool(row["rbac_authorization"]),
        wrapped_key=bytes(row["wrapped_key"]),
        key_term=row["key_term"],
        access_policies=orjson.loads(row["access_policies"]) if row["access_policies"] else [],
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
