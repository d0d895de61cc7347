"""Embedded SQLite storage: WAL journal, synchronous=FULL so a commit survives kill -9 and power loss."""

from __future__ import annotations

import fcntl
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from coffer.storage.base import (
    ACCESS,
    IDENTITY,
    META,
    TABLES,
    VAULT,
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
from coffer.storage.rows import (
    credential_row,
    issuer_row,
    object_row,
    principal_row,
    role_assignment_row,
    role_definition_row,
    vault_row,
    version_row,
)
from coffer.storage.schema import MIGRATIONS

_VERSION_COLUMNS = (
    "vault, kind, name, version, created, updated, enabled, nbf, exp, content_type, tags, "
    "managed, kid, payload, seq, extra"
)


class _SqliteTransaction(Transaction):
    def __init__(self, conn: sqlite3.Connection) -> None:
        super().__init__()
        self._c = conn

    def _one(self, sql: str, *args: Any) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._c.execute(sql, args).fetchone()
        return row

    def _all(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        return self._c.execute(sql, args).fetchall()

    # meta
    def meta_get(self, key: str) -> bytes | None:
        row = self._one("SELECT value FROM meta WHERE key = ?", key)
        return bytes(row["value"]) if row else None

    def meta_put(self, key: str, value: bytes) -> None:
        self.touch(META)
        self._c.execute(
            "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # vaults
    def vault_get(self, name: str) -> VaultRow | None:
        row = self._one("SELECT * FROM vaults WHERE name = ?", name.lower())
        return vault_row(row) if row else None

    def vault_list(self) -> list[VaultRow]:
        return [vault_row(r) for r in self._all("SELECT * FROM vaults ORDER BY name")]

    def vault_put(self, row: VaultRow) -> None:
        self.touch(VAULT)
        self.touch(ACCESS)
        self._c.execute(
            "INSERT INTO vaults(name, tenant_id, created, updated, retention_days, purge_protection, sku, "
            "rbac_authorization, wrapped_key, key_term, access_policies) VALUES (?,?,?,?,?,?,?,?,?,?,?) "
            "ON CONFLICT(name) DO UPDATE SET tenant_id=excluded.tenant_id, updated=excluded.updated, "
            "retention_days=excluded.retention_days, purge_protection=excluded.purge_protection, "
            "sku=excluded.sku, rbac_authorization=excluded.rbac_authorization, "
            "wrapped_key=excluded.wrapped_key, key_term=excluded.key_term, access_policies=excluded.access_policies",
            (
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
                orjson.dumps(row.access_policies) if row.access_policies else None,
            ),
        )

    def vault_delete(self, name: str) -> None:
        self.touch(VAULT)
        self.touch(ACCESS)
        key = name.lower()
        self._c.execute(
            "DELETE FROM role_assignments WHERE scope = ? OR scope LIKE ?", (f"/vaults/{key}", f"/vaults/{key}/%")
        )
        self._c.execute("DELETE FROM role_definitions WHERE scope = ?", (f"/vaults/{key}",))
        self._c.execute("DELETE FROM versions WHERE vault = ?", (key,))
        self._c.execute("DELETE FROM objects WHERE vault = ?", (key,))
        self._c.execute("DELETE FROM vaults WHERE name = ?", (key,))

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
        self._c.execute(
            "INSERT INTO principals(object_id, tenant_id, client_id, kind, display_name, created) "
            "VALUES (?,?,?,?,?,?) ON CONFLICT(object_id) DO UPDATE SET display_name=excluded.display_name",
            (row.object_id, row.tenant_id, row.client_id, row.kind, row.display_name, row.created),
        )

    def principal_delete(self, object_id: str) -> None:
        self.touch(IDENTITY)
        self._c.execute("DELETE FROM credentials WHERE object_id = ?", (object_id,))
        self._c.execute("DELETE FROM principals WHERE object_id = ?", (object_id,))

    def credential_get(self, credential_id: str) -> CredentialRow | None:
        row = self._one("SELECT * FROM credentials WHERE id = ?", credential_id)
        return credential_row(row) if row else None

    def credential_list(self, object_id: str) -> list[CredentialRow]:
        return [
            credential_row(r)
            for r in self._all("SELECT * FROM credentials WHERE object_id = ? ORDER BY created", object_id)
        ]

    def credential_by_lookup(self, lookup: str) -> list[CredentialRow]:
        return [credential_row(r) for r in self._all("SELECT * FROM credentials WHERE lookup = ?", lookup)]

    def credential_all(self) -> list[CredentialRow]:
        return [credential_row(r) for r in self._all("SELECT * FROM credentials")]

    def credential_put(self, row: CredentialRow) -> None:
        self.touch(IDENTITY)
        self._c.execute(
            "INSERT INTO credentials(id, object_id, kind, secret_hash, created, expires, lookup, data) "
            "VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET expires=excluded.expires, data=excluded.data",
            (
                row.id,
                row.object_id,
                row.kind,
                row.secret_hash,
                row.created,
                row.expires,
                row.lookup,
                orjson.dumps(row.data) if row.data else None,
            ),
        )

    # authorization
    def role_definition_get(self, role_id: str) -> RoleDefinitionRow | None:
        row = self._one("SELECT * FROM role_definitions WHERE id = ?", role_id.lower())
        return role_definition_row(row) if row else None

    def role_definition_list(self) -> list[RoleDefinitionRow]:
        return [role_definition_row(r) for r in self._all("SELECT * FROM role_definitions ORDER BY role_name")]

    def role_definition_put(self, row: RoleDefinitionRow) -> None:
        self.touch(ACCESS)
        self._c.execute(
            "INSERT INTO role_definitions(id, scope, role_name, description, permissions, assignable_scopes, "
            "created, updated) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET role_name=excluded.role_name, "
            "description=excluded.description, permissions=excluded.permissions, "
            "assignable_scopes=excluded.assignable_scopes, updated=excluded.updated",
            (
                row.id.lower(),
                row.scope,
                row.role_name,
                row.description,
                orjson.dumps(row.permissions),
                orjson.dumps(row.assignable_scopes),
                row.created,
                row.updated,
            ),
        )

    def role_definition_delete(self, role_id: str) -> None:
        self.touch(ACCESS)
        self._c.execute("DELETE FROM role_definitions WHERE id = ?", (role_id.lower(),))

    def role_assignment_get(self, assignment_id: str) -> RoleAssignmentRow | None:
        row = self._one("SELECT * FROM role_assignments WHERE id = ?", assignment_id.lower())
        return role_assignment_row(row) if row else None

    def role_assignment_list(self) -> list[RoleAssignmentRow]:
        return [role_assignment_row(r) for r in self._all("SELECT * FROM role_assignments ORDER BY scope, id")]

    def role_assignment_put(self, row: RoleAssignmentRow) -> None:
        self.touch(ACCESS)
        self._c.execute(
            "INSERT INTO role_assignments(id, scope, role_definition_id, principal_id, created) VALUES (?,?,?,?,?)",
            (row.id.lower(), row.scope, row.role_definition_id.lower(), row.principal_id, row.created),
        )

    def role_assignment_delete(self, assignment_id: str) -> None:
        self.touch(ACCESS)
        self._c.execute("DELETE FROM role_assignments WHERE id = ?", (assignment_id.lower(),))

    # tenants and issuers
    def tenant_get(self, tenant_id: str) -> TenantRow | None:
        row = self._one("SELECT * FROM tenants WHERE id = ?", tenant_id)
        return TenantRow(row["id"], row["display_name"], row["created"]) if row else None

    def tenant_list(self) -> list[TenantRow]:
        return [TenantRow(r["id"], r["display_name"], r["created"]) for r in self._all("SELECT * FROM tenants")]

    def tenant_put(self, row: TenantRow) -> None:
        self.touch(IDENTITY)
        self._c.execute(
            "INSERT INTO tenants(id, display_name, created) VALUES (?,?,?) "
            "ON CONFLICT(id) DO UPDATE SET display_name=excluded.display_name",
            (row.id, row.display_name, row.created),
        )

    def issuer_list(self, tenant_id: str | None = None) -> list[IssuerRow]:
        if tenant_id is None:
            return [issuer_row(r) for r in self._all("SELECT * FROM issuers ORDER BY tenant_id, issuer")]
        return [
            issuer_row(r) for r in self._all("SELECT * FROM issuers WHERE tenant_id = ? ORDER BY issuer", tenant_id)
        ]

    def issuer_put(self, row: IssuerRow) -> None:
        self.touch(IDENTITY)
        self._c.execute(
            "INSERT INTO issuers(id, tenant_id, issuer, jwks, audience, created) VALUES (?,?,?,?,?,?) "
            "ON CONFLICT(id) DO UPDATE SET jwks=excluded.jwks, audience=excluded.audience",
            (row.id, row.tenant_id, row.issuer, row.jwks, row.audience, row.created),
        )

    def issuer_delete(self, issuer_id: str) -> None:
        self.touch(IDENTITY)
        self._c.execute("DELETE FROM issuers WHERE id = ?", (issuer_id,))

    def credential_delete(self, credential_id: str) -> None:
        self.touch(IDENTITY)
        self._c.execute("DELETE FROM credentials WHERE id = ?", (credential_id,))

    # objects
    def object_get(self, vault: str, kind: str, name: str) -> ObjectRow | None:
        row = self._one(
            "SELECT * FROM objects WHERE vault = ? AND kind = ? AND name_key = ?", vault.lower(), kind, name.lower()
        )
        return object_row(row) if row else None

    def object_put(self, row: ObjectRow) -> None:
        self._c.execute(
            "INSERT INTO objects(vault, kind, name_key, name, latest, deleted, purge_at, data) "
            "VALUES (?,?,?,?,?,?,?,?) "
            "ON CONFLICT(vault, kind, name_key) DO UPDATE SET latest=excluded.latest, "
            "deleted=excluded.deleted, purge_at=excluded.purge_at, data=excluded.data",
            (
                row.vault.lower(),
                row.kind,
                row.name.lower(),
                row.name,
                row.latest,
                row.deleted,
                row.purge_at,
                orjson.dumps(row.data) if row.data else None,
            ),
        )

    def object_purge(self, vault: str, kind: str, name: str) -> None:
        args = (vault.lower(), kind, name.lower())
        self._c.execute("DELETE FROM versions WHERE vault = ? AND kind = ? AND name_key = ?", args)
        self._c.execute("DELETE FROM objects WHERE vault = ? AND kind = ? AND name_key = ?", args)

    def object_list(self, vault: str, kind: str, *, deleted: bool, after: str | None, limit: int) -> list[ObjectRow]:
        condition = "deleted IS NOT NULL" if deleted else "deleted IS NULL"
        rows = self._all(
            f"SELECT * FROM objects WHERE vault = ? AND kind = ? AND {condition} AND name_key > ? "  # noqa: S608
            "ORDER BY name_key LIMIT ?",
            vault.lower(),
            kind,
            after or "",
            limit,
        )
        return [object_row(r) for r in rows]

    def objects_due_for_purge(self, now: int, limit: int) -> list[ObjectRow]:
        rows = self._all(
            "SELECT * FROM objects WHERE purge_at IS NOT NULL AND purge_at <= ? ORDER BY purge_at LIMIT ?", now, limit
        )
        return [object_row(r) for r in rows]

    # versions
    def version_get(self, vault: str, kind: str, name: str, version: str) -> VersionRow | None:
        row = self._one(
            f"SELECT {_VERSION_COLUMNS} FROM versions "  # noqa: S608
            "WHERE vault = ? AND kind = ? AND name_key = ? AND version = ?",
            vault.lower(),
            kind,
            name.lower(),
            version.lower(),
        )
        return version_row(row) if row else None

    def version_put(self, row: VersionRow) -> None:
        key = (row.vault.lower(), row.kind, row.name.lower())
        existing = self._one(
            "SELECT seq FROM versions WHERE vault = ? AND kind = ? AND name_key = ? AND version = ?",
            *key,
            row.version.lower(),
        )
        if existing is None:
            top = self._one(
                "SELECT COALESCE(MAX(seq), 0) AS top FROM versions WHERE vault = ? AND kind = ? AND name_key = ?", *key
            )
            row.seq = (top["top"] if top else 0) + 1
        else:
            row.seq = existing["seq"]
        self._c.execute(
            "INSERT INTO versions(vault, kind, name_key, name, version, created, updated, enabled, nbf, exp, "
            "content_type, tags, managed, kid, payload, seq, extra) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) "
            "ON CONFLICT(vault, kind, name_key, version) DO UPDATE SET updated=excluded.updated, "
            "enabled=excluded.enabled, nbf=excluded.nbf, exp=excluded.exp, content_type=excluded.content_type, "
            "tags=excluded.tags, managed=excluded.managed, kid=excluded.kid, payload=excluded.payload, "
            "extra=excluded.extra",
            (
                *key,
                row.name,
                row.version.lower(),
                row.created,
                row.updated,
                int(row.enabled),
                row.nbf,
                row.exp,
                row.content_type,
                orjson.dumps(row.tags) if row.tags is not None else None,
                int(row.managed),
                row.kid,
                row.payload,
                row.seq,
                orjson.dumps(row.extra) if row.extra else None,
            ),
        )

    def version_list(self, vault: str, kind: str, name: str, *, after_seq: int | None, limit: int) -> list[VersionRow]:
        rows = self._all(
            f"SELECT {_VERSION_COLUMNS} FROM versions "  # noqa: S608
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
        # a join on the wanted (name, version) pairs: one primary-key lookup each, whatever the vault's size
        values = ", ".join(["(?, ?)"] * len(wanted))
        columns = ", ".join(f"v.{c.strip()}" for c in _VERSION_COLUMNS.split(","))
        args: list[Any] = [value for pair in wanted for value in pair]
        rows = self._all(
            f"WITH wanted(name_key, version) AS (VALUES {values}) "  # noqa: S608
            f"SELECT {columns} FROM wanted CROSS JOIN versions v "
            "ON v.vault = ? AND v.kind = ? AND v.name_key = wanted.name_key AND v.version = wanted.version",
            *args,
            vault.lower(),
            kind,
        )
        return {r["name"].lower(): version_row(r) for r in rows}


_CHANGES_KEPT = 10_000
_JSON_COLUMNS = {
    ("vaults", "access_policies"),
    ("credentials", "data"),
    ("role_definitions", "permissions"),
    ("role_definitions", "assignable_scopes"),
    ("objects", "data"),
    ("versions", "tags"),
    ("versions", "extra"),
}


def _neutral(table: str, column: str, value: Any) -> Any:
    """A column value as export_table promises it: JSON columns as text (some were written as BLOBs)."""
    if isinstance(value, memoryview):
        value = bytes(value)
    if isinstance(value, bytes) and (table, column) in _JSON_COLUMNS:
        return value.decode("utf-8")
    return value


def _record_changes(conn: sqlite3.Connection, topics: set[str]) -> None:
    """Append the transaction's change topics to the feed (same transaction), keeping the newest entries."""
    if not topics:
        return
    at = int(time.time())
    conn.executemany("INSERT INTO changes(topic, at) VALUES (?, ?)", [(t, at) for t in sorted(topics)])
    conn.execute("DELETE FROM changes WHERE seq <= (SELECT max(seq) FROM changes) - ?", (_CHANGES_KEPT,))


class SqliteStorage(Storage):
    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._leader_file: BinaryIO | None = None
        self._write_lock = threading.RLock()

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def migrate(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            current = conn.execute("PRAGMA user_version").fetchone()[0]
            for number, script in enumerate(MIGRATIONS, start=1):
                if number > current:
                    for statement in script.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return len(MIGRATIONS)

    @contextmanager
    def read(self) -> Iterator[Transaction]:
        conn = self._connection()
        try:
            conn.execute("BEGIN")
        except sqlite3.Error as exc:
            raise StorageError(str(exc)) from exc
        try:
            yield _SqliteTransaction(conn)
        except sqlite3.Error as exc:
            raise StorageError(str(exc)) from exc
        finally:
            conn.execute("ROLLBACK")

    @contextmanager
    def write(self) -> Iterator[Transaction]:
        # One writer at a time in this process: threads queue on a lock instead of sleeping in SQLite's busy
        # handler (which backs off up to 100 ms); other processes still wait through busy_timeout.
        with self._write_lock:
            yield from self._write()

    def _write(self) -> Iterator[Transaction]:
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StorageError(str(exc)) from exc
        tx = _SqliteTransaction(conn)
        try:
            yield tx
            _record_changes(conn, tx.touched)
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK")
            raise StorageError(str(exc)) from exc
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StorageError(str(exc)) from exc

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                with suppress(sqlite3.Error):
                    conn.close()
            self._connections.clear()
            if self._leader_file is not None:
                self._leader_file.close()
                self._leader_file = None
        self._local = threading.local()

    def integrity_check(self) -> list[str]:
        rows = self._connection().execute("PRAGMA integrity_check").fetchall()
        return [r[0] for r in rows if r[0] != "ok"]

    def files(self) -> Iterator[str]:
        for suffix in ("", "-wal", "-shm"):
            yield str(self.path) + suffix

    def export_table(self, table: str) -> Iterator[dict[str, Any]]:
        if table not in TABLES:
            raise ValueError(table)
        conn = self._connection()
        info = [r for r in conn.execute(f"PRAGMA table_info({table})") if r["pk"]]
        keys = [r["name"] for r in sorted(info, key=lambda r: r["pk"])]
        for row in conn.execute(f"SELECT * FROM {table} ORDER BY {', '.join(keys)}"):  # noqa: S608
            yield {k: _neutral(table, k, v) for k, v in dict(row).items()}

    def import_table(self, table: str, rows: Iterable[dict[str, Any]]) -> int:
        if table not in TABLES:
            raise ValueError(table)
        count = 0
        with self.write():
            conn = self._connection()
            for row in rows:
                columns = ", ".join(row)
                marks = ", ".join("?" for _ in row)
                conn.execute(f"INSERT INTO {table} ({columns}) VALUES ({marks})", tuple(row.values()))  # noqa: S608
                count += 1
        return count

    def changes_since(self, seq: int | None) -> tuple[int, set[str]]:
        conn = self._connection()
        if seq is None:
            return int(conn.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()[0]), set()
        rows = conn.execute("SELECT seq, topic FROM changes WHERE seq > ?", (seq,)).fetchall()
        return max((r["seq"] for r in rows), default=seq), {r["topic"] for r in rows}

    def hold_leadership(self) -> bool:
        """An exclusive lock on a file beside the database: the kernel releases it when the process dies."""
        if self._leader_file is None:
            handle = open(str(self.path) + ".leader", "a+b")  # noqa: SIM115 - held open while this process leads
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                return False
            self._leader_file = handle
        return True
