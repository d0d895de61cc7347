"""HSM-backed certificates through the unmodified Azure SDKs against a dev server with its own SoftHSM2 token (its
`dev` vault is premium): certificate policies with kty RSA-HSM / EC-HSM generate the key in the token, which signs
the certificate (issuer Self), the CSR (issuer Unknown, then merge) or nothing (the internal CA signs), and whose
private key never leaves it:

- the certificate verifies with `cryptography` (self-signed, against the test's CA, against the published CA);
- its secret holds the certificate (and chain) only, as PKCS#12 and as PEM (`outContentType`), never a private key;
- its backing key is RSA-HSM / EC-HSM and signs through CryptographyClient; the signature verifies with the
  certificate's public key;
- `exportable: true` with an HSM key type is refused (400 BadParameter) and writes nothing; a standard vault refuses
  HSM key types;
- a new version with reuse_key keeps the token key, without it gets a new one;
- `coffer ca create` makes the CA key in the HSM by default on a premium vault (`--software` to choose a software
  key; `--hsm` is refused on a standard vault); rotation and deletion take old CA keys out of the token.

Last, with the server stopped: every token object of the installation is referenced by the database (key versions,
pending operations, CA generations, the HSM seal of the root key) and vice versa, so nothing cancelled, rotated,
deleted or purged left an object in the token; every private key there is sensitive and never extractable.

CI installs softhsm2; elsewhere the module skips with the reason.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import ssl
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.identity import ManagedIdentityCredential
from azure.keyvault.certificates import (
    CertificateClient,
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
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.hazmat.primitives.serialization import pkcs12

from coffer.barrier import Barrier, VaultView
from coffer.devhsm import TOKEN_LABEL, find_module
from tests.compat.helpers import check_error, unique
from tests.e2e.helpers import credential, identity_env, release_connections, run_cli
from tests.support.server import DevServer
from tests.support.softhsm import missing_reason

pytestmark = pytest.mark.skipif(missing_reason() is not None, reason=missing_reason() or "")

DER = serialization.Encoding.DER
SPKI = serialization.PublicFormat.SubjectPublicKeyInfo
SIGNATURE_OF = {
    "RSA": (SignatureAlgorithm.rs256, hashes.SHA256),
    "P-256": (SignatureAlgorithm.es256, hashes.SHA256),
    "P-384": (SignatureAlgorithm.es384, hashes.SHA384),
    "P-521": (SignatureAlgorithm.es512, hashes.SHA512),
}


# --- the server and its clients ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    """A dev server of its own (the last test stops it to look at its database and token)."""
    running = DevServer(tmp_path_factory.mktemp("hsm-certs") / "data").start()
    yield running
    release_connections()
    running.stop()


@pytest.fixture(scope="module")
def mi(server: DevServer) -> Iterator[ManagedIdentityCredential]:
    with identity_env(server):
        managed = credential(server)
        yield managed
        managed.close()


@pytest.fixture(scope="module")
def certs(server: DevServer, mi: ManagedIdentityCredential) -> Iterator[CertificateClient]:
    with CertificateClient(server.vault_url, mi, connection_verify=server.ca) as client:
        yield client


@pytest.fixture(scope="module")
def keys(server: DevServer, mi: ManagedIdentityCredential) -> Iterator[KeyClient]:
    with KeyClient(server.vault_url, mi, connection_verify=server.ca) as client:
        yield client


@pytest.fixture(scope="module")
def secrets(server: DevServer, mi: ManagedIdentityCredential) -> Iterator[SecretClient]:
    with SecretClient(server.vault_url, mi, connection_verify=server.ca) as client:
        yield client


@pytest.fixture(scope="module")
def standard_vault(server: DevServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    run_cli("vault", "create", "std", "--sku", "standard", env=server.client_env(), cwd=tmp_path_factory.mktemp("std"))
    return f"https://std.localhost:{server.port}"


# --- helpers ----------------------------------------------------------------------------------------------------


def create(certs: CertificateClient, name: str, policy: CertificatePolicy) -> KeyVaultCertificate:
    result = certs.begin_create_certificate(name, policy).result()
    assert isinstance(result, KeyVaultCertificate), result
    return result


def spki(key: Any) -> bytes:
    return bytes(key.public_bytes(DER, SPKI))


def family(cert: x509.Certificate) -> str:
    public = cert.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        return "RSA"
    assert isinstance(public, ec.EllipticCurvePublicKey)
    return {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}[public.curve.name]


def check_no_private_key(secrets: SecretClient, name: str, version: str | None, certificates: list[bytes]) -> None:
    """The certificate's secret, as PKCS#12 and as PEM: exactly `certificates` (DER, leaf first), no private key."""
    secret = secrets.get_secret(name, version)
    assert secret.properties.content_type == "application/x-pkcs12" and secret.properties.managed is True
    key, leaf, chain = pkcs12.load_key_and_certificates(base64.b64decode(secret.value or ""), None)
    assert key is None
    assert [c.public_bytes(DER) for c in [leaf, *chain] if c is not None] == certificates
    pem = secrets.get_secret(name, version, out_content_type="application/x-pem-file")
    assert pem.properties.content_type == "application/x-pem-file"
    assert "PRIVATE KEY" not in (pem.value or "")
    assert [c.public_bytes(DER) for c in x509.load_pem_x509_certificates((pem.value or "").encode())] == certificates


