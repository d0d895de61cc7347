"""Coffer's internal CA against the unmodified `CertificateClient`: `coffer ca create dev --name corp` (CLI as the
dev administrator; the CA key in software with `--software`, in the dev server's SoftHSM2 token with `--hsm`), a
certificate with issuer "corp" issues at once with exactly what its policy asks (subject; DNS, email and UPN
subject alternative names; key usages; extended key usages; validity in months) and a chain that verifies against
the CA PEM published unauthenticated at https://{server-host}/ca/{vault}/{name}.pem; after `coffer ca rotate` new
certificates are signed by the new key and the old chains still verify against the old CA certificate."""

from __future__ import annotations

import base64
import json
import ssl
from pathlib import Path

import httpx
import pytest
from azure.keyvault.certificates import (
    CertificateClient,
    CertificateOperation,
    KeyType,
)
from azure.keyvault.secrets import SecretClient
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from tests.compat.cert_helpers import check_extensions, check_validity, full_policy
from tests.compat.conftest import client_secret_credential
from tests.e2e.helpers import release_connections, run_cli
from tests.support.server import DevServer
from tests.support.softhsm import missing_reason


def _issue(
    certs: CertificateClient,
    secrets: SecretClient,
    name: str,
    months: int,
    key_type: KeyType = KeyType.rsa,
    issuer: str = "corp",
) -> tuple[x509.Certificate, list[x509.Certificate]]:
    poller = certs.begin_create_certificate(name, full_policy(name, issuer, months, key_type))
    assert poller.status().lower() == "inprogress"
    created = poller.result()
    assert not isinstance(created, CertificateOperation)
    assert certs.get_certificate_operation(name).status == "completed"
    key, leaf, chain = pkcs12.load_key_and_certificates(base64.b64decode(secrets.get_secret(name).value or ""), None)
    assert key is not None and leaf is not None
    assert bytes(created.cer or b"") == leaf.public_bytes(serialization.Encoding.DER)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert key.public_key().public_bytes(serialization.Encoding.DER, spki) == leaf.public_key().public_bytes(
        serialization.Encoding.DER, spki
    )
    check_extensions(leaf, name)
    check_validity(leaf, months)
    return leaf, list(chain)


def _published(server: DevServer, name: str = "corp") -> x509.Certificate:
    trust = ssl.create_default_context(cafile=server.ca)
    response = httpx.get(f"{server.authority}/ca/dev/{name}.pem", verify=trust)  # no credentials
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-pem-file")
    return x509.load_pem_x509_certificate(response.content)


def _check_chain(leaf: x509.Certificate, chain: list[x509.Certificate], ca: x509.Certificate) -> None:
    """The chain in the secret is the published CA certificate, and the leaf verifies against it."""
    assert chain == [ca]
    leaf.verify_directly_issued_by(ca)
    assert leaf.issuer == ca.subject
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert leaf.not_valid_after_utc <= ca.not_valid_after_utc


