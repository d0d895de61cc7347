"""What Coffer refuses in the Certificates API, through the unmodified CertificateClient (and raw httpx where the
SDK would refuse the request itself): Azure's error envelope and status (400/409/413, never 500), and nothing
half-created: after every refused create or import, the certificate, its key and its secret are all 404 and no
deleted certificate of that name exists."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.identity import ManagedIdentityCredential
from azure.keyvault.certificates import (
    CertificateClient,
    CertificateContentType,
    CertificatePolicy,
    WellKnownIssuerNames,
)
from azure.keyvault.certificates._shared.client_base import DEFAULT_VERSION
from azure.keyvault.keys import KeyClient
from azure.keyvault.secrets import SecretClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from tests.compat.helpers import check_error, envelope, unique
from tests.e2e.helpers import release_connections
from tests.support.server import DevServer

API = {"api-version": DEFAULT_VERSION}


@pytest.fixture(scope="module")
def credential(dev_server: DevServer, identity_env: None) -> Iterator[ManagedIdentityCredential]:
    cred = ManagedIdentityCredential(connection_verify=dev_server.ca)
    yield cred
    cred.close()


@pytest.fixture(scope="module")
def certs(dev_server: DevServer, credential: ManagedIdentityCredential) -> Iterator[CertificateClient]:
    with CertificateClient(dev_server.vault_url, credential, connection_verify=dev_server.ca) as client:
        yield client
    release_connections()


@pytest.fixture(scope="module")
def keys(dev_server: DevServer, credential: ManagedIdentityCredential) -> Iterator[KeyClient]:
    with KeyClient(dev_server.vault_url, credential, connection_verify=dev_server.ca) as client:
        yield client


@pytest.fixture(scope="module")
def secrets(dev_server: DevServer, credential: ManagedIdentityCredential) -> Iterator[SecretClient]:
    with SecretClient(dev_server.vault_url, credential, connection_verify=dev_server.ca) as client:
        yield client


@pytest.fixture(scope="module")
def http(dev_server: DevServer, credential: ManagedIdentityCredential) -> Iterator[httpx.Client]:
    token = credential.get_token(f"{dev_server.authority}/.default").token
    with httpx.Client(base_url=dev_server.vault_url, verify=dev_server.ca, timeout=60, params=API,
                      headers={"Authorization": f"Bearer {token}"}) as client:
        yield client


@pytest.fixture()
def absent(certs: CertificateClient, keys: KeyClient, secrets: SecretClient) -> Callable[[str], None]:
    """Asserts that nothing of `name` exists: no certificate, key, secret, deleted certificate."""

    def check(name: str) -> None:
        for call, code in ((lambda: certs.get_certificate(name), "CertificateNotFound"),
                           (lambda: keys.get_key(name), "KeyNotFound"),
                           (lambda: secrets.get_secret(name), "SecretNotFound"),
                           (lambda: certs.get_deleted_certificate(name), "CertificateNotFound"),
                           (lambda: certs.get_certificate_operation(name), "CertificateNotFound")):
            with pytest.raises(ResourceNotFoundError) as info:
                call()
            check_error(info.value, 404, code, exc_type=ResourceNotFoundError)
        assert name not in {c.name for c in certs.list_deleted_certificates()}
        assert name not in {c.name for c in certs.list_properties_of_certificates()}

    return check


def _self_signed(key: Any, cn: str = "errors.example") -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=30)).sign(key, hashes.SHA256()))


def _pem_key(key: Any) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


PEM_POLICY = CertificatePolicy(issuer_name=WellKnownIssuerNames.self, content_type=CertificateContentType.pem)


def _refused(call: Callable[[], object], status: int = 400, code: str = "BadParameter") -> HttpResponseError:
    with pytest.raises(HttpResponseError) as info:
        call()
    exc_type = {404: ResourceNotFoundError, 409: ResourceExistsError}.get(status, HttpResponseError)
    return check_error(info.value, status, code, exc_type=exc_type)


def _raw_refused(response: httpx.Response, status: int = 400, code: str = "BadParameter") -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert error["code"] == code and isinstance(error["message"], str) and error["message"], body
    return dict(error)


# --- imports -----------------------------------------------------------------------------------------------

def test_corrupt_pkcs12(certs: CertificateClient, absent: Callable[[str], None]) -> None:
    name = unique("bad-pfx")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pfx = pkcs12.serialize_key_and_certificates(None, key, _self_signed(key), None, serialization.NoEncryption())
    corrupt = pfx[: len(pfx) // 2] + bytes(b ^ 0x5A for b in pfx[len(pfx) // 2:])
    for blob in (corrupt, b"\x00not a pkcs12 at all", pfx[:40]):
        _refused(lambda blob=blob: certs.import_certificate(name, blob))
        absent(name)


def test_pkcs12_wrong_password(certs: CertificateClient, absent: Callable[[str], None]) -> None:
    name = unique("bad-pwd")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pfx = pkcs12.serialize_key_and_certificates(None, key, _self_signed(key), None,
                                                serialization.BestAvailableEncryption(b"right password"))
    _refused(lambda: certs.import_certificate(name, pfx, password="wrong password"))
    absent(name)
    _refused(lambda: certs.import_certificate(name, pfx))  # no password at all
    absent(name)
    imported = certs.import_certificate(name, pfx, password="right password")  # the same file imports fine
    assert imported.name == name and imported.cer


def test_pem_without_key(certs: CertificateClient, absent: Callable[[str], None]) -> None:
    name = unique("pem-nokey")
    key = ec.generate_private_key(ec.SECP256R1())
    _refused(lambda: certs.import_certificate(name, _pem_cert(_self_signed(key)), policy=PEM_POLICY))
    absent(name)


def test_pem_key_does_not_match_certificate(certs: CertificateClient, absent: Callable[[str], None]) -> None:
    name = unique("pem-mismatch")
    key, other = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2))
    pem = _pem_key(other) + _pem_cert(_self_signed(key))
    _refused(lambda: certs.import_certificate(name, pem, policy=PEM_POLICY))
    absent(name)
    good = _pem_key(key) + _pem_cert(_self_signed(key))
    assert certs.import_certificate(name, good, policy=PEM_POLICY).name == name


def test_import_over_deleted_name_conflicts(certs: CertificateClient, keys: KeyClient) -> None:
    name = unique("deleted")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pfx = pkcs12.serialize_key_and_certificates(None, key, _self_signed(key), None, serialization.NoEncryption())
    first = certs.import_certificate(name, pfx)
    certs.begin_delete_certificate(name).wait()
    exc = _refused(lambda: certs.import_certificate(name, pfx), 409, "Conflict")
    assert envelope(exc).get("innererror", {}).get("code") == "ObjectIsDeletedButRecoverable"
    deleted = certs.get_deleted_certificate(name)
    assert deleted.properties.version == first.properties.version  # no new version slipped in


# --- merge -------------------------------------------------------------------------------------------------

def _sign_csr(csr_der: bytes, ca_key: Any, ca_name: x509.Name, public_key: Any = None) -> bytes:
    csr = x509.load_der_x509_csr(csr_der)
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(csr.subject).issuer_name(ca_name)
            .public_key(public_key or csr.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=30))
            .sign(ca_key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.DER)


def test_merge_certificate_for_another_key(certs: CertificateClient) -> None:
    name = unique("merge")
    policy = CertificatePolicy(issuer_name=WellKnownIssuerNames.unknown, subject="CN=merge.example")
    operation = certs.begin_create_certificate(name, policy).result()
    assert operation.status == "inProgress" and operation.csr
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Errors Test CA")])
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    wrong = _sign_csr(bytes(operation.csr), ca_key, ca_name, stranger)
    _refused(lambda: certs.merge_certificate(name, [wrong]))
    still = certs.get_certificate_operation(name)
    assert still.status == "inProgress" and bytes(still.csr or b"") == bytes(operation.csr)
    _refused(lambda: certs.merge_certificate(name, [b"not a certificate"]))
    assert certs.get_certificate_operation(name).status == "inProgress"
    right = _sign_csr(bytes(operation.csr), ca_key, ca_name)
    merged = certs.merge_certificate(name, [right])
    assert bytes(merged.cer) == right


# --- policies ----------------------------------------------------------------------------------------------

BAD_POLICIES: dict[str, dict[str, Any]] = {
    "key_size_1000": {"key_props": {"kty": "RSA", "key_size": 1000}},
    "unknown_kty": {"key_props": {"kty": "DSA"}},
    "validity_0": {"x509_props": {"subject": "CN=x", "validity_months": 0}},
    "lifetime_150": {"lifetime_actions": [{"trigger": {"lifetime_percentage": 150},
                                           "action": {"action_type": "AutoRenew"}}]},
    "no_subject_no_sans": {"x509_props": {"subject": ""}},
    "unknown_content_type": {"secret_props": {"contentType": "application/x-unknown"}},
    "unknown_curve": {"key_props": {"kty": "EC", "crv": "P-192", "key_size": None}},
    "unknown_issuer": {"issuer": {"name": "NoSuchIssuer"}},
}


def _policy(overrides: dict[str, Any]) -> dict[str, Any]:
    policy: dict[str, Any] = {
        "key_props": {"kty": "RSA", "key_size": 2048, "exportable": True, "reuse_key": False},
        "secret_props": {"contentType": "application/x-pkcs12"},
        "x509_props": {"subject": "CN=errors.example", "validity_months": 12},
        "issuer": {"name": "Self"},
    }
    for section, value in overrides.items():
        policy[section] = {**policy[section], **value} if isinstance(value, dict) else value
    return policy


@pytest.mark.parametrize("case", sorted(BAD_POLICIES))
def test_refused_policy_create(http: httpx.Client, case: str, absent: Callable[[str], None]) -> None:
    name = unique("policy")
    response = http.post(f"/certificates/{name}/create", json={"policy": _policy(BAD_POLICIES[case])})
    _raw_refused(response)
    absent(name)


# an import's key properties come from the imported key itself: what the policy says of them is overridden
IMPORT_KEY_CASES = ("key_size_1000", "unknown_kty", "unknown_curve")


# (an import naming an issuer the vault lacks is not checked here: the issuer only matters at renewal, and
# whether Key Vault refuses it at import time is not established)
@pytest.mark.parametrize("case", sorted(set(BAD_POLICIES) - {*IMPORT_KEY_CASES, "unknown_issuer"}))
def test_refused_policy_import(http: httpx.Client, case: str, absent: Callable[[str], None]) -> None:
    name = unique("policy-import")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pfx = pkcs12.serialize_key_and_certificates(None, key, _self_signed(key), None, serialization.NoEncryption())
    response = http.post(f"/certificates/{name}/import", json={
        "value": base64.b64encode(pfx).decode(), "policy": _policy(BAD_POLICIES[case])})
    _raw_refused(response)
    absent(name)


@pytest.mark.parametrize("case", IMPORT_KEY_CASES)
def test_import_policy_key_props_come_from_the_key(http: httpx.Client, case: str) -> None:
    name = unique("policy-import-key")
    key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    pfx = pkcs12.serialize_key_and_certificates(None, key, _self_signed(key), None, serialization.NoEncryption())
    response = http.post(f"/certificates/{name}/import", json={
        "value": base64.b64encode(pfx).decode(), "policy": _policy(BAD_POLICIES[case])})
    assert response.status_code == 200, response.text
    key_props = response.json()["policy"]["key_props"]
    assert key_props["kty"] == "RSA" and key_props["key_size"] == 3072, key_props


def test_refused_policy_update_keeps_policy(certs: CertificateClient, http: httpx.Client) -> None:
    name = unique("policy-update")
    certs.begin_create_certificate(name, CertificatePolicy.get_default()).wait()
    before = http.get(f"/certificates/{name}/policy").json()
    for case in ("key_size_1000", "unknown_kty", "validity_0", "lifetime_150", "unknown_content_type",
                 "unknown_curve"):
        response = http.patch(f"/certificates/{name}/policy", json=_policy(BAD_POLICIES[case]))
        _raw_refused(response)
    after = http.get(f"/certificates/{name}/policy").json()
    assert after == before


def test_sdk_policies_refused(certs: CertificateClient, absent: Callable[[str], None]) -> None:
    """The same refusals through the SDK's own models, where it lets them through."""
    for policy in (CertificatePolicy(WellKnownIssuerNames.self, subject="CN=x", key_type="RSA", key_size=1000),
                   CertificatePolicy(WellKnownIssuerNames.self, subject="CN=x", key_type="DSA"),
                   CertificatePolicy(WellKnownIssuerNames.self, subject="CN=x", validity_in_months=0),
                   CertificatePolicy(WellKnownIssuerNames.self, subject="CN=x", content_type="text/plain")):
        name = unique("sdk-policy")
        _refused(lambda name=name, policy=policy: certs.begin_create_certificate(name, policy))
        absent(name)