def check_signs(
    server: DevServer,
    keys: KeyClient,
    mi: ManagedIdentityCredential,
    name: str,
    version: str | None,
    cert: x509.Certificate,
    kty: str,
) -> None:
    """The backing key is an HSM key without private members; it signs in the token through CryptographyClient and
    the certificate's public key verifies the signature."""
    key = keys.get_key(name, version)
    assert key.key_type == kty and key.properties.managed is True
    assert key.key.d is None and key.key.p is None
    alg, hash_type = SIGNATURE_OF[family(cert)]
    data = os.urandom(64)
    digest = hashlib.new(hash_type.name, data).digest()
    with CryptographyClient(key, mi, connection_verify=server.ca) as crypto:
        signature = crypto.sign(alg, digest).signature
    public = cert.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        public.verify(signature, data, padding.PKCS1v15(), hash_type())
    else:
        assert isinstance(public, ec.EllipticCurvePublicKey)
        half = len(signature) // 2
        der = utils.encode_dss_signature(
            int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big")
        )
        public.verify(der, data, ec.ECDSA(hash_type()))


def outside_ca() -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name.from_rfc4514_string("CN=Test Outside CA")
    start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def sign_csr(csr_der: bytes, ca_key: rsa.RSAPrivateKey, ca_cert: x509.Certificate) -> x509.Certificate:
    csr = x509.load_der_x509_csr(csr_der)
    assert csr.is_signature_valid
    builder = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(ca_cert.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1))
        .not_valid_after(dt.datetime.now(dt.UTC) + dt.timedelta(days=90))
    )
    for extension in csr.extensions:
        builder = builder.add_extension(extension.value, critical=extension.critical)
    return builder.sign(ca_key, hashes.SHA256())


def published(server: DevServer, name: str) -> x509.Certificate:
    response = httpx.get(f"{server.authority}/ca/dev/{name}.pem", verify=ssl.create_default_context(cafile=server.ca))
    assert response.status_code == 200, response.text
    return x509.load_pem_x509_certificate(response.content)


# --- issuer Self -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kty", "param"),
    [("RSA-HSM", 2048), ("RSA-HSM", 3072), ("EC-HSM", "P-256"), ("EC-HSM", "P-384"), ("EC-HSM", "P-521")],
)
def test_self_signed_hsm_certificate(
    server: DevServer,
    certs: CertificateClient,
    keys: KeyClient,
    secrets: SecretClient,
    mi: ManagedIdentityCredential,
    kty: str,
    param: int | str,
) -> None:
    name = unique("hsm-self")
    sizing: dict[str, Any] = {"key_size": param} if kty == "RSA-HSM" else {"key_curve_name": param}
    policy = CertificatePolicy(
        issuer_name="Self",
        subject=f"CN={name}.example",
        san_dns_names=[f"{name}.example"],
        key_type=KeyType(kty),
        validity_in_months=6,
        **sizing,
    )
    created = create(certs, name, policy)
    cert = x509.load_der_x509_certificate(bytes(created.cer or b""))
    cert.verify_directly_issued_by(cert)
    assert cert.subject.rfc4514_string() == f"CN={name}.example"
    assert family(cert) == ("RSA" if kty == "RSA-HSM" else param)
    if kty == "RSA-HSM":
        assert cert.public_key().key_size == param  # type: ignore[union-attr]
    assert isinstance(cert.signature_hash_algorithm, SIGNATURE_OF[family(cert)][1])
    assert created.policy is not None and created.policy.key_type == kty and created.policy.exportable is False
    assert certs.get_certificate_policy(name).key_type == kty
    check_no_private_key(secrets, name, None, [cert.public_bytes(DER)])
    check_signs(server, keys, mi, name, None, cert, kty)
    release_connections()


