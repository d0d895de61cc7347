"""HSM-backed certificates in process, against a SoftHSM2 token: the scheduler's AutoRenew of RSA-HSM / EC-HSM
certificates (reuse_key true and false), the internal CA with its key in the token (default on a premium vault,
rotation and deletion take old keys out of the token), and every way a token key can become unused (a cancelled,
deleted or purged pending operation, a refused create) removing it from the token, except a reused key that a
version still holds."""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from tests.support.softhsm import missing_reason

from coffer.app import Coffer
from coffer.barrier import VaultView
from coffer.crypto.keys import KeyMaterial
from coffer.errors import BadParameter
from coffer.objects import certificate, vault
from coffer.objects import key as keys

pytestmark = pytest.mark.skipif(missing_reason() is not None, reason=missing_reason() or "")

DAY = 86400
URL = "https://dev.localhost"
SPKI = serialization.PublicFormat.SubjectPublicKeyInfo


@pytest.fixture()
def coffer(hsm_in_process: Coffer) -> Coffer:
    return hsm_in_process


def _write(coffer: Coffer, run: Any, vault_name: str = "dev") -> Any:
    with coffer.storage.write() as tx:
        return run(VaultView(tx, coffer.barrier, tx.vault_get(vault_name)))  # type: ignore[arg-type]


def _read(coffer: Coffer, run: Any) -> Any:
    with coffer.storage.read() as tx:
        return run(VaultView(tx, coffer.barrier, tx.vault_get("dev")))  # type: ignore[arg-type]


def _policy(kty: str, issuer: str = "Self", *, reuse: bool = False, **key: Any) -> dict[str, Any]:
    return {
        "issuer": {"name": issuer},
        "x509_props": {"subject": "CN=hsm.example", "validity_months": 12},
        "key_props": {"kty": kty, "reuse_key": reuse, **key},
        "lifetime_actions": [{"trigger": {"lifetime_percentage": 80}, "action": {"action_type": "AutoRenew"}}],
    }


def _create(coffer: Coffer, name: str, policy: dict[str, Any]) -> Any:
    return _write(
        coffer, lambda view: certificate.create(view, coffer.key_backends, name, {"policy": policy}, vault_url=URL)
    )


def _key_rows(coffer: Coffer, name: str) -> list[Any]:
    return list(_read(coffer, lambda view: view.version_list(keys.KIND, name, after_seq=None, limit=100)))


def _references(coffer: Coffer, name: str) -> list[KeyMaterial]:
    def run(view: VaultView) -> list[KeyMaterial]:
        return [
            KeyMaterial(kty=r.extra["kty"], private=view.open(keys.KIND, r.name, r.version, "key", r.payload))
            for r in view.version_list(keys.KIND, name, after_seq=None, limit=100)
        ]

    return list(_read(coffer, run))


def _exists(coffer: Coffer, material: KeyMaterial) -> bool:
    assert coffer.hsm_backend is not None
    return bool(coffer.hsm_backend.exists(material))  # type: ignore[attr-defined]


def _token_objects(coffer: Coffer) -> int:
    backend: Any = coffer.hsm_backend
    with backend._session() as session:
        return len(list(session.get_objects()))


def _pending_reference(coffer: Coffer, name: str) -> KeyMaterial:
    def run(view: VaultView) -> KeyMaterial:
        obj, pending = certificate.pending_operation(view, name)
        return certificate._pending_material(view, obj, pending)

    material: KeyMaterial = _read(coffer, run)
    assert material.private.startswith(b"pkcs11:")
    return material


def test_dev_vault_is_premium(coffer: Coffer) -> None:
    assert _read(coffer, lambda view: view.vault.sku) == "premium"


@pytest.mark.parametrize(
    ("kty", "key", "reuse"),
    [
        ("RSA-HSM", {"key_size": 2048}, False),
        ("RSA-HSM", {"key_size": 2048}, True),
        ("EC-HSM", {"crv": "P-384"}, False),
        ("EC-HSM", {"crv": "P-256"}, True),
    ],
)
def test_auto_renew_of_hsm_certificates(coffer: Coffer, kty: str, key: dict[str, Any], reuse: bool) -> None:
    _create(coffer, "renewing", _policy(kty, reuse=reuse, **key))
    assert coffer.run_certificate_policies(int(time.time()) + 300 * DAY) == 1
    rows = _key_rows(coffer, "renewing")
    references = _references(coffer, "renewing")
    assert len(rows) == 2 and all(r.extra["hsm"] is True and r.extra["kty"] == kty for r in rows)
    assert all(m.private.startswith(b"pkcs11:") and _exists(coffer, m) for m in references)
    assert (references[0].private == references[1].private) is reuse
    versions = _read(coffer, lambda view: certificate.list_versions(view, "renewing", after_seq=None, limit=10))
    spkis = set()
    for version in versions:
        cert = x509.load_der_x509_certificate(base64.b64decode(version.cer))
        cert.verify_directly_issued_by(cert)
        spkis.add(cert.public_key().public_bytes(serialization.Encoding.DER, SPKI))
        secret = _read(coffer, lambda view, v=version.row.version: certificate.secrets.get(view, "renewing", v))
        p12_key, leaf, _ = pkcs12.load_key_and_certificates(base64.b64decode(secret.value), None)
        assert p12_key is None and leaf is None  # the certificate only
    assert len(spkis) == (1 if reuse else 2)


