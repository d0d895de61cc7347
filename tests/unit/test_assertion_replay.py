"""A certificate assertion's jti is single-use across the installation, not per process: two verifiers (as two
worker processes or nodes) on one storage accept an assertion once between them; the records are forgotten once
the assertion has expired."""

from __future__ import annotations

import base64
import datetime
import hashlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from coffer.identity import principals
from coffer.identity.assertions import (
    USED_ASSERTION,
    AssertionVerifier,
    InvalidAssertion,
    forget_used_assertions,
    token_endpoints,
)
from coffer.storage.sqlite import SqliteStorage

BASE = "https://coffer.localhost:8443"


@pytest.fixture()
def storage(tmp_path: Path) -> Iterator[SqliteStorage]:
    store = SqliteStorage(tmp_path / "coffer.db")
    store.migrate()
    yield store
    store.close()


def _application(storage: SqliteStorage) -> tuple[str, str, ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "replay-test")])
    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=30)).sign(key, hashes.SHA256())
    )
    with storage.write() as tx:
        tenant = principals.create_tenant(tx, "replay")
        app = principals.create_principal(tx, tenant, "app", principals.APPLICATION)
        principals.add_certificate(tx, app, cert.public_bytes(serialization.Encoding.PEM))
    return tenant, app.client_id, key, cert


def _assertion(tenant: str, client_id: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate,
               *, jti: str | None = None, exp: int | None = None) -> str:
    now = int(time.time())
    thumbprint = base64.urlsafe_b64encode(hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest())
    claims = {"iss": client_id, "sub": client_id, "aud": f"{BASE}/{tenant}/oauth2/v2.0/token", "iat": now,
              "nbf": now, "exp": exp or now + 600, "jti": jti or uuid.uuid4().hex}
    return jwt.encode(claims, key, algorithm="ES256", headers={"x5t#S256": thumbprint.rstrip(b"=").decode()})


def test_an_assertion_is_accepted_once_across_processes(storage: SqliteStorage) -> None:
    tenant, client_id, key, cert = _application(storage)
    first, second = AssertionVerifier(), AssertionVerifier()  # two processes: two in-memory replay caches
    audiences = token_endpoints([BASE], tenant)

    def verify(verifier: AssertionVerifier, assertion: str) -> None:
        verifier.verify(storage, assertion, tenant_id=tenant, client_id=client_id, audiences=audiences)

    assertion = _assertion(tenant, client_id, key, cert)
    verify(first, assertion)
    for verifier in (second, first):  # replayed to the other process, then to the same one
        with pytest.raises(InvalidAssertion, match="already been used") as refused:
            verify(verifier, assertion)
        assert refused.value.reason == "replayed jti"
    verify(second, _assertion(tenant, client_id, key, cert))  # a new assertion passes in either


def test_expired_records_are_forgotten_and_only_those(storage: SqliteStorage) -> None:
    tenant, client_id, key, cert = _application(storage)
    audiences = token_endpoints([BASE], tenant)
    now = int(time.time())
    for exp in (now + 30, now + 90, now + 600):
        AssertionVerifier().verify(storage, _assertion(tenant, client_id, key, cert, exp=exp), tenant_id=tenant,
                                   client_id=client_id, audiences=audiences)
    with storage.read() as tx:
        assert len(tx.meta_list(USED_ASSERTION, 10)) == 3
        assert not [e for e, _ in tx.meta_list(USED_ASSERTION, 10) if client_id in e]  # the key is hashed
    assert forget_used_assertions(storage, now + 600) == 0  # kept 10 minutes past exp (leeway, other clocks)
    assert forget_used_assertions(storage, now + 700) == 2  # exp + 10 min passed for two of them
    with storage.read() as tx:
        [(left, _)] = tx.meta_list(USED_ASSERTION, 10)
    assert int(left[len(USED_ASSERTION):].split(":")[0]) == now + 1200
