"""Coffer's internal CA against the unmodified `CertificateClient`: `coffer ca create dev --name corp` (CLI as the
dev administrator), a certificate with issuer "corp" issues at once with a chain that verifies against the CA PEM
published unauthenticated at https://{server-host}/ca/{vault}/{name}.pem; after `coffer ca rotate` new
certificates are signed by the new key and the old chains still verify against the old CA certificate."""

from __future__ import annotations

import base64
import json
import ssl
from pathlib import Path

import httpx
from azure.keyvault.certificates import CertificateClient, CertificateOperation, CertificatePolicy
from azure.keyvault.secrets import SecretClient
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from tests.compat.conftest import client_secret_credential
from tests.e2e.helpers import release_connections, run_cli
from tests.support.server import DevServer


def _issue(
    certs: CertificateClient, secrets: SecretClient, name: str
) -> tuple[x509.Certificate, list[x509.Certificate]]:
    poller = certs.begin_create_certificate(name, CertificatePolicy(issuer_name="corp", subject=f"CN={name}.corp"))
    assert poller.status().lower() == "inprogress"
    created = poller.result()
    assert not isinstance(created, CertificateOperation)
    assert certs.get_certificate_operation(name).status == "completed"
    key, leaf, chain = pkcs12.load_key_and_certificates(base64.b64decode(secrets.get_secret(name).value or ""), None)
    assert key is not None and leaf is not None
    assert bytes(created.cer or b"") == leaf.public_bytes(serialization.Encoding.DER)
    return leaf, list(chain)


def _published(server: DevServer) -> x509.Certificate:
    trust = ssl.create_default_context(cafile=server.ca)
    response = httpx.get(f"{server.authority}/ca/dev/corp.pem", verify=trust)  # no credentials
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-pem-file")
    return x509.load_pem_x509_certificate(response.content)


def test_internal_ca_issues_and_rotates(fresh_server: DevServer, tmp_path: Path) -> None:
    env = fresh_server.client_env()
    out = run_cli("ca", "create", "dev", "--name", "corp", "--subject", "CN=Corp Root CA", "--output", "json",
                  env=env, cwd=tmp_path).stdout
    created = json.loads(out)
    assert created["name"] == "corp" and created["provider"] == "Coffer"
    assert created["url"] == f"{fresh_server.authority}/ca/dev/corp.pem"
    shown = run_cli("ca", "show", "dev", "corp", env=env, cwd=tmp_path).stdout
    assert "CN=Corp Root CA" in shown

    credential = client_secret_credential(fresh_server)
    try:
        with CertificateClient(fresh_server.vault_url, credential, connection_verify=fresh_server.ca) as certs, \
                SecretClient(fresh_server.vault_url, credential, connection_verify=fresh_server.ca) as secrets:
            assert certs.get_issuer("corp").provider == "Coffer"
            old_ca = _published(fresh_server)
            assert old_ca.subject.rfc4514_string() == "CN=Corp Root CA"
            old_leaf, old_chain = _issue(certs, secrets, "web")
            old_leaf.verify_directly_issued_by(old_ca)
            assert [c.fingerprint(old_ca.signature_hash_algorithm) for c in old_chain] == [  # type: ignore[arg-type]
                old_ca.fingerprint(old_ca.signature_hash_algorithm)]  # type: ignore[arg-type]

            rotated = json.loads(run_cli("ca", "rotate", "dev", "corp", "--output", "json", env=env,
                                         cwd=tmp_path).stdout)
            assert len(rotated["previous"]) == 1
            new_ca = _published(fresh_server)
            assert new_ca.public_key() != old_ca.public_key()
            new_leaf, new_chain = _issue(certs, secrets, "api")
            new_leaf.verify_directly_issued_by(new_ca)
            assert new_chain[0] == new_ca
            old_leaf.verify_directly_issued_by(old_ca)  # old chains still verify against the old CA certificate
            old_again, _ = _issue(certs, secrets, "web")  # renewing "web" now uses the new key
            old_again.verify_directly_issued_by(new_ca)
    finally:
        credential.close()
        release_connections()
