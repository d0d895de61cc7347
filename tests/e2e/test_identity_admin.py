"""The identity admin API (/admin/identity/...) and `coffer identity ...` against a real dev server:
principals, every credential kind, endpoint assignment, trusted issuers, the tenant; secrets shown once;
revocation; error envelopes; tenant isolation."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import re
import ssl
import subprocess
import uuid
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from coffer.authz import roles
from coffer.identity import principals
from coffer.storage import RoleAssignmentRow
from tests.e2e.helpers import run_cli
from tests.support.server import DevServer

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
CREDENTIAL_ID = r"\b[0-9a-f]{32}\b"


# --- helpers ------------------------------------------------------------------------------------


def trust(server: DevServer) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=server.ca)


def token_response(server: DevServer, tenant: str, client_id: str, secret: str) -> httpx.Response:
    return httpx.post(f"{server.authority}/{tenant}/oauth2/v2.0/token", verify=trust(server), data={
        "grant_type": "client_credentials", "client_id": client_id, "client_secret": secret,
        "scope": f"{server.authority}/.default"})


def token(server: DevServer, tenant: str, client_id: str, secret: str) -> str:
    response = token_response(server, tenant, client_id, secret)
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def admin_token(server: DevServer) -> str:
    env = server.env
    return token(server, env["COFFER_TENANT_ID"], env["COFFER_CLIENT_ID"], env["COFFER_CLIENT_SECRET"])


class Api:
    """Bearer calls to the identity admin API."""

    def __init__(self, server: DevServer, bearer: str) -> None:
        self.http = httpx.Client(base_url=f"{server.authority}/admin/identity", verify=trust(server),
                                 headers={"authorization": f"Bearer {bearer}"})

    def __call__(self, method: str, path: str, body: Any = None) -> httpx.Response:
        return self.http.request(method, path, json=body)

    def ok(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        response = self(method, path, body)
        assert response.status_code == status, response.text
        return response.json() if response.content else None

    def close(self) -> None:
        self.http.close()


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error, dict) and set(error) >= {"code", "message"}, response.text
    if code is not None:
        assert error["code"] == code, response.text
    return error


def msi_token(server: DevServer, header: str, **selector: str) -> httpx.Response:
    return httpx.get(f"{server.authority}/msi/token", verify=trust(server), headers={"x-identity-header": header},
                     params={"resource": server.authority, "api-version": "2019-08-01", **selector})


def self_signed(tmp_path: Path) -> tuple[Path, str]:
    """A certificate and its private key in one PEM file (as often kept), and the certificate's x5t."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "identity-test")])
    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(days=30)).sign(key, hashes.SHA256()))
    path = tmp_path / "client.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())
                     + cert.public_bytes(serialization.Encoding.PEM))
    der = cert.public_bytes(serialization.Encoding.DER)
    return path, base64.urlsafe_b64encode(hashlib.sha1(der).digest()).rstrip(b"=").decode()


def row_with(output: str, text: str) -> str:
    rows = [line for line in output.splitlines() if text in line and "│" in line]
    assert len(rows) == 1, output
    return rows[0]


def shown_once(output: str, label: str) -> str:
    match = re.search(rf"^{re.escape(label)}: (\S+)$", output, re.M)
    assert match, output
    assert "will not show it again" in output
    return match.group(1)


# --- the CLI, end to end --------------------------------------------------------------------------


