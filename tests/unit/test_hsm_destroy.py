"""HSM objects leave the token only once the transaction that drops their key has committed (key.HSM_DESTROY_QUEUE):
a purge whose transaction fails keeps a working key, a token that is away when the purge commits is caught up by
the maintenance job, and deleting a vault takes its HSM objects (keys, deleted keys, pending operations, internal
CA keys) out of the token too. In process, against a SoftHSM2 token."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from tests.support.inprocess import server_client
from tests.support.softhsm import missing_reason

from coffer.app import Coffer
from coffer.barrier import VaultView
from coffer.crypto.keys import KeyBackendUnavailable, KeyMaterial, KeyOperationError
from coffer.errors import BadParameter
from coffer.objects import certificate, vault
from coffer.objects import key as keys

pytestmark = pytest.mark.skipif(missing_reason() is not None, reason=missing_reason() or "")

DIGEST = b"\x01" * 32


class Boom(Exception):
    pass


@pytest.fixture()
def coffer(hsm_in_process: Coffer) -> Coffer:
    return hsm_in_process


def _write(coffer: Coffer, run: Any, vault_name: str = "dev") -> Any:
    with coffer.storage.write() as tx:
        return run(VaultView(tx, coffer.barrier, tx.vault_get(vault_name)))  # type: ignore[arg-type]


def _materials(coffer: Coffer, name: str, vault_name: str = "dev") -> list[KeyMaterial]:
    with coffer.storage.read() as tx:
        view = VaultView(tx, coffer.barrier, tx.vault_get(vault_name))  # type: ignore[arg-type]
        rows = view.version_list(keys.KIND, name, after_seq=None, limit=100)
        return [keys._material(view, row) for row in rows]


def _exists(coffer: Coffer, material: KeyMaterial) -> bool:
    assert coffer.hsm_backend is not None
    return bool(coffer.hsm_backend.exists(material))  # type: ignore[attr-defined]


def _queued(coffer: Coffer) -> list[str]:
    with coffer.storage.read() as tx:
        return [entry for entry, _ in tx.meta_list(keys.HSM_DESTROY_QUEUE, 100)]


def _hsm_key(coffer: Coffer, name: str, vault_name: str = "dev") -> KeyMaterial:
    _write(coffer, lambda view: keys.create(view, coffer.key_backends, name, {"kty": "EC-HSM", "crv": "P-256"}),
           vault_name)
    [material] = _materials(coffer, name, vault_name)
    assert _exists(coffer, material)
    return material


def test_a_purge_whose_transaction_fails_keeps_the_hsm_key(coffer: Coffer) -> None:
    material = _hsm_key(coffer, "kept")
    _write(coffer, lambda view: keys.delete(view, "kept"))
    with pytest.raises(Boom), coffer.storage.write() as tx:
        keys.purge(VaultView(tx, coffer.barrier, tx.vault_get("dev")), coffer.key_backends, "kept")  # type: ignore[arg-type]
        raise Boom()  # the commit fails after the purge
    assert _exists(coffer, material) and _queued(coffer) == []
    # so the key comes back whole: recovered, it still signs with its token object
    _write(coffer, lambda view: keys.recover(view, "kept"))
    assert coffer.hsm_backend is not None
    assert coffer.hsm_backend.sign(material, "ES256", DIGEST)

    # a purge undone by its savepoint (as the group commit undoes one failed write) leaves it alone as well
    _write(coffer, lambda view: keys.delete(view, "kept"))
    with coffer.storage.write() as tx:
        view = VaultView(tx, coffer.barrier, tx.vault_get("dev"))  # type: ignore[arg-type]
        with pytest.raises(Boom), tx.savepoint():
            keys.purge(view, coffer.key_backends, "kept")
            raise Boom()
    assert _exists(coffer, material) and _queued(coffer) == []

    _write(coffer, lambda view: keys.purge(view, coffer.key_backends, "kept"))  # committed: the object goes
    assert not _exists(coffer, material) and _queued(coffer) == []


def test_an_hsm_away_at_the_purge_is_caught_up_by_the_maintenance_job(
    coffer: Coffer, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = _hsm_key(coffer, "one"), _hsm_key(coffer, "two")
    backend: Any = coffer.hsm_backend

    def away(material: KeyMaterial) -> None:
        raise KeyBackendUnavailable("the token is not reachable")

    with monkeypatch.context() as patch:
        patch.setattr(backend, "destroy", away)
        for name in ("one", "two"):
            _write(coffer, lambda view, n=name: keys.delete(view, n))
            _write(coffer, lambda view, n=name: keys.purge(view, coffer.key_backends, n))  # reported done
        assert len(_queued(coffer)) == 2  # and remembered
        assert coffer.run_jobs_if_leader(int(time.time()), due=True) == []  # still away: nothing to report
    assert _exists(coffer, first) and _exists(coffer, second) and len(_queued(coffer)) == 2
    done = coffer.run_jobs_if_leader(int(time.time()), due=True)
    assert "destroyed 2 HSM objects left over from earlier purges" in done
    assert not _exists(coffer, first) and not _exists(coffer, second) and _queued(coffer) == []


def test_a_queue_entry_naming_no_token_object_is_dropped(coffer: Coffer) -> None:
    with coffer.storage.write() as tx:
        tx.meta_put(keys.HSM_DESTROY_QUEUE + "not-a-reference", b"EC-HSM", touch=False)
    assert coffer.destroy_queued_hsm_objects() == 1
    assert _queued(coffer) == []


def test_deleting_a_vault_takes_its_hsm_objects_out_of_the_token(coffer: Coffer) -> None:
    with coffer.storage.write() as tx:
        dev = tx.vault_get("dev")
        assert dev is not None
        vault.create(tx, coffer.barrier, "doomed", dev.tenant_id, {"sku": "premium"})
    live = _hsm_key(coffer, "live", "doomed")
    _hsm_key(coffer, "rotated", "doomed")
    _write(coffer, lambda view: keys.rotate(view, coffer.key_backends, "rotated"), "doomed")
    rotated = _materials(coffer, "rotated", "doomed")
    deleted = _hsm_key(coffer, "deleted", "doomed")
    _write(coffer, lambda view: keys.delete(view, "deleted"), "doomed")
    policy = {
        "issuer": {"name": "Unknown"},
        "x509_props": {"subject": "CN=pending.example", "validity_months": 12},
        "key_props": {"kty": "EC-HSM", "crv": "P-256", "reuse_key": False},
    }
    _write(coffer, lambda view: certificate.create(view, coffer.key_backends, "csr", {"policy": policy},
                                                   vault_url="https://doomed.localhost"), "doomed")

    def pending(view: VaultView) -> KeyMaterial:
        obj, operation = certificate.pending_operation(view, "csr")
        return certificate._pending_material(view, obj, operation)

    pending_key = _write(coffer, pending, "doomed")
    _write(coffer, lambda view: certificate.ca_create(view, coffer.key_backends, "corp", subject=None,
                                                      validity_years=1, hsm=True), "doomed")

    def ca_keys(view: VaultView) -> list[KeyMaterial]:
        ca = view.object_get(certificate.CA_KIND, "corp")
        assert ca is not None
        return [certificate._ca_material(view, ca, g) for g in ca.data["generations"]]

    ca_key = _write(coffer, ca_keys, "doomed")
    everything = [live, *rotated, deleted, pending_key, *ca_key]
    assert len(everything) == 6 and all(_exists(coffer, m) for m in everything)
    other = _hsm_key(coffer, "elsewhere")  # in another vault: stays

    async def delete() -> httpx.Response:
        async with server_client(coffer) as client:
            return await client.delete("/admin/vaults/doomed")

    response = asyncio.run(delete())
    assert response.status_code == 204, response.text
    assert not any(_exists(coffer, m) for m in everything)
    assert _exists(coffer, other) and _queued(coffer) == []


def _premium_vault(coffer: Coffer, name: str) -> None:
    with coffer.storage.write() as tx:
        dev = tx.vault_get("dev")
        assert dev is not None
        vault.create(tx, coffer.barrier, name, dev.tenant_id, {"sku": "premium"})


def _signs(coffer: Coffer, material: KeyMaterial) -> bool:
    assert coffer.hsm_backend is not None
    try:
        return bool(coffer.hsm_backend.sign(material, "ES256", DIGEST))
    except Exception:
        return False


def test_a_restored_hsm_key_owns_copies_of_its_token_objects(coffer: Coffer) -> None:
    """Backup in one vault, restore in another, then delete the first vault (or purge the original): the restored
    key keeps working, because the restore copied the token objects instead of sharing them."""
    _premium_vault(coffer, "source")
    original = _hsm_key(coffer, "moving", "source")
    blob = _write(coffer, lambda view: keys.backup(view, "moving"), "source")
    _write(coffer, lambda view: keys.restore(view, coffer.key_backends, blob))  # into dev
    [restored] = _materials(coffer, "moving")
    assert restored.private != original.private and restored.public == original.public
    assert _exists(coffer, restored) and _signs(coffer, restored)

    async def delete_source() -> httpx.Response:
        async with server_client(coffer) as client:
            return await client.delete("/admin/vaults/source")

    assert asyncio.run(delete_source()).status_code == 204
    assert not _exists(coffer, original)  # the source vault's objects went with it
    assert _exists(coffer, restored) and _signs(coffer, restored)  # the copy did not

    # the backup again, once its token objects are gone: refused, and nothing half-restored
    _write(coffer, lambda view: keys.delete(view, "moving"))
    _write(coffer, lambda view: keys.purge(view, coffer.key_backends, "moving"))
    objects = _token_count(coffer)
    with pytest.raises(BadParameter, match="holds no object for this key"):
        _write(coffer, lambda view: keys.restore(view, coffer.key_backends, blob))
    assert _materials(coffer, "moving") == [] and _token_count(coffer) == objects


def test_a_restored_hsm_certificate_keeps_working_after_the_original_is_purged(coffer: Coffer) -> None:
    policy = {
        "issuer": {"name": "Self"},
        "x509_props": {"subject": "CN=moving.example", "validity_months": 12},
        "key_props": {"kty": "EC-HSM", "crv": "P-256", "reuse_key": False},
    }
    _premium_vault(coffer, "source")
    _write(coffer, lambda view: certificate.create(view, coffer.key_backends, "cert", {"policy": policy},
                                                   vault_url="https://source.localhost"), "source")
    [original] = _materials(coffer, "cert", "source")
    blob = _write(coffer, lambda view: certificate.backup(view, "cert"), "source")
    _write(coffer, lambda view: certificate.restore(view, coffer.key_backends, blob))
    [restored] = _materials(coffer, "cert")
    assert restored.private != original.private
    _write(coffer, lambda view: certificate.delete(view, "cert"), "source")
    _write(coffer, lambda view: certificate.purge(view, coffer.key_backends, "cert"), "source")
    assert not _exists(coffer, original) and _signs(coffer, restored)


def _token_count(coffer: Coffer) -> int:
    backend: Any = coffer.hsm_backend
    with backend._session() as session:
        return len(list(session.get_objects()))


def test_an_object_that_fails_to_go_stays_queued_and_the_others_go(
    coffer: Coffer, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = _hsm_key(coffer, "stuck"), _hsm_key(coffer, "free")
    backend: Any = coffer.hsm_backend
    real = backend.destroy

    def fussy(material: KeyMaterial) -> None:
        if material.private == first.private:
            raise RuntimeError("CKR_ACTION_PROHIBITED")  # not one of the backend's own errors
        real(material)

    with monkeypatch.context() as patch:
        patch.setattr(backend, "destroy", fussy)
        for name in ("stuck", "free"):
            _write(coffer, lambda view, n=name: keys.delete(view, n))
            _write(coffer, lambda view, n=name: keys.purge(view, coffer.key_backends, n))
        assert _exists(coffer, first) and not _exists(coffer, second)
        assert len(_queued(coffer)) == 1
        # the maintenance run goes on with its other jobs
        assert coffer.run_jobs_if_leader(int(time.time()), due=True) == []
    assert coffer.destroy_queued_hsm_objects() == 1
    assert not _exists(coffer, first) and _queued(coffer) == []


def test_a_purge_destroys_all_its_versions_after_one_commit_in_one_go(
    coffer: Coffer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _hsm_key(coffer, "versions")
    for _ in range(2):
        _write(coffer, lambda view: keys.rotate(view, coffer.key_backends, "versions"))
    materials = _materials(coffer, "versions")
    calls: list[list[str]] = []
    real = coffer.destroy_queued_hsm_objects

    def counted(entries: list[str] | None = None, limit: int = 500) -> int:
        calls.append(list(entries or []))
        return real(entries, limit)

    monkeypatch.setattr(coffer.key_backends, "destroy_queued", counted)
    _write(coffer, lambda view: keys.delete(view, "versions"))
    _write(coffer, lambda view: keys.purge(view, coffer.key_backends, "versions"))
    assert len(calls) == 1 and len(calls[0]) == 3  # one callback for the transaction's three objects
    assert not any(_exists(coffer, m) for m in materials) and _queued(coffer) == []


def test_a_token_that_does_not_copy_keys_refuses_the_restore_and_keeps_nothing(
    coffer: Coffer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SoftHSM2 copies every key; a token that refuses (CKA_COPYABLE false, no C_CopyObject) refuses at the second
    version here: the copy of the first is removed again, nothing is restored, the original keeps working."""
    _hsm_key(coffer, "fixed")
    _write(coffer, lambda view: keys.rotate(view, coffer.key_backends, "fixed"))
    originals = _materials(coffer, "fixed")
    blob = _write(coffer, lambda view: keys.backup(view, "fixed"))
    _premium_vault(coffer, "elsewhere")
    backend: Any = coffer.hsm_backend
    real, calls = backend.duplicate, []

    def refuses_the_second(material: KeyMaterial) -> KeyMaterial:
        calls.append(material)
        if len(calls) == 2:
            raise KeyOperationError("The PKCS#11 token 'x' does not allow copying this key (ActionProhibited)")
        return real(material)  # type: ignore[no-any-return]

    monkeypatch.setattr(backend, "duplicate", refuses_the_second)
    objects = _token_count(coffer)
    with pytest.raises(BadParameter, match="does not allow copying this key"):
        _write(coffer, lambda view: keys.restore(view, coffer.key_backends, blob), "elsewhere")
    assert len(calls) == 2 and _token_count(coffer) == objects  # the first copy went again
    assert _materials(coffer, "fixed", "elsewhere") == []
    assert all(_signs(coffer, m) for m in originals)
