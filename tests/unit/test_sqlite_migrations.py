"""Upgrading an existing SQLite database: every migration after the first keeps the data."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson

from coffer.storage.base import TenantRow
from coffer.storage.schema import MIGRATIONS
from coffer.storage.sqlite import SqliteStorage


def database_at_schema_1(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in MIGRATIONS[0].split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO meta(key, value) VALUES (?, ?)",
                 ("tenant:t-1", orjson.dumps({"displayName": "Default", "created": 111})))
    conn.execute("INSERT INTO meta(key, value) VALUES (?, ?)", ("seal-config", b'{"shares":1,"threshold":1}'))
    conn.execute("INSERT INTO principals VALUES ('o1', 't-1', 'c1', 'application', 'admin', 5)")
    conn.execute("INSERT INTO credentials VALUES ('k1', 'o1', 'clientSecret', 'hash', 6, NULL)")
    conn.close()


def test_upgrade_from_schema_1_keeps_tenants_and_credentials(tmp_path: Path) -> None:
    path = tmp_path / "coffer.db"
    database_at_schema_1(path)
    storage = SqliteStorage(path)
    try:
        assert storage.migrate() == len(MIGRATIONS)
        assert storage.migrate() == len(MIGRATIONS)  # idempotent
        with storage.read() as tx:
            assert tx.tenant_get("t-1") == TenantRow("t-1", "Default", 111)
            assert tx.meta_get("tenant:t-1") is None  # moved, not copied
            assert tx.meta_get("seal-config") == b'{"shares":1,"threshold":1}'
            principal = tx.principal_by_client_id("t-1", "c1")
            assert principal is not None and principal.object_id == "o1"
            credential = tx.credential_get("k1")
            assert credential is not None
            assert (credential.secret_hash, credential.lookup, credential.data) == ("hash", None, {})
        assert storage.integrity_check() == []
    finally:
        storage.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    conn.close()