@pytest.mark.parametrize("protection", ["--software", "--hsm"])
def test_internal_ca_issues_and_rotates(fresh_server: DevServer, tmp_path: Path, protection: str) -> None:
    if protection == "--hsm" and missing_reason() is not None:
        pytest.skip(missing_reason() or "")
    env = fresh_server.client_env()
    out = run_cli(
        "ca",
        "create",
        "dev",
        "--name",
        "corp",
        "--subject",
        "CN=Corp Root CA",
        protection,
        "--output",
        "json",
        env=env,
        cwd=tmp_path,
    ).stdout
    created = json.loads(out)
    assert created["name"] == "corp" and created["provider"] == "Coffer"
    assert created["hsm"] is (protection == "--hsm")
    assert created["url"] == f"{fresh_server.authority}/ca/dev/corp.pem"
    shown = run_cli("ca", "show", "dev", "corp", env=env, cwd=tmp_path).stdout
    assert "CN=Corp Root CA" in shown and ("(HSM)" if protection == "--hsm" else "(software)") in shown

    credential = client_secret_credential(fresh_server)
    try:
        with (
            CertificateClient(fresh_server.vault_url, credential, connection_verify=fresh_server.ca) as certs,
            SecretClient(fresh_server.vault_url, credential, connection_verify=fresh_server.ca) as secrets,
        ):
            assert certs.get_issuer("corp").provider == "Coffer"
            old_ca = _published(fresh_server)
            assert old_ca.subject.rfc4514_string() == "CN=Corp Root CA"
            old_ca.verify_directly_issued_by(old_ca)
            assert old_ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
            assert old_ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign is True
            assert base64.b64decode(created["current"]["cer"]) == old_ca.public_bytes(serialization.Encoding.DER)

            old_leaf, old_chain = _issue(certs, secrets, "web", 12)
            assert isinstance(old_leaf.public_key(), rsa.RSAPublicKey)
            _check_chain(old_leaf, old_chain, old_ca)
            ec_leaf, ec_chain = _issue(certs, secrets, "device", 3, KeyType.ec)
            assert isinstance(ec_leaf.public_key(), ec.EllipticCurvePublicKey)
            _check_chain(ec_leaf, ec_chain, old_ca)

            rotated = json.loads(
                run_cli("ca", "rotate", "dev", "corp", "--output", "json", env=env, cwd=tmp_path).stdout
            )
            assert len(rotated["previous"]) == 1 and rotated["hsm"] is created["hsm"]
            new_ca = _published(fresh_server)
            assert new_ca.public_key() != old_ca.public_key()
            new_leaf, new_chain = _issue(certs, secrets, "api", 24)
            _check_chain(new_leaf, new_chain, new_ca)
            old_leaf.verify_directly_issued_by(old_ca)  # old chains still verify against the old CA certificate
            old_again, again_chain = _issue(certs, secrets, "web", 1)  # renewing "web" now uses the new key
            _check_chain(old_again, again_chain, new_ca)
    finally:
        credential.close()
        release_connections()


def test_internal_ca_with_an_intermediate(fresh_server: DevServer, tmp_path: Path) -> None:
    """`coffer ca create --intermediate`: the root signs an intermediate CA, the intermediate signs the leaves, and
    the secret's chain is [intermediate, root]; the published certificate is the root (the trust anchor)."""
    env = fresh_server.client_env()
    args = ["ca", "create", "dev", "--name", "issuing", "--subject", "CN=Corp Root CA", "--software"]
    args += ["--intermediate", "--intermediate-subject", "CN=Corp Issuing CA", "--output", "json"]
    created = json.loads(run_cli(*args, env=env, cwd=tmp_path).stdout)
    assert created["intermediateSubject"] == "CN=Corp Issuing CA"
    assert "intermediate" in run_cli("ca", "show", "dev", "issuing", env=env, cwd=tmp_path).stdout
    credential = client_secret_credential(fresh_server)
    try:
        with (
            CertificateClient(fresh_server.vault_url, credential, connection_verify=fresh_server.ca) as certs,
            SecretClient(fresh_server.vault_url, credential, connection_verify=fresh_server.ca) as secrets,
        ):
            root = _published(fresh_server, "issuing")
            assert root.subject.rfc4514_string() == "CN=Corp Root CA"
            assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 1
            leaf, chain = _issue(certs, secrets, "site", 6, issuer="issuing")
            intermediate, chain_root = chain
            assert chain_root == root
            assert intermediate.subject.rfc4514_string() == "CN=Corp Issuing CA"
            constraints = intermediate.extensions.get_extension_for_class(x509.BasicConstraints).value
            assert constraints.ca is True and constraints.path_length == 0
            intermediate.verify_directly_issued_by(root)
            _check_chain(leaf, [intermediate], intermediate)
            assert intermediate.not_valid_after_utc <= root.not_valid_after_utc

            rotated = json.loads(
                run_cli("ca", "rotate", "dev", "issuing", "--output", "json", env=env, cwd=tmp_path).stdout
            )
            assert "intermediate" in rotated["current"] and len(rotated["previous"]) == 1
            new_leaf, (new_intermediate, new_root) = _issue(certs, secrets, "site", 6, issuer="issuing")
            new_intermediate.verify_directly_issued_by(new_root)
            new_leaf.verify_directly_issued_by(new_intermediate)
            assert new_root == _published(fresh_server, "issuing") != root
            leaf.verify_directly_issued_by(intermediate)  # the old chain still verifies
    finally:
        credential.close()
        release_connections()
