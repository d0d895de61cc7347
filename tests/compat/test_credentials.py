"""Every azure-identity credential, unmodified, against Coffer's token service (contract C12-C17, §5).

Each positive test proves that the credential reads a secret through `SecretClient(server.vault_url, credential)`.
Credentials that take their configuration from the environment run in a subprocess with a clean environment.
Principals, credentials and issuers are created with `coffer identity ...`, as an operator would.

The negative tests check what the token service and the data plane refuse: the status, the challenge, no
`Retry-After` on 401 (C11), an error body that does not say why, and an audit record that does.
"""

from __future__ import annotations

import base64
import datetime
import functools
import hashlib
import hmac
import json
import re
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import CertificateCredential, ClientSecretCredential, WorkloadIdentityCredential
from azure.keyvault.secrets import SecretClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from coffer.app import Coffer
from coffer.authz import roles
from coffer.config import Config
from coffer.identity import principals
from coffer.storage import RoleAssignmentRow
from tests.compat.helpers import unique
from tests.e2e.helpers import FOREIGN_IDENTITY_VARIABLES, release_connections, run_cli
from tests.support.server import DevServer

API = {"api-version": "2026-04-01"}
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
CREDENTIAL_ID = r"\b[0-9a-f]{32}\b"
EXCHANGE_AUDIENCE = "api://AzureADTokenExchange"
WORKLOAD_ISSUER = "https://issuer.test"
SUBJECT = "system:serviceaccount:ns:sa"
OIDC_ISSUER = "https://oidc.test"
OIDC_AUDIENCE = "coffer-tests"


# --- helpers: tokens, keys, certificates -------------------------------------------------------------

@functools.cache
def _context(cafile: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=cafile)


def trust(server: DevServer) -> ssl.SSLContext:
    """httpx's way of trusting the dev CA."""
    return _context(server.ca)


def claims_of(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}."


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_jwks(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {"keys": [{**jwk, "kid": kid, "alg": "RS256", "use": "sig"}]}


def mint(key: rsa.RSAPrivateKey, kid: str, claims: dict[str, Any]) -> str:
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid, "typ": "JWT"})


def self_signed(path: Path) -> Path:
    """A self-signed RSA certificate and its private key in one PEM file (what CertificateCredential reads)."""
    key = rsa_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, path.stem)])
    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(days=30)).sign(key, hashes.SHA256()))
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())
                     + cert.public_bytes(serialization.Encoding.PEM))
    return path


class StaticToken:
    """A TokenCredential that always returns one token (contract §5.6): azure-identity ships none."""

    def __init__(self, token: str) -> None:
        self.token = token

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(self.token, int(time.time()) + 3600)


def read_secret(server: DevServer, credential: Any, name: str, *, close: bool = True) -> str | None:
    """The secret's value, read with the unmodified SecretClient and `credential` (closed after, unless not)."""
    try:
        with SecretClient(server.vault_url, credential, connection_verify=server.ca) as client:
            return client.get_secret(name).value
    finally:
        if close and hasattr(credential, "close"):
            credential.close()


def client_secret_credential(server: DevServer, tenant: str, client_id: str, secret: str) -> ClientSecretCredential:
    return ClientSecretCredential(tenant, client_id, secret, authority=server.authority,
                                  disable_instance_discovery=True, connection_verify=server.ca)


def dev_credential(server: DevServer) -> ClientSecretCredential:
    env = server.env
    return client_secret_credential(server, env["COFFER_TENANT_ID"], env["COFFER_CLIENT_ID"],
                                    env["COFFER_CLIENT_SECRET"])


def store_secret(server: DevServer) -> tuple[str, str]:
    name, value = unique("cred"), f"value-{uuid.uuid4()}"
    credential = dev_credential(server)
    with SecretClient(server.vault_url, credential, connection_verify=server.ca) as client:
        client.set_secret(name, value)
    credential.close()
    return name, value


def token_response(server: DevServer, tenant: str, client_id: str, secret: str) -> httpx.Response:
    return httpx.post(f"{server.authority}/{tenant}/oauth2/v2.0/token", verify=trust(server), data={
        "grant_type": "client_credentials", "client_id": client_id, "client_secret": secret,
        "scope": f"{server.authority}/.default"})


def raw_token(server: DevServer, tenant: str, client_id: str, secret: str) -> str:
    response = token_response(server, tenant, client_id, secret)
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def managed_identity_token(server: DevServer) -> str:
    response = httpx.get(server.env["IDENTITY_ENDPOINT"], verify=trust(server),
                         params={"api-version": "2019-08-01", "resource": server.authority},
                         headers={"X-IDENTITY-HEADER": server.env["IDENTITY_HEADER"], "Metadata": "true"})
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def store_secret_with(server: DevServer, credential: Any) -> tuple[str, str]:
    name, value = unique("cred"), f"value-{uuid.uuid4()}"
    with SecretClient(server.vault_url, credential, connection_verify=server.ca) as client:
        client.set_secret(name, value)
    return name, value


def jwks_kids(server: DevServer) -> list[str]:
    response = httpx.get(f"{server.authority}/{server.env['COFFER_TENANT_ID']}/discovery/v2.0/keys",
                         verify=trust(server))
    assert response.status_code == 200, response.text
    return [key["kid"] for key in response.json()["keys"]]


# --- helpers: the CLI and the admin API ---------------------------------------------------------------

def cli(server: DevServer, cwd: Path, *args: str) -> str:
    return run_cli("identity", *args, env=server.client_env(), cwd=cwd).stdout


