"""Managing access on a real dev server: `coffer role ...` (role definitions and assignments, down to one
secret), `coffer vault policy ...` and `coffer vault update --rbac/--access-policies` (legacy access
policies), checked by their effect on the real azure-keyvault-secrets SDK; who may manage access; the
decisions in the audit log; the access admin API's shapes; tenant isolation."""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.core.exceptions import HttpResponseError
from azure.identity import ClientSecretCredential
from azure.keyvault.secrets import SecretClient

from coffer.authz import roles
from coffer.clock import now
from coffer.identity import principals
from coffer.storage import RoleAssignmentRow
from tests.e2e.helpers import release_connections, run_cli
from tests.support.server import DevServer

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
SECRETS = "Microsoft.KeyVault/vaults/secrets/"


# --- helpers ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class App:
    name: str
    object_id: str
    client_id: str
    secret: str


class Admin:
    """The CLI, as the dev administrator (Key Vault Administrator at /) or as another application."""

    def __init__(self, server: DevServer, cwd: Path) -> None:
        self.server, self.cwd = server, cwd
        self.env = server.client_env()
        self.tenant = self.env["COFFER_TENANT_ID"]
        self.clients: list[SecretClient] = []

    def __call__(self, *args: str, check: bool = True, app: App | None = None) -> subprocess.CompletedProcess[str]:
        env = self.env if app is None else {**self.env, "COFFER_CLIENT_ID": app.client_id,
                                            "COFFER_CLIENT_SECRET": app.secret}
        return run_cli(*args, env=env, cwd=self.cwd, check=check)

    def refused(self, *args: str, app: App, code: str = "Forbidden") -> str:
        result = self(*args, app=app, check=False)
        assert result.returncode == 1, result.stdout + result.stderr
        assert f"error: {code}:" in result.stderr, result.stderr
        return result.stderr

    def new_app(self, name: str) -> App:
        created = self("identity", "principal", "create", name).stdout
        object_id, client_id = re.findall(UUID, row_with(created, name))[:2]
        added = self("identity", "secret", "add", client_id).stdout
        secret = re.search(r"^Client secret: (\S+)$", added, re.M)
        assert secret, added
        return App(name, object_id, client_id, secret.group(1))

    def dev_app(self) -> App:
        shown = self("identity", "principal", "show", self.env["COFFER_CLIENT_ID"]).stdout
        object_id = re.findall(UUID, row_with(shown, "coffer-dev"))[0]
        return App("coffer-dev", object_id, self.env["COFFER_CLIENT_ID"], self.env["COFFER_CLIENT_SECRET"])

    def assign(self, role: str, assignee: str, scope: str, app: App | None = None) -> str:
        created = self("role", "assignment", "create", "--role", role, "--assignee", assignee, "--scope", scope,
                       app=app).stdout
        return re.findall(UUID, row_with(created, role))[0]

    def sdk(self, app: App, vault_url: str | None = None) -> SecretClient:
        credential = ClientSecretCredential(self.tenant, app.client_id, app.secret, authority=self.server.authority,
                                            disable_instance_discovery=True, connection_verify=self.server.ca)
        client = SecretClient(vault_url or self.server.vault_url, credential, connection_verify=self.server.ca)
        self.clients.append(client)
        return client

    def close(self) -> None:
        for client in self.clients:
            client.close()
        release_connections()


@contextmanager
def admin_cli(server: DevServer, cwd: Path) -> Iterator[Admin]:
    admin = Admin(server, cwd)
    try:
        yield admin
    finally:
        admin.close()


def row_with(output: str, text: str) -> str:
    rows = [line for line in output.splitlines() if text in line and "│" in line]
    assert len(rows) == 1, output
    return rows[0]


def forbidden(call: Callable[[], Any], inner: str) -> str:
    """The SDK call fails with 403 and Azure's inner error code; the message is returned."""
    with pytest.raises(HttpResponseError) as info:
        call()
    assert info.value.status_code == 403, info.value
    assert info.value.error is not None and info.value.error.innererror.get("code") == inner, info.value
    return str(info.value.error.message)


def names(client: SecretClient) -> set[str]:
    return {p.name for p in client.list_properties_of_secrets() if p.name}


