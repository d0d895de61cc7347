"""The barrier: seal state, Shamir unsealing, and that sealed data is bound to where it belongs."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from coffer.barrier import Barrier, VaultView
from coffer.crypto import DecryptionFailed
from coffer.errors import BadParameter, Conflict, Sealed
from coffer.objects import secret, vault
from coffer.storage import Storage, VaultRow
from coffer.storage.sqlite import SqliteStorage

TENANT = "tenant-1"


@pytest.fixture()
def storage(tmp_path: Path) -> Iterator[SqliteStorage]:
    store = SqliteStorage(tmp_path / "coffer.db")
    store.migrate()
    yield store
    store.close()


@pytest.fixture()
def barrier(storage: SqliteStorage) -> Barrier:
    b = Barrier(storage)
    b.initialize(1, 1)
    return b


def make_vault(storage: Storage, barrier: Barrier, name: str) -> VaultRow:
    with storage.write() as tx:
        return vault.create(tx, barrier, name, TENANT, {})


def other_installation(tmp_path: Path, name: str, shares: int = 1, threshold: int = 1) -> tuple[
        SqliteStorage, Barrier, list[str]]:
    store = SqliteStorage(tmp_path / name / "coffer.db")
    store.migrate()
    b = Barrier(store)
    _, mnemonics = b.initialize(shares, threshold)
    return store, b, mnemonics


# --- seal state ---------------------------------------------------------------------------------


def test_uninitialized_status(storage: SqliteStorage) -> None:
    b = Barrier(storage)
    status = b.status()
    assert (status.initialized, status.sealed, status.shares, status.threshold, status.progress) == (
        False, True, 0, 0, 0)
    assert b.sealed
    with pytest.raises(Sealed):
        b.submit_share("anything")
    with pytest.raises(Sealed):
        b.unseal_with_key(b"\x00" * 32)


def test_status_sees_another_process_initialize_then_needs_no_storage(
    storage: SqliteStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    watcher = Barrier(storage)  # as another worker's barrier
    assert watcher.status().initialized is False
    Barrier(storage).initialize(3, 2)
    assert (watcher.status().initialized, watcher.status().shares, watcher.status().threshold) == (True, 3, 2)

    def storage_down() -> None:
        raise AssertionError("health and seal status must not wait for storage once initialized")

    monkeypatch.setattr(storage, "read", storage_down)
    status = watcher.status()  # /healthz: answered at once, even with the database away
    assert (status.initialized, status.sealed, status.shares, status.threshold) == (True, True, 3, 2)


def test_initialize_returns_shares_and_leaves_unsealed(storage: SqliteStorage) -> None:
    b = Barrier(storage)
    unseal_key, shares = b.initialize(5, 3)
    assert len(unseal_key) == 32
    assert len(shares) == 5 and len(set(shares)) == 5
    assert all(isinstance(s, str) and len(s.split()) >= 20 for s in shares)  # SLIP-39 mnemonics
    status = b.status()
    assert (status.initialized, status.sealed, status.shares, status.threshold, status.progress) == (
        True, False, 5, 3, 0)
    assert status.as_dict() == {"initialized": True, "sealed": False, "shares": 5, "threshold": 3, "progress": 0}
    with pytest.raises(Conflict):
        b.initialize(1, 1)
    with pytest.raises(Conflict):
        Barrier(storage).initialize(1, 1)


def test_nothing_in_storage_is_the_unseal_or_root_key(storage: SqliteStorage, tmp_path: Path) -> None:
    b = Barrier(storage)
    unseal_key, _ = b.initialize(3, 2)
    root = b._root  # white box: the in-memory root key
    assert root is not None
    storage.close()
    for path in tmp_path.iterdir():
        if path.is_file():
            data = path.read_bytes()
            assert unseal_key not in data and root not in data, path


def test_sealed_after_seal(storage: SqliteStorage, barrier: Barrier) -> None:
    row = make_vault(storage, barrier, "vault1")
    with storage.read() as tx:
        view = VaultView(tx, barrier, row)
        sealed_value = view.seal("secret", "s", "v1", "value", b"x")
    barrier.seal()
    assert barrier.sealed
    status = barrier.status()
    assert status.initialized and status.sealed and status.progress == 0
    with storage.read() as tx:
        view = VaultView(tx, barrier, row)
        with pytest.raises(Sealed):
            view.open("secret", "s", "v1", "value", sealed_value)  # the cached vault key is gone too
        with pytest.raises(Sealed):
            view.seal("secret", "s", "v1", "value", b"x")
    with pytest.raises(Sealed):
        barrier.new_vault_key("v2")
    with pytest.raises(Sealed):
        barrier.seal_backup("secret", b"x")
    with pytest.raises(Sealed):
        barrier.open_backup("secret", b"x")
    with pytest.raises(Sealed):
        barrier.seal_system("p", b"x")


def test_unseal_with_threshold_shares(storage: SqliteStorage) -> None:
    b = Barrier(storage)
    _, shares = b.initialize(3, 2)
    row = make_vault(storage, b, "vault1")
    with storage.read() as tx:
        sealed_value = VaultView(tx, b, row).seal("secret", "s", "v1", "value", b"payload")
    b.seal()
    restarted = Barrier(storage)  # a new process: nothing in memory
    assert restarted.sealed and restarted.status().initialized
    status = restarted.submit_share(shares[2])
    assert status.sealed and status.progress == 1 and status.threshold == 2
    status = restarted.submit_share(shares[2])  # the same share again does not count twice
    assert status.sealed and status.progress == 1
    status = restarted.submit_share(shares[0])
    assert not status.sealed and status.progress == 0
    assert not restarted.sealed
    with storage.read() as tx:
        assert VaultView(tx, restarted, row).open("secret", "s", "v1", "value", sealed_value) == b"payload"
    # once unsealed, more shares change nothing
    assert not restarted.submit_share(shares[1]).sealed


def test_unseal_with_too_few_shares_stays_sealed(storage: SqliteStorage) -> None:
    b = Barrier(storage)
    _, shares = b.initialize(5, 3)
    b.seal()
    for count, share in enumerate(shares[:2], start=1):
        status = b.submit_share(share)
        assert status.sealed and status.progress == count
    assert b.sealed
    with pytest.raises(Sealed):
        b.new_vault_key("x")


@pytest.mark.parametrize("wrong", ["other-installation", "mixed", "garbage"])
def test_unseal_with_wrong_shares_fails_and_resets_progress(storage: SqliteStorage, tmp_path: Path,
                                                            wrong: str) -> None:
    b = Barrier(storage)
    _, shares = b.initialize(3, 2)
    b.seal()
    other_store, _, other_shares = other_installation(tmp_path, "other", 3, 2)
    other_store.close()
    if wrong == "other-installation":  # combine fine, but to another unseal key
        attempt = other_shares[:2]
    elif wrong == "mixed":  # one of ours, one of theirs
        attempt = [shares[0], other_shares[1]]
    else:
        attempt = [shares[0], "not a share at all"]
    assert b.submit_share(attempt[0]).progress == 1
    with pytest.raises(BadParameter) as info:
        b.submit_share(attempt[1])
    assert info.value.code == "InvalidUnsealKey"
    status = b.status()
    assert status.sealed and status.progress == 0
    # the right shares still work afterwards
    assert b.submit_share(shares[1]).progress == 1
    assert not b.submit_share(shares[2]).sealed


def test_unseal_with_key(storage: SqliteStorage) -> None:
    b = Barrier(storage)
    unseal_key, _ = b.initialize(1, 1)
    b.seal()
    with pytest.raises(BadParameter) as info:
        b.unseal_with_key(bytes(32))
    assert info.value.code == "InvalidUnsealKey"
    assert b.sealed
    with pytest.raises(BadParameter):
        b.unseal_with_key(unseal_key[:-1] + bytes([unseal_key[-1] ^ 1]))
    assert b.sealed
    b.unseal_with_key(unseal_key)
    assert not b.sealed


def test_system_values_roundtrip_and_are_bound_to_purpose(storage: SqliteStorage, barrier: Barrier) -> None:
    with storage.write() as tx:
        barrier.system_put(tx, "token-signing-key", b"pem bytes")
        raw = tx.meta_get("sealed:token-signing-key")
        assert raw is not None and b"pem bytes" not in raw
        assert barrier.system_get(tx, "token-signing-key") == b"pem bytes"
        assert barrier.system_get(tx, "missing") is None
    with pytest.raises(DecryptionFailed):
        barrier.open_system("other-purpose", raw)


# --- vault views --------------------------------------------------------------------------------

LOCATION = ("secret", "db-password", "0123abcd", "value")


def test_vault_view_open_with_right_aad(storage: SqliteStorage, barrier: Barrier) -> None:
    row = make_vault(storage, barrier, "vault1")
    with storage.read() as tx:
        view = VaultView(tx, barrier, row)
        sealed_value = view.seal(*LOCATION, b"s3cret")
        assert b"s3cret" not in sealed_value
        assert view.open(*LOCATION, sealed_value) == b"s3cret"
        # names and versions compare case-insensitively, as in Key Vault
        assert view.open("secret", "DB-Password", "0123ABCD", "value", sealed_value) == b"s3cret"
    # another in-memory barrier of the same installation (empty key cache) opens it too
    with storage.read() as tx:
        assert VaultView(tx, same_installation(barrier, storage), row).open(*LOCATION, sealed_value) == b"s3cret"


def test_data_of_one_vault_cannot_be_opened_by_another(storage: SqliteStorage, barrier: Barrier) -> None:
    row_a = make_vault(storage, barrier, "vault-a")
    row_b = make_vault(storage, barrier, "vault-b")
    assert row_a.wrapped_key != row_b.wrapped_key
    with storage.read() as tx:
        view_a = VaultView(tx, barrier, row_a)
        view_b = VaultView(tx, barrier, row_b)
        sealed_value = view_a.seal(*LOCATION, b"only for a")
        with pytest.raises(DecryptionFailed):
            view_b.open(*LOCATION, sealed_value)
        # nor by a view that has vault a's name but vault b's key
        impostor = VaultRow(**{**row_b.__dict__, "name": "vault-a"})
        with pytest.raises(DecryptionFailed):
            VaultView(tx, same_installation(barrier, storage), impostor).open(*LOCATION, sealed_value)
        assert view_a.open(*LOCATION, sealed_value) == b"only for a"


def same_installation(barrier: Barrier, storage: Storage) -> Barrier:
    """A second in-memory barrier of the same installation (empty vault-key cache)."""
    other = Barrier(storage)
    other._root, other._backup = barrier._root, barrier._backup
    return other


def test_wrapped_vault_key_is_bound_to_its_vault_name(storage: SqliteStorage, barrier: Barrier) -> None:
    row_a = make_vault(storage, barrier, "vault-a")
    moved = VaultRow(**{**row_a.__dict__, "name": "vault-b"})
    with pytest.raises(DecryptionFailed):
        barrier.vault_key(moved)


@pytest.mark.parametrize("position", range(4))
def test_sealed_field_is_bound_to_kind_name_version_and_field(storage: SqliteStorage, barrier: Barrier,
                                                                position: int) -> None:
    row = make_vault(storage, barrier, "vault1")
    with storage.read() as tx:
        view = VaultView(tx, barrier, row)
        sealed_value = view.seal(*LOCATION, b"bound")
        elsewhere = list(LOCATION)
        elsewhere[position] = {0: "key", 1: "db-password2", 2: "0123abce", 3: "tags"}[position]
        with pytest.raises(DecryptionFailed):
            view.open(*elsewhere, sealed_value)


# --- tampering ----------------------------------------------------------------------------------


def secret_in_db(storage: SqliteStorage, barrier: Barrier) -> tuple[VaultRow, str]:
    row = make_vault(storage, barrier, "vault1")
    with storage.write() as tx:
        created = secret.set(VaultView(tx, barrier, row), "db-password", "correct horse battery staple")
    return row, created.row.version


def raw_db(storage: SqliteStorage) -> sqlite3.Connection:
    return sqlite3.connect(storage.path, isolation_level=None)


@pytest.mark.parametrize("where", ["header", "nonce", "ciphertext", "tag"])
def test_tampered_payload_in_sqlite_fails_to_open(storage: SqliteStorage, barrier: Barrier, where: str) -> None:
    row, version = secret_in_db(storage, barrier)
    with storage.read() as tx:
        original = tx.version_get("vault1", "secret", "db-password", version)
    assert original is not None
    offset = {"header": 2, "nonce": 5 + 3, "ciphertext": 5 + 12 + 4, "tag": len(original.payload) - 1}[where]
    tampered = bytearray(original.payload)
    tampered[offset] ^= 0x01
    conn = raw_db(storage)
    conn.execute("UPDATE versions SET payload = ? WHERE version = ?", (bytes(tampered), version))
    conn.close()
    with storage.read() as tx:
        view = VaultView(tx, barrier, row)
        stored = tx.version_get("vault1", "secret", "db-password", version)
        assert stored is not None and stored.payload == bytes(tampered)
        with pytest.raises(DecryptionFailed):
            secret.get(view, "db-password", None)


def test_every_single_bit_flip_fails_never_garbage(storage: SqliteStorage, barrier: Barrier) -> None:
    row = make_vault(storage, barrier, "vault1")
    with storage.read() as tx:
        view = VaultView(tx, barrier, row)
        sealed_value = view.seal(*LOCATION, b"value")
        for offset in range(len(sealed_value)):
            for bit in (0x01, 0x80):
                tampered = bytearray(sealed_value)
                tampered[offset] ^= bit
                with pytest.raises(DecryptionFailed):
                    view.open(*LOCATION, bytes(tampered))
        for cut in (0, 1, 5, 17, 32, len(sealed_value) - 1):
            with pytest.raises(DecryptionFailed):
                view.open(*LOCATION, sealed_value[:cut])
        with pytest.raises(DecryptionFailed):
            view.open(*LOCATION, sealed_value + b"\x00")


def test_payload_swapped_between_versions_in_sqlite_fails(storage: SqliteStorage, barrier: Barrier) -> None:
    row, first = secret_in_db(storage, barrier)
    with storage.write() as tx:
        second = secret.set(VaultView(tx, barrier, row), "db-password", "another value").row.version
    conn = raw_db(storage)
    (payload,) = conn.execute("SELECT payload FROM versions WHERE version = ?", (first,)).fetchone()
    conn.execute("UPDATE versions SET payload = ? WHERE version = ?", (payload, second))
    conn.close()
    with storage.read() as tx:
        view = VaultView(tx, barrier, row)
        assert secret.get(view, "db-password", first).value == "correct horse battery staple"
        with pytest.raises(DecryptionFailed):
            secret.get(view, "db-password", second)


def test_tampered_wrapped_vault_key_fails(storage: SqliteStorage, barrier: Barrier) -> None:
    row, _ = secret_in_db(storage, barrier)
    tampered = bytearray(row.wrapped_key)
    tampered[-3] ^= 0x10
    conn = raw_db(storage)
    conn.execute("UPDATE vaults SET wrapped_key = ? WHERE name = 'vault1'", (bytes(tampered),))
    conn.close()
    fresh = same_installation(barrier, storage)
    with storage.read() as tx:
        stored = tx.vault_get("vault1")
        assert stored is not None
        with pytest.raises(DecryptionFailed):
            secret.get(VaultView(tx, fresh, stored), "db-password", None)


def test_tampered_sealed_root_key_fails_to_unseal(storage: SqliteStorage) -> None:
    b = Barrier(storage)
    unseal_key, _ = b.initialize(1, 1)
    b.seal()
    conn = raw_db(storage)
    (blob,) = conn.execute("SELECT value FROM meta WHERE key = 'root-key'").fetchone()
    tampered = bytearray(blob)
    tampered[20] ^= 0x04
    conn.execute("UPDATE meta SET value = ? WHERE key = 'root-key'", (bytes(tampered),))
    conn.close()
    with pytest.raises(BadParameter):
        b.unseal_with_key(unseal_key)
    assert b.sealed


# --- backups ------------------------------------------------------------------------------------


def test_backup_from_another_installation_fails_to_open(storage: SqliteStorage, barrier: Barrier,
                                                        tmp_path: Path) -> None:
    row, _ = secret_in_db(storage, barrier)
    with storage.read() as tx:
        blob = secret.backup(VaultView(tx, barrier, row), "db-password")
    assert b"correct horse" not in blob
    assert barrier.open_backup("secret", blob)  # this installation opens it
    with pytest.raises(DecryptionFailed):
        barrier.open_backup("key", blob)  # bound to the object kind

    other_store, other, _ = other_installation(tmp_path, "other")
    try:
        with pytest.raises(DecryptionFailed):
            other.open_backup("secret", blob)
        other_row = make_vault(other_store, other, "vault1")
        with other_store.write() as tx:
            view = VaultView(tx, other, other_row)
            with pytest.raises(BadParameter):
                secret.restore(view, blob)
            assert view.object_get("secret", "db-password") is None
    finally:
        other_store.close()


def test_backup_restores_in_another_vault_of_the_same_installation(storage: SqliteStorage,
                                                                   barrier: Barrier) -> None:
    row, _ = secret_in_db(storage, barrier)
    target = make_vault(storage, barrier, "vault2")
    with storage.read() as tx:
        blob = secret.backup(VaultView(tx, barrier, row), "db-password")
    with storage.write() as tx:
        restored = secret.restore(VaultView(tx, barrier, target), blob)
    assert restored.obj.vault == "vault2"
    with storage.read() as tx:
        got = secret.get(VaultView(tx, barrier, target), "db-password", None)
        assert got.value == "correct horse battery staple"
        # re-sealed under vault2's key: vault1's view cannot open vault2's copy
        copy = tx.version_get("vault2", "secret", "db-password", got.row.version)
        assert copy is not None
        with pytest.raises(DecryptionFailed):
            VaultView(tx, barrier, row).open("secret", "db-password", got.row.version, "value", copy.payload)