def row_with(output: str, text: str) -> str:
    rows = [line for line in output.splitlines() if text in line and "│" in line]
    assert len(rows) == 1, output
    return rows[0]


def shown_once(output: str, label: str) -> str:
    match = re.search(rf"^{re.escape(label)}: (\S+)$", output, re.M)
    assert match, output
    return match.group(1)


@dataclass
class Principal:
    object_id: str
    client_id: str
    identity_header: str = ""


def create_principal(server: DevServer, cwd: Path, name: str, *, managed: bool = False) -> Principal:
    output = cli(server, cwd, "principal", "create", name, *(["--managed-identity"] if managed else []))
    object_id, client_id = re.findall(UUID, row_with(output, name))[:2]
    return Principal(object_id, client_id, shown_once(output, "IDENTITY_HEADER") if managed else "")


def add_client_secret(server: DevServer, cwd: Path, client_id: str) -> tuple[str, str]:
    """(credential id, secret) of a new client secret."""
    output = cli(server, cwd, "secret", "add", client_id)
    return re.findall(CREDENTIAL_ID, row_with(output, "clientSecret"))[0], shown_once(output, "Client secret")


def vault_scope(server: DevServer) -> str:
    """The RBAC scope of the server's dev vault: /vaults/NAME."""
    return "/vaults/" + str(urlsplit(server.vault_url).hostname).split(".")[0]


def grant(server: DevServer, cwd: Path, assignee: str, role: str = "Key Vault Secrets User") -> None:
    """`coffer role assignment create`: the vault uses Azure RBAC, so a new principal reads nothing without it."""
    output = run_cli("role", "assignment", "create", "--role", role, "--assignee", assignee,
                     "--scope", vault_scope(server), env=server.client_env(), cwd=cwd).stdout
    assert role in output, output


def assign_in_storage(server: DevServer, principal_id: str, role_id: str, scope: str) -> None:
    """A role assignment written into the STOPPED server's storage, for ids the access API does not accept."""
    storage = server.open_storage()  # SQLite or PostgreSQL, as the server
    try:
        with storage.write() as tx:
            tx.role_assignment_put(RoleAssignmentRow(str(uuid.uuid4()), scope, role_id, principal_id,
                                                     int(time.time())))
    finally:
        storage.close()


