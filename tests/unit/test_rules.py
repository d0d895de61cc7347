"""Key Vault's object rules (names, tags, attributes, vault names, recovery levels) and the secret
operations that enforce them, on a real SqliteStorage + Barrier + VaultView."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from coffer.barrier import Barrier, VaultView
from coffer.errors import BadParameter, Conflict
from coffer.objects import rules, secret, vault
from coffer.storage import VaultRow
from coffer.storage.sqlite import SqliteStorage

# --- object names -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "Z", "0", "-", "db-password", "A-b-C-1-2-3", "x" * 127, "--lead"])
def test_valid_names(name: str) -> None:
    assert rules.check_name(name) == name


@pytest.mark.parametrize("name", ["", "x" * 128, "a_b", "a.b", "a b", "a/b", "pässword", "a\tb", "abc\n",
                                  "\nabc", "a\x00b", "ab%2F"])
def test_invalid_names(name: str) -> None:
    with pytest.raises(BadParameter) as info:
        rules.check_name(name)
    assert info.value.code == "BadParameter"
    assert info.value.status == 400


def test_invalid_name_message_names_the_kind() -> None:
    with pytest.raises(BadParameter, match="key name"):
        rules.check_name("a_b", "key")


# --- tags ---------------------------------------------------------------------------------------


def test_tags_limits() -> None:
    assert rules.check_tags(None) is None
    assert rules.check_tags({}) == {}
    fifteen = {f"t{i}": str(i) for i in range(15)}
    assert rules.check_tags(fifteen) == fifteen
    longest = {"n" * 256: "v" * 256}
    assert rules.check_tags(longest) == longest
    assert rules.check_tags({"empty-value": ""}) == {"empty-value": ""}


@pytest.mark.parametrize("tags", [
    {f"t{i}": "v" for i in range(16)},
    {"n" * 257: "v"},
    {"n": "v" * 257},
    {"": "v"},
    {"n": 1},
    {"n": None},
    {"n": ["v"]},
    ["n", "v"],
    "n=v",
])
def test_invalid_tags(tags: Any) -> None:
    with pytest.raises(BadParameter):
        rules.check_tags(tags)


def test_check_tags_returns_a_copy() -> None:
    given = {"a": "1"}
    checked = rules.check_tags(given)
    assert checked == given and checked is not given


# --- content type -------------------------------------------------------------------------------


def test_content_type() -> None:
    assert rules.check_content_type(None) is None
    assert rules.check_content_type("") == ""
    assert rules.check_content_type("c" * 255) == "c" * 255
    for bad in ("c" * 256, 5, ["text/plain"], {"a": "b"}):
        with pytest.raises(BadParameter):
            rules.check_content_type(bad)


# --- attributes ---------------------------------------------------------------------------------


def test_attributes_valid() -> None:
    assert rules.check_attributes(None) == {}
    assert rules.check_attributes({}) == {}
    assert rules.check_attributes({"enabled": False}) == {"enabled": False}
    assert rules.check_attributes({"enabled": True, "nbf": 0, "exp": 253402300799}) == {
        "enabled": True, "nbf": 0, "exp": 253402300799}
    assert rules.check_attributes({"nbf": 100, "exp": 100}) == {"nbf": 100, "exp": 100}  # nbf == exp is fine
    assert rules.check_attributes({"enabled": None}) == {}  # null means "not given"
    assert rules.check_attributes({"nbf": None}) == {"nbf": None}  # explicit null clears the date
    # read-only attributes are ignored
    assert rules.check_attributes({"created": 1, "updated": 2, "recoveryLevel": "x", "recoverableDays": 9}) == {}


@pytest.mark.parametrize("attributes", [
    {"enabled": "true"},
    {"enabled": 1},
    {"enabled": 0},
    {"nbf": "100"},
    {"nbf": 1.5},
    {"nbf": True},
    {"exp": False},
    {"exp": -1},
    {"exp": 253402300800},
    {"nbf": 200, "exp": 100},
    ["enabled"],
    "enabled",
])
def test_attributes_invalid(attributes: Any) -> None:
    with pytest.raises(BadParameter):
        rules.check_attributes(attributes)


# --- vault names and settings -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["abc", "a-b", "a1b", "a12", "Vault-1", "a" * 24, "my-vault-01"])
def test_valid_vault_names(name: str) -> None:
    assert vault.check_vault_name(name) == name.lower()


@pytest.mark.parametrize("name", ["", "ab", "a" * 25, "1abc", "-abc", "abc-", "a--b", "ab--", "a_bc", "ab.c",
                                  "ab c", "abc\n", "äbc", "dev.localhost"])
def test_invalid_vault_names(name: str) -> None:
    with pytest.raises(BadParameter) as info:
        vault.check_vault_name(name)
    assert info.value.code == "VaultNameNotValid"


def vault_row(retention: int, purge_protection: bool) -> VaultRow:
    return VaultRow(name="v", tenant_id="t", created=0, updated=0, retention_days=retention,
                    purge_protection=purge_protection)


@pytest.mark.parametrize(("retention", "purge_protection", "level"), [
    (90, False, "Recoverable+Purgeable"),
    (90, True, "Recoverable"),
    (7, False, "CustomizedRecoverable+Purgeable"),
    (7, True, "CustomizedRecoverable"),
    (89, False, "CustomizedRecoverable+Purgeable"),
    (89, True, "CustomizedRecoverable"),
])
def test_recovery_level(retention: int, purge_protection: bool, level: str) -> None:
    assert rules.recovery_level(vault_row(retention, purge_protection)) == level


# --- a real store -------------------------------------------------------------------------------


@dataclass
class Store:
    storage: SqliteStorage
    barrier: Barrier

    def vault(self, name: str = "vault1", **body: Any) -> VaultRow:
        with self.storage.write() as tx:
            return vault.create(tx, self.barrier, name, "tenant-1", body)

    def write(self, vault_name: str, fn: Callable[[VaultView], Any]) -> Any:
        with self.storage.write() as tx:
            row = tx.vault_get(vault_name)
            assert row is not None
            return fn(VaultView(tx, self.barrier, row))

    def read(self, vault_name: str, fn: Callable[[VaultView], Any]) -> Any:
        with self.storage.read() as tx:
            row = tx.vault_get(vault_name)
            assert row is not None
            return fn(VaultView(tx, self.barrier, row))

    def versions(self, vault_name: str, name: str) -> list[str]:
        with self.storage.read() as tx:
            return [r.version for r in tx.version_list(vault_name, "secret", name, after_seq=None, limit=1000)]


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[Store]:
    storage = SqliteStorage(tmp_path / "coffer.db")
    storage.migrate()
    barrier = Barrier(storage)
    barrier.initialize(1, 1)
    yield Store(storage, barrier)
    storage.close()


def test_vault_create_validates_settings(store: Store) -> None:
    row = store.vault("short", softDeleteRetentionInDays=7, enablePurgeProtection=True, sku="premium")
    assert (row.retention_days, row.purge_protection, row.sku) == (7, True, "premium")
    assert rules.recovery_level(row) == "CustomizedRecoverable"
    default = store.vault("Default-Vault")
    assert (default.name, default.retention_days, default.purge_protection, default.sku) == (
        "default-vault", 90, False, "standard")
    with pytest.raises(Conflict):
        store.vault("DEFAULT-VAULT")
    for body in ({"softDeleteRetentionInDays": 6}, {"softDeleteRetentionInDays": 91},
                 {"softDeleteRetentionInDays": True}, {"softDeleteRetentionInDays": "7"},
                 {"enablePurgeProtection": "yes"}, {"sku": "basic"}):
        with pytest.raises(BadParameter):
            store.vault("refused", **body)
    with store.storage.read() as tx:
        assert tx.vault_get("refused") is None


def test_vault_purge_protection_cannot_be_turned_off(store: Store) -> None:
    store.vault("vault-one")
    with store.storage.write() as tx:
        assert vault.update(tx, "vault-one", {"enablePurgeProtection": False}).purge_protection is False
        assert vault.update(tx, "vault-one", {"enablePurgeProtection": True}).purge_protection is True
        with pytest.raises(BadParameter, match="irreversible"):
            vault.update(tx, "vault-one", {"enablePurgeProtection": False})
        with pytest.raises(BadParameter):
            vault.update(tx, "vault-one", {"enablePurgeProtection": None})
        assert vault.update(tx, "vault-one", {"softDeleteRetentionInDays": 30}).retention_days == 30
        with pytest.raises(BadParameter):
            vault.update(tx, "vault-one", {"softDeleteRetentionInDays": 5})
    with store.storage.read() as tx:
        row = tx.vault_get("vault-one")
    assert row is not None and row.purge_protection and row.retention_days == 30


# --- secret values ------------------------------------------------------------------------------

MAX = 25 * 1024


def test_secret_value_size_limit(store: Store) -> None:
    store.vault()
    exact = "x" * MAX
    created = store.write("vault1", lambda v: secret.set(v, "big", exact))
    assert store.read("vault1", lambda v: secret.get(v, "big", None).value) == exact
    with pytest.raises(BadParameter, match="maximum permitted length"):
        store.write("vault1", lambda v: secret.set(v, "big", exact + "x"))
    # the limit is in UTF-8 bytes, not characters
    with pytest.raises(BadParameter):
        store.write("vault1", lambda v: secret.set(v, "wide", "é" * (MAX // 2 + 1)))
    assert store.write("vault1", lambda v: secret.set(v, "wide", "é" * (MAX // 2))).value == "é" * (MAX // 2)
    assert store.versions("vault1", "big") == [created.row.version]


@pytest.mark.parametrize("kwargs", [
    {"value": None}, {"value": 5}, {"value": b"bytes"},
    {"value": "v", "tags": {f"t{i}": "v" for i in range(16)}},
    {"value": "v", "content_type": "c" * 256},
    {"value": "v", "attributes": {"nbf": 10, "exp": 5}},
    {"value": "v", "name": "bad_name"},
])
def test_invalid_set_writes_nothing(store: Store, kwargs: dict[str, Any]) -> None:
    store.vault()
    name = kwargs.pop("name", "s1")
    with pytest.raises(BadParameter), store.storage.write() as tx:
        row = tx.vault_get("vault1")
        assert row is not None
        secret.set(VaultView(tx, store.barrier, row), name, **kwargs)
    with store.storage.read() as tx:
        assert tx.object_get("vault1", "secret", name) is None
        assert tx.version_list("vault1", "secret", name, after_seq=None, limit=10) == []


def test_deleted_secret_name_cannot_be_reused(store: Store) -> None:
    store.vault()
    store.write("vault1", lambda v: secret.set(v, "s1", "a"))
    store.write("vault1", lambda v: secret.delete(v, "s1"))
    with pytest.raises(Conflict) as info:
        store.write("vault1", lambda v: secret.set(v, "S1", "b"))
    assert info.value.inner == "ObjectIsDeletedButRecoverable"


def test_delete_schedules_purge_after_retention(store: Store) -> None:
    store.vault("week", softDeleteRetentionInDays=7)
    store.write("week", lambda v: secret.set(v, "s1", "a"))
    deleted = store.write("week", lambda v: secret.delete(v, "s1"))
    assert deleted.obj.deleted is not None
    assert deleted.obj.purge_at == deleted.obj.deleted + 7 * 86400


# --- restore ------------------------------------------------------------------------------------


def backup_document(store: Store) -> dict[str, Any]:
    """A real three-version backup of secret `orig` in vault1, opened so a test can alter it."""
    store.vault()
    for value in ("one", "two", "three"):
        store.write("vault1", lambda v, value=value: secret.set(v, "orig", value, tags={"n": value}))
    blob = store.read("vault1", lambda v: secret.backup(v, "orig"))
    document: dict[str, Any] = orjson.loads(store.barrier.open_backup("secret", blob))
    assert len(document["versions"]) == 3
    return document


def restore_into_vault2(store: Store, document: dict[str, Any]) -> Any:
    blob = store.barrier.seal_backup("secret", orjson.dumps(document))
    return store.write("vault2", lambda v: secret.restore(v, blob))


def test_restore_roundtrip(store: Store) -> None:
    document = backup_document(store)
    store.vault("vault2")
    restored = restore_into_vault2(store, document)
    assert restored.obj.name == "orig" and restored.obj.latest == document["latest"]
    assert store.versions("vault2", "orig") == [v["version"] for v in document["versions"]]
    assert store.read("vault2", lambda v: secret.get(v, "orig", None).value) == "three"
    first = document["versions"][0]["version"]
    got = store.read("vault2", lambda v: secret.get(v, "orig", first))
    assert (got.value, got.row.tags) == ("one", {"n": "one"})
    with pytest.raises(Conflict):  # the name now exists
        restore_into_vault2(store, document)


def _drop_created(doc: dict[str, Any]) -> None:
    del doc["versions"][1]["created"]


def _latest_missing(doc: dict[str, Any]) -> None:
    doc["latest"] = "0" * 32


def _bad_name(doc: dict[str, Any]) -> None:
    doc["name"] = "not/a valid name"


def _bad_tags(doc: dict[str, Any]) -> None:
    doc["versions"][1]["tags"] = {f"t{i}": "v" for i in range(16)}


def _tags_not_object(doc: dict[str, Any]) -> None:
    doc["versions"][2]["tags"] = "n=v"


def _created_not_int(doc: dict[str, Any]) -> None:
    doc["versions"][1]["created"] = "yesterday"


def _value_not_string(doc: dict[str, Any]) -> None:
    doc["versions"][2]["value"] = {"nested": True}


def _no_versions(doc: dict[str, Any]) -> None:
    doc["versions"] = []


def _versions_not_list(doc: dict[str, Any]) -> None:
    doc["versions"] = "abc"


def _item_not_object(doc: dict[str, Any]) -> None:
    doc["versions"][1] = "v2"


def _wrong_kind(doc: dict[str, Any]) -> None:
    doc["kind"] = "key"


@pytest.mark.parametrize("corrupt", [_drop_created, _latest_missing, _bad_name, _bad_tags, _tags_not_object,
                                     _created_not_int, _value_not_string, _no_versions, _versions_not_list,
                                     _item_not_object, _wrong_kind])
def test_restore_validates_before_writing(store: Store, corrupt: Callable[[dict[str, Any]], None]) -> None:
    """An invalid backup is refused with 400, and nothing is half-written even when the caller's
    transaction goes on to commit (the refusal happens before the first write)."""
    document = backup_document(store)
    store.vault("vault2")
    corrupt(document)
    blob = store.barrier.seal_backup("secret", orjson.dumps(document))
    with store.storage.write() as tx:  # commits: only restore() itself may keep the store clean
        row = tx.vault_get("vault2")
        assert row is not None
        with pytest.raises(BadParameter):
            secret.restore(VaultView(tx, store.barrier, row), blob)
    with store.storage.read() as tx:
        assert tx.object_list("vault2", "secret", deleted=False, after=None, limit=10) == []
        assert tx.object_list("vault2", "secret", deleted=True, after=None, limit=10) == []
        for name in ("orig", str(document.get("name", "orig"))):
            assert tx.version_list("vault2", "secret", name, after_seq=None, limit=10) == []


def test_restore_refuses_garbage_and_foreign_blobs(store: Store) -> None:
    store.vault()
    for blob in (b"", b"garbage", b"\x01" + bytes(40), store.barrier.seal_backup("key", b"{}"),
                 store.barrier.seal_backup("secret", b"not json"), store.barrier.seal_backup("secret", b"[]")):
        with pytest.raises(BadParameter):
            store.write("vault1", lambda v, blob=blob: secret.restore(v, blob))
    with store.storage.read() as tx:
        assert tx.object_list("vault1", "secret", deleted=False, after=None, limit=10) == []