def test_identity_cli_end_to_end(fresh_server: DevServer, tmp_path: Path) -> None:
    server = fresh_server
    env = server.client_env()
    tenant = env["COFFER_TENANT_ID"]

    def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_cli("identity", *args, env=env, cwd=tmp_path, check=check)

    shown_tenant = cli("tenant", "show").stdout
    assert tenant in shown_tenant and "Development" in shown_tenant

    # an application: no secret until one is added
    created = cli("principal", "create", "billing-app").stdout
    object_id, client_id = re.findall(UUID, row_with(created, "billing-app"))[:2]
    assert "application" in created and "secret add" in created and "will not show" not in created
    listed = cli("principal", "list").stdout
    assert {"coffer-dev", "dev-identity", "billing-app"} <= set(re.findall(r"│ (\S+)\s+│ (?:application|managed)",
                                                                           listed))
    assert client_id in cli("principal", "show", object_id).stdout
    assert object_id in cli("principal", "show", client_id).stdout

    # a client secret: printed once, never listed; it works at the token endpoint until removed
    added = cli("secret", "add", client_id, "--lifetime-days", "30", "--description", "ci [pipeline]").stdout
    secret = shown_once(added, "Client secret")
    secret_id = re.findall(CREDENTIAL_ID, row_with(added, "clientSecret"))[0]
    assert "ci [pipeline]" in added  # shown as typed, not as rich markup
    expires = re.findall(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ", row_with(added, "clientSecret"))
    assert len(expires) == 2 and expires[0] != expires[1]
    token(server, tenant, client_id, secret)

    # a certificate: the file also holds the private key, which the CLI does not send
    pem_file, x5t = self_signed(tmp_path)
    registered = cli("certificate", "add", client_id, str(pem_file), "--description", "signing").stdout
    assert x5t in registered and "CN=identity-test" in registered
    again = cli("certificate", "add", client_id, str(pem_file), check=False)
    assert again.returncode == 1 and "Conflict" in again.stderr
    not_a_cert = tmp_path / "not-a-cert.pem"
    not_a_cert.write_text("hello")
    refused = cli("certificate", "add", client_id, str(not_a_cert), check=False)
    assert refused.returncode == 1 and "BadParameter" in refused.stderr

    # a federated credential with two audiences
    federated = cli("federated", "add", client_id, "--name", "gh-main", "--issuer",
                    "https://token.actions.githubusercontent.com", "--subject", "repo:org/app:ref:refs/heads/main",
                    "--audience", "api://AzureADTokenExchange", "--audience", "coffer").stdout
    assert "repo:org/app:ref:refs/heads/main" in federated and "api://AzureADTokenExchange, coffer" in federated
    plain = cli("federated", "add", client_id, "--name", "k8s", "--issuer", "http://insecure.example",
                "--subject", "system:serviceaccount:ns:sa", check=False)
    assert plain.returncode == 1 and "https" in plain.stderr

    credentials = cli("credential", "list", client_id).stdout
    for kind in ("clientSecret", "certificate", "federated"):
        assert kind in credentials
    for output in (credentials, cli("principal", "show", client_id).stdout, cli("principal", "list").stdout):
        assert secret not in output

    assert secret_id in cli("credential", "remove", client_id, secret_id).stdout
    gone = token_response(server, tenant, client_id, secret)
    assert gone.status_code == 401 and gone.json()["error"] == "invalid_client"
    assert secret_id not in cli("credential", "list", client_id).stdout
    again_removed = cli("credential", "remove", client_id, secret_id, check=False)
    assert again_removed.returncode == 1 and "CredentialNotFound" in again_removed.stderr

    # managed identities: the endpoint secret (IDENTITY_HEADER) is printed once at creation
    web = cli("principal", "create", "web-mi", "--managed-identity").stdout
    web_object, web_client = re.findall(UUID, row_with(web, "web-mi"))[:2]
    assert "userAssignedIdentities/web-mi" in web
    assert f"IDENTITY_ENDPOINT={server.authority}/msi/token" in web
    web_header = shown_once(web, "IDENTITY_HEADER")
    issued = msi_token(server, web_header)
    assert issued.status_code == 200 and issued.json()["client_id"] == web_client
    worker = cli("principal", "create", "worker-mi", "--managed-identity").stdout
    worker_client = re.findall(UUID, row_with(worker, "worker-mi"))[1]

    endpoint = cli("endpoint", "add", web_client, "--imds").stdout
    endpoint_header = shown_once(endpoint, "IDENTITY_HEADER")
    endpoint_id = re.findall(CREDENTIAL_ID, row_with(endpoint, "identityEndpoint"))[0]
    assert endpoint_header.startswith(endpoint_id + ".") and "imds" in row_with(endpoint, "identityEndpoint")
    assert msi_token(server, endpoint_header, client_id=worker_client).status_code == 400  # not assigned yet
    assigned = cli("endpoint", "assign", web_object, endpoint_id, worker_client).stdout
    assert "identities=" in assigned
    served = msi_token(server, endpoint_header, client_id=worker_client)
    assert served.status_code == 200 and served.json()["client_id"] == worker_client
    assert msi_token(server, endpoint_header).json()["client_id"] == web_client  # the owner by default
    wrong = cli("endpoint", "assign", web_object, endpoint_id, client_id, check=False)  # an application
    assert wrong.returncode == 1 and "BadParameter" in wrong.stderr
    no_secret = cli("secret", "add", web_client, check=False)
    assert no_secret.returncode == 1 and "BadParameter" in no_secret.stderr
    mi_credentials = cli("credential", "list", web_client).stdout
    assert web_header.split(".")[1] not in mi_credentials and endpoint_header.split(".")[1] not in mi_credentials

    # trusted issuers: a local JWKS file is sent inline
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps({"keys": [{"kty": "RSA", "kid": "k1", "n": "sXch", "e": "AQAB"}]}))
    added_issuer = cli("issuer", "add", "--issuer", "https://kubernetes.example/", "--jwks", str(jwks_file),
                       "--audience", "coffer").stdout
    issuer_id = re.findall(CREDENTIAL_ID, row_with(added_issuer, "https://kubernetes.example"))[0]
    assert "inline (1 keys)" in added_issuer
    cli("issuer", "add", "--issuer", "https://token.actions.githubusercontent.com", "--jwks",
        "https://token.actions.githubusercontent.com/.well-known/jwks")
    duplicate = cli("issuer", "add", "--issuer", "https://kubernetes.example", "--jwks", str(jwks_file), check=False)
    assert duplicate.returncode == 1 and "IssuerAlreadyExists" in duplicate.stderr
    issuers = cli("issuer", "list").stdout
    assert "https://kubernetes.example" in issuers and "token.actions.githubusercontent.com" in issuers
    assert issuer_id in cli("issuer", "remove", issuer_id).stdout
    assert "kubernetes.example" not in cli("issuer", "list").stdout

    # deleting: confirmation required; then gone (and its endpoint secret with it)
    assert cli("principal", "delete", web_client, check=False).returncode != 0
    assert "web-mi" in cli("principal", "list").stdout
    assert "Deleted principal" in cli("principal", "delete", web_client, "--yes").stdout
    missing = cli("principal", "show", web_client, check=False)
    assert missing.returncode == 1 and "PrincipalNotFound" in missing.stderr
    assert msi_token(server, web_header).status_code == 401
    themselves = cli("principal", "delete", env["COFFER_CLIENT_ID"], "--yes", check=False)
    assert themselves.returncode == 1 and "CannotDeleteSelf" in themselves.stderr


