"""The unmodified `azure.keyvault.certificates.CertificateClient` against a real Coffer dev server: self-signed
creation (issuer Self), the backing key (CryptographyClient signs, the certificate's public key verifies) and
secret (PKCS#12 or PEM), get, list, versions, update, policy, soft delete, recover and purge."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from collections.abc import Iterator

import pytest
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.identity import ManagedIdentityCredential
from azure.keyvault.certificates import (
    AdministratorContact,
    CertificateClient,
    CertificateContact,
    CertificateContentType,
    CertificateOperation,
    CertificatePolicy,
    KeyType,
    KeyVaultCertificate,
)
from azure.keyvault.keys import KeyClient
from azure.keyvault.keys.crypto import CryptographyClient, SignatureAlgorithm
from azure.keyvault.secrets import SecretClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.compat.cert_helpers import check_extensions, check_validity, full_policy
from tests.compat.helpers import check_error, unique
from tests.e2e.helpers import release_connections
from tests.support.server import DevServer


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


def _create(certs: CertificateClient, name: str, policy: CertificatePolicy) -> KeyVaultCertificate:
    result = certs.begin_create_certificate(name, policy).result()
    assert isinstance(result, KeyVaultCertificate)
    return result


def test_create_default_policy(
    certs: CertificateClient,
    keys: KeyClient,
    secrets: SecretClient,
    credential: ManagedIdentityCredential,
    dev_server: DevServer,
) -> None:
    name = unique("cert")
    created = _create(certs, name, CertificatePolicy.get_default())
    assert created.name == name and created.cer
    cert = x509.load_der_x509_certificate(bytes(created.cer))
    assert cert.subject.rfc4514_string() == "CN=DefaultPolicy"
    assert created.properties.x509_thumbprint == hashlib.sha1(bytes(created.cer)).digest()
    assert created.properties.enabled is True
    assert created.properties.expires_on is not None
    assert created.policy is not None and created.policy.issuer_name == "Self"
    assert created.key_id and created.secret_id

    operation = certs.get_certificate_operation(name)
    assert operation.status == "completed"
    assert operation.id is not None and operation.id.endswith(f"/certificates/{name}/pending")

    secret = secrets.get_secret(name)
    assert secret.properties.content_type == "application/x-pkcs12"
    assert secret.properties.key_id == created.key_id
    key, leaf, _ = pkcs12.load_key_and_certificates(base64.b64decode(secret.value or ""), None)
    assert key is not None and leaf is not None
    assert leaf.public_bytes(serialization.Encoding.DER) == bytes(created.cer)

    backing = keys.get_key(name)
    assert backing.properties.managed is True
    assert backing.properties.version == created.properties.version
    crypto = CryptographyClient(backing, credential, connection_verify=dev_server.ca)
    digest = hashlib.sha256(b"certificate-backed signature").digest()
    signature = crypto.sign(SignatureAlgorithm.rs256, digest).signature
    public = cert.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    public.verify(signature, b"certificate-backed signature", padding.PKCS1v15(), hashes.SHA256())


def test_self_signed_certificate_is_what_the_policy_asks(certs: CertificateClient, secrets: SecretClient) -> None:
    """Subject, DNS/email/UPN SANs, key usages, EKUs and validity months of the policy; self-signed, verified."""
    for key_type, months in ((KeyType.rsa, 7), (KeyType.ec, 13)):
        name = unique("full")
        created = _create(certs, name, full_policy(name, "Self", months, key_type))
        cert = x509.load_der_x509_certificate(bytes(created.cer))
        cert.verify_directly_issued_by(cert)
        assert cert.issuer == cert.subject
        check_extensions(cert, name)
        check_validity(cert, months)
        assert created.properties.not_before == cert.not_valid_before_utc
        assert created.properties.expires_on == cert.not_valid_after_utc
        policy = certs.get_certificate_policy(name)
        assert policy.san_user_principal_names == [f"svc@{name}.corp"] and policy.validity_in_months == months
        key, leaf, _ = pkcs12.load_key_and_certificates(base64.b64decode(secrets.get_secret(name).value or ""), None)
        assert key is not None and leaf == cert


def test_default_policy_extensions(certs: CertificateClient) -> None:
    """Without key usages, EKUs or validity in the policy: Key Vault's defaults (digitalSignature + keyEncipherment
    for RSA, digitalSignature + keyAgreement for EC; serverAuth + clientAuth; 12 months)."""
    for key_type, agreement in ((KeyType.rsa, False), (KeyType.ec, True)):
        name = unique("defaults")
        created = _create(certs, name, CertificatePolicy(issuer_name="Self", subject="CN=defaults", key_type=key_type))
        cert = x509.load_der_x509_certificate(bytes(created.cer))
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        assert usage.digital_signature and usage.key_encipherment is not agreement and usage.key_agreement is agreement
        assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
            ExtendedKeyUsageOID.SERVER_AUTH,
            ExtendedKeyUsageOID.CLIENT_AUTH,
        ]
        check_validity(cert, 12)
        with pytest.raises(x509.ExtensionNotFound):
            cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)


def test_ec_pem_not_exportable(certs: CertificateClient, secrets: SecretClient) -> None:
    name = unique("cert")
    policy = CertificatePolicy(
        issuer_name="Self",
        subject="CN=ec.example, O=Coffer",
        san_dns_names=["ec.example", "www.ec.example"],
        key_type="EC",
        key_curve_name="P-384",
        exportable=False,
        content_type=CertificateContentType.pem,
        validity_in_months=3,
    )
    created = _create(certs, name, policy)
    cert = x509.load_der_x509_certificate(bytes(created.cer))
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["ec.example", "www.ec.example"]
    value = secrets.get_secret(name).value or ""
    assert "BEGIN CERTIFICATE" in value and "PRIVATE KEY" not in value
    assert created.policy is not None and created.policy.content_type == CertificateContentType.pem


def test_lifecycle(certs: CertificateClient, keys: KeyClient, secrets: SecretClient) -> None:
    name = unique("cert")
    first = _create(certs, name, CertificatePolicy.get_default())
    second = _create(certs, name, CertificatePolicy.get_default())
    assert first.properties.version != second.properties.version
    assert certs.get_certificate(name).properties.version == second.properties.version
    old = certs.get_certificate_version(name, first.properties.version or "")
    assert old.cer == first.cer
    versions = {p.version for p in certs.list_properties_of_certificate_versions(name)}
    assert versions == {first.properties.version, second.properties.version}
    assert name in {p.name for p in certs.list_properties_of_certificates()}

    updated = certs.update_certificate_properties(name, tags={"team": "coffer"}, enabled=False)
    assert updated.properties.tags == {"team": "coffer"} and updated.properties.enabled is False
    assert keys.get_key(name).properties.tags == {"team": "coffer"}
    certs.update_certificate_properties(name, enabled=True)

    policy = certs.get_certificate_policy(name)
    assert policy.subject == "CN=DefaultPolicy"
    changed = certs.update_certificate_policy(name, CertificatePolicy(issuer_name="Self", subject="CN=changed"))
    assert changed.subject == "CN=changed"
    third = _create(certs, name, certs.get_certificate_policy(name))
    cert = x509.load_der_x509_certificate(bytes(third.cer))
    assert cert.subject.rfc4514_string() == "CN=changed"

    deleted = certs.begin_delete_certificate(name).result()
    assert deleted.recovery_id and deleted.recovery_id.endswith(f"/deletedcertificates/{name}")
    with pytest.raises(ResourceNotFoundError):
        certs.get_certificate(name)
    with pytest.raises(ResourceNotFoundError):
        keys.get_key(name)
    with pytest.raises(ResourceNotFoundError):
        secrets.get_secret(name)
    with pytest.raises(ResourceExistsError):
        certs.begin_create_certificate(name, CertificatePolicy.get_default()).result()
    assert certs.get_deleted_certificate(name).name == name
    assert name in {d.name for d in certs.list_deleted_certificates()}

    recovered = certs.begin_recover_deleted_certificate(name).result()
    assert recovered.name == name
    assert keys.get_key(name).name == name

    certs.begin_delete_certificate(name).result()
    certs.purge_deleted_certificate(name)
    with pytest.raises(ResourceNotFoundError):
        certs.get_deleted_certificate(name)
    assert _create(certs, name, CertificatePolicy.get_default()).name == name


def test_errors(certs: CertificateClient) -> None:
    with pytest.raises(ResourceNotFoundError) as info:
        certs.get_certificate(unique("missing"))
    assert info.value.error is not None and info.value.error.code == "CertificateNotFound"
    with pytest.raises(HttpResponseError) as bad:
        certs.begin_create_certificate(
            unique("cert"), CertificatePolicy(issuer_name="Self", subject="CN=x", key_type="oct")
        ).result()
    assert bad.value.status_code == 400


def _self_signed(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, subject: str) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, subject)])
    start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )


def test_import_pkcs12_and_pem(certs: CertificateClient, secrets: SecretClient, keys: KeyClient) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = _self_signed(key, "imported.example")
    der = cert.public_bytes(serialization.Encoding.DER)

    plain = pkcs12.serialize_key_and_certificates(b"x", key, cert, None, serialization.NoEncryption())
    name = unique("imp")
    imported = certs.import_certificate(name, plain)
    assert bytes(imported.cer) == der
    assert imported.properties.x509_thumbprint == hashlib.sha1(der).digest()
    assert keys.get_key(name).key.n == key.public_key().public_numbers().n.to_bytes(256, "big")

    locked = pkcs12.serialize_key_and_certificates(
        b"x", key, cert, None, serialization.BestAvailableEncryption(b"s3cret")
    )
    name2 = unique("imp")
    assert bytes(certs.import_certificate(name2, locked, password="s3cret").cer) == der
    back_key, back_cert, _ = pkcs12.load_key_and_certificates(
        base64.b64decode(secrets.get_secret(name2).value or ""), None
    )
    assert back_key is not None and back_cert is not None
    assert back_cert.public_bytes(serialization.Encoding.DER) == der

    with pytest.raises(HttpResponseError) as wrong:
        certs.import_certificate(unique("imp"), locked, password="wrong")
    assert wrong.value.status_code == 400
    assert wrong.value.error is not None and wrong.value.error.code == "BadParameter"

    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ) + cert.public_bytes(serialization.Encoding.PEM)
    name3 = unique("imp")
    from_pem = certs.import_certificate(
        name3,
        pem,
        policy=CertificatePolicy(
            issuer_name="Self", content_type=CertificateContentType.pem, subject="CN=imported.example"
        ),
    )
    assert bytes(from_pem.cer) == der
    assert "PRIVATE KEY" in (secrets.get_secret(name3).value or "")

    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    mismatched = other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ) + cert.public_bytes(serialization.Encoding.PEM)
    name4 = unique("imp")
    with pytest.raises(HttpResponseError) as bad:
        certs.import_certificate(
            name4,
            mismatched,
            policy=CertificatePolicy(
                issuer_name="Self", content_type=CertificateContentType.pem, subject="CN=imported.example"
            ),
        )
    assert bad.value.status_code == 400
    with pytest.raises(ResourceNotFoundError):
        certs.get_certificate(name4)
    with pytest.raises(ResourceNotFoundError):
        keys.get_key(name4)


def test_backup_restore(certs: CertificateClient, keys: KeyClient, secrets: SecretClient) -> None:
    name = unique("bak")
    created = _create(certs, name, CertificatePolicy.get_default())
    blob = certs.backup_certificate(name)
    with pytest.raises(ResourceExistsError):
        certs.restore_certificate_backup(blob)
    certs.begin_delete_certificate(name).result()
    certs.purge_deleted_certificate(name)
    restored = certs.restore_certificate_backup(blob)
    assert restored.name == name and restored.cer == created.cer
    assert keys.get_key(name).properties.version == created.properties.version
    assert secrets.get_secret(name).properties.content_type == "application/x-pkcs12"


def _test_ca() -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key, _self_signed(key, "Coffer Test CA")


def _sign_csr(csr_der: bytes, ca_key: rsa.RSAPrivateKey, ca_cert: x509.Certificate) -> x509.Certificate:
    csr = x509.load_der_x509_csr(csr_der)
    assert csr.is_signature_valid
    start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    return (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(ca_cert.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=30))
        .sign(ca_key, hashes.SHA256())
    )


def test_unknown_issuer_merge(certs: CertificateClient, secrets: SecretClient) -> None:
    name = unique("merge")
    policy = CertificatePolicy(issuer_name="Unknown", subject="CN=merged.example")
    operation = certs.begin_create_certificate(name, policy).result()
    assert isinstance(operation, CertificateOperation)
    assert operation.status == "inProgress" and operation.csr
    with pytest.raises(ResourceExistsError):
        certs.begin_create_certificate(name, CertificatePolicy.get_default()).result()

    ca_key, ca_cert = _test_ca()
    other = _self_signed(rsa.generate_private_key(public_exponent=65537, key_size=2048), "merged.example")
    with pytest.raises(HttpResponseError) as bad:
        certs.merge_certificate(name, [other.public_bytes(serialization.Encoding.DER)])
    assert bad.value.status_code == 400

    signed = _sign_csr(bytes(operation.csr), ca_key, ca_cert)
    der = signed.public_bytes(serialization.Encoding.DER)
    merged = certs.merge_certificate(name, [der, ca_cert.public_bytes(serialization.Encoding.DER)])
    assert bytes(merged.cer) == der
    assert certs.get_certificate_operation(name).status == "completed"
    key, leaf, chain = pkcs12.load_key_and_certificates(base64.b64decode(secrets.get_secret(name).value or ""), None)
    assert key is not None and leaf is not None and len(chain) == 1

    name2 = unique("merge")
    certs.begin_create_certificate(name2, policy).result()
    cancelled = certs.cancel_certificate_operation(name2)
    assert cancelled.cancellation_requested is True
    deleted = certs.delete_certificate_operation(name2)
    assert deleted.id is not None and deleted.id.endswith(f"/certificates/{name2}/pending")
    with pytest.raises(ResourceNotFoundError):
        certs.get_certificate_operation(name2)


def test_contacts(certs: CertificateClient) -> None:
    contacts = [
        CertificateContact(email="ops@example.test", name="Ops", phone="555-0100"),
        CertificateContact(email="sec@example.test"),
    ]
    stored = certs.set_contacts(contacts)
    assert [c.email for c in stored] == ["ops@example.test", "sec@example.test"]
    fetched = certs.get_contacts()
    assert fetched[0].name == "Ops" and fetched[0].phone == "555-0100"
    removed = certs.delete_contacts()
    assert len(removed) == 2
    with pytest.raises(ResourceNotFoundError):
        certs.get_contacts()


def test_issuers(certs: CertificateClient) -> None:
    name = unique("issuer")
    admin = AdministratorContact(first_name="Ada", last_name="Lovelace", email="ada@example.test", phone="1")
    created = certs.create_issuer(name, "Test", account_id="acct", password="pw", admin_contacts=[admin])
    assert created.name == name and created.provider == "Test" and created.account_id == "acct"
    assert created.admin_contacts is not None and created.admin_contacts[0].email == "ada@example.test"
    assert created.enabled is True
    fetched = certs.get_issuer(name)
    assert fetched.provider == "Test" and fetched.id == created.id
    updated = certs.update_issuer(name, enabled=False, account_id="acct2")
    assert updated.enabled is False and updated.account_id == "acct2" and updated.provider == "Test"
    assert name in {i.name for i in certs.list_properties_of_issuers()}
    deleted = certs.delete_issuer(name)
    assert deleted.name == name
    with pytest.raises(ResourceNotFoundError):
        certs.get_issuer(name)


def test_pkcs12_without_key_and_paging(certs: CertificateClient, secrets: SecretClient) -> None:
    name = unique("noexp")
    policy = CertificatePolicy(issuer_name="Self", subject="CN=noexport", exportable=False, key_type="RSA")
    versions = [_create(certs, name, policy).properties.version for _ in range(3)]
    key, leaf, others = pkcs12.load_key_and_certificates(base64.b64decode(secrets.get_secret(name).value or ""), None)
    assert key is None and len([c for c in [leaf, *others] if c is not None]) == 1
    pages = certs.list_properties_of_certificate_versions(name, max_page_size=2).by_page()
    seen = [[p.version for p in page] for page in pages]
    assert [len(page) for page in seen] == [2, 1]
    assert sorted(v for page in seen for v in page) == sorted(versions)


def test_reuse_key(certs: CertificateClient) -> None:
    name = unique("reuse")
    policy = CertificatePolicy(issuer_name="Self", subject="CN=reuse", key_type="EC", reuse_key=True)
    first = x509.load_der_x509_certificate(bytes(_create(certs, name, policy).cer))
    second = x509.load_der_x509_certificate(bytes(_create(certs, name, policy).cer))
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert first.public_key().public_bytes(serialization.Encoding.DER, spki) == second.public_key().public_bytes(
        serialization.Encoding.DER, spki
    )
    fresh = CertificatePolicy(issuer_name="Self", subject="CN=reuse", key_type="EC", reuse_key=False)
    third = x509.load_der_x509_certificate(bytes(_create(certs, name, fresh).cer))
    assert third.public_key().public_bytes(serialization.Encoding.DER, spki) != first.public_key().public_bytes(
        serialization.Encoding.DER, spki
    )


def test_backing_key_and_secret_change_only_through_the_certificate(
    certs: CertificateClient, keys: KeyClient, secrets: SecretClient
) -> None:
    name = unique("managed")
    _create(certs, name, CertificatePolicy.get_default())
    attempts = [
        lambda: secrets.set_secret(name, "overwrite"),
        lambda: secrets.update_secret_properties(name, enabled=False),
        lambda: secrets.begin_delete_secret(name),
        lambda: keys.update_key_properties(name, enabled=False),
        lambda: keys.begin_delete_key(name),
        lambda: keys.rotate_key(name),
        lambda: keys.create_rsa_key(name),
    ]
    for attempt in attempts:
        with pytest.raises(HttpResponseError) as refused:
            attempt()
        assert refused.value.status_code == 403
        assert refused.value.response.json()["error"]["innererror"]["code"] == "ManagedObject"
    assert secrets.get_secret(name).properties.managed is True  # still there, unchanged
    certs.begin_delete_certificate(name).wait()  # the certificate takes its key and secret with it
    with pytest.raises(ResourceNotFoundError):
        secrets.get_secret(name)


# --- outContentType: a certificate's PKCS#12 secret as PEM ---------------------------------------------------------
PEM_TYPE = "application/x-pem-file"
PKCS12_TYPE = "application/x-pkcs12"


def _pem_parts(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("-----BEGIN")]


def test_out_content_type_pem(certs: CertificateClient, secrets: SecretClient) -> None:
    # exportable: the private key (PKCS#8), then the certificate; the same key and certificate as the PKCS#12
    name = unique("pem-out")
    created = _create(certs, name, CertificatePolicy.get_default())
    stored = secrets.get_secret(name)
    p12_key, p12_leaf, _ = pkcs12.load_key_and_certificates(base64.b64decode(stored.value or ""), None)
    assert p12_key is not None and p12_leaf is not None
    for version in (None, created.properties.version):
        converted = secrets.get_secret(name, version, out_content_type=PEM_TYPE)
        assert converted.properties.content_type == PEM_TYPE
        assert converted.properties.version == created.properties.version and converted.properties.managed is True
        assert converted.properties.key_id == created.key_id
        text = converted.value or ""
        assert _pem_parts(text) == ["-----BEGIN PRIVATE KEY-----", "-----BEGIN CERTIFICATE-----"]
        key = serialization.load_pem_private_key(text.encode(), None)
        assert key.private_numbers() == p12_key.private_numbers()  # type: ignore[union-attr]
        assert x509.load_pem_x509_certificates(text.encode()) == [p12_leaf]
    # asking for the stored type changes nothing; the stored secret is unchanged
    same = secrets.get_secret(name, out_content_type=PKCS12_TYPE)
    assert same.value == stored.value and same.properties.content_type == PKCS12_TYPE
    assert secrets.get_secret(name).value == stored.value

    # not exportable: the certificate alone
    name = unique("pem-out")
    # (the SDK sends key_props only with a key type, size, curve, reuse_key or exportable=True)
    _create(certs, name, CertificatePolicy(issuer_name="Self", subject="CN=noexport", exportable=False, key_type="RSA"))
    text = secrets.get_secret(name, out_content_type=PEM_TYPE).value or ""
    assert _pem_parts(text) == ["-----BEGIN CERTIFICATE-----"]


def test_out_content_type_with_a_chain(certs: CertificateClient, secrets: SecretClient) -> None:
    """A merged certificate with its CA: PEM holds the key, the certificate, then the CA."""
    name = unique("pem-chain")
    operation = certs.begin_create_certificate(name, CertificatePolicy(issuer_name="Unknown", subject="CN=c")).result()
    assert isinstance(operation, CertificateOperation)
    ca_key, ca_cert = _test_ca()
    leaf = _sign_csr(bytes(operation.csr), ca_key, ca_cert)
    certs.merge_certificate(
        name, [leaf.public_bytes(serialization.Encoding.DER), ca_cert.public_bytes(serialization.Encoding.DER)]
    )
    text = secrets.get_secret(name, out_content_type=PEM_TYPE).value or ""
    assert _pem_parts(text) == ["-----BEGIN PRIVATE KEY-----"] + ["-----BEGIN CERTIFICATE-----"] * 2
    assert x509.load_pem_x509_certificates(text.encode()) == [leaf, ca_cert]


def test_out_content_type_refusals(certs: CertificateClient, secrets: SecretClient) -> None:
    # a PEM certificate secret: PEM is what it is; Key Vault converts PFX to PEM only
    name = unique("pem-stored")
    _create(
        certs, name, CertificatePolicy(issuer_name="Self", subject="CN=pem", content_type=CertificateContentType.pem)
    )
    stored = secrets.get_secret(name)
    assert secrets.get_secret(name, out_content_type=PEM_TYPE).value == stored.value
    with pytest.raises(HttpResponseError) as refused:
        secrets.get_secret(name, out_content_type=PKCS12_TYPE)
    check_error(refused.value, 400, "BadParameter")
    # a type that is neither
    with pytest.raises(HttpResponseError) as refused:
        secrets.get_secret(name, out_content_type="text/plain")
    check_error(refused.value, 400, "BadParameter")
    # a secret that is no certificate's, even one whose content type claims PKCS#12
    plain = unique("plain")
    secrets.set_secret(plain, base64.b64encode(b"not a pfx").decode(), content_type=PKCS12_TYPE)
    with pytest.raises(HttpResponseError) as refused:
        secrets.get_secret(plain, out_content_type=PEM_TYPE)
    check_error(refused.value, 400, "BadParameter")
    assert "not a pfx" not in str(refused.value)
    release_connections()