def audit_records(server: DevServer) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (server.data_dir / "audit.log").read_text().splitlines() if line.strip()]


def audited(server: DevServer, operation: str, app: App, result: str = "Success") -> dict[str, Any]:
    """The latest record of `operation` by `app`."""
    found = [r for r in audit_records(server) if r["operationName"] == operation and r.get("identity")
             and r["identity"]["claim"]["oid"] == app.object_id and r["resultType"] == result]
    assert found, f"no {result} {operation} by {app.name} in the audit log"
    return found[-1]


def token(server: DevServer, tenant: str, client_id: str, secret: str) -> str:
    response = httpx.post(f"{server.authority}/{tenant}/oauth2/v2.0/token", verify=trust(server), data={
        "grant_type": "client_credentials", "client_id": client_id, "client_secret": secret,
        "scope": f"{server.authority}/.default"})
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def trust(server: DevServer) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=server.ca)


class Api:
    """Bearer calls to the server host's admin API."""

    def __init__(self, server: DevServer, bearer: str) -> None:
        self.http = httpx.Client(base_url=f"{server.authority}/admin", verify=trust(server), timeout=60,
                                 headers={"authorization": f"Bearer {bearer}"})

    def __call__(self, method: str, path: str, body: Any = None) -> httpx.Response:
        return self.http.request(method, path, json=body)

    def ok(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        response = self(method, path, body)
        assert response.status_code == status, response.text
        return response.json() if response.content else None

    def close(self) -> None:
        self.http.close()


def api_for(server: DevServer, app: App | None = None) -> Api:
    env = server.env
    if app is None:
        return Api(server, token(server, env["COFFER_TENANT_ID"], env["COFFER_CLIENT_ID"], env["COFFER_CLIENT_SECRET"]))
    return Api(server, token(server, env["COFFER_TENANT_ID"], app.client_id, app.secret))


def assert_error(response: httpx.Response, status: int, code: str | None = None, inner: str | None = None) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    if code is not None:
        assert error["code"] == code, response.text
    if inner is not None:
        assert error.get("innererror", {}).get("code") == inner, response.text
    return str(error["message"])


def vault_url(output: str, name: str) -> str:
    match = re.search(rf"https://{name}\.localhost:\d+", output)
    assert match, output
    return match.group(0)


# --- 1. Azure RBAC decides the data plane ----------------------------------------------------------


def test_role_assignments_decide_secret_access(fresh_server: DevServer, tmp_path: Path) -> None:
    server = fresh_server
    with admin_cli(server, tmp_path) as cli:
        owner = cli.sdk(cli.dev_app())
        owner.set_secret("one", "first")
        owner.set_secret("two", "second")

        # a new application holds no role: nothing, and Azure's RBAC error
        app = cli.new_app("single-secret-app")
        client = cli.sdk(app)
        for call in (lambda: client.get_secret("one"), lambda: client.set_secret("one", "x"),
                     lambda: names(client)):
            message = forbidden(call, "ForbiddenByRbac")
            assert f"oid={app.object_id}" in message and "DeniedWithNoValidRBAC" in message

        # Key Vault Secrets User on one secret (the assignee named by client id, stored by object id)
        assignment = cli.assign("Key Vault Secrets User", app.client_id, "/vaults/dev/secrets/one")
        listed = cli("role", "assignment", "list", "--scope", "/vaults/dev", "--principal", app.client_id).stdout
        row = row_with(listed, assignment)
        assert app.object_id in row and "Key Vault Secrets User" in row and "/vaults/dev/secrets/one" in row
        assert client.get_secret("one").value == "first"
        assert "Resource: '/vaults/dev/secrets/two'" in forbidden(lambda: client.get_secret("two"), "ForbiddenByRbac")
        forbidden(lambda: client.set_secret("one", "changed"), "ForbiddenByRbac")
        forbidden(lambda: client.begin_delete_secret("one"), "ForbiddenByRbac")
        forbidden(lambda: names(client), "ForbiddenByRbac")

        # 4. the audit log names the model and the assignment that allowed it
        record = audited(server, "SecretGet", app)
        assert record["properties"]["isRbacAuthorized"] is True
        assert record["properties"]["appliedAssignmentId"] == assignment
        assert "Key Vault Secrets User" in record["properties"]["decisionReason"]
        assert audited(server, "SecretList", app, "Failure")["resultSignature"] == "Forbidden"

        # removed: the very next request is refused
        assert assignment in cli("role", "assignment", "delete", assignment).stdout
        forbidden(lambda: client.get_secret("one"), "ForbiddenByRbac")
        assert assignment not in cli("role", "assignment", "list", "--scope", "/vaults/dev").stdout

        # Key Vault Secrets Officer on the vault: every secret action (secrets/*), purge included
        officer = cli.new_app("secrets-officer")
        cli.assign("Key Vault Secrets Officer", officer.object_id, "/vaults/dev")
        oc = cli.sdk(officer)
        oc.set_secret("three", "3")
        assert names(oc) >= {"one", "two", "three"}
        assert oc.get_secret("one").value == "first"
        oc.begin_delete_secret("three").result()
        oc.purge_deleted_secret("three")
        assert "three" not in names(oc)
        # ... but not managing permissions
        cli.refused("role", "assignment", "create", "--role", "Key Vault Secrets User", "--assignee",
                    officer.client_id, "--scope", "/vaults/dev", app=officer)

        # Key Vault Reader: metadata, never values
        reader = cli.new_app("auditor")
        cli.assign("Key Vault Reader", reader.client_id, "/vaults/dev")
        rc = cli.sdk(reader)
        assert names(rc) >= {"one", "two"}
        forbidden(lambda: rc.get_secret("one"), "ForbiddenByRbac")
        forbidden(lambda: rc.set_secret("one", "x"), "ForbiddenByRbac")

        # a custom role: every secret action except reading values
        created = cli("role", "definition", "create", "--name", "Secret Writer", "--description",
                      "Writes and lists secrets; cannot read values", "--data-action", SECRETS + "*",
                      "--not-data-action", SECRETS + "getSecret/action").stdout
        role_id = re.findall(UUID, row_with(created, "Secret Writer"))[0]
        assert "custom" in row_with(created, "Secret Writer")
        assert SECRETS + "getSecret/action" in created
        shown = cli("role", "definition", "show", "Secret Writer").stdout
        assert role_id in shown and "Writes and lists secrets" in shown
        assert role_id in row_with(cli("role", "definition", "list", "--scope", "/vaults/dev").stdout,
                                   "Secret Writer")
        writer = cli.new_app("secret-writer")
        writer_assignment = cli.assign("Secret Writer", writer.client_id, "/vaults/dev")
        wc = cli.sdk(writer)
        wc.set_secret("written", "by the writer")
        assert names(wc) >= {"one", "two", "written"}
        forbidden(lambda: wc.get_secret("written"), "ForbiddenByRbac")
        assert audited(server, "SecretSet", writer)["properties"]["appliedAssignmentId"] == writer_assignment

        # a role still assigned cannot be deleted; once unassigned it can
        busy = cli("role", "definition", "delete", role_id, "--yes", check=False)
        assert busy.returncode == 1 and "RoleDefinitionHasAssignments" in busy.stderr
        cli("role", "assignment", "delete", writer_assignment)
        forbidden(lambda: wc.set_secret("written", "again"), "ForbiddenByRbac")
        assert "Deleted role definition Secret Writer" in cli("role", "definition", "delete", "Secret Writer",
                                                              "--yes").stdout
        assert "Secret Writer" not in cli("role", "definition", "list").stdout


# --- 2. a vault under legacy access policies ------------------------------------------------------


def test_access_policy_vault(fresh_server: DevServer, tmp_path: Path) -> None:
    server = fresh_server
    with admin_cli(server, tmp_path) as cli:
        dev = cli.dev_app()
        url = vault_url(cli("vault", "create", "ap1").stdout, "ap1")
        assert "rbac" in row_with(cli("vault", "show", "ap1").stdout, "ap1")
        assert "access policies (0)" in row_with(cli("vault", "update", "ap1", "--access-policies").stdout, "ap1")

        # Key Vault Administrator at / does not reach into an access-policy vault's data
        owner = cli.sdk(dev, url)
        message = forbidden(lambda: owner.set_secret("db", "pw"), "AccessDenied")
        assert "does not have secrets set permission" in message and "key vault 'ap1" in message

        # an entry for the administrator (named by client id: stored by object id)
        added = cli("vault", "policy", "add", "ap1", "--object-id", dev.client_id,
                    "--secret-permissions", "get,list", "--secret-permissions", "set,delete").stdout
        assert "get, list, set, delete" in row_with(added, dev.object_id)
        owner.set_secret("db", "pw")

        # an application with only `get`
        app = cli.new_app("policy-reader")
        cli("vault", "policy", "add", "ap1", "--object-id", app.object_id, "--secret-permissions", "get")
        client = cli.sdk(app, url)
        assert client.get_secret("db").value == "pw"
        assert "does not have secrets list permission" in forbidden(lambda: names(client), "AccessDenied")
        assert "does not have secrets set permission" in forbidden(lambda: client.set_secret("db", "x"),
                                                                   "AccessDenied")
        assert "does not have secrets delete permission" in forbidden(lambda: client.begin_delete_secret("db"),
                                                                      "AccessDenied")
        # 4. the audit log says an access policy allowed it
        record = audited(server, "SecretGet", app)
        assert record["properties"]["isAccessPolicyMatch"] is True
        assert record["properties"]["isRbacAuthorized"] is False

        # role assignments do not apply to the data of an access-policy vault
        cli.assign("Key Vault Secrets Officer", app.object_id, "/vaults/ap1")
        forbidden(lambda: client.set_secret("db", "x"), "AccessDenied")

        listed = cli("vault", "policy", "list", "ap1").stdout
        assert "2 access policy entries" in listed
        assert row_with(listed, app.object_id).split("│")[3].strip() == "get"

        # remove a permission, then the whole entry
        cli("vault", "policy", "add", "ap1", "--object-id", app.object_id, "--key-permissions", "get,wrapKey")
        trimmed = cli("vault", "policy", "remove", "ap1", "--object-id", app.object_id,
                      "--key-permissions", "wrapKey").stdout
        assert row_with(trimmed, app.object_id).split("│")[4].strip() == "get"
        assert client.get_secret("db").value == "pw"
        removed = cli("vault", "policy", "remove", "ap1", "--object-id", app.object_id).stdout
        assert app.object_id not in removed and "1 access policy entry" in removed
        assert "does not have secrets get permission" in forbidden(lambda: client.get_secret("db"), "AccessDenied")

        # replace them all from a file (Azure's shape)
        policies = tmp_path / "policies.json"
        policies.write_text(json.dumps({"accessPolicies": [
            {"tenantId": cli.tenant, "objectId": dev.object_id, "permissions": {"secrets": ["all"]}},
            {"tenantId": cli.tenant, "objectId": app.object_id, "permissions": {"secrets": ["get", "list"]}}]}))
        replaced = cli("vault", "policy", "set", "ap1", "--file", str(policies)).stdout
        assert "2 access policy entries" in replaced and "all" in row_with(replaced, dev.object_id)
        assert client.get_secret("db").value == "pw" and names(client) == {"db"}
        bad = cli("vault", "policy", "add", "ap1", "--object-id", app.object_id, "--secret-permissions", "peek",
                  check=False)
        assert bad.returncode == 1 and "BadParameter" in bad.stderr and "peek" in bad.stderr

        # at most 1024 entries: through the API, a replace of 1024 then one more
        api = api_for(server)
        try:
            filler = [{"objectId": str(uuid.uuid4()), "permissions": {"secrets": ["get"]}} for _ in range(1022)]
            current = api.ok("GET", "/vaults/ap1/accessPolicies")["accessPolicies"]
            full = api.ok("PUT", "/vaults/ap1/accessPolicies/replace", {"accessPolicies": current + filler})
            assert len(full["accessPolicies"]) == 1024 and full["enableRbacAuthorization"] is False
            one_more = {"objectId": str(uuid.uuid4()), "permissions": {"secrets": ["get"]}}
            message = assert_error(api("PUT", "/vaults/ap1/accessPolicies/add", {"accessPolicies": [one_more]}),
                                   400, "BadParameter")
            assert "1024" in message
            assert len(api.ok("GET", "/vaults/ap1/accessPolicies")["accessPolicies"]) == 1024
            # merging permissions into an existing entry adds no entry: still allowed at the limit
            merged = api.ok("PUT", "/vaults/ap1/accessPolicies/add", {"accessPolicies": [
                {"objectId": app.object_id, "permissions": {"keys": ["get"]}}]})
            assert len(merged["accessPolicies"]) == 1024
            assert_error(api("PUT", "/vaults/ap1/accessPolicies/merge", {"accessPolicies": []}), 400)
            assert_error(api("PUT", "/vaults/ap1/accessPolicies/add", {"policies": []}), 400)
            shown = api.ok("GET", "/vaults/ap1")
            assert shown["enableRbacAuthorization"] is False and len(shown["accessPolicies"]) == 1024
        finally:
            api.close()
        refused = cli("vault", "policy", "add", "ap1", "--object-id", str(uuid.uuid4()), "--secret-permissions",
                      "get", check=False)
        assert refused.returncode == 1 and "1024" in refused.stderr

        # back to RBAC: the policies stop deciding; role assignments decide again
        assert "rbac" in row_with(cli("vault", "update", "ap1", "--rbac").stdout, "ap1")
        assert owner.get_secret("db").value == "pw"  # Key Vault Administrator at /
        assert client.get_secret("db").value == "pw"  # the Secrets Officer assignment made above
        assert "uses Azure RBAC" in cli("vault", "policy", "list", "ap1").stdout


# --- 3. who may manage access ---------------------------------------------------------------------


def test_managing_access_takes_the_right_role(fresh_server: DevServer, tmp_path: Path) -> None:
    server = fresh_server
    with admin_cli(server, tmp_path) as cli:
        cli.sdk(cli.dev_app()).set_secret("one", "first")
        cli("vault", "create", "other")

        # a Key Vault Secrets User manages nothing
        user = cli.new_app("secrets-user")
        cli.assign("Key Vault Secrets User", user.client_id, "/vaults/dev/secrets/one")
        cli.refused("role", "assignment", "create", "--role", "Key Vault Secrets User", "--assignee",
                    user.client_id, "--scope", "/vaults/dev/secrets/one", app=user)
        cli.refused("role", "assignment", "create", "--role", "Key Vault Secrets User", "--assignee",
                    user.client_id, "--scope", "/vaults/dev", app=user)
        cli.refused("vault", "create", "uservault", app=user)
        cli.refused("role", "definition", "create", "--name", "Mine", "--data-action", SECRETS + "*", app=user)
        cli.refused("vault", "policy", "add", "dev", "--object-id", user.object_id, "--secret-permissions", "get",
                    app=user)
        # it may read the assignments where it holds a role, not above
        own = cli("role", "assignment", "list", "--scope", "/vaults/dev/secrets/one", app=user).stdout
        assert "Key Vault Secrets User" in own
        cli.refused("role", "assignment", "list", "--scope", "/vaults/dev", app=user)
        api = api_for(server, user)
        try:
            assert_error(api("PUT", "/roles/assignments/new", {
                "scope": "/vaults/dev/secrets/one", "roleDefinitionId": roles.SECRETS_USER,
                "principalId": user.object_id}), 403, "Forbidden", "ForbiddenByRbac")
            assert_error(api("PUT", "/vaults/uservault", {}), 403, "Forbidden", "ForbiddenByRbac")
        finally:
            api.close()

        # a Key Vault Data Access Administrator on the dev vault
        delegate = cli.new_app("access-admin")
        cli.assign("Key Vault Data Access Administrator", delegate.client_id, "/vaults/dev")
        target = cli.new_app("target-app")
        granted = cli.assign("Key Vault Secrets User", target.client_id, "/vaults/dev", app=delegate)
        assert cli.sdk(target).get_secret("one").value == "first"
        cli.assign("Key Vault Reader", target.client_id, "/vaults/dev/secrets/one", app=delegate)
        forbidden(lambda: cli.sdk(delegate).get_secret("one"), "ForbiddenByRbac")  # no data access itself

        cli("role", "definition", "create", "--name", "Secret Lister", "--data-action",
            SECRETS + "readMetadata/action")
        for role in ("Secret Lister", "Key Vault Data Access Administrator"):  # outside its condition
            message = cli.refused("role", "assignment", "create", "--role", role, "--assignee", target.client_id,
                                  "--scope", "/vaults/dev", app=delegate)
            assert role in message
        for scope in ("/", "/vaults/other"):  # outside its scope
            cli.refused("role", "assignment", "create", "--role", "Key Vault Secrets User", "--assignee",
                        target.client_id, "--scope", scope, app=delegate)
        cli.refused("role", "definition", "create", "--name", "Delegated", "--data-action", SECRETS + "*",
                    "--scope", "/vaults/dev", app=delegate)
        cli.refused("vault", "create", "delegatevault", app=delegate)
        # it edits access policies (they decide once the vault is switched to them; that takes an administrator)
        added = cli("vault", "policy", "add", "dev", "--object-id", target.object_id, "--secret-permissions", "get",
                    app=delegate).stdout
        assert "get" in row_with(added, target.object_id) and "uses Azure RBAC" in added
        assert target.object_id in cli("vault", "policy", "list", "dev", app=delegate).stdout
        cli.refused("vault", "update", "dev", "--access-policies", app=delegate)
        cli.refused("vault", "policy", "add", "other", "--object-id", target.object_id, "--secret-permissions",
                    "get", app=delegate)
        # it removes what it may assign, and the removal applies at once
        cli("role", "assignment", "delete", granted, app=delegate)
        forbidden(lambda: cli.sdk(target).get_secret("one"), "ForbiddenByRbac")  # Reader is left: no values
        # ... but not the administrator's own assignment at /
        admin_assignment = re.findall(UUID, row_with(
            cli("role", "assignment", "list", "--principal", cli.env["COFFER_CLIENT_ID"]).stdout, "Administrator"))[0]
        cli.refused("role", "assignment", "delete", admin_assignment, app=delegate)


# --- the API: shapes, errors, tenant isolation ---------------------------------------------------


def test_access_api_shapes_and_tenant_isolation(fresh_server: DevServer) -> None:
    server = fresh_server
    api = api_for(server)
    try:
        builtins = {d["name"]: d for d in api.ok("GET", "/roles/definitions")["value"]}
        assert set(builtins) == set(roles.BUILT_IN)
        user = builtins[roles.SECRETS_USER]
        assert user["id"] == f"/providers/Microsoft.Authorization/roleDefinitions/{roles.SECRETS_USER}"
        assert user["properties"]["roleName"] == "Key Vault Secrets User"
        assert user["properties"]["type"] == "BuiltInRole"
        assert user["properties"]["permissions"][0]["dataActions"] == [SECRETS + "getSecret/action",
                                                                       SECRETS + "readMetadata/action"]
        assert api.ok("GET", f"/roles/definitions/{roles.SECRETS_USER}") == user
        assert_error(api("PUT", f"/roles/definitions/{roles.SECRETS_USER}", {"properties": {"roleName": "x"}}),
                     403, "RoleDefinitionNotEditable")
        assert_error(api("GET", "/roles/definitions?scope=/vaults/dev/nothing"), 400, "BadParameter")
        assert_error(api("GET", "/roles/definitions/not-a-guid"), 400, "BadParameter")

        # a custom role defined on the dev vault: listed there, not at /; assignable only inside it
        body = {"scope": "/vaults/dev", "properties": {
            "roleName": "Dev Secret Reader", "description": "read dev secrets",
            "permissions": [{"dataActions": [SECRETS + "getSecret/action"], "notDataActions": []}]}}
        custom = api.ok("PUT", "/roles/definitions/new", body, 201)
        custom_id = custom["name"]
        assert custom["id"] == f"/vaults/dev/providers/Microsoft.Authorization/roleDefinitions/{custom_id}"
        assert custom["properties"]["type"] == "CustomRole"
        assert custom["properties"]["assignableScopes"] == ["/vaults/dev"]
        body["properties"]["description"] = "read dev secret values"
        updated = api.ok("PUT", f"/roles/definitions/{custom_id}", body, 200)
        assert updated["properties"]["description"] == "read dev secret values"
        below = api.ok("GET", "/roles/definitions?scope=/vaults/dev/secrets/a")["value"]
        assert custom_id in {d["name"] for d in below}
        assert custom_id not in {d["name"] for d in api.ok("GET", "/roles/definitions")["value"]}
        assert_error(api("PUT", "/roles/definitions/new", {**body, "scope": "/vaults/dev/secrets"}), 400)
        assert_error(api("PUT", "/roles/definitions/new", {"scope": "/vaults/dev", "properties": {
            **body["properties"], "roleName": "Wide", "assignableScopes": ["/"]}}), 400)
        assert_error(api("PUT", "/roles/definitions/new", body), 409, "RoleDefinitionExists")

        app = api.ok("POST", "/identity/principals", {"displayName": "api-app", "kind": "application"}, 201)
        api.ok("PUT", "/vaults/second", {}, 201)
        assert_error(api("PUT", "/roles/assignments/new", {
            "scope": "/vaults/second", "roleDefinitionId": custom["id"], "principalId": app["objectId"]}),
            400, "InvalidRoleAssignmentScope")

        # assignments
        assignment_id = str(uuid.uuid4())
        created = api.ok("PUT", f"/roles/assignments/{assignment_id}", {
            "scope": "/vaults/dev/secrets/a", "roleDefinitionId": custom["id"], "principalId": app["clientId"]}, 201)
        assert created == {
            "id": f"/vaults/dev/secrets/a/providers/Microsoft.Authorization/roleAssignments/{assignment_id}",
            "name": assignment_id,
            "type": "Microsoft.Authorization/roleAssignments",
            "properties": {
                "scope": "/vaults/dev/secrets/a",
                "roleDefinitionId": custom["id"],
                "principalId": app["objectId"],
                "roleName": "Dev Secret Reader",
                "createdOn": created["properties"]["createdOn"],
            },
        }
        assert api.ok("GET", f"/roles/assignments/{assignment_id}") == created
        assert_error(api("PUT", f"/roles/assignments/{assignment_id}", {
            "scope": "/vaults/dev", "roleDefinitionId": roles.READER, "principalId": app["objectId"]}), 409)
        assert_error(api("PUT", "/roles/assignments/new", {
            "scope": "/vaults/dev/secrets/a", "roleDefinitionId": custom_id, "principalId": app["objectId"]}),
            409, "RoleAssignmentExists")
        # an id Coffer does not know is an external identity's (a trusted issuer's oid): it may be assigned
        external = api("PUT", "/roles/assignments/new", {
            "scope": "/vaults/dev", "roleDefinitionId": roles.READER, "principalId": str(uuid.uuid4())})
        assert external.status_code == 201, external.text
        assert_error(api("PUT", "/roles/assignments/new", {
            "scope": "/vaults/dev", "roleDefinitionId": str(uuid.uuid4()), "principalId": app["objectId"]}),
            400, "RoleDefinitionDoesNotExist")
        assert_error(api("PUT", "/roles/assignments/new", {
            "scope": "/elsewhere", "roleDefinitionId": roles.READER, "principalId": app["objectId"]}), 400)
        assert_error(api("PUT", "/roles/assignments/new", {
            "scope": "/vaults/nosuchvault", "roleDefinitionId": roles.READER, "principalId": app["objectId"]}),
            404, "VaultNotFound")
        assert_error(api("DELETE", f"/roles/definitions/{custom_id}"), 409, "RoleDefinitionHasAssignments")
        listed = api.ok("GET", f"/roles/assignments?scope=/vaults/dev&principalId={app['objectId']}")["value"]
        assert [a["name"] for a in listed] == [assignment_id]
        assert [a["name"] for a in api.ok("GET", "/roles/assignments?scope=/vaults/second")["value"]] == [
            a["name"] for a in api.ok("GET", "/roles/assignments")["value"] if a["properties"]["scope"] == "/"]
        deleted = api.ok("DELETE", f"/roles/assignments/{assignment_id}")
        assert deleted["name"] == assignment_id
        assert_error(api("GET", f"/roles/assignments/{assignment_id}"), 404, "RoleAssignmentNotFound")
        assert_error(api("DELETE", f"/roles/assignments/{assignment_id}"), 404, "RoleAssignmentNotFound")
        api.ok("DELETE", f"/roles/definitions/{custom_id}")
        assert_error(api("GET", f"/roles/definitions/{custom_id}"), 404, "RoleDefinitionNotFound")

        # vault create takes the permission model and policies; as_dict shows both
        made = api.ok("PUT", "/vaults/third", {"enableRbacAuthorization": False, "accessPolicies": [
            {"objectId": app["objectId"], "permissions": {"secrets": ["get"]}}]}, 201)
        assert made["enableRbacAuthorization"] is False
        assert made["accessPolicies"] == [{"tenantId": server.env["COFFER_TENANT_ID"], "objectId": app["objectId"],
                                           "permissions": {"secrets": ["get"]}}]
        assert api.ok("GET", "/vaults/dev")["enableRbacAuthorization"] is True
        assert_error(api("PATCH", "/vaults/third", {"enableRbacAuthorization": "yes"}), 400)
        kept = api.ok("GET", f"/roles/assignments?scope=/vaults/dev&principalId={app['objectId']}")
        assert kept == {"value": []}
        mine = api.ok("PUT", "/roles/assignments/new", {
            "scope": "/vaults/dev", "roleDefinitionId": roles.READER, "principalId": app["objectId"]}, 201)
    finally:
        api.close()

    # a second tenant whose administrator holds Key Vault Administrator at / (written while stopped)
    server.stop()
    storage = server.open_storage()  # SQLite or PostgreSQL, as the server
    try:
        with storage.write() as tx:
            other_tenant = principals.create_tenant(tx, "Other")
            other_admin = principals.create_principal(tx, other_tenant, "other-admin", principals.APPLICATION)
            other_secret = principals.add_secret(tx, other_admin, principals.CLIENT_SECRET).secret
            tx.role_assignment_put(RoleAssignmentRow(str(uuid.uuid4()), "/", roles.ADMINISTRATOR,
                                                     other_admin.object_id, now()))
    finally:
        storage.close()
    server.restart()

    other = Api(server, token(server, other_tenant, other_admin.client_id, other_secret))
    api = api_for(server)
    try:
        assert_error(other("GET", "/vaults/dev/accessPolicies"), 404, "VaultNotFound")
        assert_error(other("PUT", "/vaults/dev/accessPolicies/add", {"accessPolicies": [
            {"objectId": other_admin.object_id, "permissions": {"secrets": ["all"]}}]}), 404, "VaultNotFound")
        assert_error(other("PATCH", "/vaults/dev", {"enableRbacAuthorization": False}), 404, "VaultNotFound")
        assert_error(other("PUT", "/roles/assignments/new", {
            "scope": "/vaults/dev", "roleDefinitionId": roles.ADMINISTRATOR,
            "principalId": other_admin.object_id}), 404, "VaultNotFound")
        assert_error(other("PUT", "/roles/assignments/new", {
            "scope": "/", "roleDefinitionId": roles.READER, "principalId": app["objectId"]}), 400,
            "PrincipalNotFound")
        assert_error(other("GET", f"/roles/assignments/{mine['name']}"), 404, "RoleAssignmentNotFound")
        assert_error(other("DELETE", f"/roles/assignments/{mine['name']}"), 404, "RoleAssignmentNotFound")
        assert_error(other("GET", "/roles/definitions?scope=/vaults/dev"), 404, "VaultNotFound")
        theirs = other.ok("GET", "/roles/assignments")["value"]
        assert [a["properties"]["principalId"] for a in theirs] == [other_admin.object_id]
        ours = api.ok("GET", "/roles/assignments")["value"]
        assert other_admin.object_id not in json.dumps(ours) and mine["name"] in json.dumps(ours)
        assert api.ok("GET", f"/roles/assignments/{mine['name']}")["name"] == mine["name"]
    finally:
        other.close()
        api.close()