def test_exportable_hsm_key_is_refused(certs: CertificateClient, keys: KeyClient, secrets: SecretClient) -> None:
    for kty in (KeyType.rsa_hsm, KeyType.ec_hsm):
        name = unique("hsm-exp")
        with pytest.raises(HttpResponseError) as refused:
            certs.begin_create_certificate(
                name, CertificatePolicy(issuer_name="Self", subject="CN=x", key_type=kty, exportable=True)
            ).result()
        check_error(refused.value, 400, "BadParameter")
        assert "exportable" in (refused.value.error.message or "")  # type: ignore[union-attr]
        for call in (
            lambda n=name: certs.get_certificate(n),
            lambda n=name: keys.get_key(n),
            lambda n=name: secrets.get_secret(n),
            lambda n=name: certs.get_certificate_operation(n),
        ):
            with pytest.raises(ResourceNotFoundError):
                call()
    # nor may a policy update make an HSM certificate's key exportable
    name = unique("hsm-exp")
    create(certs, name, CertificatePolicy(issuer_name="Self", subject="CN=x", key_type=KeyType.ec_hsm))
    with pytest.raises(HttpResponseError) as refused:
        certs.update_certificate_policy(name, CertificatePolicy(exportable=True, key_type=KeyType.ec_hsm))
    check_error(refused.value, 400, "BadParameter")
    assert certs.get_certificate_policy(name).exportable is False
    release_connections()


def test_standard_vault_refuses_hsm_certificates(
    server: DevServer, mi: ManagedIdentityCredential, standard_vault: str
) -> None:
    with CertificateClient(standard_vault, mi, connection_verify=server.ca) as client:
        with pytest.raises(HttpResponseError) as refused:
            client.begin_create_certificate(
                "refused", CertificatePolicy(issuer_name="Self", subject="CN=x", key_type=KeyType.rsa_hsm)
            ).result()
        check_error(refused.value, 400, "BadParameter")
        assert "Hardware key operation not allowed on standard vault" in str(refused.value)
        assert create(client, "software", CertificatePolicy.get_default()).cer  # software keys are fine
    release_connections()


def test_new_versions_reuse_the_token_key_or_not(
    server: DevServer, certs: CertificateClient, keys: KeyClient, secrets: SecretClient, mi: ManagedIdentityCredential
) -> None:
    name = unique("hsm-reuse")
    reuse = CertificatePolicy(issuer_name="Self", subject="CN=reuse", key_type=KeyType.rsa_hsm, reuse_key=True)
    first = create(certs, name, reuse)
    second = create(certs, name, reuse)
    fresh = create(
        certs,
        name,
        CertificatePolicy(issuer_name="Self", subject="CN=reuse", key_type=KeyType.rsa_hsm, reuse_key=False),
    )
    certificates = [x509.load_der_x509_certificate(bytes(c.cer or b"")) for c in (first, second, fresh)]
    assert spki(certificates[0].public_key()) == spki(certificates[1].public_key())
    assert spki(certificates[2].public_key()) != spki(certificates[0].public_key())
    assert len({c.properties.version for c in (first, second, fresh)}) == 3
    for created, cert in zip((first, second, fresh), certificates, strict=True):
        cert.verify_directly_issued_by(cert)
        check_signs(server, keys, mi, name, created.properties.version, cert, "RSA-HSM")
        check_no_private_key(secrets, name, created.properties.version, [cert.public_bytes(DER)])
    release_connections()