class Admin:
    """The identity admin API with the dev service principal's token (for setups the CLI tests don't need)."""

    def __init__(self, server: DevServer) -> None:
        env = server.env
        bearer = raw_token(server, env["COFFER_TENANT_ID"], env["COFFER_CLIENT_ID"], env["COFFER_CLIENT_SECRET"])
        self.http = httpx.Client(base_url=f"{server.authority}/admin/identity", verify=trust(server),
                                 headers={"authorization": f"Bearer {bearer}"})

    def ok(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        response = self.http.request(method, path, json=body)
        assert response.status_code == status, response.text
        return response.json() if response.content else None

    def app_with_secret(self, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
        app = self.ok("POST", "/principals", {"displayName": name, "kind": "application"}, 201)
        secret = self.ok("POST", f"/principals/{app['objectId']}/credentials", {"kind": "clientSecret"}, 201)
        return app, secret

    def close(self) -> None:
        self.http.close()


# --- helpers: the audit log and data-plane refusals ---------------------------------------------------

class AuditTail:
    """Records appended to the server's audit log (JSON lines) since this object was made."""

    def __init__(self, server: DevServer) -> None:
        self.path = server.data_dir / "audit.log"
        self.offset = self.path.stat().st_size

    def records(self) -> list[dict[str, Any]]:
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            return [json.loads(line) for line in handle.read().splitlines() if line.strip()]

    def failures(self, reason: str, **properties: Any) -> list[dict[str, Any]]:
        return [r for r in self.records() if r.get("resultType") == "Failure"
                and reason in r.get("resultDescription", "")
                and all(r.get("properties", {}).get(k) == v for k, v in properties.items())]


def assert_refused(server: DevServer, token: str, reason: str, name: str = "any-secret") -> None:
    """The data plane answers `token` with 401 + challenge, without Retry-After and without saying why;
    the audit log says why (`reason` in the failure record's resultDescription)."""
    tail = AuditTail(server)
    correlation = str(uuid.uuid4())
    response = httpx.get(f"{server.vault_url}/secrets/{name}/", params=API, verify=trust(server),
                         headers={"Authorization": f"Bearer {token}", "x-ms-client-request-id": correlation})
    assert response.status_code == 401, response.text
    assert response.headers.get("www-authenticate", "").startswith("Bearer "), response.headers
    assert "retry-after" not in response.headers, "401 must never carry Retry-After (C11)"
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == "Unauthorized", body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    assert reason.lower() not in response.text.lower(), f"the reason {reason!r} leaked into the body: {body}"
    records = [r for r in tail.records() if r.get("correlationId") == correlation]
    assert len(records) == 1, records
    record = records[0]
    assert record["resultType"] == "Failure" and record["properties"]["httpStatusCode"] == 401, record
    assert reason in record.get("resultDescription", ""), record
    assert token not in json.dumps(record), "the audit log must not hold the token"


# --- helpers: credentials that read the environment, in clean subprocesses ----------------------------

SDK_SCRIPT = r"""
import json, sys
import jwt
from azure.identity import DefaultAzureCredential, ManagedIdentityCredential, WorkloadIdentityCredential
from azure.keyvault.secrets import SecretClient

kind, vault_url, name, scope, kwargs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
kinds = {"ManagedIdentityCredential": ManagedIdentityCredential, "DefaultAzureCredential": DefaultAzureCredential,
         "WorkloadIdentityCredential": WorkloadIdentityCredential}
credential = kinds[kind](**kwargs)
with SecretClient(vault_url, credential) as client:
    value = client.get_secret(name).value
claims = jwt.decode(credential.get_token(scope).token, options={"verify_signature": False})
print(json.dumps({"value": value, "claims": claims}))
"""


@dataclass
class Job:
    env: dict[str, str]
    kind: str
    kwargs: dict[str, Any] | None = None


def run_sdk(server: DevServer, name: str, jobs: dict[str, Job], cwd: Path) -> dict[str, dict[str, Any]]:
    """Run each job's credential + SecretClient in its own process, all at once; their results by label."""
    procs = {
        label: subprocess.Popen(
            [sys.executable, "-c", SDK_SCRIPT, job.kind, server.vault_url, name, f"{server.authority}/.default",
             json.dumps(job.kwargs or {})],
            env=job.env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for label, job in jobs.items()
    }
    results: dict[str, dict[str, Any]] = {}
    failures = []
    for label, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        if proc.returncode != 0:
            failures.append(f"{label}: exit {proc.returncode}\n{err[-3000:]}")
        else:
            results[label] = json.loads(out.strip().splitlines()[-1])
    assert not failures, "\n\n".join(failures)
    return results


def clean_env(server: DevServer) -> dict[str, str]:
    """client_env() (dev.env over os.environ) without any variable that picks an identity."""
    env = server.client_env()
    for key in (*FOREIGN_IDENTITY_VARIABLES, "IDENTITY_ENDPOINT", "IDENTITY_HEADER"):
        env.pop(key, None)
    return env


def app_service_env(server: DevServer, header: str | None = None, **extra: str) -> dict[str, str]:
    return {**clean_env(server), "IDENTITY_ENDPOINT": server.env["IDENTITY_ENDPOINT"],
            "IDENTITY_HEADER": header or server.env["IDENTITY_HEADER"], **extra}


def imds_env(server: DevServer) -> dict[str, str]:
    return {**clean_env(server), "AZURE_POD_IDENTITY_AUTHORITY_HOST": server.authority,
            "REQUESTS_CA_BUNDLE": server.ca}


def workload_env(server: DevServer, client_id: str, token_file: Path) -> dict[str, str]:
    return {**clean_env(server), "AZURE_AUTHORITY_HOST": server.authority,
            "AZURE_TENANT_ID": server.env["COFFER_TENANT_ID"], "AZURE_CLIENT_ID": client_id,
            "AZURE_FEDERATED_TOKEN_FILE": str(token_file), "REQUESTS_CA_BUNDLE": server.ca}


# --- fixtures ---------------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _no_leaked_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """In-process credentials get everything as arguments: nothing identity-related from this machine."""
    for key in (*FOREIGN_IDENTITY_VARIABLES, "IDENTITY_ENDPOINT", "IDENTITY_HEADER", "AZURE_AUTHORITY_HOST"):
        monkeypatch.delenv(key, raising=False)
    yield


@pytest.fixture(scope="module")
def stored(dev_server: DevServer) -> tuple[str, str]:
    """(name, value) of a secret in the dev vault, written by the dev service principal."""
    return store_secret(dev_server)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("credentials")


@dataclass
class Issuer:
    key: rsa.RSAPrivateKey
    kid: str
    issuer: str


@dataclass
class Workload(Issuer):
    app: Principal


@pytest.fixture(scope="module")
def workload(dev_server: DevServer, workdir: Path) -> Workload:
    """A trusted issuer (Kubernetes-like) and an application with a federated credential for SUBJECT."""
    key, kid = rsa_key(), f"k8s-{uuid.uuid4().hex[:8]}"
    jwks = workdir / "k8s-jwks.json"
    jwks.write_text(json.dumps(public_jwks(key, kid)))
    added = cli(dev_server, workdir, "issuer", "add", "--issuer", WORKLOAD_ISSUER, "--jwks", str(jwks))
    assert WORKLOAD_ISSUER in added and "inline (1 keys)" in added
    app = create_principal(dev_server, workdir, unique("workload"))
    grant(dev_server, workdir, app.object_id)
    federated = cli(dev_server, workdir, "federated", "add", app.client_id, "--name", "k8s-sa", "--issuer",
                    WORKLOAD_ISSUER, "--subject", SUBJECT, "--audience", EXCHANGE_AUDIENCE)
    assert SUBJECT in federated and EXCHANGE_AUDIENCE in federated
    return Workload(key, kid, WORKLOAD_ISSUER, app)


def service_account_token(workload: Workload, **overrides: Any) -> str:
    now = int(time.time())
    claims = {"iss": workload.issuer, "sub": SUBJECT, "aud": [EXCHANGE_AUDIENCE], "iat": now, "nbf": now,
              "exp": now + 3600, "jti": uuid.uuid4().hex}
    key = overrides.pop("key", workload.key)
    claims.update(overrides)
    return mint(key, workload.kid, claims)


@dataclass
class External(Issuer):
    server: DevServer
    oid: str  # the external caller the vault's tenant granted Key Vault Secrets User
    name: str
    value: str


@pytest.fixture(scope="module")
def external(tmp_path_factory: pytest.TempPathFactory) -> Iterator[External]:
    """A server of its own whose dev tenant trusts an external OIDC issuer's tokens (audience OIDC_AUDIENCE)
    on the data plane, and one external caller (an `oid` of that issuer) holding Key Vault Secrets User on
    the dev vault. The access API only names principals of the tenant (see the xfail test below), so that
    assignment is written into storage while the server is stopped."""
    root = tmp_path_factory.mktemp("external")
    server = DevServer(root / "data").start()
    try:
        key, kid = rsa_key(), f"oidc-{uuid.uuid4().hex[:8]}"
        jwks = root / "oidc-jwks.json"
        jwks.write_text(json.dumps(public_jwks(key, kid)))
        added = cli(server, root, "issuer", "add", "--issuer", OIDC_ISSUER, "--jwks", str(jwks),
                    "--audience", OIDC_AUDIENCE)
        assert OIDC_ISSUER in added and OIDC_AUDIENCE in added
        name, value = store_secret(server)
        oid = str(uuid.uuid4())
        release_connections()
        server.stop()
        assign_in_storage(server, oid, roles.SECRETS_USER, vault_scope(server))
        server.restart()
        yield External(key, kid, OIDC_ISSUER, server, oid, name, value)
    finally:
        release_connections()
        server.stop()


def oidc_token(external: External, oid: str | None = None, **overrides: Any) -> str:
    now = int(time.time())
    oid = oid or external.oid
    claims = {"iss": external.issuer, "aud": OIDC_AUDIENCE, "oid": oid, "sub": oid,
              "tid": external.server.env["COFFER_TENANT_ID"], "azp": "external-app", "iat": now, "nbf": now,
              "exp": now + 3600}
    key = overrides.pop("key", external.key)
    claims.update(overrides)
    return mint(key, external.kid, claims)


@pytest.fixture(scope="module")
def genuine(dev_server: DevServer) -> str:
    """A genuine token of the dev managed identity (App Service protocol)."""
    response = httpx.get(dev_server.env["IDENTITY_ENDPOINT"], verify=trust(dev_server),
                         params={"api-version": "2019-08-01", "resource": dev_server.authority},
                         headers={"X-IDENTITY-HEADER": dev_server.env["IDENTITY_HEADER"], "Metadata": "true"})
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


@pytest.fixture(scope="module")
def signing_key(dev_server: DevServer) -> bytes:
    """The dev server's token-signing key (read with its dev unseal key), to forge tokens whose signature
    is valid but whose claims are not."""
    from coffer.barrier import Barrier

    storage = dev_server.open_storage()  # SQLite or PostgreSQL, as the server
    try:
        barrier = Barrier(storage)
        barrier.unseal_with_key(bytes.fromhex((dev_server.data_dir / "dev-unseal.key").read_text().strip()))
        with storage.read() as tx:
            ring = barrier.system_get(tx, "token-signing-keys")
    finally:
        storage.close()
    assert ring is not None
    return str(json.loads(ring)[-1]["pem"]).encode("ascii")


# --- 1. ClientSecretCredential -----------------------------------------------------------------------

def test_client_secret_credential_with_rotation_and_revocation(dev_server: DevServer, stored: tuple[str, str],
                                                               tmp_path: Path) -> None:
    server, (name, value) = dev_server, stored
    tenant = server.env["COFFER_TENANT_ID"]
    app = create_principal(server, tmp_path, unique("billing-api"))
    grant(server, tmp_path, app.object_id)
    first_id, first = add_client_secret(server, tmp_path, app.client_id)
    second_id, second = add_client_secret(server, tmp_path, app.client_id)
    assert first_id != second_id and first != second

    # two secrets at once, both work (rotation)
    old = client_secret_credential(server, tenant, app.client_id, first)
    assert read_secret(server, old, name, close=False) == value
    assert read_secret(server, client_secret_credential(server, tenant, app.client_id, second), name) == value
    issued = old.get_token(f"{server.authority}/.default").token  # from the credential's cache
    old.close()
    claims = claims_of(issued)
    assert (claims["oid"], claims["appid"], claims["tid"]) == (app.object_id, app.client_id, tenant)
    assert claims["aud"] == server.authority and claims["exp"] - time.time() > 3000  # C9

    # remove the first: a new credential with it fails; its token is refused at once; the second still works
    assert first_id in cli(server, tmp_path, "credential", "remove", app.client_id, first_id)
    tail = AuditTail(server)
    with pytest.raises(ClientAuthenticationError):
        read_secret(server, client_secret_credential(server, tenant, app.client_id, first), name)
    assert tail.failures("invalid client or secret", clientId=app.client_id), tail.records()
    assert_refused(server, issued, "credential revoked", name)
    assert read_secret(server, client_secret_credential(server, tenant, app.client_id, second), name) == value


# --- 2. CertificateCredential ------------------------------------------------------------------------

def test_certificate_credential(dev_server: DevServer, stored: tuple[str, str], tmp_path: Path) -> None:
    server, (name, value) = dev_server, stored
    tenant = server.env["COFFER_TENANT_ID"]
    app = create_principal(server, tmp_path, unique("cert-app"))
    grant(server, tmp_path, app.client_id)
    registered = self_signed(tmp_path / "registered.pem")
    assert "certificate" in cli(server, tmp_path, "certificate", "add", app.client_id, str(registered))

    def credential(path: Path) -> CertificateCredential:
        return CertificateCredential(tenant, app.client_id, str(path), authority=server.authority,
                                     disable_instance_discovery=True, connection_verify=server.ca)

    working = credential(registered)
    assert read_secret(server, working, name, close=False) == value
    assert claims_of(working.get_token(f"{server.authority}/.default").token)["oid"] == app.object_id
    working.close()

    tail = AuditTail(server)
    with pytest.raises(ClientAuthenticationError):
        read_secret(server, credential(self_signed(tmp_path / "unregistered.pem")), name)
    assert tail.failures("unknown certificate", clientId=app.client_id), tail.records()


# --- 3. ManagedIdentityCredential: App Service, IMDS, user-assigned selection -------------------------

def test_managed_identity_app_service_and_imds(dev_server: DevServer, stored: tuple[str, str],
                                               tmp_path: Path) -> None:
    server, (name, value) = dev_server, stored
    tail = AuditTail(server)
    results = run_sdk(server, name, {
        "app-service": Job(app_service_env(server), "ManagedIdentityCredential"),
        "app-service-default": Job(app_service_env(server), "DefaultAzureCredential"),
        "imds": Job(imds_env(server), "ManagedIdentityCredential"),
        "imds-default": Job(imds_env(server), "DefaultAzureCredential"),
    }, tmp_path)
    oids = set()
    for label, result in results.items():
        assert result["value"] == value, label
        claims = result["claims"]
        assert claims["coffer_kind"] == "managedIdentity", (label, claims)
        assert claims["xms_mirid"].endswith("/userAssignedIdentities/dev-identity"), (label, claims)
        oids.add(claims["oid"])
    assert len(oids) == 1  # the dev identity, by either protocol
    served = [r["properties"]["requestUri"].split("?")[0] for r in tail.records()
              if r.get("operationName") == "Authentication" and r.get("resultType") == "Success"]
    assert served.count("/metadata/identity/oauth2/token") >= 2, served  # IMDS was really used
    assert served.count("/msi/token") >= 2, served


def test_managed_identity_selects_one_of_several_user_assigned_identities(
        dev_server: DevServer, stored: tuple[str, str], tmp_path: Path) -> None:
    server, (name, value) = dev_server, stored
    first = create_principal(server, tmp_path, unique("mi-first"), managed=True)
    second = create_principal(server, tmp_path, unique("mi-second"), managed=True)
    endpoint_id = first.identity_header.split(".")[0]
    assigned = cli(server, tmp_path, "endpoint", "assign", first.object_id, endpoint_id, second.client_id)
    assert second.object_id in assigned
    for identity in (first, second):
        grant(server, tmp_path, identity.object_id)

    env = app_service_env(server, first.identity_header)
    results = run_sdk(server, name, {
        "by-client-id": Job(env, "ManagedIdentityCredential", {"client_id": second.client_id}),
        "default-by-env": Job({**env, "AZURE_CLIENT_ID": second.client_id}, "DefaultAzureCredential"),
        "owner": Job(env, "ManagedIdentityCredential"),
    }, tmp_path)
    for result in results.values():
        assert result["value"] == value
    assert results["by-client-id"]["claims"]["oid"] == second.object_id
    assert results["default-by-env"]["claims"]["oid"] == second.object_id
    assert results["owner"]["claims"]["oid"] == first.object_id


# --- 4. WorkloadIdentityCredential -------------------------------------------------------------------

def test_workload_identity_from_environment(dev_server: DevServer, stored: tuple[str, str], workload: Workload,
                                           tmp_path: Path) -> None:
    server, (name, value) = dev_server, stored
    token_file = tmp_path / "sa-token"
    token_file.write_text(service_account_token(workload))
    env = workload_env(server, workload.app.client_id, token_file)
    assert not any(key.startswith(("IDENTITY_", "MSI_")) for key in env)
    results = run_sdk(server, name, {
        "workload": Job(env, "WorkloadIdentityCredential"),
        "default": Job(env, "DefaultAzureCredential"),
    }, tmp_path)
    for label, result in results.items():
        assert result["value"] == value, label
        assert result["claims"]["oid"] == workload.app.object_id, label
        assert result["claims"]["appid"] == workload.app.client_id, label


BAD_FEDERATED: dict[str, tuple[dict[str, Any], str]] = {
    "wrong-subject": ({"sub": "system:serviceaccount:ns:other"}, "no federated credential"),
    "wrong-audience": ({"aud": ["api://SomethingElse"]}, "federated: audience"),
    "expired": ({"iat": int(time.time()) - 7200, "nbf": int(time.time()) - 7200, "exp": int(time.time()) - 3600},
                "federated: expired"),
    "other-key": ({"key": rsa_key()}, "federated: signature"),
}


@pytest.mark.parametrize("case", list(BAD_FEDERATED))
def test_workload_identity_refuses_bad_federated_tokens(dev_server: DevServer, stored: tuple[str, str],
                                                       workload: Workload, tmp_path: Path, case: str) -> None:
    server, (name, _value) = dev_server, stored
    overrides, reason = BAD_FEDERATED[case]
    token_file = tmp_path / "sa-token"
    token_file.write_text(service_account_token(workload, **overrides))
    tail = AuditTail(server)
    credential = WorkloadIdentityCredential(tenant_id=server.env["COFFER_TENANT_ID"],
                                            client_id=workload.app.client_id, token_file_path=str(token_file),
                                            authority=server.authority, connection_verify=server.ca)
    with pytest.raises(ClientAuthenticationError):
        read_secret(server, credential, name)
    failures = tail.failures(f"client assertion: {reason}", clientId=workload.app.client_id)
    assert failures, tail.records()
    assert all(r["properties"]["httpStatusCode"] in (400, 401) for r in failures)


# --- 5. Tokens of a trusted external OIDC issuer on the data plane ------------------------------------

def test_external_issuer_token_reads_a_secret(external: External) -> None:
    server = external.server
    tail = AuditTail(server)
    assert read_secret(server, StaticToken(oidc_token(external)), external.name) == external.value
    reads = [r for r in tail.records() if r.get("operationName") == "SecretGet" and r.get("resultType") == "Success"]
    assert reads and reads[-1]["identity"]["claim"]["oid"] == external.oid, reads
    assert reads[-1]["identity"]["claim"]["iss"] == OIDC_ISSUER
    # authenticated but not authorized: another caller of the same issuer holds no role
    stranger = httpx.get(f"{server.vault_url}/secrets/{external.name}/", params=API, verify=trust(server),
                         headers={"Authorization": f"Bearer {oidc_token(external, str(uuid.uuid4()))}"})
    assert stranger.status_code == 403, stranger.text


BAD_EXTERNAL: dict[str, tuple[dict[str, Any] | None, str]] = {
    "wrong-audience": ({"aud": "someone-else"}, "Audience"),
    "expired": ({"iat": int(time.time()) - 7200, "nbf": int(time.time()) - 7200, "exp": int(time.time()) - 3600},
                "expired"),
    "alg-none": (None, "'none'"),
    "other-key": ({"key": rsa_key()}, "signature"),
}


@pytest.mark.parametrize("case", list(BAD_EXTERNAL))
def test_external_issuer_bad_tokens_are_refused(external: External, case: str) -> None:
    overrides, reason = BAD_EXTERNAL[case]
    if overrides is None:  # alg none: the genuine claims, unsigned
        token = unsigned({"alg": "none", "typ": "JWT", "kid": external.kid}, claims_of(oidc_token(external)))
    else:
        token = oidc_token(external, **overrides)
    assert_refused(external.server, token, reason, external.name)
    assert_refused(external.server, token, f"external token from {OIDC_ISSUER}", external.name)


def test_role_assignment_can_name_an_external_callers_object_id(external: External, tmp_path: Path) -> None:
    oid = str(uuid.uuid4())
    grant(external.server, tmp_path, oid)
    assert read_secret(external.server, StaticToken(oidc_token(external, oid)), external.name) == external.value


def test_external_token_cannot_borrow_the_roles_of_a_coffer_principal(external: External) -> None:
    server = external.server
    env = server.env
    admin_oid = claims_of(raw_token(server, env["COFFER_TENANT_ID"], env["COFFER_CLIENT_ID"],
                                    env["COFFER_CLIENT_SECRET"]))["oid"]
    headers = {"Authorization": f"Bearer {oidc_token(external, admin_oid, sub='someone-at-the-idp')}"}
    principals_list = httpx.get(f"{server.authority}/admin/identity/principals", verify=trust(server),
                                headers=headers)
    assert principals_list.status_code in (401, 403), principals_list.text
    written = httpx.put(f"{server.vault_url}/secrets/{unique('borrowed')}", params=API, verify=trust(server),
                        headers=headers, json={"value": "written by an external caller posing as the admin"})
    assert written.status_code in (401, 403), written.text


# --- 6. The data plane refuses bad tokens: 401, challenge, reason audited only -------------------------

def _forge(case: str, genuine: str, signing_key: bytes) -> str:
    header = jwt.get_unverified_header(genuine)
    kid, good, now = header["kid"], claims_of(genuine), int(time.time())

    def real(**changes: Any) -> str:
        return jwt.encode({**good, **changes}, signing_key, algorithm="RS256", headers={"kid": kid})

    if case == "other-key-same-kid":
        other = rsa_key().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
        return jwt.encode(good, other, algorithm="RS256", headers={"kid": kid})
    if case == "alg-none":
        return unsigned({"alg": "none", "typ": "JWT", "kid": kid}, good)
    if case == "hs256-public-pem":
        public = serialization.load_pem_private_key(signing_key, None).public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        head = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
        body = b64url(json.dumps(good).encode())
        return f"{head}.{body}.{b64url(hmac.new(public, f'{head}.{body}'.encode(), hashlib.sha256).digest())}"
    if case == "expired":
        return real(iat=now - 7200, nbf=now - 7200, exp=now - 3600)
    if case == "nbf-in-the-future":
        return real(iat=now, nbf=now + 300, exp=now + 3600)  # beyond the 60 s skew
    if case == "wrong-audience":
        return real(aud="https://vault.azure.net")
    if case == "wrong-issuer":
        return real(iss=f"https://login.microsoftonline.com/{good['tid']}/v2.0")
    if case == "tampered-payload":
        head, _body, signature = genuine.split(".")
        return f"{head}.{b64url(json.dumps({**good, 'oid': str(uuid.uuid4())}).encode())}.{signature}"
    raise AssertionError(case)


FORGED = {
    "other-key-same-kid": "InvalidSignatureError",
    "alg-none": "algorithm 'none' not allowed",
    "hs256-public-pem": "algorithm 'HS256' not allowed",
    "expired": "token expired",
    "nbf-in-the-future": "token not yet valid",
    "wrong-audience": "wrong audience",
    "wrong-issuer": "wrong issuer",
    "tampered-payload": "InvalidSignatureError",
}


@pytest.mark.parametrize("case", list(FORGED))
def test_data_plane_refuses_forged_token(dev_server: DevServer, stored: tuple[str, str], genuine: str,
                                         signing_key: bytes, case: str) -> None:
    response = httpx.get(f"{dev_server.vault_url}/secrets/{stored[0]}/", params=API, verify=trust(dev_server),
                         headers={"Authorization": f"Bearer {genuine}"})
    assert response.status_code == 200, response.text  # control: the genuine token works
    assert_refused(dev_server, _forge(case, genuine, signing_key), FORGED[case], stored[0])


def test_data_plane_refuses_token_of_revoked_client_secret(dev_server: DevServer, stored: tuple[str, str],
                                                           tmp_path: Path) -> None:
    server = dev_server
    admin = Admin(server)
    try:
        app, secret = admin.app_with_secret(unique("revoked"))
        grant(server, tmp_path, app["objectId"])
        token = raw_token(server, server.env["COFFER_TENANT_ID"], app["clientId"], secret["secret"])
        assert read_secret(server, StaticToken(token), stored[0]) == stored[1]
        admin.ok("DELETE", f"/principals/{app['objectId']}/credentials/{secret['id']}", status=204)
    finally:
        admin.close()
    assert_refused(server, token, "credential revoked", stored[0])


def test_data_plane_refuses_token_of_deleted_principal(dev_server: DevServer, stored: tuple[str, str],
                                                       tmp_path: Path) -> None:
    server = dev_server
    admin = Admin(server)
    try:
        app, secret = admin.app_with_secret(unique("deleted"))
        grant(server, tmp_path, app["objectId"])
        token = raw_token(server, server.env["COFFER_TENANT_ID"], app["clientId"], secret["secret"])
        assert read_secret(server, StaticToken(token), stored[0]) == stored[1]
        admin.ok("DELETE", f"/principals/{app['objectId']}", status=204)
    finally:
        admin.close()
    assert_refused(server, token, "principal deleted", stored[0])


def add_second_tenant(server: DevServer, *, admin: bool = False, tenant_id: str | None = None,
                      grants: tuple[tuple[str, str, str], ...] = ()) -> tuple[str, str, str]:
    """(tenant id, client id, client secret) of an application in a second tenant, written into the
    stopped server's storage (there is no tenant API), as its administrator if `admin` (Key Vault
    Administrator at "/", like the bootstrap administrator), with further (principal, role, scope)
    `grants`; the server is restarted."""
    release_connections()
    server.stop()
    storage = server.open_storage()  # SQLite or PostgreSQL, as the server
    try:
        with storage.write() as tx:
            tenant = principals.create_tenant(tx, "Other", tenant_id)
            app = principals.create_principal(tx, tenant, "other-app", principals.APPLICATION)
            secret = principals.add_secret(tx, app, principals.CLIENT_SECRET).secret
            assigned = [*grants, (app.object_id, roles.ADMINISTRATOR, "/")] if admin else list(grants)
            for principal_id, role_id, scope in assigned:
                tx.role_assignment_put(RoleAssignmentRow(str(uuid.uuid4()), scope, role_id, principal_id,
                                                         int(time.time())))
    finally:
        storage.close()
    server.restart()
    return tenant, app.client_id, secret


def test_data_plane_refuses_token_of_another_tenant(fresh_server: DevServer) -> None:
    server = fresh_server
    name, value = store_secret(server)
    other_tenant, other_client, other_secret = add_second_tenant(server)

    credential = client_secret_credential(server, other_tenant, other_client, other_secret)
    token = credential.get_token(f"{server.authority}/.default").token
    credential.close()
    assert claims_of(token)["tid"] == other_tenant
    elsewhere = httpx.get(f"{server.authority}/admin/vaults", verify=trust(server),  # open to any valid token
                          headers={"Authorization": f"Bearer {token}"})
    assert elsewhere.status_code == 200 and elsewhere.json() == {"value": []}, elsewhere.text
    assert_refused(server, token, "token of another tenant", name)
    assert read_secret(server, dev_credential(server), name) == value  # the vault's own tenant still reads
    release_connections()


def test_another_tenant_cannot_shadow_coffers_own_issuer(fresh_server: DevServer) -> None:
    """A tenant that registers another tenant's Coffer issuer URL as a trusted external issuer (with its own
    JWKS and Coffer's audience) neither locks that tenant's tokens out nor gets its own tokens accepted."""
    server = fresh_server
    name, value = store_secret(server)
    tenant = server.env["COFFER_TENANT_ID"]
    before = raw_token(server, tenant, server.env["COFFER_CLIENT_ID"], server.env["COFFER_CLIENT_SECRET"])
    other_tenant, other_client, other_secret = add_second_tenant(server, admin=True)

    own_issuer = f"{server.authority}/{tenant}/v2.0"
    key, kid = rsa_key(), "shadow"
    other_token = raw_token(server, other_tenant, other_client, other_secret)
    registered = httpx.post(f"{server.authority}/admin/identity/issuers", verify=trust(server),
                            headers={"Authorization": f"Bearer {other_token}"},
                            json={"issuer": own_issuer, "jwks": public_jwks(key, kid), "audience": server.authority})
    assert registered.status_code in (201, 400), registered.text  # refusing it is fine too

    # the tenant's tokens, issued before and after, still read its secrets
    assert read_secret(server, StaticToken(before), name) == value
    assert read_secret(server, dev_credential(server), name) == value
    # and a token "of the tenant" signed with the other tenant's key is not Coffer's
    now = int(time.time())
    forged = mint(key, kid, {**claims_of(before), "iat": now, "nbf": now, "exp": now + 3600})
    assert claims_of(forged)["iss"] == own_issuer
    assert_refused(server, forged, "unknown signing key", name)
    release_connections()


def test_two_tenants_can_trust_the_same_external_issuer(fresh_server: DevServer, tmp_path: Path) -> None:
    server = fresh_server
    name, value = store_secret(server)
    shared = "https://shared-idp.test"
    mine, theirs = (rsa_key(), "mine"), (rsa_key(), "theirs")
    jwks = tmp_path / "mine.json"
    jwks.write_text(json.dumps(public_jwks(*mine)))
    cli(server, tmp_path, "issuer", "add", "--issuer", shared, "--jwks", str(jwks), "--audience", "coffer-a")
    oid = str(uuid.uuid4())
    other_tenant, other_client, other_secret = add_second_tenant(
        server, admin=True, tenant_id="ffffffff-ffff-4fff-bfff-ffffffffffff",  # sorts after any other tenant
        grants=((oid, roles.SECRETS_USER, vault_scope(server)),))
    other_token = raw_token(server, other_tenant, other_client, other_secret)
    registered = httpx.post(f"{server.authority}/admin/identity/issuers", verify=trust(server),
                            headers={"Authorization": f"Bearer {other_token}"},
                            json={"issuer": shared, "jwks": public_jwks(*theirs), "audience": "coffer-b"})
    assert registered.status_code == 201, registered.text

    now = int(time.time())
    token = mint(mine[0], mine[1], {"iss": shared, "aud": "coffer-a", "oid": oid, "sub": oid, "iat": now,
                                    "nbf": now, "exp": now + 3600})
    read = httpx.get(f"{server.vault_url}/secrets/{name}/", params=API, verify=trust(server),
                     headers={"Authorization": f"Bearer {token}"})
    assert read.status_code == 200 and read.json()["value"] == value, read.text  # the first tenant's trust holds


# --- 7. Abuse: failed client secrets are throttled ---------------------------------------------------

def test_failed_client_secrets_are_throttled(fresh_server: DevServer) -> None:
    server = fresh_server
    env = server.env
    tenant, client_id = env["COFFER_TENANT_ID"], env["COFFER_CLIENT_ID"]
    tail = AuditTail(server)
    statuses, throttled = [], None
    for attempt in range(12):
        response = token_response(server, tenant, client_id, f"wrong-secret-{attempt}")
        statuses.append(response.status_code)
        if response.status_code == 401:
            assert "retry-after" not in response.headers
            assert response.json()["error"] == "invalid_client"
        elif response.status_code == 429:
            throttled = response
    assert statuses[0] == 401 and 429 in statuses, statuses
    first_429 = statuses.index(429)
    assert set(statuses[:first_429]) == {401} and set(statuses[first_429:]) == {429}, statuses
    assert throttled is not None
    wait = int(throttled.headers["retry-after"])
    assert 0 < wait <= 3600, wait
    assert throttled.json()["error"] == "temporarily_unavailable"
    assert "wrong-secret" not in throttled.text

    # the correct secret is refused too while the client is throttled
    correct = token_response(server, tenant, client_id, env["COFFER_CLIENT_SECRET"])
    assert correct.status_code == 429, correct.text
    assert 0 < int(correct.headers["retry-after"]) <= wait

    # every failure is audited, with its reason, never with the secret
    refused = tail.failures("invalid client or secret", clientId=client_id)
    assert len(refused) == first_429, refused
    assert len(tail.failures("throttled", clientId=client_id)) == 12 - first_429 + 1
    assert "wrong-secret" not in json.dumps(tail.records()) and env["COFFER_CLIENT_SECRET"] not in json.dumps(
        tail.records())

    # another client from the same address is not locked out by this one's failures: the MI still reads
    name, value = store_secret_with(server, StaticToken(managed_identity_token(server)))
    assert read_secret(server, StaticToken(managed_identity_token(server)), name) == value
    release_connections()


# --- 8. Tokens survive restarts and signing-key rotation (C10) ----------------------------------------

def test_tokens_survive_restart_and_signing_key_rotation(fresh_server: DevServer) -> None:
    server = fresh_server
    name, value = store_secret(server)
    credential = dev_credential(server)
    before = credential.get_token(f"{server.authority}/.default").token
    credential.close()
    old_kid = jwt.get_unverified_header(before)["kid"]
    assert jwks_kids(server) == [old_kid]

    server.stop()
    server.restart()  # a plain restart
    assert read_secret(server, StaticToken(before), name) == value

    release_connections()
    server.stop()
    coffer = Coffer(Config(data_dir=server.data_dir, dev=True, database_url=server.database_url))
    try:
        coffer.start_dev()
        assert coffer.rotate_signing_key_if_due(int(time.time()), force=True)
    finally:
        coffer.close()
    server.restart()

    assert read_secret(server, StaticToken(before), name) == value  # issued before the rotation
    kids = jwks_kids(server)
    assert len(kids) == 2 and old_kid in kids, kids
    new_kid = next(kid for kid in kids if kid != old_kid)
    fresh = dev_credential(server)
    after = fresh.get_token(f"{server.authority}/.default").token
    assert jwt.get_unverified_header(after)["kid"] == new_kid
    assert read_secret(server, fresh, name) == value  # and the new tokens work
    release_connections()
