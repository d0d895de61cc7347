"""The scheduler's certificate lifetime-action job, in process: AutoRenew issues a new version once due (issuer
Self and an internal CA), never twice for a version; EmailContacts is recorded once per version; issuer Unknown
gets a new pending operation with a new CSR."""

from __future__ import annotations

import base64
import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from coffer.app import Coffer
from coffer.barrier import VaultView
from coffer.config import Config
from coffer.objects import certificate

DAY = 86400
URL = "https://dev.localhost"


@pytest.fixture()
def coffer(tmp_path: Path) -> Iterator[Coffer]:
    app = Coffer(Config(data_dir=tmp_path / "data", dev=True))
    app.start_dev()
    yield app
    app.close()


def _create(coffer: Coffer, name: str, issuer: str, actions: list[dict[str, object]]) -> None:
    policy = {
        "issuer": {"name": issuer},
        "x509_props": {"subject": f"CN={name}", "validity_months": 12},
        "key_props": {"kty": "EC", "crv": "P-256"},
        "lifetime_actions": actions,
    }
    with coffer.storage.write() as tx:
        view = VaultView(tx, coffer.barrier, tx.vault_get("dev"))  # type: ignore[arg-type]
        certificate.create(view, coffer.key_backends, name, {"policy": policy}, vault_url=URL)


def _versions(coffer: Coffer, name: str) -> list[certificate.Certificate]:
    with coffer.storage.read() as tx:
        view = VaultView(tx, coffer.barrier, tx.vault_get("dev"))  # type: ignore[arg-type]
        return certificate.list_versions(view, name, after_seq=None, limit=100)


def _audit(coffer: Coffer, operation: str) -> int:
    records = [orjson.loads(line) for line in coffer.config.audit_path.read_bytes().splitlines()]
    return sum(1 for r in records if r["operationName"] == operation)


def _renew(trigger: dict[str, int]) -> list[dict[str, object]]:
    return [{"trigger": trigger, "action": {"action_type": "AutoRenew"}}]


def test_auto_renew_when_due_makes_one_new_version(coffer: Coffer) -> None:
    _create(coffer, "renewing", "Self", _renew({"lifetime_percentage": 80}))
    now = int(time.time())
    assert coffer.run_certificate_policies(now) == 0  # not due
    assert len(_versions(coffer, "renewing")) == 1
    due = now + 300 * DAY
    assert coffer.run_certificate_policies(due) == 1
    assert coffer.run_certificate_policies(due) == 0  # idempotent
    versions = _versions(coffer, "renewing")
    assert len(versions) == 2
    assert _audit(coffer, "CertificateAutoRenew") == 1
    with coffer.storage.read() as tx:
        view = VaultView(tx, coffer.barrier, tx.vault_get("dev"))  # type: ignore[arg-type]
        latest = certificate.get(view, "renewing", None)
    assert latest.policy["issuer"]["name"] == "Self" and latest.policy["lifetime_actions"][0]["trigger"] == {
        "lifetime_percentage": 80
    }


def test_days_before_expiry_not_due_does_nothing(coffer: Coffer) -> None:
    _create(coffer, "later", "Self", _renew({"days_before_expiry": 30}))
    now = int(time.time())
    assert coffer.run_certificate_policies(now + 200 * DAY) == 0
    assert len(_versions(coffer, "later")) == 1
    assert coffer.run_certificate_policies(now + 340 * DAY) == 1
    assert len(_versions(coffer, "later")) == 2


def test_email_contacts_recorded_once(coffer: Coffer) -> None:
    _create(
        coffer,
        "notifying",
        "Self",
        [{"trigger": {"days_before_expiry": 30}, "action": {"action_type": "EmailContacts"}}],
    )
    due = int(time.time()) + 350 * DAY
    assert coffer.run_certificate_policies(due) == 1
    assert coffer.run_certificate_policies(due) == 0
    assert _audit(coffer, "CertificateNearExpiryEventGridNotification") == 1
    assert len(_versions(coffer, "notifying")) == 1  # notify only: no new version