# --- issuer Unknown: CSR, then merge ------------------------------------------------------------------------------


def test_unknown_issuer_csr_and_merge(
    server: DevServer, certs: CertificateClient, keys: KeyClient, secrets: SecretClient, mi: ManagedIdentityCredential
) -> None:
    name = unique("hsm-csr")
    policy = CertificatePolicy(
        issuer_name="Unknown",
        subject=f"CN={name}.example",
        key_type=KeyType.ec_hsm,
        key_curve_name="P-384",
        san_dns_names=[f"{name}.example"],
    )
    operation = certs.begin_create_certificate(name, policy).result()
    assert isinstance(operation, CertificateOperation) and operation.status == "inProgress"
    csr = x509.load_der_x509_csr(bytes(operation.csr or b""))
    assert csr.is_signature_valid  # signed in the token
    assert isinstance(csr.signature_hash_algorithm, hashes.SHA384)
    assert csr.subject.rfc4514_string() == f"CN={name}.example"
    assert csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    ) == [f"{name}.example"]

    ca_key, ca_cert = outside_ca()
    stranger = sign_csr(certs_csr_of_another_key(), ca_key, ca_cert)
    with pytest.raises(HttpResponseError) as mismatch:
        certs.merge_certificate(name, [stranger.public_bytes(DER)])
    check_error(mismatch.value, 400, "BadParameter")

    leaf = sign_csr(bytes(operation.csr or b""), ca_key, ca_cert)
    merged = certs.merge_certificate(name, [leaf.public_bytes(DER), ca_cert.public_bytes(DER)])
    assert bytes(merged.cer or b"") == leaf.public_bytes(DER)
    leaf.verify_directly_issued_by(ca_cert)
    assert certs.get_certificate_operation(name).status == "completed"
    assert merged.policy is not None and merged.policy.key_type == "EC-HSM" and merged.policy.exportable is False
    check_no_private_key(secrets, name, None, [leaf.public_bytes(DER), ca_cert.public_bytes(DER)])
    check_signs(server, keys, mi, name, None, leaf, "EC-HSM")

    # a pending operation that is cancelled, or deleted, takes its token key along (checked at the end)
    for finish in ("cancel", "delete"):
        other = unique(f"hsm-{finish}")
        pending = certs.begin_create_certificate(
            other, CertificatePolicy(issuer_name="Unknown", subject="CN=gone", key_type=KeyType.rsa_hsm)
        ).result()
        assert isinstance(pending, CertificateOperation) and pending.csr
        if finish == "cancel":
            assert certs.cancel_certificate_operation(other).status == "cancelled"
        certs.delete_certificate_operation(other)
        with pytest.raises(ResourceNotFoundError):
            certs.get_certificate_operation(other)
    release_connections()


def certs_csr_of_another_key() -> bytes:
    key = ec.generate_private_key(ec.SECP384R1())
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name.from_rfc4514_string("CN=stranger"))
        .sign(key, hashes.SHA384())
        .public_bytes(DER)
    )


# --- the internal CA -----------------------------------------------------------------------------------------------


