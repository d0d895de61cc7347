"""Conformance suite for the `Storage` interface (coffer.storage.base).

Every backend must pass it unchanged. To add one, add a line to BACKENDS: a function that, given the test's
request and private directory, returns a factory of storage objects; every object the factory makes must reach the
same store (the suite uses that to reopen a store, and to run two processes' worth of instances on it).
SQLite keeps its file in the test's directory; PostgreSQL gets a fresh database of the session's throwaway server
(tests/support/postgres.py) per test.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from coffer.storage import (
    CredentialRow,
    ObjectRow,
    PrincipalRow,
    RoleAssignmentRow,
    RoleDefinitionRow,
    Storage,
    StorageError,
    VaultRow,
    VersionRow,
)
from coffer.storage.base import META, TABLES, IssuerRow, TenantRow
from coffer.storage.postgres import PostgresStorage
from coffer.storage.sqlite import SqliteStorage

Factory = Callable[[], Storage]


def sqlite_store(request: pytest.FixtureRequest, directory: Path) -> Factory:
    return lambda: SqliteStorage(directory / "db")


def postgres_store(request: pytest.FixtureRequest, directory: Path) -> Factory:
    dsn = request.getfixturevalue("pg_dsn")
    return lambda: PostgresStorage(dsn)


BACKENDS: dict[str, Callable[[pytest.FixtureRequest, Path], Factory]] = {
    "sqlite": sqlite_store,
    "postgres": postgres_store,
}


@pytest.fixture(scope="module")
def pg_module_database(postgres_server: Any) -> str:
    return str(postgres_server.new_database())


@pytest.fixture()
def pg_dsn(pg_module_database: str) -> str:
    """An empty database for this test: the module's, emptied (cheaper than CREATE DATABASE per test)."""
    import psycopg

    with psycopg.connect(pg_module_database, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    return pg_module_database


@pytest.fixture(params=sorted(BACKENDS))
def open_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    """Opens (and migrates) the parametrised backend on this test's store; closes all at teardown."""
    opened: list[Storage] = []
    make = BACKENDS[request.param](request, tmp_path)

    def factory() -> Storage:
        storage = make()
        storage.migrate()
        opened.append(storage)
        return storage

    yield factory
    for storage in opened:
        storage.close()


@pytest.fixture()
def backend(open_backend: Factory) -> Storage:
    return open_backend()


# --- helpers ------------------------------------------------------------------------------------


def vault_row(name: str = "vault1", **kw: object) -> VaultRow:
    values: dict[str, object] = {"tenant_id": "tenant-1", "created": 100, "updated": 100,
                                 "wrapped_key": b"\x01sealed-key"}
    values.update(kw)
    return VaultRow(name=name, **values)  # type: ignore[arg-type]


def version_row(name: str, version: str, *, vault: str = "vault1", kind: str = "secret",
                **kw: object) -> VersionRow:
    values: dict[str, object] = {"created": 1000, "updated": 1000, "payload": b"\x01payload-" + version.encode()}
    values.update(kw)
    return VersionRow(vault=vault, kind=kind, name=name, version=version, **values)  # type: ignore[arg-type]


def put_object(storage: Storage, name: str, *, vault: str = "vault1", kind: str = "secret",
               versions: tuple[str, ...] = ("v1",), deleted: int | None = None,
               purge_at: int | None = None) -> None:
    with storage.write() as tx:
        for version in versions:
            tx.version_put(version_row(name, version, vault=vault, kind=kind))
        tx.object_put(ObjectRow(vault=vault, kind=kind, name=name, latest=versions[-1] if versions else None,
                                deleted=deleted, purge_at=purge_at))


def all_objects(storage: Storage, vault: str = "vault1", kind: str = "secret", *,
                deleted: bool = False) -> list[str]:
    with storage.read() as tx:
        return [o.name for o in tx.object_list(vault, kind, deleted=deleted, after=None, limit=1000)]


# --- meta ---------------------------------------------------------------------------------------


def test_meta_get_put_overwrite(backend: Storage) -> None:
    with backend.read() as tx:
        assert tx.meta_get("seal-config") is None
    binary = bytes(range(256))
    with backend.write() as tx:
        tx.meta_put("seal-config", b"one")
        tx.meta_put("blob", binary)
        assert tx.meta_get("seal-config") == b"one"  # own writes are visible inside the transaction
    with backend.write() as tx:
        tx.meta_put("seal-config", b"two")
    with backend.read() as tx:
        assert tx.meta_get("seal-config") == b"two"
        assert tx.meta_get("blob") == binary
        assert tx.meta_get("SEAL-CONFIG") is None  # meta keys are exact


def test_meta_list_by_prefix_and_delete(backend: Storage) -> None:
    with backend.write() as tx:
        for key in ("queue:b", "queue:a", "queue;x", "queuf", "queue_", "other", "queue:%", "queue:c"):
            tx.meta_put(key, key.encode(), touch=False)
    with backend.read() as tx:
        # exactly the keys starting with the prefix, in key order; LIKE wildcards in the prefix are plain characters
        assert [k for k, _ in tx.meta_list("queue:", 10)] == ["queue:%", "queue:a", "queue:b", "queue:c"]
        assert tx.meta_list("queue:", 2) == [("queue:%", b"queue:%"), ("queue:a", b"queue:a")]
        assert tx.meta_list("queue_", 10) == [("queue_", b"queue_")]
        assert tx.meta_list("none:", 10) == []
    with backend.write() as tx:
        tx.meta_delete("queue:a")
        tx.meta_delete("queue:absent")  # nothing to delete is not an error
    with backend.read() as tx:
        assert [k for k, _ in tx.meta_list("queue:", 10)] == ["queue:%", "queue:b", "queue:c"]
        assert tx.meta_get("queue:a") is None


def test_meta_put_without_touch_is_not_a_change(backend: Storage) -> None:
    with backend.write() as tx:
        tx.meta_put("queue:1", b"x", touch=False)
        assert META not in tx.touched
        tx.meta_put("signing", b"y")
        assert META in tx.touched


def test_after_commit_callbacks_run_once_committed_and_only_then(backend: Storage) -> None:
    ran: list[str] = []

    def seen() -> None:  # what a callback sees: the transaction's writes, committed
        with backend.read() as tx:
            ran.append((tx.meta_get("cb") or b"").decode())

    with backend.write() as tx:
        tx.meta_put("cb", b"committed")
        tx.after_commit(seen)
        tx.after_commit(seen)  # registered twice, runs once
        assert ran == []
    assert ran == ["committed"]

    ran.clear()
    with pytest.raises(Boom), backend.write() as tx:
        tx.meta_put("cb", b"rolled back")
        tx.after_commit(seen)
        raise Boom()
    assert ran == []

    # a callback registered in a savepoint that is undone is dropped with it; the others run
    with backend.write() as tx:
        tx.after_commit(lambda: ran.append("outer"))
        with pytest.raises(Boom), tx.savepoint():
            tx.after_commit(lambda: ran.append("undone"))
            raise Boom()
        with tx.savepoint():
            tx.after_commit(lambda: ran.append("kept"))
    assert ran == ["outer", "kept"]

    # a failing callback neither undoes the commit nor stops the next one
    ran.clear()

    def fails() -> None:
        raise RuntimeError("after the commit")

    with backend.write() as tx:
        tx.meta_put("cb", b"stands")
        tx.after_commit(fails)
        tx.after_commit(seen)
    assert ran == ["stands"]


# --- vaults -------------------------------------------------------------------------------------


def test_vault_put_get_roundtrip_case_insensitive(backend: Storage) -> None:
    row = vault_row("MyVault", retention_days=7, purge_protection=True, sku="premium",
                    rbac_authorization=False, wrapped_key=b"\x00\xffkey", key_term=3)
    with backend.write() as tx:
        tx.vault_put(row)
    with backend.read() as tx:
        for spelling in ("myvault", "MYVAULT", "MyVault"):
            got = tx.vault_get(spelling)
            assert got is not None
            assert got.name == "myvault"
            assert (got.tenant_id, got.created, got.updated) == ("tenant-1", 100, 100)
            assert (got.retention_days, got.purge_protection, got.sku) == (7, True, "premium")
            assert got.rbac_authorization is False
            assert (got.wrapped_key, got.key_term) == (b"\x00\xffkey", 3)
        assert tx.vault_get("other") is None


def test_vault_put_updates_existing_and_list_is_ordered(backend: Storage) -> None:
    with backend.write() as tx:
        for name in ("charlie", "alpha", "Bravo"):
            tx.vault_put(vault_row(name))
    with backend.write() as tx:
        tx.vault_put(vault_row("alpha", updated=200, retention_days=30, purge_protection=True,
                               wrapped_key=b"new", key_term=2))
    with backend.read() as tx:
        assert [v.name for v in tx.vault_list()] == ["alpha", "bravo", "charlie"]
        alpha = tx.vault_get("alpha")
    assert alpha is not None
    assert (alpha.created, alpha.updated, alpha.retention_days, alpha.purge_protection) == (100, 200, 30, True)
    assert (alpha.wrapped_key, alpha.key_term) == (b"new", 2)


def test_vault_delete_cascades_to_objects_and_versions(backend: Storage) -> None:
    with backend.write() as tx:
        tx.vault_put(vault_row("vault1"))
        tx.vault_put(vault_row("vault2"))
    put_object(backend, "shared-name", vault="vault1", versions=("a1", "a2"))
    put_object(backend, "gone-too", vault="vault1", deleted=5, purge_at=10)
    put_object(backend, "shared-name", vault="vault2", versions=("b1",))
    with backend.write() as tx:
        tx.vault_delete("VAULT1")
    with backend.read() as tx:
        assert tx.vault_get("vault1") is None
        assert [v.name for v in tx.vault_list()] == ["vault2"]
        assert tx.object_get("vault1", "secret", "shared-name") is None
        assert tx.object_get("vault1", "secret", "gone-too") is None
        assert tx.version_get("vault1", "secret", "shared-name", "a1") is None
        assert tx.version_list("vault1", "secret", "shared-name", after_seq=None, limit=10) == []
        assert tx.objects_due_for_purge(10**10, 100) == []
        # the other vault is untouched
        assert tx.object_get("vault2", "secret", "shared-name") is not None
        assert tx.version_get("vault2", "secret", "shared-name", "b1") is not None


# --- tenants and trusted issuers ----------------------------------------------------------------


def test_tenant_put_get_list(backend: Storage) -> None:
    with backend.read() as tx:
        assert tx.tenant_get("t1") is None
        assert tx.tenant_list() == []
    with backend.write() as tx:
        tx.tenant_put(TenantRow("t2", "Second", 20))
        tx.tenant_put(TenantRow("t1", "First", 10))
    with backend.write() as tx:
        tx.tenant_put(TenantRow("t1", "Renamed", 99))  # a later put renames; `created` stays
    with backend.read() as tx:
        assert tx.tenant_get("t1") == TenantRow("t1", "Renamed", 10)
        assert tx.tenant_get("T1") is None  # tenant ids are exact
        assert sorted(tx.tenant_list(), key=lambda t: t.id) == [TenantRow("t1", "Renamed", 10),
                                                                TenantRow("t2", "Second", 20)]


def issuer(issuer_id: str, tenant: str, url: str, **kw: object) -> IssuerRow:
    values: dict[str, object] = {"jwks": "https://idp.example/keys", "audience": "api://coffer", "created": 5}
    values.update(kw)
    return IssuerRow(id=issuer_id, tenant_id=tenant, issuer=url, **values)  # type: ignore[arg-type]


def test_issuer_put_list_update_delete(backend: Storage) -> None:
    with backend.write() as tx:
        tx.tenant_put(TenantRow("t1", "One", 1))
        tx.tenant_put(TenantRow("t2", "Two", 1))
        tx.issuer_put(issuer("i3", "t2", "https://a.example"))
        tx.issuer_put(issuer("i2", "t1", "https://z.example", audience=None))
        tx.issuer_put(issuer("i1", "t1", "https://b.example", jwks='{"keys": []}'))
    with backend.read() as tx:
        assert [i.id for i in tx.issuer_list()] == ["i1", "i2", "i3"]  # by tenant, then issuer
        assert [i.id for i in tx.issuer_list("t1")] == ["i1", "i2"]
        assert tx.issuer_list("t9") == []
        assert tx.issuer_list("t1")[0] == issuer("i1", "t1", "https://b.example", jwks='{"keys": []}')
        assert tx.issuer_list("t1")[1].audience is None
    with backend.write() as tx:
        tx.issuer_put(issuer("i1", "t1", "https://b.example", jwks="/etc/keys.json", audience="aud2"))
    with backend.read() as tx:
        updated = tx.issuer_list("t1")[0]
        assert (updated.id, updated.jwks, updated.audience) == ("i1", "/etc/keys.json", "aud2")
        assert len(tx.issuer_list()) == 3
    with backend.write() as tx:
        tx.issuer_delete("i2")
        tx.issuer_delete("no-such-issuer")
    with backend.read() as tx:
        assert [i.id for i in tx.issuer_list()] == ["i1", "i3"]


def test_an_issuer_is_trusted_once_per_tenant(backend: Storage) -> None:
    with backend.write() as tx:
        tx.tenant_put(TenantRow("t1", "One", 1))
        tx.tenant_put(TenantRow("t2", "Two", 1))
        tx.issuer_put(issuer("i1", "t1", "https://idp.example"))
        tx.issuer_put(issuer("i2", "t2", "https://idp.example"))  # another tenant may trust it too
    with pytest.raises(StorageError), backend.write() as tx:
        tx.issuer_put(issuer("i3", "t1", "https://idp.example"))
    with backend.read() as tx:
        assert [i.id for i in tx.issuer_list()] == ["i1", "i2"]


# --- principals and credentials -----------------------------------------------------------------


def principal(object_id: str, tenant: str = "t1", client_id: str | None = None,
              display_name: str = "app", kind: str = "application") -> PrincipalRow:
    return PrincipalRow(object_id=object_id, tenant_id=tenant, client_id=client_id or "client-" + object_id,
                        kind=kind, display_name=display_name, created=50)


def test_principal_put_get_lookup_list(backend: Storage) -> None:
    with backend.write() as tx:
        tx.principal_put(principal("o1", "t1", "c1", "zeta"))
        tx.principal_put(principal("o2", "t1", "c2", "alpha", kind="managedIdentity"))
        tx.principal_put(principal("o3", "t2", "c1", "mid"))  # same client id, other tenant
        tx.principal_put(principal("o0", "t2", "c9", "mid"))
    with backend.read() as tx:
        got = tx.principal_get("o2")
        assert got == principal("o2", "t1", "c2", "alpha", kind="managedIdentity")
        assert tx.principal_get("nope") is None
        assert tx.principal_by_client_id("t1", "c1") == principal("o1", "t1", "c1", "zeta")
        assert tx.principal_by_client_id("t2", "c1") == principal("o3", "t2", "c1", "mid")
        assert tx.principal_by_client_id("t3", "c1") is None
        # ordered by display name, then object id
        assert [p.object_id for p in tx.principal_list()] == ["o2", "o0", "o3", "o1"]
        assert [p.object_id for p in tx.principal_list("t1")] == ["o2", "o1"]
        assert [p.object_id for p in tx.principal_list("t2")] == ["o0", "o3"]
        assert tx.principal_list("t-none") == []


def test_principal_put_again_updates_display_name(backend: Storage) -> None:
    with backend.write() as tx:
        tx.principal_put(principal("o1", display_name="old"))
    with backend.write() as tx:
        tx.principal_put(principal("o1", display_name="new"))
    with backend.read() as tx:
        got = tx.principal_get("o1")
        assert got is not None and got.display_name == "new"
        assert len(tx.principal_list()) == 1


def test_client_id_is_unique_within_a_tenant(backend: Storage) -> None:
    with backend.write() as tx:
        tx.principal_put(principal("o1", "t1", "c1"))
    with pytest.raises(StorageError), backend.write() as tx:
        tx.principal_put(principal("o2", "t1", "c1"))
    with backend.read() as tx:
        assert [p.object_id for p in tx.principal_list()] == ["o1"]


def test_credentials_put_get_list_delete(backend: Storage) -> None:
    with backend.write() as tx:
        tx.principal_put(principal("o1"))
        tx.principal_put(principal("o2"))
        tx.credential_put(CredentialRow(id="k2", object_id="o1", kind="clientSecret", secret_hash="h2",
                                        created=20, expires=99))
        tx.credential_put(CredentialRow(id="k1", object_id="o1", kind="identityEndpoint", secret_hash="h1",
                                        created=10))
        tx.credential_put(CredentialRow(id="k3", object_id="o2", kind="clientSecret", secret_hash="h3",
                                        created=5))
    with backend.read() as tx:
        assert tx.credential_get("k2") == CredentialRow(id="k2", object_id="o1", kind="clientSecret",
                                                        secret_hash="h2", created=20, expires=99)
        k1 = tx.credential_get("k1")
        assert k1 is not None and k1.expires is None
        assert tx.credential_get("nope") is None
        assert [c.id for c in tx.credential_list("o1")] == ["k1", "k2"]  # by creation time
        assert tx.credential_list("nobody") == []
    with backend.write() as tx:
        tx.credential_delete("k1")
    with backend.read() as tx:
        assert tx.credential_get("k1") is None
        assert [c.id for c in tx.credential_list("o1")] == ["k2"]


def test_credential_lookup_data_and_update(backend: Storage) -> None:
    cert = CredentialRow(id="c1", object_id="o1", kind="certificate", secret_hash="", created=1,
                         lookup="AB12THUMB", data={"pem": "-----BEGIN CERTIFICATE-----", "n": 2})
    federated = CredentialRow(id="c2", object_id="o2", kind="federated", secret_hash="", created=2,
                              lookup="https://issuer.example repo:org/app", data={"audiences": ["x"]})
    twin = CredentialRow(id="c3", object_id="o2", kind="certificate", secret_hash="", created=3, lookup="AB12THUMB")
    with backend.write() as tx:
        tx.principal_put(principal("o1"))
        tx.principal_put(principal("o2"))
        for row in (cert, federated, twin):
            tx.credential_put(row)
        tx.credential_put(CredentialRow(id="c4", object_id="o1", kind="clientSecret", secret_hash="h", created=4))
    with backend.read() as tx:
        assert tx.credential_get("c1") == cert
        assert tx.credential_get("c4") == CredentialRow(id="c4", object_id="o1", kind="clientSecret",
                                                        secret_hash="h", created=4, lookup=None, data={})
        assert sorted(c.id for c in tx.credential_by_lookup("AB12THUMB")) == ["c1", "c3"]
        assert [c.id for c in tx.credential_by_lookup("https://issuer.example repo:org/app")] == ["c2"]
        assert tx.credential_by_lookup("ab12thumb") == []  # lookups are exact
        assert tx.credential_by_lookup("none") == []
        assert sorted(c.id for c in tx.credential_all()) == ["c1", "c2", "c3", "c4"]
    with backend.write() as tx:  # putting an existing id updates its expiry and data
        tx.credential_put(CredentialRow(id="c1", object_id="o1", kind="certificate", secret_hash="", created=1,
                                        lookup="AB12THUMB", expires=500, data={"revoked": True}))
    with backend.read() as tx:
        got = tx.credential_get("c1")
        assert got is not None and (got.expires, got.data) == (500, {"revoked": True})
        assert len(tx.credential_all()) == 4
    with backend.write() as tx:
        tx.credential_delete("c3")
    with backend.read() as tx:
        assert [c.id for c in tx.credential_by_lookup("AB12THUMB")] == ["c1"]
        assert sorted(c.id for c in tx.credential_all()) == ["c1", "c2", "c4"]


def test_principal_delete_removes_its_credentials(backend: Storage) -> None:
    with backend.write() as tx:
        tx.principal_put(principal("o1"))
        tx.principal_put(principal("o2"))
        tx.credential_put(CredentialRow(id="k1", object_id="o1", kind="clientSecret", secret_hash="h",
                                        created=1))
        tx.credential_put(CredentialRow(id="k2", object_id="o2", kind="clientSecret", secret_hash="h",
                                        created=1))
    with backend.write() as tx:
        tx.principal_delete("o1")
    with backend.read() as tx:
        assert tx.principal_get("o1") is None
        assert tx.principal_by_client_id("t1", "client-o1") is None
        assert tx.credential_get("k1") is None
        assert tx.credential_list("o1") == []
        assert tx.credential_get("k2") is not None
        assert [c.id for c in tx.credential_all()] == ["k2"]


# --- objects ------------------------------------------------------------------------------------


def test_object_names_are_case_insensitive_and_keep_first_spelling(backend: Storage) -> None:
    with backend.write() as tx:
        tx.object_put(ObjectRow(vault="Vault1", kind="secret", name="DbPassword", latest="v1"))
    with backend.write() as tx:
        tx.object_put(ObjectRow(vault="vault1", kind="secret", name="DBPASSWORD", latest="v2"))
    with backend.read() as tx:
        for spelling in ("DbPassword", "dbpassword", "DBPASSWORD"):
            got = tx.object_get("VAULT1", "secret", spelling)
            assert got is not None
            assert got.name == "DbPassword"  # the first write's spelling
            assert got.latest == "v2"  # but the second write's values
            assert got.vault == "vault1"
        # kind and vault scope the name
        assert tx.object_get("vault1", "key", "DbPassword") is None
        assert tx.object_get("vault2", "secret", "DbPassword") is None
    assert all_objects(backend) == ["DbPassword"]


def test_object_put_updates_deleted_and_purge_at(backend: Storage) -> None:
    put_object(backend, "s1")
    with backend.write() as tx:
        tx.object_put(ObjectRow(vault="vault1", kind="secret", name="s1", latest="v1", deleted=500,
                                purge_at=900))
    with backend.read() as tx:
        assert tx.object_get("vault1", "secret", "s1") == ObjectRow(
            vault="vault1", kind="secret", name="s1", latest="v1", deleted=500, purge_at=900)
    with backend.write() as tx:  # recovered
        tx.object_put(ObjectRow(vault="vault1", kind="secret", name="s1", latest="v1"))
    with backend.read() as tx:
        got = tx.object_get("vault1", "secret", "s1")
        assert got is not None and got.deleted is None and got.purge_at is None


NAMES = ["b", "A1", "a-b", "ab", "a0", "Zed", "c-2", "C10", "aa", "z"]


def test_object_list_is_ordered_by_lower_name_and_pages_with_after(backend: Storage) -> None:
    for name in NAMES:
        put_object(backend, name)
    expected = sorted(NAMES, key=str.lower)  # byte order of lower-cased names
    assert all_objects(backend) == expected
    for limit in (1, 3, 4, len(NAMES)):
        seen: list[str] = []
        after: str | None = None
        for _ in range(len(NAMES) + 1):  # bounded: a backend that repeats `after` must not hang the suite
            with backend.read() as tx:
                page = tx.object_list("vault1", "secret", deleted=False, after=after, limit=limit)
            # pages are full until the last one (callers detect "more" by asking for one extra)
            assert len(page) == min(limit, len(expected) - len(seen)), (limit, after, page)
            if not page:
                break
            seen += [o.name for o in page]
            after = page[-1].name.lower()
        assert seen == expected, limit
    with backend.read() as tx:
        # `after` is exclusive, and need not be an existing name
        assert [o.name for o in tx.object_list("vault1", "secret", deleted=False, after="ab",
                                               limit=100)] == ["b", "c-2", "C10", "z", "Zed"]
        assert [o.name for o in tx.object_list("vault1", "secret", deleted=False, after="a1x",
                                               limit=2)] == ["aa", "ab"]
        assert tx.object_list("vault1", "secret", deleted=False, after="zz", limit=10) == []


def test_object_list_filters_deleted_vault_and_kind(backend: Storage) -> None:
    put_object(backend, "live1")
    put_object(backend, "Live2")
    put_object(backend, "dead1", deleted=10, purge_at=20)
    put_object(backend, "DEAD2", deleted=11, purge_at=21)
    put_object(backend, "other-vault", vault="vault2")
    put_object(backend, "a-key", kind="key")
    assert all_objects(backend) == ["live1", "Live2"]
    assert all_objects(backend, deleted=True) == ["dead1", "DEAD2"]
    assert all_objects(backend, "vault2") == ["other-vault"]
    assert all_objects(backend, kind="key") == ["a-key"]
    assert all_objects(backend, "VAULT1", kind="key") == ["a-key"]
    with backend.read() as tx:
        page = tx.object_list("vault1", "secret", deleted=True, after="dead1", limit=5)
        assert [(o.name, o.deleted, o.purge_at) for o in page] == [("DEAD2", 11, 21)]


def test_objects_due_for_purge(backend: Storage) -> None:
    put_object(backend, "late", deleted=1, purge_at=300)
    put_object(backend, "first", deleted=1, purge_at=100)
    put_object(backend, "second", vault="vault2", kind="key", deleted=1, purge_at=200)
    put_object(backend, "exactly-now", deleted=1, purge_at=250)
    put_object(backend, "live")
    with backend.read() as tx:
        assert tx.objects_due_for_purge(99, 10) == []
        due = tx.objects_due_for_purge(250, 10)
        assert [(o.vault, o.kind, o.name) for o in due] == [
            ("vault1", "secret", "first"), ("vault2", "key", "second"), ("vault1", "secret", "exactly-now")]
        assert [o.name for o in tx.objects_due_for_purge(10**10, 2)] == ["first", "second"]
        assert due[0].purge_at == 100 and due[0].deleted == 1


def test_object_purge_removes_object_and_all_its_versions(backend: Storage) -> None:
    put_object(backend, "Victim", versions=("v1", "v2", "v3"), deleted=1, purge_at=2)
    put_object(backend, "victim-neighbour", versions=("n1",))
    put_object(backend, "Victim", vault="vault2", versions=("w1",))
    put_object(backend, "Victim", kind="key", versions=("k1",))
    with backend.write() as tx:
        tx.object_purge("vault1", "secret", "VICTIM")
    with backend.read() as tx:
        assert tx.object_get("vault1", "secret", "victim") is None
        for version in ("v1", "v2", "v3"):
            assert tx.version_get("vault1", "secret", "victim", version) is None
        assert tx.version_list("vault1", "secret", "victim", after_seq=None, limit=10) == []
        assert tx.objects_due_for_purge(10**10, 10) == []
        assert tx.version_get("vault1", "secret", "victim-neighbour", "n1") is not None
        assert tx.version_get("vault2", "secret", "victim", "w1") is not None
        assert tx.version_get("vault1", "key", "victim", "k1") is not None
    # the name can be used afresh: seq starts again
    with backend.write() as tx:
        row = version_row("victim", "x1")
        tx.version_put(row)
    assert row.seq == 1


# --- versions -----------------------------------------------------------------------------------


def test_version_roundtrip_of_every_field(backend: Storage) -> None:
    payload = bytes(range(256)) * 3
    row = version_row("s1", "abc123", created=11, updated=12, enabled=False, nbf=13, exp=14,
                      content_type="text/plain", tags={"env": "prod", "empty": ""}, managed=True,
                      kid="https://v/keys/k/1", payload=payload, extra={"previousVersion": "p0", "n": 1})
    plain = version_row("s2", "def456")
    with backend.write() as tx:
        tx.version_put(row)
        tx.version_put(plain)
    with backend.read() as tx:
        got = tx.version_get("vault1", "secret", "s1", "abc123")
        assert got == VersionRow(vault="vault1", kind="secret", name="s1", version="abc123", created=11,
                                 updated=12, enabled=False, nbf=13, exp=14, content_type="text/plain",
                                 tags={"env": "prod", "empty": ""}, managed=True, kid="https://v/keys/k/1",
                                 payload=payload, seq=1, extra={"previousVersion": "p0", "n": 1})
        got_plain = tx.version_get("vault1", "secret", "s2", "def456")
        assert got_plain is not None
        assert (got_plain.enabled, got_plain.nbf, got_plain.exp, got_plain.content_type) == (True, None, None, None)
        assert (got_plain.tags, got_plain.managed, got_plain.kid, got_plain.extra) == (None, False, None, {})
        assert isinstance(got_plain.payload, bytes)


def test_version_lookup_is_case_insensitive(backend: Storage) -> None:
    with backend.write() as tx:
        tx.version_put(version_row("MySecret", "abcdef"))
    with backend.read() as tx:
        for name, version in (("mysecret", "abcdef"), ("MYSECRET", "ABCDEF"), ("MySecret", "AbCdEf")):
            got = tx.version_get("VAULT1", "secret", name, version)
            assert got is not None
            assert got.version == "abcdef"
        assert tx.version_get("vault1", "secret", "mysecret", "abcdeg") is None
        assert tx.version_get("vault1", "key", "mysecret", "abcdef") is None


def test_object_with_version_is_object_get_and_version_get_in_one(backend: Storage) -> None:
    put_object(backend, "Both", versions=("v1", "v2"))
    put_object(backend, "gone", versions=("g1",), deleted=500, purge_at=900)
    put_object(backend, "empty", versions=())
    with backend.read() as tx:
        for name, wanted, expected in (("both", None, "v2"), ("BOTH", "V1", "v1"), ("both", "v2", "v2")):
            obj, row = tx.object_with_version("VAULT1", "secret", name, wanted)
            assert obj == tx.object_get("vault1", "secret", "both")
            assert row == tx.version_get("vault1", "secret", "both", expected)
        obj, row = tx.object_with_version("vault1", "secret", "both", "v3")
        assert obj is not None and obj.latest == "v2" and row is None
        obj, row = tx.object_with_version("vault1", "secret", "gone", None)
        assert obj is not None and obj.deleted == 500 and row is not None and row.version == "g1"
        obj, row = tx.object_with_version("vault1", "secret", "empty", None)
        assert obj is not None and obj.latest is None and row is None
        assert tx.object_with_version("vault1", "secret", "nothing", None) == (None, None)
        assert tx.object_with_version("vault1", "key", "both", None) == (None, None)
        assert tx.object_with_version("vault2", "secret", "both", "v1") == (None, None)


def test_empty_tags_are_not_confused_with_no_tags(backend: Storage) -> None:
    with backend.write() as tx:
        tx.version_put(version_row("s", "v1", tags={}))
        tx.version_put(version_row("s", "v2", tags=None))
    with backend.read() as tx:
        v1 = tx.version_get("vault1", "secret", "s", "v1")
        v2 = tx.version_get("vault1", "secret", "s", "v2")
    assert v1 is not None and v1.tags == {}
    assert v2 is not None and v2.tags is None


def test_version_seq_is_assigned_per_object_in_creation_order(backend: Storage) -> None:
    rows = {}
    with backend.write() as tx:
        for name, version in (("a", "z9"), ("a", "a1"), ("b", "m5"), ("A", "k3"), ("a", "b2")):
            row = version_row(name, version)
            tx.version_put(row)
            rows[version] = row
    assert [rows[v].seq for v in ("z9", "a1", "k3", "b2")] == [1, 2, 3, 4]  # "A" is the same object as "a"
    assert rows["m5"].seq == 1  # another object counts on its own
    with backend.write() as tx:  # a later transaction continues the count
        later = version_row("a", "c0")
        tx.version_put(later)
    assert later.seq == 5
    with backend.read() as tx:
        listed = tx.version_list("vault1", "secret", "a", after_seq=None, limit=100)
        assert [(r.version, r.seq) for r in listed] == [("z9", 1), ("a1", 2), ("k3", 3), ("b2", 4), ("c0", 5)]
        got = tx.version_get("vault1", "secret", "a", "k3")
        assert got is not None and got.seq == 3


def test_version_update_keeps_seq_and_created(backend: Storage) -> None:
    with backend.write() as tx:
        for version in ("v1", "v2", "v3"):
            tx.version_put(version_row("s", version, created=100, updated=100))
    updated = version_row("s", "v2", created=100, updated=222, enabled=False, nbf=1, exp=2, content_type="ct",
                          tags={"t": "1"}, payload=b"\x01new-payload", extra={"k": "v"})
    updated.seq = 99  # whatever the caller has: the backend decides
    with backend.write() as tx:
        tx.version_put(updated)
    assert updated.seq == 2
    with backend.read() as tx:
        got = tx.version_get("vault1", "secret", "s", "v2")
        listed = tx.version_list("vault1", "secret", "s", after_seq=None, limit=10)
    assert got is not None
    assert (got.seq, got.created, got.updated, got.enabled, got.nbf, got.exp) == (2, 100, 222, False, 1, 2)
    assert (got.content_type, got.tags, got.payload, got.extra) == ("ct", {"t": "1"}, b"\x01new-payload",
                                                                    {"k": "v"})
    assert [(r.version, r.seq) for r in listed] == [("v1", 1), ("v2", 2), ("v3", 3)]
    # an update can also clear optional fields
    cleared = version_row("s", "v2", created=100, updated=333)
    with backend.write() as tx:
        tx.version_put(cleared)
        got = tx.version_get("vault1", "secret", "s", "v2")
    assert got is not None
    assert (got.seq, got.enabled, got.nbf, got.exp, got.content_type, got.tags, got.extra) == (
        2, True, None, None, None, None, {})


def test_version_list_pages_by_after_seq(backend: Storage) -> None:
    versions = [f"ver{i:02d}" for i in range(1, 12)]
    with backend.write() as tx:
        for version in reversed(versions):  # creation order differs from name order
            tx.version_put(version_row("s", version))
        tx.version_put(version_row("other", "o1"))
    creation_order = list(reversed(versions))
    for limit in (1, 4, 11, 50):
        seen: list[str] = []
        after: int | None = None
        for _ in range(len(versions) + 1):
            with backend.read() as tx:
                page = tx.version_list("vault1", "secret", "S", after_seq=after, limit=limit)
            assert len(page) == min(limit, len(versions) - len(seen)), (limit, after, page)
            if not page:
                break
            seen += [r.version for r in page]
            after = page[-1].seq
        assert seen == creation_order, limit
    with backend.read() as tx:
        assert [r.seq for r in tx.version_list("vault1", "secret", "s", after_seq=9, limit=10)] == [10, 11]
        assert tx.version_list("vault1", "secret", "s", after_seq=11, limit=10) == []
        assert tx.version_list("vault1", "secret", "missing", after_seq=None, limit=10) == []


def test_latest_versions(backend: Storage) -> None:
    put_object(backend, "Alpha", versions=("a1", "a2"))
    put_object(backend, "beta", versions=("b1",))
    put_object(backend, "no-latest", versions=())
    put_object(backend, "gamma", versions=("g1", "g2"), deleted=1, purge_at=2)
    put_object(backend, "alpha", vault="vault2", versions=("x1",))
    with backend.write() as tx:  # latest need not be the newest seq
        tx.object_put(ObjectRow(vault="vault1", kind="secret", name="gamma", latest="g1", deleted=1, purge_at=2))
    with backend.read() as tx:
        live = tx.object_list("vault1", "secret", deleted=False, after=None, limit=10)
        deleted = tx.object_list("vault1", "secret", deleted=True, after=None, limit=10)
        latest = tx.latest_versions("vault1", "secret", live)
        assert {k: (v.name, v.version) for k, v in latest.items()} == {
            "alpha": ("Alpha", "a2"), "beta": ("beta", "b1")}
        assert {k: v.version for k, v in tx.latest_versions("VAULT1", "secret", deleted).items()} == {"gamma": "g1"}
        assert tx.latest_versions("vault1", "secret", []) == {}
        assert tx.latest_versions("vault1", "key", live) == {}
        latest2 = tx.latest_versions("vault2", "secret", tx.object_list("vault2", "secret", deleted=False,
                                                                         after=None, limit=10))
        assert {k: v.version for k, v in latest2.items()} == {"alpha": "x1"}
        assert latest["alpha"].payload == b"\x01payload-a2"


def test_latest_versions_for_many_objects(backend: Storage) -> None:
    with backend.write() as tx:
        for i in range(300):
            tx.version_put(version_row(f"s{i:03d}", "v1"))
            tx.version_put(version_row(f"s{i:03d}", "v2"))
            tx.object_put(ObjectRow(vault="vault1", kind="secret", name=f"s{i:03d}", latest="v2"))
    with backend.read() as tx:
        objects = tx.object_list("vault1", "secret", deleted=False, after=None, limit=1000)
        latest = tx.latest_versions("vault1", "secret", objects)
    assert len(objects) == 300
    assert sorted(latest) == [f"s{i:03d}" for i in range(300)]
    assert {v.version for v in latest.values()} == {"v2"}


# --- transactions -------------------------------------------------------------------------------


class Boom(Exception):
    pass


def test_rollback_on_exception_leaves_nothing(backend: Storage) -> None:
    with backend.write() as tx:
        tx.meta_put("kept", b"1")
    with pytest.raises(Boom), backend.write() as tx:
        tx.meta_put("kept", b"2")
        tx.meta_put("new", b"x")
        tx.vault_put(vault_row("v"))
        tx.tenant_put(TenantRow("t1", "One", 1))
        tx.issuer_put(issuer("i1", "t1", "https://idp.example"))
        tx.principal_put(principal("o1"))
        tx.credential_put(CredentialRow(id="k", object_id="o1", kind="clientSecret", secret_hash="h", created=1))
        tx.version_put(version_row("s", "v1", vault="v"))
        tx.object_put(ObjectRow(vault="v", kind="secret", name="s", latest="v1"))
        raise Boom()
    with backend.read() as tx:
        assert tx.meta_get("kept") == b"1"
        assert tx.meta_get("new") is None
        assert tx.vault_list() == []
        assert tx.tenant_list() == []
        assert tx.issuer_list() == []
        assert tx.principal_list() == []
        assert tx.credential_get("k") is None
        assert tx.credential_all() == []
        assert tx.object_get("v", "secret", "s") is None
        assert tx.version_get("v", "secret", "s", "v1") is None
    # the store is usable afterwards
    with backend.write() as tx:
        tx.meta_put("after", b"ok")
    with backend.read() as tx:
        assert tx.meta_get("after") == b"ok"


def test_base_exception_also_rolls_back(backend: Storage) -> None:
    with pytest.raises(KeyboardInterrupt), backend.write() as tx:
        tx.meta_put("k", b"v")
        raise KeyboardInterrupt()
    with backend.read() as tx:
        assert tx.meta_get("k") is None


def test_writes_in_a_read_transaction_do_not_persist(backend: Storage) -> None:
    try:
        with backend.read() as tx:
            tx.meta_put("sneaky", b"1")
    except StorageError:
        pass  # refusing the write is fine too
    with backend.read() as tx:
        assert tx.meta_get("sneaky") is None


def in_thread(fn: Callable[[], object]) -> object:
    result: list[object] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    if errors:
        raise errors[0]
    return result[0]


def test_committed_write_is_visible_from_another_thread(backend: Storage) -> None:
    def read_meta() -> bytes | None:
        with backend.read() as tx:
            return tx.meta_get("shared")

    assert in_thread(read_meta) is None
    with backend.write() as tx:
        tx.meta_put("shared", b"first")
        # not yet committed: another thread's connection does not see it
        assert in_thread(read_meta) is None
    assert in_thread(read_meta) == b"first"

    def write_other() -> None:
        with backend.write() as tx:
            tx.meta_put("shared", b"second")

    in_thread(write_other)
    assert read_meta() == b"second"


def test_committed_write_is_visible_after_reopening(open_backend: Factory) -> None:
    first = open_backend()
    put_object(first, "durable", versions=("v1", "v2"))
    first.close()
    second = open_backend()
    with second.read() as tx:
        obj = tx.object_get("vault1", "secret", "durable")
        assert obj is not None and obj.latest == "v2"
        assert [r.version for r in tx.version_list("vault1", "secret", "durable", after_seq=None, limit=5)] == [
            "v1", "v2"]


def test_migrate_is_idempotent(open_backend: Factory) -> None:
    storage = open_backend()  # already migrated once
    version = storage.migrate()
    assert version >= 1
    put_object(storage, "kept")
    with storage.write() as tx:
        tx.meta_put("m", b"1")
    assert storage.migrate() == version
    storage.close()
    reopened = open_backend()  # migrates again on open
    assert reopened.migrate() == version
    with reopened.read() as tx:
        assert tx.meta_get("m") == b"1"
        assert tx.object_get("vault1", "secret", "kept") is not None
    assert reopened.integrity_check() == []


def test_integrity_check_is_empty_when_healthy(backend: Storage) -> None:
    assert backend.integrity_check() == []
    put_object(backend, "s", versions=("v1", "v2"))
    assert backend.integrity_check() == []


def test_an_error_names_no_row_values(backend: Storage) -> None:
    with backend.write() as tx:
        tx.principal_put(principal("o1", "tenant-SECRETISH", "client-SECRETISH"))
    with pytest.raises(StorageError) as caught, backend.write() as tx:
        tx.principal_put(principal("o2", "tenant-SECRETISH", "client-SECRETISH"))
    assert "SECRETISH" not in str(caught.value)


# --- the change feed ----------------------------------------------------------------------------


def test_change_feed_records_the_topics_of_committed_writes(backend: Storage) -> None:
    seq, topics = backend.changes_since(None)
    assert topics == set()

    def committed(write: Callable[[Any], object]) -> set[str]:
        nonlocal seq
        with backend.write() as tx:
            write(tx)
        newer, topics = backend.changes_since(seq)
        assert newer >= seq
        assert (newer > seq) == bool(topics)
        seq = newer
        return topics

    assert committed(lambda tx: tx.tenant_put(TenantRow("t1", "One", 1))) == {"identity"}
    assert committed(lambda tx: tx.principal_put(principal("o1"))) == {"identity"}
    cred = CredentialRow(id="k1", object_id="o1", kind="clientSecret", secret_hash="h", created=1)
    assert committed(lambda tx: tx.credential_put(cred)) == {"identity"}
    assert committed(lambda tx: tx.credential_delete("k1")) == {"identity"}
    assert committed(lambda tx: tx.issuer_put(issuer("i1", "t1", "https://idp.example"))) == {"identity"}
    assert committed(lambda tx: tx.issuer_delete("i1")) == {"identity"}
    assert committed(lambda tx: tx.principal_delete("o1")) == {"identity"}
    role = RoleDefinitionRow(id="r1", scope="/", role_name="Reader", description="", permissions=[],
                             assignable_scopes=["/"], created=1, updated=1)
    assert committed(lambda tx: tx.role_definition_put(role)) == {"access"}
    assignment = RoleAssignmentRow(id="a1", scope="/", role_definition_id="r1", principal_id="o1", created=1)
    assert committed(lambda tx: tx.role_assignment_put(assignment)) == {"access"}
    assert committed(lambda tx: tx.role_assignment_delete("a1")) == {"access"}
    assert committed(lambda tx: tx.role_definition_delete("r1")) == {"access"}
    assert committed(lambda tx: tx.vault_put(vault_row("vault1"))) == {"vault", "access"}
    assert committed(lambda tx: tx.meta_put("signing-key", b"\x01")) == {"meta"}
    # objects and versions are not cached across processes: they add nothing
    assert committed(lambda tx: (tx.version_put(version_row("s", "v1")),
                                 tx.object_put(ObjectRow(vault="vault1", kind="secret", name="s", latest="v1")),
                                 tx.object_purge("vault1", "secret", "s"))) == set()
    assert committed(lambda tx: None) == set()
    assert committed(lambda tx: (tx.meta_put("x", b"1"), tx.principal_put(principal("o2")),
                                 tx.vault_delete("vault1"))) == {"meta", "identity", "vault", "access"}
    # a read transaction adds nothing, whatever it does
    with backend.read() as tx:
        tx.vault_list()
    assert backend.changes_since(seq) == (seq, set())
    # nor does a rolled-back write
    with pytest.raises(Boom), backend.write() as tx:
        tx.meta_put("y", b"1")
        tx.tenant_put(TenantRow("t2", "Two", 1))
        raise Boom()
    assert backend.changes_since(seq) == (seq, set())
    # a watcher starting now starts after everything above
    assert backend.changes_since(None) == (seq, set())


def test_change_feed_is_seen_by_another_instance(open_backend: Factory) -> None:
    writer, watcher = open_backend(), open_backend()
    start, _ = watcher.changes_since(None)
    with writer.write() as tx:
        tx.principal_put(principal("o1"))
    with writer.write() as tx:
        tx.role_assignment_put(RoleAssignmentRow(id="a1", scope="/", role_definition_id="r", principal_id="o1",
                                                 created=1))
    seq, topics = watcher.changes_since(start)
    assert seq > start and topics == {"identity", "access"}
    assert watcher.changes_since(seq) == (seq, set())
    assert watcher.changes_since(None) == (seq, set())


# --- leadership ---------------------------------------------------------------------------------


def test_leadership_is_exclusive_and_passes_on_when_the_holder_closes(open_backend: Factory) -> None:
    first, second = open_backend(), open_backend()
    assert first.hold_leadership() is True
    assert first.hold_leadership() is True  # staying leader
    assert second.hold_leadership() is False
    assert first.hold_leadership() is True
    assert second.hold_leadership() is False
    first.close()  # the holder stops: the lead passes on
    assert second.hold_leadership() is True
    assert second.hold_leadership() is True
    third = open_backend()
    assert third.hold_leadership() is False


# --- migrations ---------------------------------------------------------------------------------


def test_concurrent_migrate_applies_each_migration_once(open_backend: Factory, request: pytest.FixtureRequest,
                                                        tmp_path: Path) -> None:
    """Several nodes (here: threads, each with its own storage object and connection) start together on an empty
    store."""
    make = BACKENDS[request.node.callspec.params["open_backend"]](request, tmp_path / "concurrent")
    (tmp_path / "concurrent").mkdir()
    stores = [make() for _ in range(6)]
    start = threading.Barrier(len(stores))
    results: list[int] = []
    errors: list[BaseException] = []

    def run(storage: Storage) -> None:
        try:
            start.wait(10)
            results.append(storage.migrate())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert errors == []  # a migration applied twice fails (the table exists; schema_version's key)
        assert len(results) == len(stores) and len(set(results)) == 1 and results[0] >= 1
        for storage in stores:
            assert storage.integrity_check() == []
        with stores[0].write() as tx:
            tx.meta_put("k", b"v")
        with stores[-1].read() as tx:
            assert tx.meta_get("k") == b"v"
    finally:
        for storage in stores:
            storage.close()


# --- whole-installation copy (`coffer operator migrate`) ------------------------------------------


def fill_every_table(storage: Storage) -> None:
    """At least two rows in every table of TABLES, with every optional column both set and empty, names whose
    bytewise and dictionary orders differ, binary blobs, and non-ASCII text."""
    with storage.write() as tx:
        tx.meta_put("root-key", bytes(range(256)))
        tx.meta_put("a-b", b"")
        tx.meta_put("ab", b"\x00")
        tx.tenant_put(TenantRow("t1", "Tenant Ünïcode 秘密", 1))
        tx.tenant_put(TenantRow("T2", "Second", 2))
        tx.vault_put(vault_row("vault1", access_policies=[{"tenantId": "t1", "objectId": "o1",
                                                           "permissions": {"secrets": ["get"]}}]))
        tx.vault_put(vault_row("a-vault", purge_protection=True, rbac_authorization=False, wrapped_key=b"\x00\xff",
                               key_term=2**32 - 1, sku="premium"))
        tx.principal_put(principal("o1", "t1", "c1", "Zed"))
        tx.principal_put(principal("O-2", "T2", "c1", "alpha", kind="managedIdentity"))
        tx.credential_put(CredentialRow(id="k1", object_id="o1", kind="clientSecret", secret_hash="$scrypt$x",
                                        created=1, expires=2**40))
        tx.credential_put(CredentialRow(id="k-2", object_id="O-2", kind="certificate", secret_hash="", created=2,
                                        lookup="AB12", data={"pem": "-----BEGIN-----", "n": [1, 2.5, None]}))
        tx.issuer_put(issuer("i1", "t1", "https://idp.example"))
        tx.issuer_put(issuer("i-2", "T2", "https://other.example", audience=None))
        tx.role_definition_put(RoleDefinitionRow(id="r1", scope="/", role_name="Custom", description="d",
                                                 permissions=[{"dataActions": ["x/*"]}], assignable_scopes=["/"],
                                                 created=1, updated=2))
        tx.role_definition_put(RoleDefinitionRow(id="R-2", scope="/vaults/vault1", role_name="Other",
                                                 description="", permissions=[], assignable_scopes=[],
                                                 created=3, updated=3))
        tx.role_assignment_put(RoleAssignmentRow(id="a1", scope="/vaults/vault1", role_definition_id="r1",
                                                 principal_id="o1", created=1))
        tx.role_assignment_put(RoleAssignmentRow(id="a-2", scope="/", role_definition_id="r-2",
                                                 principal_id="O-2", created=2))
        for name in ("Secret-B", "secret_a", "secret-a", "SecretA"):
            tx.version_put(version_row(name, "v1", tags={"env": "prod", "ünï": "秘"}, content_type="text/plain",
                                       nbf=1, exp=2**40, kid="https://v/keys/k/1", managed=True,
                                       extra={"k": {"nested": [1]}}, enabled=False))
            tx.version_put(version_row(name, "v2", tags={}))
            tx.object_put(ObjectRow(vault="vault1", kind="secret", name=name, latest="v2",
                                    data={"rotation": {"expiryTime": "P90D"}}))
        tx.object_put(ObjectRow(vault="a-vault", kind="key", name="gone", latest=None, deleted=5, purge_at=9))


def export_all(storage: Storage) -> dict[str, list[dict[str, Any]]]:
    return {table: list(storage.export_table(table)) for table in TABLES}


def copy_all(source: Storage, target: Storage) -> None:
    for table in TABLES:
        count = target.import_table(table, source.export_table(table))
        assert count == len(list(source.export_table(table)))


def test_export_import_round_trip_sqlite_postgres_sqlite(tmp_path: Path, postgres_server: Any) -> None:
    first = SqliteStorage(tmp_path / "first.db")
    middle = PostgresStorage(postgres_server.new_database())
    last = SqliteStorage(tmp_path / "last.db")
    back = PostgresStorage(postgres_server.new_database())
    stores = (first, middle, last, back)
    try:
        for storage in stores:
            storage.migrate()
        fill_every_table(first)
        original = export_all(first)
        assert all(len(rows) >= 2 for rows in original.values()), {t: len(r) for t, r in original.items()}
        for row in original["versions"]:  # backend-neutral values only
            assert all(v is None or type(v) in (int, str, bytes) for v in row.values()), row
        copy_all(first, middle)
        assert export_all(middle) == original  # same rows, same values, same (primary key) order
        copy_all(middle, last)
        assert export_all(last) == original
        copy_all(last, back)
        assert export_all(back) == original
        # and the copies answer through the Transaction API exactly like the original
        for storage in stores:
            with storage.read() as tx:
                vault = tx.vault_get("vault1")
                assert vault is not None and vault.access_policies[0]["objectId"] == "o1"
                other = tx.vault_get("a-vault")
                assert other is not None and (other.purge_protection, other.rbac_authorization) == (True, False)
                assert other.key_term == 2**32 - 1
                assert [o.name for o in tx.object_list("vault1", "secret", deleted=False, after=None, limit=10)] == [
                    "secret-a", "Secret-B", "secret_a", "SecretA"]  # bytewise: "-" < "_" < "a"
                got = tx.version_get("vault1", "secret", "secret-a", "v1")
                assert got is not None and got.tags == {"env": "prod", "ünï": "秘"} and got.enabled is False
                assert got.extra == {"k": {"nested": [1]}}
                assert tx.meta_get("root-key") == bytes(range(256))
                cred = tx.credential_get("k-2")
                assert cred is not None and cred.data == {"pem": "-----BEGIN-----", "n": [1, 2.5, None]}
                latest = tx.latest_versions("vault1", "secret", tx.object_list("vault1", "secret", deleted=False,
                                                                                after=None, limit=10))
                assert {k: v.version for k, v in latest.items()} == {
                    "secret-b": "v2", "secret_a": "v2", "secret-a": "v2", "secreta": "v2"}
        for storage in stores:  # every copy takes new versions where the original left off
            with storage.write() as tx:
                row = version_row("secret-a", "v3")
                tx.version_put(row)
            assert row.seq == 3
    finally:
        for storage in stores:
            storage.close()


def test_import_rejects_unknown_tables(backend: Storage) -> None:
    with pytest.raises(ValueError):
        list(backend.export_table("changes"))
    with pytest.raises(ValueError):
        backend.import_table("sqlite_master", [])


# --- PostgreSQL only --------------------------------------------------------------------------------


def test_postgres_wait_for_changes_wakes_on_another_instances_commit(pg_dsn: str) -> None:
    watcher, writer = PostgresStorage(pg_dsn), PostgresStorage(pg_dsn)
    try:
        watcher.migrate()
        seq, _ = watcher.changes_since(None)
        watcher.wait_for_changes(0)  # starts listening (returns at once: it may have missed something)
        # nothing committed: waits out the timeout
        started = time.monotonic()
        watcher.wait_for_changes(0.3)
        assert 0.25 <= time.monotonic() - started < 2
        # a write that touches nothing cached sends nothing
        put_object(writer, "plain")
        started = time.monotonic()
        watcher.wait_for_changes(0.3)
        assert 0.25 <= time.monotonic() - started < 2

        def commit_later() -> None:
            time.sleep(0.2)
            with writer.write() as tx:
                tx.principal_put(principal("o1"))

        thread = threading.Thread(target=commit_later)
        started = time.monotonic()
        thread.start()
        watcher.wait_for_changes(10)
        elapsed = time.monotonic() - started
        thread.join()
        assert elapsed < 1.0, f"woken after {elapsed:.2f}s"
        assert watcher.changes_since(seq)[1] == {"identity"}
        # a rolled-back write notifies nobody
        with pytest.raises(Boom), writer.write() as tx:
            tx.meta_put("x", b"1")
            raise Boom()
        started = time.monotonic()
        watcher.wait_for_changes(0.3)
        assert time.monotonic() - started >= 0.25
    finally:
        watcher.close()
        writer.close()


def terminate(dsn: str, where: str) -> int:
    """pg_terminate_backend the other sessions of the database that match `where` (as a node dying or a network
    cut would end them); returns how many."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(a.pid) FROM pg_stat_activity a "
            f"WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() AND ({where})"
        ).fetchall()
    return len(rows)


def test_postgres_wait_for_changes_survives_a_broken_connection(pg_dsn: str) -> None:
    watcher, writer = PostgresStorage(pg_dsn), PostgresStorage(pg_dsn)
    try:
        watcher.migrate()
        watcher.wait_for_changes(0)
        assert terminate(pg_dsn, "a.query LIKE 'LISTEN%'") == 1
        started = time.monotonic()
        watcher.wait_for_changes(0.3)  # notices the broken connection, sleeps out the timeout, raises nothing
        assert 0.25 <= time.monotonic() - started < 2
        started = time.monotonic()
        watcher.wait_for_changes(5)  # reconnects: returns at once
        assert time.monotonic() - started < 2

        def commit_later() -> None:
            time.sleep(0.2)
            with writer.write() as tx:
                tx.meta_put("m", b"1")

        thread = threading.Thread(target=commit_later)
        started = time.monotonic()
        thread.start()
        watcher.wait_for_changes(10)
        thread.join()
        assert time.monotonic() - started < 1.0
    finally:
        watcher.close()
        writer.close()


def test_postgres_leadership_moves_when_the_leaders_session_dies(pg_dsn: str) -> None:
    first, second = PostgresStorage(pg_dsn), PostgresStorage(pg_dsn)
    try:
        first.migrate()
        assert first.hold_leadership() is True
        assert second.hold_leadership() is False
        assert terminate(pg_dsn, "a.pid IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted)") == 1
        deadline = time.monotonic() + 10  # the terminated session ends (and its lock goes) a moment later
        while not second.hold_leadership():  # PostgreSQL released the dead session's lock
            assert time.monotonic() < deadline, "the lock of a terminated session was not released"
            time.sleep(0.05)
        assert first.hold_leadership() is False  # finds its connection broken, tries again, and loses
        second.close()
        assert first.hold_leadership() is True
    finally:
        first.close()
        second.close()


def test_postgres_write_transactions_are_serialized_and_reads_never_wait(pg_dsn: str) -> None:
    storage = PostgresStorage(pg_dsn)
    try:
        storage.migrate()
        with storage.write() as tx:
            tx.meta_put("counter", b"0")
        inside = threading.Event()
        release = threading.Event()

        def slow_writer() -> None:
            with storage.write() as tx:
                inside.set()
                release.wait(10)
                tx.meta_put("counter", b"1")

        thread = threading.Thread(target=slow_writer)
        thread.start()
        assert inside.wait(10)
        started = time.monotonic()
        with storage.read() as tx:  # a read does not wait for the writer
            assert tx.meta_get("counter") == b"0"
        assert time.monotonic() - started < 0.5
        order: list[str] = []

        def second_writer() -> None:
            with storage.write() as tx:  # waits for the first writer, then sees its commit
                order.append(tx.meta_get("counter") or b"?")  # type: ignore[arg-type]
                tx.meta_put("counter", b"2")

        other = threading.Thread(target=second_writer)
        other.start()
        time.sleep(0.3)
        assert order == []  # still waiting for the write lock
        release.set()
        thread.join(10)
        other.join(10)
        assert order == [b"1"]
        with storage.read() as tx:
            assert tx.meta_get("counter") == b"2"
    finally:
        storage.close()


def test_postgres_a_swallowed_error_aborts_the_whole_transaction(pg_dsn: str) -> None:
    """PostgreSQL aborts a transaction at its first failed statement (SQLite only fails the statement): if code
    inside the block caught that error and carried on, the write must fail, never report a commit it did not do."""
    storage = PostgresStorage(pg_dsn)
    try:
        storage.migrate()
        with storage.write() as tx:
            tx.principal_put(principal("o1", "t1", "c1"))
        with pytest.raises(StorageError), storage.write() as tx:
            tx.meta_put("before", b"1")
            with contextlib.suppress(Exception):
                tx.principal_put(principal("o2", "t1", "c1"))
        with storage.read() as tx:
            assert tx.meta_get("before") is None
        assert storage.changes_since(None)[0] == 1  # only the first write's entry
    finally:
        storage.close()


def test_postgres_storage_error_when_the_database_is_away(postgres_server: Any) -> None:
    storage = PostgresStorage(postgres_server.dsn("no_such_database"), pool_timeout=1)
    try:
        with pytest.raises(StorageError, match="no_such_database"), storage.read():
            pass
        problems = storage.integrity_check()
        assert len(problems) == 1 and "no_such_database" in problems[0]
        storage.wait_for_changes(0.1)  # raises nothing
        assert storage.hold_leadership() is False
    finally:
        storage.close()
    assert "secret-password" not in repr(PostgresStorage("postgresql://u:secret-password@127.0.0.1:1/db"))