def test_unknown_issuer_gets_a_new_pending_csr(coffer: Coffer) -> None:
    _create(coffer, "external", "Unknown", _renew({"lifetime_percentage": 50}))
    with coffer.storage.read() as tx:
        view = VaultView(tx, coffer.barrier, tx.vault_get("dev"))  # type: ignore[arg-type]
        _, first = certificate.pending_operation(view, "external")
    # merge a signed certificate for the pending key, so a version exists
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    csr = x509.load_der_x509_csr(base64.b64decode(first["csr"]))
    start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(x509.Name.from_rfc4514_string("CN=outside"))
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=100))
        .sign(ca_key, hashes.SHA256())
    )
    der = leaf.public_bytes(serialization.Encoding.DER)
    with coffer.storage.write() as tx:
        view = VaultView(tx, coffer.barrier, tx.vault_get("dev"))  # type: ignore[arg-type]
        certificate.merge(view, "external", {"x5c": [base64.b64encode(der).decode()]}, vault_url=URL)
    due = int(time.time()) + 60 * DAY
    assert coffer.run_certificate_policies(due) == 1
    assert coffer.run_certificate_policies(due) == 0
    with coffer.storage.read() as tx:
        view = VaultView(tx, coffer.barrier, tx.vault_get("dev"))  # type: ignore[arg-type]
        _, second = certificate.pending_operation(view, "external")
    assert second["status"] == "inProgress"
    assert second["csr"] != first["csr"] and second["request_id"] != first["request_id"]
    assert len(_versions(coffer, "external")) == 1  # the new version comes with the merge


def test_internal_ca_issuer_renews_with_chain(coffer: Coffer) -> None:
    with coffer.storage.write() as tx:
        view = VaultView(tx, coffer.barrier, tx.vault_get("dev"))  # type: ignore[arg-type]
        info = certificate.ca_create(view, coffer.key_backends, "corp", subject="CN=Corp CA", validity_years=5)
    _create(coffer, "leaf", "corp", _renew({"lifetime_percentage": 80}))
    assert coffer.run_certificate_policies(int(time.time()) + 300 * DAY) == 1
    ca = x509.load_der_x509_certificate(base64.b64decode(info["current"]["cer"]))
    for version in _versions(coffer, "leaf"):
        cert = x509.load_der_x509_certificate(base64.b64decode(version.cer))
        cert.verify_directly_issued_by(ca)


def test_a_renewal_that_fails_half_way_leaves_nothing_and_the_others_renew(
    coffer: Coffer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first renewal fails after its new version was written (its audit record could not be written): that
    version is undone, and the next certificate still renews in the same run."""
    for name in ("first", "second"):
        _create(coffer, name, "Self", _renew({"lifetime_percentage": 80}))
    audit_job = Coffer._audit_job
    failed: list[str] = []

    def failing_once(self: Coffer, operation: str, vault_name: str, object_id: str, reason: str, **kw: str) -> None:
        if operation == "CertificateAutoRenew" and not failed:
            failed.append(object_id)
            raise OSError("audit device gone")
        audit_job(self, operation, vault_name, object_id, reason, **kw)

    monkeypatch.setattr(Coffer, "_audit_job", failing_once)
    due = int(time.time()) + 300 * DAY
    assert coffer.run_certificate_policies(due) == 1
    assert "/certificates/first/" in failed[0]
    assert [len(_versions(coffer, name)) for name in ("first", "second")] == [1, 2]
    with coffer.storage.read() as tx:  # the key and secret of the undone version are gone with it
        view = VaultView(tx, coffer.barrier, tx.vault_get("dev"))  # type: ignore[arg-type]
        assert len(view.version_list("key", "first", after_seq=None, limit=10)) == 1
        assert len(view.version_list("secret", "first", after_seq=None, limit=10)) == 1
    assert coffer.run_certificate_policies(due) == 1  # the next run renews it
    assert [len(_versions(coffer, name)) for name in ("first", "second")] == [2, 2]