def test_internal_ca_in_the_hsm(
    server: DevServer,
    certs: CertificateClient,
    keys: KeyClient,
    secrets: SecretClient,
    mi: ManagedIdentityCredential,
    standard_vault: str,
    tmp_path: Path,
) -> None:
    env = server.client_env()
    created = json.loads(
        run_cli(
            "ca",
            "create",
            "dev",
            "--name",
            "hsmca",
            "--subject",
            "CN=HSM Root CA",
            "--output",
            "json",
            env=env,
            cwd=tmp_path,
        ).stdout
    )
    assert created["hsm"] is True and created["keyType"] == "RSA" and created["keySize"] == 3072  # premium: HSM
    assert "(HSM)" in run_cli("ca", "show", "dev", "hsmca", env=env, cwd=tmp_path).stdout
    root = published(server, "hsmca")
    root.verify_directly_issued_by(root)  # signed in the token
    assert root.subject.rfc4514_string() == "CN=HSM Root CA"

    # an HSM leaf and a software leaf, both signed by the CA key in the token
    issued: list[tuple[str, x509.Certificate]] = []
    for name, kty in ((unique("hsm-leaf"), KeyType.rsa_hsm), (unique("sw-leaf"), KeyType.ec)):
        cert = x509.load_der_x509_certificate(
            bytes(
                create(
                    certs,
                    name,
                    CertificatePolicy(
                        issuer_name="hsmca", subject=f"CN={name}", key_type=kty, san_dns_names=[f"{name}.corp"]
                    ),
                ).cer
                or b""
            )
        )
        cert.verify_directly_issued_by(root)
        issued.append((name, cert))
    hsm_name, hsm_leaf = issued[0]
    check_no_private_key(secrets, hsm_name, None, [hsm_leaf.public_bytes(DER), root.public_bytes(DER)])
    check_signs(server, keys, mi, hsm_name, None, hsm_leaf, "RSA-HSM")
    sw_pem = secrets.get_secret(issued[1][0], out_content_type="application/x-pem-file").value or ""
    assert "BEGIN PRIVATE KEY" in sw_pem  # exportable software key: key, leaf, CA
    assert x509.load_pem_x509_certificates(sw_pem.encode()) == [issued[1][1], root]

    # rotation: a new key in the token; old chains still verify against the old CA certificate
    rotated = json.loads(run_cli("ca", "rotate", "dev", "hsmca", "--output", "json", env=env, cwd=tmp_path).stdout)
    assert rotated["hsm"] is True and len(rotated["previous"]) == 1
    new_root = published(server, "hsmca")
    assert spki(new_root.public_key()) != spki(root.public_key())
    renewed = x509.load_der_x509_certificate(
        bytes(create(certs, hsm_name, certs.get_certificate_policy(hsm_name)).cer or b"")
    )
    renewed.verify_directly_issued_by(new_root)
    hsm_leaf.verify_directly_issued_by(root)

    # a software CA on the premium vault, by choice; on the standard vault, software by default and --hsm refused
    software = json.loads(
        run_cli("ca", "create", "dev", "--name", "swca", "--software", "--output", "json", env=env, cwd=tmp_path).stdout
    )
    assert software["hsm"] is False
    assert "(software)" in run_cli("ca", "show", "dev", "swca", env=env, cwd=tmp_path).stdout
    refused = run_cli("ca", "create", "std", "--name", "stdca", "--hsm", env=env, cwd=tmp_path, check=False)
    assert refused.returncode != 0 and "Hardware key operation not allowed on standard vault" in (
        refused.stdout + refused.stderr
    )
    standard = json.loads(
        run_cli("ca", "create", "std", "--name", "stdca", "--output", "json", env=env, cwd=tmp_path).stdout
    )
    assert standard["hsm"] is False

    # a deleted CA takes its keys out of the token (checked at the end) and is no issuer any more
    doomed = json.loads(
        run_cli("ca", "create", "dev", "--name", "doomed", "--output", "json", env=env, cwd=tmp_path).stdout
    )
    assert doomed["hsm"] is True
    run_cli("ca", "rotate", "dev", "doomed", env=env, cwd=tmp_path)
    run_cli("ca", "delete", "dev", "doomed", env=env, cwd=tmp_path)
    with pytest.raises(ResourceNotFoundError):
        certs.get_issuer("doomed")
    assert run_cli("ca", "show", "dev", "doomed", env=env, cwd=tmp_path, check=False).returncode != 0
    release_connections()


# --- the database and the token, server stopped --------------------------------------------------------------------

LIST_TOKEN = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from pkcs11 import Attribute, ObjectClass
    from coffer.crypto.pkcs11 import Pkcs11Backend

    module, label, pin_file = sys.argv[1:4]
    backend = Pkcs11Backend(module, label, pin_file=Path(pin_file))
    found = {}
    with backend._session() as session:
        for obj in session.get_objects():
            key_id = bytes(obj[Attribute.ID]).hex()
            entry = found.setdefault(key_id, {"classes": [], "protected": True})
            object_class = obj[Attribute.CLASS]
            entry["classes"].append(int(object_class))
            if object_class in (ObjectClass.PRIVATE_KEY, ObjectClass.SECRET_KEY):
                entry["protected"] = entry["protected"] and bool(
                    obj[Attribute.SENSITIVE] and obj[Attribute.ALWAYS_SENSITIVE]
                    and not obj[Attribute.EXTRACTABLE] and obj[Attribute.NEVER_EXTRACTABLE])
    backend.close()
    print(json.dumps(found))
