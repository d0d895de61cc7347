"""barrier.hsm_seal against a SoftHSM2 token: the root key sealed by a token key, unsealing without shares, and
what happens when the token key is gone or the record is damaged (the shares still unseal)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from tests.support.softhsm import missing_reason, shared_token

from coffer.barrier import Barrier
from coffer.barrier.hsm_seal import RECORD, HsmSeal
from coffer.crypto.keys import KeyMaterial
from coffer.crypto.pkcs11 import Pkcs11Backend
from coffer.storage.sqlite import SqliteStorage

pytestmark = pytest.mark.skipif(missing_reason() is not None, reason=missing_reason() or "")


@pytest.fixture(scope="module")
def backend() -> Iterator[Pkcs11Backend]:
    token = shared_token()
    b = Pkcs11Backend(token.module, token.label, token.pin)
    yield b
    b.close()


@pytest.fixture()
def storage(tmp_path: Path) -> Iterator[SqliteStorage]:
    store = SqliteStorage(tmp_path / "coffer.db")
    store.migrate()
    yield store
    store.close()


def record(storage: SqliteStorage) -> dict[str, object]:
    with storage.read() as tx:
        raw = tx.meta_get(RECORD)
    assert raw is not None
    return dict(orjson.loads(raw))


def test_root_key_sealed_by_the_token_unseals_without_shares(storage: SqliteStorage,
                                                            backend: Pkcs11Backend) -> None:
    barrier = Barrier(storage)
    unseal_key, _ = barrier.initialize(1, 1)
    seal = HsmSeal(storage, backend)
    assert not seal.enabled
    assert seal.ensure(barrier.root_key()) is True
    assert seal.ensure(barrier.root_key()) is False  # there already, and its token key exists
    stored = record(storage)
    assert stored["token"] == backend.token_label and stored["alg"] == "A256GCM"
    key = KeyMaterial(kty="oct-HSM", private=str(stored["key"]).encode(), size=256)
    described = backend.describe(key)
    assert described["sensitive"] is True and described["extractable"] is False
    # the record holds no root key in the clear
    with storage.read() as tx:
        assert barrier.root_key() not in (tx.meta_get(RECORD) or b"")

    fresh = Barrier(storage)  # a restart
    assert fresh.sealed
    assert seal.unseal(fresh) is True and not fresh.sealed and seal.error is None
    assert fresh.root_key() == barrier.root_key()
    assert seal.status() == {"configured": True, "token": backend.token_label, "available": True,
                             "autoUnseal": True, "error": None}
    # the shares (here: the unseal key) still unseal as before
    other = Barrier(storage)
    other.unseal_with_key(unseal_key)
    assert other.root_key() == barrier.root_key()
    backend.destroy(key)


def test_a_lost_token_key_leaves_the_server_sealed_and_is_replaced_after_a_share_unseal(
        storage: SqliteStorage, backend: Pkcs11Backend) -> None:
    barrier = Barrier(storage)
    unseal_key, _ = barrier.initialize(1, 1)
    seal = HsmSeal(storage, backend)
    seal.ensure(barrier.root_key())
    first = record(storage)
    backend.destroy(KeyMaterial(kty="oct-HSM", private=str(first["key"]).encode(), size=256))

    restarted = Barrier(storage)
    assert seal.unseal(restarted) is False and restarted.sealed
    assert seal.error is not None and "holds no object for this key" in seal.error
    assert seal.status()["error"] == seal.error

    restarted.unseal_with_key(unseal_key)  # the recovery path
    assert seal.ensure(restarted.root_key()) is True  # sealed anew, with a new token key
    second = record(storage)
    assert second["key"] != first["key"]
    assert seal.unseal(Barrier(storage)) is True
    backend.destroy(KeyMaterial(kty="oct-HSM", private=str(second["key"]).encode(), size=256))


def test_a_damaged_record_or_another_installations_record_does_not_unseal(storage: SqliteStorage,
                                                                         backend: Pkcs11Backend,
                                                                         tmp_path: Path) -> None:
    barrier = Barrier(storage)
    barrier.initialize(1, 1)
    seal = HsmSeal(storage, backend)
    seal.ensure(barrier.root_key())
    good = record(storage)

    damaged = dict(good, value=good["tag"])
    with storage.write() as tx:
        tx.meta_put(RECORD, orjson.dumps(damaged))
    assert seal.unseal(Barrier(storage)) is False
    assert seal.error == "HSM auto-unseal failed: Decryption failed."

    # a record that decrypts, but to the root key of another installation
    other_storage = SqliteStorage(tmp_path / "other.db")
    other_storage.migrate()
    other = Barrier(other_storage)
    other.initialize(1, 1)
    other_seal = HsmSeal(other_storage, backend)
    other_seal.ensure(other.root_key())
    with other_storage.read() as tx:
        foreign = tx.meta_get(RECORD)
    assert foreign is not None
    with storage.write() as tx:
        tx.meta_put(RECORD, foreign)
    target = Barrier(storage)
    assert seal.unseal(target) is False and target.sealed
    assert seal.error == "HSM auto-unseal failed: The root key is not valid for this installation."
    other_storage.close()
    for doc in (good, orjson.loads(foreign)):
        backend.destroy(KeyMaterial(kty="oct-HSM", private=str(doc["key"]).encode(), size=256))


def test_an_unavailable_token_is_explained(storage: SqliteStorage, backend: Pkcs11Backend) -> None:
    barrier = Barrier(storage)
    barrier.initialize(1, 1)
    HsmSeal(storage, backend).ensure(barrier.root_key())
    missing = Pkcs11Backend(backend.module, "not-there", "1234")
    seal = HsmSeal(storage, missing)
    seal.probe()
    assert seal.status() == {
        "configured": True, "token": "not-there", "available": False, "autoUnseal": True,
        "error": f"No PKCS#11 token labelled 'not-there' in {backend.module}",
    }
    assert seal.unseal(Barrier(storage)) is False
    assert seal.error == f"HSM auto-unseal failed: No PKCS#11 token labelled 'not-there' in {backend.module}"
    assert seal.ensure(barrier.root_key()) is False  # nothing written while the token is away
    assert seal.error is not None and seal.error.startswith("Cannot seal the root key with the HSM")
    stored = record(storage)
    backend.destroy(KeyMaterial(kty="oct-HSM", private=str(stored["key"]).encode(), size=256))
