"""The Transaction methods both SQL backends (SQLite, PostgreSQL) implement with the same statements.

A backend subclasses SqlTransaction and supplies only what differs: how a statement runs on its driver, how a JSON
column is written, and the statements its dialect spells differently (`_wanted_versions`). Statements here are
written with `?` parameter markers (and hold no literal `?`); a backend whose driver wants another marker style
translates them in its execution hooks.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

from coffer.storage.base import (
    ACCESS,
    IDENTITY,
    META,
    VAULT,
    CredentialRow,
    IssuerRow,
    ObjectRow,
    PrincipalRow,
    RoleAssignmentRow,
    RoleDefinitionRow,
    TenantRow,
    Transaction,
    VaultRow,
    VersionRow,
)
from coffer.storage.rows import (
    Row,
    credential_row,
    issuer_row,
    object_row,
    principal_row,
    role_assignment_row,
    role_definition_row,
    row_values,
    vault_row,
    version_row,
)

# The columns of a VersionRow (the table's name_key is left out).
# The columns rows.py unpacks, in its order (by position: cheaper than by name)
VERSION_COLUMNS = (
    "vault, kind, name, version, created, updated, enabled, nbf, exp, content_type, tags, "
    "managed, kid, payload, seq, extra"
)
OBJECT_COLUMNS = "vault, kind, name, latest, deleted, purge_at, data"
VAULT_COLUMNS = (
    "name, tenant_id, created, updated, retention_days, purge_protection, sku, rbac_authorization, wrapped_key, "
    "key_term, access_policies"
)
_OBJECT_WIDTH = len(OBJECT_COLUMNS.split(","))
# An object and one version (the given one, else its latest); the version's columns aliased, as PostgreSQL's dict rows
# would otherwise merge the names both tables have
_OBJECT_WITH_VERSION = (
    "SELECT "  # noqa: S608
    + ", ".join(f"o.{c.strip()}" for c in OBJECT_COLUMNS.split(","))
    + ", "
    + ", ".join(f"v.{c.strip()} AS v_{c.strip()}" for c in VERSION_COLUMNS.split(","))
    + " FROM objects o LEFT JOIN versions v ON v.vault = o.vault AND v.kind = o.kind AND v.name_key = o.name_key "
    "AND v.version = COALESCE(CAST(? AS TEXT), o.latest) WHERE o.vault = ? AND o.kind = ? AND o.name_key = ?"
)

# How many entries of the change feed a backend keeps (older ones are deleted as new ones are added).
CHANGES_KEPT = 10_000


class SqlTransaction(Transaction):
    """A Transaction over one SQL connection, with the statements the backends share."""

    # The operator of a LIKE that ignores ASCII case (SQLite's LIKE does, PostgreSQL needs ILIKE): vault_delete must
    # delete the same role assignments on both backends.
    case_insensitive_like: ClassVar[str]

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        self._run("SAVEPOINT part")
        callbacks = len(self.committed_callbacks)
        try:
            yield
        except BaseException:
            self._run("ROLLBACK TO SAVEPOINT part")
            self._run("RELEASE SAVEPOINT part")
            del self.committed_callbacks[callbacks:]
            raise
        self._run("RELEASE SAVEPOINT part")

    # --- what each backend supplies -----------------------------------------------------------------
    @abstractmethod
    def _one(self, query: str, *args: Any) -> Row | None:
        """The first row of a `?`-marked query, or None."""

    @abstractmethod
    def _all(self, query: str, *args: Any) -> Sequence[Row]:
        """Every row of a `?`-marked query."""

    @abstractmethod
    def _run(self, query: str, *args: Any) -> None:
        """Run a `?`-marked statement."""

    @abstractmethod
    def _json(self, value: Any) -> bytes | str:
        """A value as the backend stores it in a JSON column."""

    @abstractmethod
    def _wanted_versions(self, vault_key: str, kind: str, wanted: list[tuple[str, str]]) -> Sequence[Row]:
        """The VERSION_COLUMNS of the wanted (name_key, version) pairs of a vault's objects of one kind, in one
        statement."""

    # --- the statements both backends run -----------------------------------------------------------
    # meta
    def meta_get(self, key: str) -> bytes | None:
        row = self._one("SELECT value FROM meta WHERE key = ?", key)
        return bytes(row["value"]) if row else None

    def meta_put(self, key: str, value: bytes, *, touch: bool = True) -> None:
        if touch:
            self.touch(META)
        self._run(
            "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            key,
            value,
        )

    def meta_list(self, prefix: str, limit: int) -> list[tuple[str, bytes]]:
        # a key range rather than LIKE (whose wildcards the prefix might hold); both backends order keys bytewise
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        rows = self._all(
            "SELECT key, value FROM meta WHERE key >= ? AND key < ? ORDER BY key LIMIT ?", prefix, end, limit
        )
        return [(str(row["key"]), bytes(row["value"])) for row in rows]

    def meta_delete(self, key: str) -> None:
        self._run("DELETE FROM meta WHERE key = ?", key)

    # vaults
    def vault_get(self, name: str) -> VaultRow | None:
        row = self._one(f"SELECT {VAULT_COLUMNS} FROM vaults WHERE name = ?", name.lower())  # noqa: S608
        return vault_row(row) if row else None

    def vault_list(self) -> list[VaultRow]:
        return [vault_row(r) for r in self._all(f"SELECT {VAULT_COLUMNS} FROM vaults ORDER BY name")]  # noqa: S608

    def vault_put(self, row: VaultRow) -> None:
        self.touch(VAULT)
        self.touch(ACCESS)
        self._run(
            "INSERT INTO vaults(name, tenant_id, created, updated, retention_days, purge_protection, sku, "
            "rbac_authorization, wrapped_key, key_term, access_policies) VALUES (?,?,?,?,?,?,?,?,?,?,?) "
            "ON CONFLICT(name) DO UPDATE SET tenant_id=excluded.tenant_id, updated=excluded.updated, "
            "retention_days=excluded.retention_days, purge_protection=excluded.purge_protection, "
            "sku=excluded.sku, rbac_authorization=excluded.rbac_authorization, "
            "wrapped_key=excluded.wrapped_key, key_term=excluded.key_term, access_policies=excluded.access_policies",
            row.name.lower(),
            row.tenant_id,
            row.created,
            row.updated,
            row.retention_days,
            int(row.purge_protection),
            row.sku,
            int(row.rbac_authorization),
            row.wrapped_key,
            row.key_term,
            self._json(row.access_policies) if row.access_policies else None,
        )

    def vault_delete(self, name: str) -> None:
        self.touch(VAULT)
        self.touch(ACCESS)
        key = name.lower()
        self._run(
            f"DELETE FROM role_assignments WHERE scope = ? OR scope {self.case_insensitive_like} ?",  # noqa: S608
            f"/vaults/{key}",
            f"/vaults/{key}/%",
        )
        self._run("DELETE FROM role_definitions WHERE scope = ?", f"/vaults/{key}")
        self._run("DELETE FROM versions WHERE vault = ?", key)
        self._run("DELETE FROM objects WHERE vault = ?", key)
        self._run("DELETE FROM vaults WHERE name = ?", key)

    # principals
    def principal_get(self, object_id: str) -> PrincipalRow | None:
        row = self._one("SELECT * FROM principals WHERE object_id = ?", object_id)
        return principal_row(row) if row else None

    def principal_by_client_id(self, tenant_id: str, client_id: str) -> PrincipalRow | None:
        row = self._one("SELECT * FROM principals WHERE tenant_id = ? AND client_id = ?", tenant_id, client_id)
        return principal_row(row) if row else None

    def principal_list(self, tenant_id: str | None = None) -> list[PrincipalRow]:
        if tenant_id is None:
            rows = self._all("SELECT * FROM principals ORDER BY display_name, object_id")
        else:
            rows = self._all("SELECT * FROM principals WHERE tenant_id = ? ORDER BY display_name, object_id", tenant_id)
        return [principal_row(r) for r in rows]

    def principal_put(self, row: PrincipalRow) -> None:
        self.touch(IDENTITY)
        self._run(
            "INSERT INTO principals(object_id, tenant_id, client_id, kind, display_name, created) "
            "VALUES (?,?,?,?,?,?) ON CONFLICT(object_id) DO UPDATE SET display_name=excluded.display_name",
            row.object_id,
            row.tenant_id,
            row.client_id,
            row.kind,
            row.display_name,
            row.created,
        )

    def principal_delete(self, object_id: str) -> None:
        self.touch(IDENTITY)
        self._run("DELETE FROM credentials WHERE object_id = ?", object_id)
        self._run("DELETE FROM principals WHERE object_id = ?", object_id)

    def credential_get(self, credential_id: str) -> CredentialRow | None:
        row = self._one("SELECT * FROM credentials WHERE id = ?", credential_id)
        return credential_row(row) if row else None

    def credential_list(self, object_id: str) -> list[CredentialRow]:
        rows = self._all("SELECT * FROM credentials WHERE object_id = ? ORDER BY created", object_id)
        return [credential_row(r) for r in rows]

    def credential_by_lookup(self, lookup: str) -> list[CredentialRow]:
        return [credential_row(r) for r in self._all("SELECT * FROM credentials WHERE lookup = ?", lookup)]

    def credential_all(self) -> list[CredentialRow]:
        return [credential_row(r) for r in self._all("SELECT * FROM credentials")]

    def credential_put(self, row: CredentialRow) -> None:
        self.touch(IDENTITY)
        self._run(
            "INSERT INTO credentials(id, object_id, kind, secret_hash, created, expires, lookup, data) "
            "VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET expires=excluded.expires, data=excluded.data",
            row.id,
            row.object_id,
            row.kind,
            row.secret_hash,
            row.created,
            row.expires,
            row.lookup,
            self._json(row.data) if row.data else None,
        )

    def credential_delete(self, credential_id: str) -> None:
        self.touch(IDENTITY)
        self._run("DELETE FROM credentials WHERE id = ?", credential_id)

    # authorization
    def role_definition_get(self, role_id: str) -> RoleDefinitionRow | None:
        row = self._one("SELECT * FROM role_definitions WHERE id = ?", role_id.lower())
        return role_definition_row(row) if row else None

    def role_definition_list(self) -> list[RoleDefinitionRow]:
        return [role_definition_row(r) for r in self._all("SELECT * FROM role_definitions ORDER BY role_name")]

    def role_definition_put(self, row: RoleDefinitionRow) -> None:
        self.touch(ACCESS)
        self._run(
            "INSERT INTO role_definitions(id, scope, role_name, description, permissions, assignable_scopes, "
            "created, updated) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET role_name=excluded.role_name, "
            "description=excluded.description, permissions=excluded.permissions, "
            "assignable_scopes=excluded.assignable_scopes, updated=excluded.updated",
            row.id.lower(),
            row.scope,
            row.role_name,
            row.description,
            self._json(row.permissions),
            self._json(row.assignable_scopes),
            row.created,
            row.updated,
        )

    def role_definition_delete(self, role_id: str) -> None:
        self.touch(ACCESS)
        self._run("DELETE FROM role_definitions WHERE id = ?", role_id.lower())

    def role_assignment_get(self, assignment_id: str) -> RoleAssignmentRow | None:
        row = self._one("SELECT * FROM role_assignments WHERE id = ?", assignment_id.lower())
        return role_assignment_row(row) if row else None

    def role_assignment_list(self) -> list[RoleAssignmentRow]:
        return [role_assignment_row(r) for r in self._all("SELECT * FROM role_assignments ORDER BY scope, id")]

    def role_assignment_put(self, row: RoleAssignmentRow) -> None:
        self.touch(ACCESS)
        self._run(
            "INSERT INTO role_assignments(id, scope, role_definition_id, principal_id, created) VALUES (?,?,?,?,?)",
            row.id.lower(),
            row.scope,
            row.role_definition_id.lower(),
            row.principal_id,
            row.created,
        )

    def role_assignment_delete(self, assignment_id: str) -> None:
        self.touch(ACCESS)
        self._run("DELETE FROM role_assignments WHERE id = ?", assignment_id.lower())

    # tenants and issuers
    def tenant_get(self, tenant_id: str) -> TenantRow | None:
        row = self._one("SELECT * FROM tenants WHERE id = ?", tenant_id)
        return TenantRow(row["id"], row["display_name"], row["created"]) if row else None

    def tenant_list(self) -> list[TenantRow]:
        return [TenantRow(r["id"], r["display_name"], r["created"]) for r in self._all("SELECT * FROM tenants")]

    def tenant_put(self, row: TenantRow) -> None:
        self.touch(IDENTITY)
        self._run(
            "INSERT INTO tenants(id, display_name, created) VALUES (?,?,?) "
            "ON CONFLICT(id) DO UPDATE SET display_name=excluded.display_name",
            row.id,
            row.display_name,
            row.created,
        )

    def issuer_list(self, tenant_id: str | None = None) -> list[IssuerRow]:
        if tenant_id is None:
            return [issuer_row(r) for r in self._all("SELECT * FROM issuers ORDER BY tenant_id, issuer")]
        rows = self._all("SELECT * FROM issuers WHERE tenant_id = ? ORDER BY issuer", tenant_id)
        return [issuer_row(r) for r in rows]

    def issuer_put(self, row: IssuerRow) -> None:
        self.touch(IDENTITY)
        self._run(
            "INSERT INTO issuers(id, tenant_id, issuer, jwks, audience, created) VALUES (?,?,?,?,?,?) "
            "ON CONFLICT(id) DO UPDATE SET jwks=excluded.jwks, audience=excluded.audience",
            row.id,
            row.tenant_id,
            row.issuer,
            row.jwks,
            row.audience,
            row.created,
        )

    def issuer_delete(self, issuer_id: str) -> None:
        self.touch(IDENTITY)
        self._run("DELETE FROM issuers WHERE id = ?", issuer_id)

    # objects
    def object_get(self, vault: str, kind: str, name: str) -> ObjectRow | None:
        row = self._one(
            f"SELECT {OBJECT_COLUMNS} FROM objects WHERE vault = ? AND kind = ? AND name_key = ?",  # noqa: S608
            vault.lower(),
            kind,
            name.lower(),
        )
        return object_row(row) if row else None

    def object_put(self, row: ObjectRow) -> None:
        self._run(
            "INSERT INTO objects(vault, kind, name_key, name, latest, deleted, purge_at, data) "
            "VALUES (?,?,?,?,?,?,?,?) "
            "ON CONFLICT(vault, kind, name_key) DO UPDATE SET latest=excluded.latest, "
            "deleted=excluded.deleted, purge_at=excluded.purge_at, data=excluded.data",
            row.vault.lower(),
            row.kind,
            row.name.lower(),
            row.name,
            row.latest,
            row.deleted,
            row.purge_at,
            self._json(row.data) if row.data else None,
        )

    def object_purge(self, vault: str, kind: str, name: str) -> None:
        args = (vault.lower(), kind, name.lower())
        self._run("DELETE FROM versions WHERE vault = ? AND kind = ? AND name_key = ?", *args)
        self._run("DELETE FROM objects WHERE vault = ? AND kind = ? AND name_key = ?", *args)

    def object_list(self, vault: str, kind: str, *, deleted: bool, after: str | None, limit: int) -> list[ObjectRow]:
        condition = "deleted IS NOT NULL" if deleted else "deleted IS NULL"
        rows = self._all(
            f"SELECT {OBJECT_COLUMNS} FROM objects WHERE vault = ? AND kind = ? AND {condition} AND name_key > ? "  # noqa: S608
            "ORDER BY name_key LIMIT ?",
            vault.lower(),
            kind,
            after or "",
            limit,
        )
        return [object_row(r) for r in rows]

    def objects_due_for_purge(self, now: int, limit: int) -> list[ObjectRow]:
        rows = self._all(
            f"SELECT {OBJECT_COLUMNS} FROM objects WHERE purge_at IS NOT NULL AND purge_at <= ? "  # noqa: S608
            "ORDER BY purge_at LIMIT ?",
            now,
            limit,
        )
        return [object_row(r) for r in rows]

    # versions
    def version_get(self, vault: str, kind: str, name: str, version: str) -> VersionRow | None:
        row = self._one(
            f"SELECT {VERSION_COLUMNS} FROM versions "  # noqa: S608
            "WHERE vault = ? AND kind = ? AND name_key = ? AND version = ?",
            vault.lower(),
            kind,
            name.lower(),
            version.lower(),
        )
        return version_row(row) if row else None

    def object_with_version(
        self, vault: str, kind: str, name: str, version: str | None
    ) -> tuple[ObjectRow | None, VersionRow | None]:
        row = self._one(_OBJECT_WITH_VERSION, None if version is None else version.lower(), vault.lower(), kind,
                        name.lower())
        if row is None:
            return None, None
        values = tuple(row_values(row))
        obj, version_values = object_row(values[:_OBJECT_WIDTH]), values[_OBJECT_WIDTH:]
        return obj, version_row(version_values) if version_values[0] is not None else None

    def version_put(self, row: VersionRow) -> None:
        key = (row.vault.lower(), row.kind, row.name.lower())
        found = self._one(  # the version's seq if it exists, else the next of its object (one statement for both)
            "SELECT (SELECT seq FROM versions WHERE vault = ? AND kind = ? AND name_key = ? AND version = ?) AS known, "
            "(SELECT COALESCE(MAX(seq), 0) FROM versions WHERE vault = ? AND kind = ? AND name_key = ?) AS top",
            *key,
            row.version.lower(),
            *key,
        )
        assert found is not None  # a SELECT without FROM has its one row
        row.seq = found["known"] if found["known"] is not None else found["top"] + 1
        self._run(
            "INSERT INTO versions(vault, kind, name_key, name, version, created, updated, enabled, nbf, exp, "
            "content_type, tags, managed, kid, payload, seq, extra) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) "
            "ON CONFLICT(vault, kind, name_key, version) DO UPDATE SET updated=excluded.updated, "
            "enabled=excluded.enabled, nbf=excluded.nbf, exp=excluded.exp, content_type=excluded.content_type, "
            "tags=excluded.tags, managed=excluded.managed, kid=excluded.kid, payload=excluded.payload, "
            "extra=excluded.extra",
            *key,
            row.name,
            row.version.lower(),
            row.created,
            row.updated,
            int(row.enabled),
            row.nbf,
            row.exp,
            row.content_type,
            self._json(row.tags) if row.tags is not None else None,
            int(row.managed),
            row.kid,
            row.payload,
            row.seq,
            self._json(row.extra) if row.extra else None,
        )

    def version_list(self, vault: str, kind: str, name: str, *, after_seq: int | None, limit: int) -> list[VersionRow]:
        rows = self._all(
            f"SELECT {VERSION_COLUMNS} FROM versions "  # noqa: S608
            "WHERE vault = ? AND kind = ? AND name_key = ? AND seq > ? ORDER BY seq LIMIT ?",
            vault.lower(),
            kind,
            name.lower(),
            after_seq or 0,
            limit,
        )
        return [version_row(r) for r in rows]

    def latest_versions(self, vault: str, kind: str, objects: list[ObjectRow]) -> dict[str, VersionRow]:
        wanted = [(o.name.lower(), o.latest) for o in objects if o.latest]
        if not wanted:
            return {}
        return {r["name"].lower(): version_row(r) for r in self._wanted_versions(vault.lower(), kind, wanted)}