# --- names and sizes ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["has_underscore", "dot.ted", "x" * 128, "sp ace", "ünïcode"])
def test_bad_names(certs: CertificateClient, name: str) -> None:
    _refused(lambda: certs.begin_create_certificate(name, CertificatePolicy.get_default()))
    assert name not in {c.name for c in certs.list_properties_of_certificates()}


def test_bad_name_import(certs: CertificateClient) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pfx = pkcs12.serialize_key_and_certificates(None, key, _self_signed(key), None, serialization.NoEncryption())
    _refused(lambda: certs.import_certificate("bad_name", pfx))


def test_oversized_body(http: httpx.Client, dev_server: DevServer, absent: Callable[[str], None]) -> None:
    name = unique("huge")
    blob = base64.b64encode(b"\x00" * (5 * 1024 * 1024)).decode()
    response = http.post(f"/certificates/{name}/import", json={"value": blob})
    _raw_refused(response, 413, "RequestEntityTooLarge")
    absent(name)


def test_not_json(http: httpx.Client, absent: Callable[[str], None]) -> None:
    name = unique("notjson")
    response = http.post(f"/certificates/{name}/create", content=b"{not json",
                         headers={"content-type": "application/json"})
    _raw_refused(response)
    absent(name)


def test_create_or_import_while_pending_conflicts(certs: CertificateClient, secrets: SecretClient) -> None:
    name = unique("pending")
    policy = CertificatePolicy(issuer_name=WellKnownIssuerNames.unknown, subject="CN=pending.example")
    operation = certs.begin_create_certificate(name, policy).result()
    assert operation.status == "inProgress"
    _refused(lambda: certs.begin_create_certificate(name, CertificatePolicy.get_default()), 409, "Conflict")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pfx = pkcs12.serialize_key_and_certificates(None, key, _self_signed(key), None, serialization.NoEncryption())
    _refused(lambda: certs.import_certificate(name, pfx), 409, "Conflict")
    still = certs.get_certificate_operation(name)
    assert still.status == "inProgress" and bytes(still.csr or b"") == bytes(operation.csr or b"")
    with pytest.raises(ResourceNotFoundError):
        secrets.get_secret(name)  # no certificate was issued, so no secret either