""")


def token_objects(server: DevServer) -> dict[str, dict[str, Any]]:
    """{CKA_ID hex: {classes, protected}} of every object of the dev token, from a process of its own."""
    module = find_module()
    assert module is not None
    softhsm = server.data_dir / "softhsm"
    result = subprocess.run(
        [sys.executable, "-c", LIST_TOKEN, module, TOKEN_LABEL, str(softhsm / "pin")],
        env={**os.environ, "SOFTHSM2_CONF": str((softhsm / "softhsm2.conf").resolve())},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def database_references(server: DevServer) -> dict[str, str]:
    """{CKA_ID hex: where} of every `pkcs11:` reference the database holds, opened with the dev unseal key."""
    data_dir = server.data_dir
    storage = server.open_storage()
    found: dict[str, str] = {}

    def add(opened: bytes, where: str) -> None:
        if opened.startswith(b"pkcs11:"):
            found[opened[len(b"pkcs11:") :].decode()] = where

    try:
        barrier = Barrier(storage)
        barrier.unseal_with_key(bytes.fromhex((data_dir / "dev-unseal.key").read_text().strip()))
        with storage.read() as tx:
            record = tx.meta_get("root-key-hsm")
            if record:
                add(json.loads(record)["key"].encode(), "root key seal")
            for vault_row in tx.vault_list():
                view = VaultView(tx, barrier, vault_row)
                for deleted in (False, True):
                    for obj in view.object_list("key", deleted=deleted, after=None, limit=1000):
                        for row in view.version_list("key", obj.name, after_seq=None, limit=1000):
                            add(view.open("key", row.name, row.version, "key", row.payload), f"key {obj.name}")
                    for obj in view.object_list("certificate", deleted=deleted, after=None, limit=1000):
                        pending = obj.data.get("pending") or {}
                        if pending.get("key"):
                            add(
                                view.open(
                                    "certificate",
                                    obj.name,
                                    "pending-" + pending["request_id"],
                                    "key",
                                    bytes.fromhex(pending["key"]),
                                ),
                                f"pending {obj.name}",
                            )
                for ca in view.object_list("certificate-ca", deleted=False, after=None, limit=1000):
                    for generation in ca.data["generations"]:
                        if generation.get("key"):
                            add(
                                view.open(
                                    "certificate-ca", ca.name, generation["id"], "key", bytes.fromhex(generation["key"])
                                ),
                                f"CA {ca.name}",
                            )
        return found
    finally:
        storage.close()


def test_token_holds_exactly_what_the_database_references(server: DevServer, certs: CertificateClient) -> None:
    # one HSM certificate purged (its key leaves the token), one left with an unmerged pending operation
    purged = unique("hsm-purged")
    create(certs, purged, CertificatePolicy(issuer_name="Self", subject="CN=purged", key_type=KeyType.ec_hsm))
    certs.begin_delete_certificate(purged).wait()
    certs.purge_deleted_certificate(purged)
    waiting = unique("hsm-waiting")
    certs.begin_create_certificate(
        waiting, CertificatePolicy(issuer_name="Unknown", subject="CN=waiting", key_type=KeyType.ec_hsm)
    ).result()
    release_connections()
    assert server.stop() == 0

    references = database_references(server)
    objects = token_objects(server)
    assert any(where.startswith("CA hsmca") for where in references.values())
    assert any(where == f"pending {waiting}" for where in references.values())
    assert not any(purged in where for where in references.values())
    assert set(objects) == set(references), {
        "in the token only": sorted(set(objects) - set(references)),
        "in the database only": {k: references[k] for k in set(references) - set(objects)},
    }
    assert all(entry["protected"] for entry in objects.values()), objects