# --- the API: error envelopes and revocation ------------------------------------------------------


def test_identity_api_errors(fresh_server: DevServer) -> None:
    server = fresh_server
    api = Api(server, admin_token(server))
    try:
        unknown = "00000000-0000-0000-0000-000000000000"
        assert_error(api("GET", f"/principals/{unknown}"), 404, "PrincipalNotFound")
        assert_error(api("DELETE", f"/principals/{unknown}"), 404, "PrincipalNotFound")
        assert_error(api("GET", f"/principals/{unknown}/credentials"), 404, "PrincipalNotFound")
        assert_error(api("POST", "/principals", {"displayName": "x-app", "kind": "robot"}), 400, "BadParameter")
        assert_error(api("POST", "/principals", {"kind": "application"}), 400, "BadParameter")
        assert_error(api("POST", "/principals", {"displayName": 7, "kind": "application"}), 400, "BadParameter")
        assert_error(api("POST", "/principals", {"displayName": "bad name/x", "kind": "managedIdentity"}), 400)
        response = api.http.post("/principals", content=b"not json")
        assert_error(response, 400, "BadParameter")
        assert_error(api("PUT", "/principals"), 405)

        app = api.ok("POST", "/principals", {"displayName": "api-app", "kind": "application"}, 201)
        assert set(app) == {"objectId", "clientId", "tenantId", "displayName", "kind", "created"}
        assert app["tenantId"] == server.env["COFFER_TENANT_ID"]
        credentials = f"/principals/{app['objectId']}/credentials"
        assert_error(api("POST", credentials, {"kind": "password"}), 400, "BadParameter")
        assert_error(api("POST", credentials, {"kind": "clientSecret", "lifetimeDays": 0}), 400, "BadParameter")
        assert_error(api("POST", credentials, {"kind": "clientSecret", "lifetimeDays": "7"}), 400, "BadParameter")
        assert_error(api("POST", credentials, {"kind": "certificate", "certificate": "-----BEGIN CERTIFICATE-----\n"
                                               "bm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"}), 400, "BadParameter")
        assert_error(api("POST", credentials, {"kind": "certificate"}), 400, "BadParameter")
        assert_error(api("POST", credentials, {"kind": "federated", "name": "fx", "issuer": "https://i.example",
                                               "subject": "s"}), 400, "BadParameter")  # name too short
        assert_error(api("POST", credentials, {"kind": "federated", "name": "fed", "issuer": "ftp://i.example",
                                               "subject": "s"}), 400, "BadParameter")
        assert_error(api("POST", credentials, {"kind": "identityEndpoint"}), 400, "BadParameter")
        assert_error(api("DELETE", f"{credentials}/{'0' * 32}"), 404, "CredentialNotFound")

        created = api.ok("POST", credentials, {"kind": "clientSecret", "description": "once"}, 201)
        assert created["secret"] and created["description"] == "once" and created["expires"] is None
        listed = api.ok("GET", credentials)["value"]
        assert [c["id"] for c in listed] == [created["id"]]
        assert "secret" not in listed[0] and created["secret"] not in json.dumps(listed)
        assert created["secret"] not in json.dumps(api.ok("GET", f"/principals/{app['clientId']}"))

        mi = api.ok("POST", "/principals", {"displayName": "api-mi", "kind": "managedIdentity"}, 201)
        assert mi["identityHeader"] and mi["resourceId"].endswith("/userAssignedIdentities/api-mi")
        assert_error(api("POST", "/principals", {"displayName": "API-MI", "kind": "managedIdentity"}), 409)
        endpoint = mi["identityHeader"].split(".")[0]
        assign = f"/principals/{mi['objectId']}/credentials/{endpoint}/identities"
        assert_error(api("POST", assign, {"identity": app["objectId"]}), 400, "BadParameter")
        assert_error(api("POST", assign, {"identity": "00000000-0000-0000-0000-000000000001"}), 404)
        assert_error(api("POST", f"/principals/{app['objectId']}/credentials/{endpoint}/identities",
                         {"identity": mi["objectId"]}), 404, "CredentialNotFound")  # not the app's credential
        assert_error(api("POST", f"/principals/{mi['objectId']}/credentials", {"kind": "identityEndpoint",
                                                                            "imds": "yes"}), 400)

        for bad in ({"issuer": "http://i.example", "jwks": "https://i.example/keys"},
                    {"issuer": "not a url", "jwks": "https://i.example/keys"},
                    {"issuer": "https://i.example", "jwks": "http://i.example/keys"},
                    {"issuer": "https://i.example", "jwks": "relative/keys.json"},
                    {"issuer": "https://i.example", "jwks": {"no": "keys"}},
                    {"issuer": "https://i.example", "jwks": '{"keys": "nope"}'},
                    {"issuer": "https://i.example", "jwks": "{not json"},
                    {"issuer": "https://i.example", "jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}},
                    {"issuer": "https://i.example"}):
            assert_error(api("POST", "/issuers", bad), 400, "BadParameter")
        inline = api.ok("POST", "/issuers", {"issuer": "https://i.example/", "audience": "coffer",
                                             "jwks": '{"keys": [{"kty": "EC", "crv": "P-256", "x": "a", "y": "b"}]}'},
                        201)
        assert inline["issuer"] == "https://i.example" and inline["jwks"]["keys"][0]["kty"] == "EC"
        on_server = api.ok("POST", "/issuers", {"issuer": "https://j.example", "jwks": "/etc/coffer/jwks.json"}, 201)
        assert on_server["jwks"] == "/etc/coffer/jwks.json" and on_server["audience"] is None
        assert_error(api("DELETE", f"/issuers/{'f' * 32}"), 404, "IssuerNotFound")
        assert api("DELETE", f"/issuers/{on_server['id']}").status_code == 204
        assert [i["id"] for i in api.ok("GET", "/issuers")["value"]] == [inline["id"]]

        me = server.env["COFFER_CLIENT_ID"]
        assert_error(api("DELETE", f"/principals/{me}"), 409, "CannotDeleteSelf")
        assert api.ok("GET", "/tenant") == {"id": server.env["COFFER_TENANT_ID"], "displayName": "Development"}

        unauthenticated = httpx.get(f"{server.authority}/admin/identity/principals", verify=trust(server))
        assert_error(unauthenticated, 401)
    finally:
        api.close()


def test_deleted_principal_stops_working_at_once(fresh_server: DevServer) -> None:
    server = fresh_server
    tenant = server.env["COFFER_TENANT_ID"]
    admin = Api(server, admin_token(server))
    app = admin.ok("POST", "/principals", {"displayName": "short-lived", "kind": "application"}, 201)
    secret = admin.ok("POST", f"/principals/{app['clientId']}/credentials", {"kind": "clientSecret"}, 201)["secret"]
    own = Api(server, token(server, tenant, app["clientId"], secret))
    try:
        assert own.ok("GET", "/tenant")["id"] == tenant
        assert admin("DELETE", f"/principals/{app['objectId']}").status_code == 204
        assert_error(own("GET", "/tenant"), 401)  # the token has not expired, but its principal is gone
        assert token_response(server, tenant, app["clientId"], secret).status_code == 401
    finally:
        own.close()
        admin.close()


def test_removed_secret_revokes_its_tokens(fresh_server: DevServer) -> None:
    server = fresh_server
    tenant = server.env["COFFER_TENANT_ID"]
    admin = Api(server, admin_token(server))
    app = admin.ok("POST", "/principals", {"displayName": "rotating", "kind": "application"}, 201)
    credentials = f"/principals/{app['objectId']}/credentials"
    old = admin.ok("POST", credentials, {"kind": "clientSecret"}, 201)
    new = admin.ok("POST", credentials, {"kind": "clientSecret"}, 201)
    old_api = Api(server, token(server, tenant, app["clientId"], old["secret"]))
    new_api = Api(server, token(server, tenant, app["clientId"], new["secret"]))
    try:
        assert admin("DELETE", f"{credentials}/{old['id']}").status_code == 204
        assert new_api.ok("GET", "/tenant")["id"] == tenant  # rotation: the other secret's token still works
        assert_error(old_api("GET", "/tenant"), 401)
    finally:
        old_api.close()
        new_api.close()
        admin.close()


# --- tenant isolation ---------------------------------------------------------------------------


def test_other_tenants_are_invisible(fresh_server: DevServer) -> None:
    server = fresh_server
    admin = Api(server, admin_token(server))
    mine = admin.ok("POST", "/principals", {"displayName": "tenant-a-mi", "kind": "managedIdentity"}, 201)
    endpoint = mine["identityHeader"].split(".")[0]
    issuer = admin.ok("POST", "/issuers", {"issuer": "https://a.example", "jwks": "https://a.example/keys"}, 201)
    admin.close()

    # a second tenant and its administrator, written while the server is stopped (no tenant API yet)
    server.stop()
    storage = server.open_storage()  # SQLite or PostgreSQL, as the server
    try:
        with storage.write() as tx:
            other_tenant = principals.create_tenant(tx, "Other")
            other_admin = principals.create_principal(tx, other_tenant, "other-admin", principals.APPLICATION)
            other_secret = principals.add_secret(tx, other_admin, principals.CLIENT_SECRET).secret
            other_mi = principals.create_principal(tx, other_tenant, "other-mi", principals.MANAGED_IDENTITY)
            other_endpoint = principals.add_secret(tx, other_mi, principals.IDENTITY_ENDPOINT).credential_id
            # the other tenant's administrator, as `coffer operator init` makes one
            tx.role_assignment_put(RoleAssignmentRow(str(uuid.uuid4()), "/", roles.ADMINISTRATOR,
                                                     other_admin.object_id, 0))
    finally:
        storage.close()
    server.restart()

    other = Api(server, token(server, other_tenant, other_admin.client_id, other_secret))
    admin = Api(server, admin_token(server))
    try:
        assert other.ok("GET", "/tenant") == {"id": other_tenant, "displayName": "Other"}
        names = {p["displayName"] for p in other.ok("GET", "/principals")["value"]}
        assert names == {"other-admin", "other-mi"}
        for ref in (mine["objectId"], mine["clientId"]):
            assert_error(other("GET", f"/principals/{ref}"), 404, "PrincipalNotFound")
            assert_error(other("GET", f"/principals/{ref}/credentials"), 404, "PrincipalNotFound")
            assert_error(other("POST", f"/principals/{ref}/credentials", {"kind": "identityEndpoint"}), 404)
            assert_error(other("DELETE", f"/principals/{ref}"), 404, "PrincipalNotFound")
            assert_error(other("DELETE", f"/principals/{ref}/credentials/{endpoint}"), 404)
            # nor can another tenant's identity be put behind one's own endpoint
            assert_error(other("POST", f"/principals/{other_mi.object_id}/credentials/{other_endpoint}/identities",
                               {"identity": ref}), 404, "PrincipalNotFound")
        assert other.ok("GET", "/issuers") == {"value": []}
        assert_error(other("DELETE", f"/issuers/{issuer['id']}"), 404, "IssuerNotFound")
        # the same issuer may be trusted by both tenants, separately
        other.ok("POST", "/issuers", {"issuer": "https://a.example", "jwks": "https://a.example/keys"}, 201)

        # and the other way round
        assert "other-admin" not in json.dumps(admin.ok("GET", "/principals"))
        assert_error(admin("GET", f"/principals/{other_admin.object_id}"), 404, "PrincipalNotFound")
        assert [i["id"] for i in admin.ok("GET", "/issuers")["value"]] == [issuer["id"]]
        assert admin.ok("GET", f"/principals/{mine['objectId']}")["displayName"] == "tenant-a-mi"
    finally:
        other.close()
        admin.close()