def test_internal_ca_in_the_token(coffer: Coffer) -> None:
    info = _write(
        coffer,
        lambda view: certificate.ca_create(view, coffer.key_backends, "corp", subject="CN=Corp CA", validity_years=5),
    )
    assert info["hsm"] is True  # the default on a premium vault of a server with an HSM

    def generation_keys(view: VaultView) -> list[KeyMaterial | None]:
        ca = view.object_get(certificate.CA_KIND, "corp")
        assert ca is not None
        return [certificate._ca_material(view, ca, g) if g.get("key") else None for g in ca.data["generations"]]

    first = _read(coffer, generation_keys)
    assert len(first) == 1 and first[0] is not None and first[0].kty == "RSA-HSM" and _exists(coffer, first[0])
    _create(coffer, "leaf", _policy("EC", "corp", crv="P-256"))
    root = x509.load_der_x509_certificate(base64.b64decode(info["current"]["cer"]))
    leaf = _read(coffer, lambda view: certificate.get(view, "leaf", None))
    x509.load_der_x509_certificate(base64.b64decode(leaf.cer)).verify_directly_issued_by(root)

    rotated = _write(coffer, lambda view: certificate.ca_rotate(view, coffer.key_backends, "corp"))
    after = _read(coffer, generation_keys)
    assert after[0] is None and after[1] is not None and _exists(coffer, after[1])
    assert not _exists(coffer, first[0])  # the retired key left the token
    assert coffer.run_certificate_policies(int(time.time()) + 300 * DAY) == 1  # renewal signs with the new key
    new_root = x509.load_der_x509_certificate(base64.b64decode(rotated["current"]["cer"]))
    renewed = _read(coffer, lambda view: certificate.get(view, "leaf", None))
    x509.load_der_x509_certificate(base64.b64decode(renewed.cer)).verify_directly_issued_by(new_root)

    _write(coffer, lambda view: certificate.ca_delete(view, coffer.key_backends, "corp"))
    assert not _exists(coffer, after[1])
    with pytest.raises(BadParameter):
        _create(coffer, "orphan", _policy("EC", "corp", crv="P-256"))  # no such issuer any more


def test_ca_protection_choices(coffer: Coffer) -> None:
    software = _write(
        coffer,
        lambda view: certificate.ca_create(
            view, coffer.key_backends, "soft", subject=None, validity_years=1, hsm=False
        ),
    )
    assert software["hsm"] is False
    with coffer.storage.write() as tx:
        dev = tx.vault_get("dev")
        assert dev is not None
        vault.create(tx, coffer.barrier, "std", dev.tenant_id, {"sku": "standard"})
    standard = _write(
        coffer,
        lambda view: certificate.ca_create(view, coffer.key_backends, "stdca", subject=None, validity_years=1),
        "std",
    )
    assert standard["hsm"] is False  # the default on a standard vault
    with pytest.raises(BadParameter, match="Hardware key operation not allowed on standard vault"):
        _write(
            coffer,
            lambda view: certificate.ca_create(
                view, coffer.key_backends, "hsmca", subject=None, validity_years=1, hsm=True
            ),
            "std",
        )
    with pytest.raises(BadParameter, match="Hardware key operation not allowed on standard vault"):
        _write(
            coffer,
            lambda view: certificate.create(
                view, coffer.key_backends, "c", {"policy": _policy("EC-HSM")}, vault_url=URL
            ),
            "std",
        )


def test_unused_pending_keys_leave_the_token(coffer: Coffer) -> None:
    # cancelled, then deleted
    _create(coffer, "cancelled", _policy("EC-HSM", "Unknown"))
    cancelled = _pending_reference(coffer, "cancelled")
    assert _exists(coffer, cancelled)
    _write(
        coffer,
        lambda view: certificate.cancel_pending(
            view, coffer.key_backends, "cancelled", {"cancellation_requested": True}
        ),
    )
    assert not _exists(coffer, cancelled)
    _write(coffer, lambda view: certificate.delete_pending(view, coffer.key_backends, "cancelled"))
    # deleted while in progress
    _create(coffer, "deleted", _policy("RSA-HSM", "Unknown"))
    deleted = _pending_reference(coffer, "deleted")
    _write(coffer, lambda view: certificate.delete_pending(view, coffer.key_backends, "deleted"))
    assert not _exists(coffer, deleted)
    # a certificate purged with a pending operation: the versions' keys and the pending key go
    _create(coffer, "purged", _policy("EC-HSM"))
    _create(coffer, "purged", _policy("EC-HSM", "Unknown"))
    waiting = _pending_reference(coffer, "purged")
    version_keys = _references(coffer, "purged")
    _write(coffer, lambda view: certificate.delete(view, "purged"))
    _write(coffer, lambda view: certificate.purge(view, coffer.key_backends, "purged"))
    assert not any(_exists(coffer, m) for m in [waiting, *version_keys])


def test_a_reused_key_stays_with_its_version(coffer: Coffer) -> None:
    _create(coffer, "reused", _policy("EC-HSM", reuse=True))
    (held,) = _references(coffer, "reused")
    _create(coffer, "reused", _policy("EC-HSM", "Unknown", reuse=True))
    assert _pending_reference(coffer, "reused").private == held.private
    _write(
        coffer,
        lambda view: certificate.cancel_pending(view, coffer.key_backends, "reused", {"cancellation_requested": True}),
    )
    assert _exists(coffer, held)


def test_a_refused_create_leaves_no_token_key(coffer: Coffer) -> None:
    before = _token_objects(coffer)
    bad_subject = _policy("EC-HSM")
    bad_subject["x509_props"]["subject"] = "CN=a, =b"
    for policy in (bad_subject, {**_policy("RSA-HSM"), "x509_props": {"subject": "CN=x", "ekus": ["not-an-oid"]}}):
        with pytest.raises(BadParameter):
            _create(coffer, "refused", policy)
    with pytest.raises(BadParameter, match="exportable"):
        _create(coffer, "refused", _policy("EC-HSM", exportable=True))
    assert _token_objects(coffer) == before
