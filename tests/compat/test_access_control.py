"""The unmodified `azure.keyvault.administration.KeyVaultAccessControlClient` against a real Coffer dev server.

Role definitions and role assignments through the vault's data-plane role API (specs/keyvault/7.4/rbac.json):
the 11 built-in roles, custom roles, assignments at the vault, a collection and a single secret, Azure's error
envelopes, and the effect of an assignment on what a second application may do with SecretClient. Last,
Microsoft's published `access_control_operations` samples (sync and async) run unmodified as subprocesses.
"""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.identity import ClientSecretCredential, ManagedIdentityCredential
from azure.keyvault.administration import (
    KeyVaultAccessControlClient,
    KeyVaultDataAction,
    KeyVaultPermission,
    KeyVaultRoleDefinition,
    KeyVaultRoleScope,
)
from azure.keyvault.secrets import SecretClient

from tests.compat.conftest import client_secret_credential
from tests.compat.helpers import check_error, unique
from tests.support.samples import SamplesUnavailable, fetch_samples, installed_version
from tests.support.server import DevServer

ADMIN_PACKAGE = "azure-keyvault-administration"
ACL_SAMPLES = ["access_control_operations.py", "access_control_operations_async.py"]
SAMPLE_TIMEOUT = 180

V = "Microsoft.KeyVault/vaults/"
# Azure's built-in Key Vault data-plane roles (reference §6.1), as KeyVaultRoleScope.GLOBAL lists them.
BUILT_IN = {
    "00482a5a-887f-4fb3-b363-3b7fe8e74483": "Key Vault Administrator",
    "21090545-7ca7-4776-b22c-e363652d74d2": "Key Vault Reader",
    "b86a8fe4-44ce-4948-aee5-eccb2c155cd7": "Key Vault Secrets Officer",
    "4633458b-17de-408a-b874-0445c86b69e6": "Key Vault Secrets User",
    "14b46e9e-c2b7-41b4-b07b-48a6ebf60603": "Key Vault Crypto Officer",
    "12338af0-0e69-4776-bea7-57ae8d297424": "Key Vault Crypto User",
    "e147488a-f6f5-4113-8e2d-b22465e65bf6": "Key Vault Crypto Service Encryption User",
    "08bbd89e-9f13-488c-ac41-acfcb10c90ab": "Key Vault Crypto Service Release User",
    "a4417e6f-fecd-4de8-b567-7b0420556985": "Key Vault Certificates Officer",
    "db79e9a7-68ee-4b58-9aeb-b90e7c24fcba": "Key Vault Certificate User",
    "8b54135c-b56d-4d72-a534-26097cfdc8d8": "Key Vault Data Access Administrator",
}
ADMINISTRATOR = "00482a5a-887f-4fb3-b363-3b7fe8e74483"
SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"
SECRETS_OFFICER = "b86a8fe4-44ce-4948-aee5-eccb2c155cd7"
DATA_ACCESS_ADMINISTRATOR = "8b54135c-b56d-4d72-a534-26097cfdc8d8"


def definition_id(guid: str, scope: str = "/") -> str:
    return f"{scope.rstrip('/')}/providers/Microsoft.Authorization/roleDefinitions/{guid}"


def expect_error(call: Callable[[], Any], status: int, code: str, *, inner: str | None = None,
                 exc_type: type[HttpResponseError] = HttpResponseError) -> HttpResponseError:
    with pytest.raises(HttpResponseError) as info:
        call()
    return check_error(info.value, status, code, inner=inner, exc_type=exc_type)


def forbidden(call: Callable[[], Any]) -> HttpResponseError:
    return expect_error(call, 403, "Forbidden", inner="ForbiddenByRbac")


# --- fixtures ----------------------------------------------------------------------------------------

class Admin:
    """Coffer's identity admin API, with a bearer token of the dev service principal (COFFER_* in dev.env)."""

    def __init__(self, server: DevServer) -> None:
        env = server.env
        trust = ssl.create_default_context(cafile=server.ca)
        token = httpx.post(f"{server.authority}/{env['COFFER_TENANT_ID']}/oauth2/v2.0/token", verify=trust, data={
            "grant_type": "client_credentials", "client_id": env["COFFER_CLIENT_ID"],
            "client_secret": env["COFFER_CLIENT_SECRET"], "scope": f"{server.authority}/.default"})
        assert token.status_code == 200, token.text
        self.http = httpx.Client(base_url=f"{server.authority}/admin/identity", verify=trust,
                                 headers={"authorization": f"Bearer {token.json()['access_token']}"})

    def call(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        response = self.http.request(method, path, json=body)
        assert response.status_code == status, response.text
        return response.json() if response.content else None

    def principal(self, display_name: str) -> dict[str, Any]:
        found = [p for p in self.call("GET", "/principals")["value"] if p["displayName"] == display_name]
        assert len(found) == 1, found
        return dict(found[0])


@pytest.fixture(scope="module")
def admin(dev_server: DevServer) -> Iterator[Admin]:
    api = Admin(dev_server)
    yield api
    api.http.close()


@pytest.fixture(scope="module")
def acl(dev_server: DevServer, identity_env: None) -> Iterator[KeyVaultAccessControlClient]:
    """The access control client with the dev managed identity (Key Vault Administrator at the server scope)."""
    credential = ManagedIdentityCredential(connection_verify=dev_server.ca)
    with KeyVaultAccessControlClient(dev_server.vault_url, credential, connection_verify=dev_server.ca) as client:
        yield client
    credential.close()


@pytest.fixture(scope="module")
def secrets(dev_server: DevServer, identity_env: None) -> Iterator[SecretClient]:
    credential = ManagedIdentityCredential(connection_verify=dev_server.ca)
    with SecretClient(dev_server.vault_url, credential, connection_verify=dev_server.ca) as client:
        yield client
    credential.close()


class App:
    """A second application (no role anywhere at first) and the SDK clients that act as it."""

    def __init__(self, server: DevServer, admin: Admin) -> None:
        self.principal = admin.call("POST", "/principals", {"displayName": unique("acl-app"), "kind": "application"},
                                    201)
        secret = admin.call("POST", f"/principals/{self.principal['objectId']}/credentials", {"kind": "clientSecret"},
                            201)
        self.object_id: str = self.principal["objectId"]
        self.credential = ClientSecretCredential(
            server.env["COFFER_TENANT_ID"], self.principal["clientId"], secret["secret"],
            authority=server.authority, disable_instance_discovery=True, connection_verify=server.ca)
        self.acl = KeyVaultAccessControlClient(server.vault_url, self.credential, connection_verify=server.ca)
        self.secrets = SecretClient(server.vault_url, self.credential, connection_verify=server.ca)

    def close(self) -> None:
        self.acl.close()
        self.secrets.close()
        self.credential.close()


@pytest.fixture()
def app(dev_server: DevServer, admin: Admin, acl: KeyVaultAccessControlClient) -> Iterator[App]:
    second = App(dev_server, admin)
    yield second
    mine = f"principalId eq '{second.object_id}'"
    for assignment in acl.list_role_assignments(KeyVaultRoleScope.GLOBAL, filter=mine):
        acl.delete_role_assignment(assignment.properties.scope, assignment.name)
    second.close()


@pytest.fixture()
def custom_roles(acl: KeyVaultAccessControlClient) -> Iterator[list[str]]:
    """Names of custom role definitions a test created, deleted (with their assignments) afterwards."""
    created: list[str] = []
    yield created
    for name in created:
        for assignment in acl.list_role_assignments(KeyVaultRoleScope.GLOBAL):
            if assignment.properties.role_definition_id.endswith(name):
                acl.delete_role_assignment(assignment.properties.scope, assignment.name)
        acl.delete_role_definition(KeyVaultRoleScope.GLOBAL, name)


def audit_records(server: DevServer, offset: int) -> list[dict[str, Any]]:
    with (server.data_dir / "audit.log").open("rb") as handle:
        handle.seek(offset)
        return [json.loads(line) for line in handle.read().splitlines() if line.strip()]


# --- role definitions ----------------------------------------------------------------------------------

def test_lists_the_eleven_built_in_roles(acl: KeyVaultAccessControlClient) -> None:
    definitions = {d.name: d for d in acl.list_role_definitions(KeyVaultRoleScope.GLOBAL)}
    assert BUILT_IN.keys() <= definitions.keys()
    for guid, role_name in BUILT_IN.items():
        definition = definitions[guid]
        assert definition.role_name == role_name
        assert definition.id == definition_id(guid)
        assert definition.role_type == "AKVBuiltInRole"
        assert definition.type == "Microsoft.Authorization/roleDefinitions"
        assert definition.assignable_scopes == ["/"]
        assert len(definition.permissions) == 1
    secrets_user = definitions[SECRETS_USER].permissions[0]
    assert secrets_user.data_actions == [V + "secrets/getSecret/action", V + "secrets/readMetadata/action"]
    assert secrets_user.not_data_actions == [] and secrets_user.actions == []
    assert definitions[ADMINISTRATOR].permissions[0].data_actions == [V + "*"]
    assert definitions[DATA_ACCESS_ADMINISTRATOR].permissions[0].data_actions == []
    daa_actions = definitions[DATA_ACCESS_ADMINISTRATOR].permissions[0].actions
    assert "Microsoft.Authorization/roleAssignments/write" in daa_actions


def test_lists_and_gets_at_a_collection_scope(acl: KeyVaultAccessControlClient) -> None:
    definitions = list(acl.list_role_definitions(KeyVaultRoleScope.KEYS))
    assert {d.name for d in definitions} >= BUILT_IN.keys()
    assert all(d.id == definition_id(d.name, "/keys") for d in definitions)
    fetched = acl.get_role_definition("/secrets", SECRETS_USER)
    assert fetched.id == definition_id(SECRETS_USER, "/secrets") and fetched.role_name == "Key Vault Secrets User"


def test_role_name_filter(acl: KeyVaultAccessControlClient) -> None:
    found = list(acl.list_role_definitions("/", filter="roleName eq 'Key Vault Secrets User'"))
    assert [d.name for d in found] == [SECRETS_USER]
    assert list(acl.list_role_definitions("/", filter="roleName eq 'No Such Role'")) == []


def test_custom_role_definition_lifecycle(acl: KeyVaultAccessControlClient, custom_roles: list[str]) -> None:
    name, role_name = str(uuid.uuid4()), unique("Custom Role")
    custom_roles.append(name)
    permissions = [KeyVaultPermission(
        data_actions=[KeyVaultDataAction.SIGN_HSM_KEY, V + "secrets/getSecret/action"],
        not_data_actions=[KeyVaultDataAction.CREATE_HSM_KEY],
    )]
    created = acl.set_role_definition(KeyVaultRoleScope.GLOBAL, name=name, role_name=role_name,
                                      description="signs and reads", permissions=permissions,
                                      assignable_scopes=[KeyVaultRoleScope.GLOBAL])
    assert isinstance(created, KeyVaultRoleDefinition)
    assert created.name == name and created.id == definition_id(name)
    assert created.role_name == role_name and created.description == "signs and reads"
    assert created.role_type == "CustomRole" and created.assignable_scopes == ["/"]
    assert created.permissions[0].data_actions == ["Microsoft.KeyVault/managedHsm/keys/sign/action",
                                                   V + "secrets/getSecret/action"]
    assert created.permissions[0].not_data_actions == ["Microsoft.KeyVault/managedHsm/keys/create"]

    fetched = acl.get_role_definition(KeyVaultRoleScope.GLOBAL, name)
    assert (fetched.role_name, fetched.permissions[0].data_actions) == (role_name, created.permissions[0].data_actions)
    assert name in {d.name for d in acl.list_role_definitions(KeyVaultRoleScope.GLOBAL)}
    assert [d.name for d in acl.list_role_definitions("/", filter=f"roleName eq '{role_name}'")] == [name]

    # update: the same name (GUID) again
    updated = acl.set_role_definition(KeyVaultRoleScope.GLOBAL, name=name, role_name=role_name,
                                      description="reads only",
                                      permissions=[KeyVaultPermission(data_actions=[V + "secrets/getSecret/action"])])
    assert updated.description == "reads only"
    assert updated.permissions[0].data_actions == [V + "secrets/getSecret/action"]
    assert acl.get_role_definition("/", name).description == "reads only"

    acl.delete_role_definition(KeyVaultRoleScope.GLOBAL, name)
    expect_error(lambda: acl.get_role_definition("/", name), 404, "RoleDefinitionNotFound",
                 exc_type=ResourceNotFoundError)
    assert name not in {d.name for d in acl.list_role_definitions(KeyVaultRoleScope.GLOBAL)}
    acl.delete_role_definition(KeyVaultRoleScope.GLOBAL, name)  # the SDK ignores the 404 of a second delete


def test_generated_name_and_default_assignable_scope(acl: KeyVaultAccessControlClient,
                                                    custom_roles: list[str]) -> None:
    created = acl.set_role_definition("/", role_name=unique("Generated"),
                                      permissions=[KeyVaultPermission(data_actions=[V + "keys/read"])])
    custom_roles.append(created.name)
    assert uuid.UUID(created.name) and created.assignable_scopes == ["/"]


def test_role_definition_errors(acl: KeyVaultAccessControlClient, custom_roles: list[str]) -> None:
    unknown = str(uuid.uuid4())
    error = expect_error(lambda: acl.get_role_definition("/", unknown), 404, "RoleDefinitionNotFound",
                         exc_type=ResourceNotFoundError)
    assert unknown in error.error.message
    expect_error(lambda: acl.get_role_definition("/", "not-a-guid"), 400, "BadParameter")
    expect_error(lambda: acl.set_role_definition("/", name="not-a-guid", role_name=unique("Bad")), 400, "BadParameter")
    bad_action = [KeyVaultPermission(data_actions=[V + "secrets/fly/action"])]
    error = expect_error(lambda: acl.set_role_definition("/", role_name=unique("Bad"), permissions=bad_action),
                         400, "BadParameter")
    assert "secrets/fly/action" in error.error.message
    # a built-in role's GUID cannot be re-used, nor a built-in role deleted
    error = expect_error(lambda: acl.set_role_definition("/", name=SECRETS_USER, role_name=unique("Mine")),
                         400, "BadParameter")
    assert "built-in" in error.error.message
    expect_error(lambda: acl.delete_role_definition("/", SECRETS_USER), 403, "RoleDefinitionNotEditable")
    # role names are unique, and built-in names are taken
    expect_error(lambda: acl.set_role_definition("/", role_name="Key Vault Secrets User"), 409, "RoleDefinitionExists",
                 exc_type=ResourceExistsError)
    # scopes are "/", a collection, or one object
    expect_error(lambda: list(acl.list_role_definitions("/deletedsecrets")), 400, "BadParameter")
    expect_error(lambda: list(acl.list_role_definitions("/", filter="type eq 'CustomRole'")), 400, "BadParameter")
    # nothing was created by the refused calls
    assert not [d for d in acl.list_role_definitions("/") if d.role_name.startswith(("Bad", "Mine"))]


# --- role assignments ----------------------------------------------------------------------------------

def test_role_assignment_lifecycle(acl: KeyVaultAccessControlClient, app: App, dev_server: DevServer) -> None:
    offset = (dev_server.data_dir / "audit.log").stat().st_size
    created = acl.create_role_assignment(KeyVaultRoleScope.KEYS, definition_id(SECRETS_OFFICER), app.object_id)
    assert uuid.UUID(created.name)
    assert created.role_assignment_id == f"/keys/providers/Microsoft.Authorization/roleAssignments/{created.name}"
    assert created.type == "Microsoft.Authorization/roleAssignments"
    assert created.properties.scope == "/keys"
    assert created.properties.principal_id == app.object_id
    assert created.properties.role_definition_id == definition_id(SECRETS_OFFICER, "/keys")

    fetched = acl.get_role_assignment(KeyVaultRoleScope.KEYS, created.name)
    assert (fetched.name, fetched.properties.scope, fetched.properties.principal_id) == (
        created.name, "/keys", app.object_id)

    # listed at the scope and above it, not beside it; atScope() leaves out what is below
    assert created.name in {a.name for a in acl.list_role_assignments(KeyVaultRoleScope.KEYS)}
    assert created.name in {a.name for a in acl.list_role_assignments(KeyVaultRoleScope.GLOBAL)}
    assert created.name not in {a.name for a in acl.list_role_assignments("/secrets")}
    assert created.name not in {a.name for a in acl.list_role_assignments("/", filter="atScope()")}
    at_keys = list(acl.list_role_assignments("/keys", filter="atScope()"))
    assert created.name in {a.name for a in at_keys}
    # the dev identity's server-wide assignment is inherited, and shown at "/"
    inherited = [a for a in at_keys if a.properties.role_definition_id.endswith(ADMINISTRATOR)]
    assert inherited and all(a.properties.scope == "/" for a in inherited)
    mine = list(acl.list_role_assignments("/", filter=f"principalId eq '{app.object_id}'"))
    assert [a.name for a in mine] == [created.name]

    # an explicit name, on a single object
    name = str(uuid.uuid4())
    single = acl.create_role_assignment("/secrets/one-object", SECRETS_USER, app.object_id, name=name)
    assert single.name == name and single.properties.scope == "/secrets/one-object"
    for again in (name, str(uuid.uuid4())):  # the same name, or the same principal, role and scope
        expect_error(lambda a=again: acl.create_role_assignment("/secrets/one-object", SECRETS_USER, app.object_id,
                                                                name=a),
                     409, "RoleAssignmentExists", exc_type=ResourceExistsError)

    acl.delete_role_assignment(KeyVaultRoleScope.KEYS, created.name)
    acl.delete_role_assignment("/secrets/one-object", name)
    for scope, gone in ((KeyVaultRoleScope.KEYS, created.name), ("/secrets/one-object", name)):
        expect_error(lambda s=scope, g=gone: acl.get_role_assignment(s, g), 404, "RoleAssignmentNotFound",
                     exc_type=ResourceNotFoundError)
    assert not list(acl.list_role_assignments("/", filter=f"principalId eq '{app.object_id}'"))
    acl.delete_role_assignment(KeyVaultRoleScope.KEYS, created.name)  # the SDK ignores the 404

    records = [r for r in audit_records(dev_server, offset) if r["operationName"].startswith("RoleAssignment")]
    names = [(r["operationName"], r["resultType"]) for r in records]
    assert ("RoleAssignmentCreate", "Success") in names and ("RoleAssignmentDelete", "Success") in names
    assert all(r["properties"]["vault"] == "dev" for r in records)


def test_role_assignment_errors(acl: KeyVaultAccessControlClient, app: App, custom_roles: list[str]) -> None:
    unknown = str(uuid.uuid4())
    expect_error(lambda: acl.get_role_assignment("/", unknown), 404, "RoleAssignmentNotFound",
                 exc_type=ResourceNotFoundError)
    expect_error(lambda: acl.get_role_assignment("/", "not-a-guid"), 400, "BadParameter")
    expect_error(lambda: acl.create_role_assignment("/", definition_id(unknown), app.object_id), 400,
                 "RoleDefinitionDoesNotExist")
    expect_error(lambda: acl.create_role_assignment("/", SECRETS_USER, app.object_id, name="nope"), 400,
                 "BadParameter")
    expect_error(lambda: acl.create_role_assignment("/certificatecas", SECRETS_USER, app.object_id), 400,
                 "BadParameter")
    expect_error(lambda: list(acl.list_role_assignments("/", filter="principalName eq 'x'")), 400, "BadParameter")

    # a custom role that is assignable only at /keys cannot be assigned at /secrets
    keys_only = acl.set_role_definition("/", role_name=unique("Keys only"), assignable_scopes=["/keys"],
                                        permissions=[KeyVaultPermission(data_actions=[V + "keys/read"])])
    custom_roles.append(keys_only.name)
    assert keys_only.assignable_scopes == ["/keys"]
    expect_error(lambda: acl.create_role_assignment("/secrets", keys_only.id, app.object_id), 400,
                 "InvalidRoleAssignmentScope")
    assignment = acl.create_role_assignment("/keys/some-key", keys_only.id, app.object_id)
    # a role that is still assigned cannot be deleted
    expect_error(lambda: acl.delete_role_definition("/", keys_only.name), 409, "RoleDefinitionHasAssignments",
                 exc_type=ResourceExistsError)
    # an assignment is deleted at its own scope or one above it, not beside it (the SDK ignores that 404)
    acl.delete_role_assignment("/secrets", assignment.name)
    assert acl.get_role_assignment("/keys/some-key", assignment.name).properties.scope == "/keys/some-key"
    acl.delete_role_assignment("/", assignment.name)
    expect_error(lambda: acl.get_role_assignment("/keys/some-key", assignment.name), 404, "RoleAssignmentNotFound",
                 exc_type=ResourceNotFoundError)


def test_a_principal_without_a_role_is_refused(app: App) -> None:
    forbidden(lambda: list(app.acl.list_role_definitions(KeyVaultRoleScope.GLOBAL)))
    forbidden(lambda: app.acl.get_role_definition("/", SECRETS_USER))
    forbidden(lambda: list(app.acl.list_role_assignments(KeyVaultRoleScope.GLOBAL)))
    forbidden(lambda: app.acl.create_role_assignment("/", ADMINISTRATOR, app.object_id))
    forbidden(lambda: app.acl.set_role_definition("/", role_name=unique("Escalate"),
                                                  permissions=[KeyVaultPermission(data_actions=[V + "*"])]))
    error = forbidden(lambda: app.acl.delete_role_definition("/", str(uuid.uuid4())))
    assert "Microsoft.Authorization/roleDefinitions/delete" in error.error.message


# --- the effect of an assignment --------------------------------------------------------------------------

def test_a_role_on_one_secret_grants_just_that_secret(acl: KeyVaultAccessControlClient, app: App,
                                                       secrets: SecretClient, custom_roles: list[str]) -> None:
    shared, other = unique("shared"), unique("other")
    secrets.set_secret(shared, "shared-value")
    secrets.set_secret(other, "other-value")
    forbidden(lambda: app.secrets.get_secret(shared))

    # KeyVaultRoleScope accepts any string: a single secret is "/secrets/<name>"
    assignment = acl.create_role_assignment(f"/secrets/{shared}", definition_id(SECRETS_USER), app.object_id)
    assert assignment.properties.scope == f"/secrets/{shared}"
    assert app.secrets.get_secret(shared).value == "shared-value"  # at once: no propagation delay
    forbidden(lambda: app.secrets.get_secret(other))
    forbidden(lambda: app.secrets.set_secret(shared, "changed"))
    forbidden(lambda: app.secrets.set_secret(unique("new"), "value"))
    # a role at a scope lets its holder read the assignments there, but not above it, nor change them
    assert assignment.name in {a.name for a in app.acl.list_role_assignments(f"/secrets/{shared}")}
    forbidden(lambda: list(app.acl.list_role_assignments(KeyVaultRoleScope.GLOBAL)))
    forbidden(lambda: app.acl.create_role_assignment(f"/secrets/{shared}", SECRETS_OFFICER, app.object_id))

    # a custom role adds what it grants, on that secret only
    writer = acl.set_role_definition("/", role_name=unique("Secret writer"),
                                     permissions=[KeyVaultPermission(data_actions=[V + "secrets/setSecret/action"])])
    custom_roles.append(writer.name)
    acl.create_role_assignment(f"/secrets/{shared}", writer.id, app.object_id)
    assert app.secrets.set_secret(shared, "changed").value == "changed"
    forbidden(lambda: app.secrets.set_secret(other, "changed"))

    # removing the assignment takes the access away at once
    acl.delete_role_assignment(f"/secrets/{shared}", assignment.name)
    forbidden(lambda: app.secrets.get_secret(shared))


def test_data_access_administrator_assigns_only_the_roles_of_its_condition(
        acl: KeyVaultAccessControlClient, app: App, admin: Admin, dev_server: DevServer,
        custom_roles: list[str]) -> None:
    acl.create_role_assignment("/", DATA_ACCESS_ADMINISTRATOR, app.object_id)
    target = admin.call("POST", "/principals", {"displayName": unique("acl-target"), "kind": "application"}, 201)
    try:
        granted = app.acl.create_role_assignment("/secrets", SECRETS_USER, target["objectId"])
        assert granted.properties.scope == "/secrets"
        app.acl.delete_role_assignment("/secrets", granted.name)
        # not itself (Data Access Administrator is outside its condition), not custom roles, not definitions
        forbidden(lambda: app.acl.create_role_assignment("/", DATA_ACCESS_ADMINISTRATOR, target["objectId"]))
        custom = acl.set_role_definition("/", role_name=unique("Custom"),
                                         permissions=[KeyVaultPermission(data_actions=[V + "keys/read"])])
        custom_roles.append(custom.name)
        forbidden(lambda: app.acl.create_role_assignment("/", custom.id, target["objectId"]))
        forbidden(lambda: app.acl.set_role_definition("/", role_name=unique("Mine"),
                                                      permissions=[KeyVaultPermission(data_actions=[V + "*"])]))
        # it manages access, it reads no data
        with SecretClient(dev_server.vault_url, app.credential, connection_verify=dev_server.ca) as client:
            forbidden(lambda: client.set_secret(unique("daa"), "value"))
    finally:
        admin.call("DELETE", f"/principals/{target['objectId']}", status=204)


def test_service_principal_credential(dev_server: DevServer) -> None:
    """The dev service principal (ClientSecretCredential through MSAL) manages roles too."""
    credential = client_secret_credential(dev_server)
    with KeyVaultAccessControlClient(dev_server.vault_url, credential, connection_verify=dev_server.ca) as client:
        assert {d.name for d in client.list_role_definitions(KeyVaultRoleScope.GLOBAL)} >= BUILT_IN.keys()
    credential.close()


# --- Microsoft's published samples, unmodified ------------------------------------------------------------

@pytest.fixture(scope="module")
def acl_samples(request: pytest.FixtureRequest) -> Path:
    try:
        return fetch_samples(request.config, ADMIN_PACKAGE, ACL_SAMPLES)
    except SamplesUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture()
def sample_identity(admin: Admin, acl: KeyVaultAccessControlClient) -> Iterator[dict[str, Any]]:
    """A new managed identity with Key Vault Administrator on the dev vault (granted through the role API)."""
    identity = admin.call("POST", "/principals", {"displayName": unique("acl-sample"), "kind": "managedIdentity"}, 201)
    grant = acl.create_role_assignment(KeyVaultRoleScope.GLOBAL, ADMINISTRATOR, identity["objectId"])
    yield identity
    acl.delete_role_assignment(KeyVaultRoleScope.GLOBAL, grant.name)
    admin.call("DELETE", f"/principals/{identity['objectId']}", status=204)


def run_sample(server: DevServer, directory: Path, sample: str, identity: dict[str, Any]) -> list[str]:
    source = (directory / sample).read_text()
    assert "DefaultAzureCredential()" in source
    # The sample reads MANAGED_HSM_URL and AZURE_CLIENT_ID; DefaultAzureCredential also takes AZURE_CLIENT_ID as
    # the client id of the user-assigned managed identity to ask IDENTITY_ENDPOINT for. So the sample signs in
    # as the new identity (through its own IDENTITY_HEADER) and assigns its role to that same client id.
    env = server.client_env()
    env.update(MANAGED_HSM_URL=server.vault_url, AZURE_CLIENT_ID=identity["clientId"],
               IDENTITY_ENDPOINT=identity["identityEndpoint"], IDENTITY_HEADER=identity["identityHeader"])
    done = subprocess.run([sys.executable, str(directory / sample)], cwd=server.data_dir.parent, env=env,
                          capture_output=True, text=True, timeout=SAMPLE_TIMEOUT, check=False)
    assert done.returncode == 0, (f"{sample} exited {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n"
                                  f"{done.stderr[-6000:]}\n--- server\n" + "".join(server.output[-30:]))
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def test_samples_read_only_what_is_set(acl_samples: Path) -> None:
    assert (acl_samples.parent / ".complete").read_text() == installed_version(ADMIN_PACKAGE)
    for sample in ACL_SAMPLES:
        source = (acl_samples / sample).read_text()
        wanted = set(re.findall(r"""os\.environ\[\s*["'](\w+)["']\s*\]""", source))
        wanted |= set(re.findall(r"""os\.(?:environ\.get|getenv)\(\s*["'](\w+)["']""", source))
        assert wanted == {"MANAGED_HSM_URL", "AZURE_CLIENT_ID"}, f"{sample} now reads {sorted(wanted)}"


def test_access_control_sample(acl_samples: Path, dev_server: DevServer, sample_identity: dict[str, Any],
                               acl: KeyVaultAccessControlClient) -> None:
    lines = run_sample(dev_server, acl_samples, "access_control_operations.py", sample_identity)
    assert "Role definition 'customRole' created successfully." in lines
    assert "Role definition 'customRole' updated successfully." in lines
    assert "Role defintion 'customRole' fetched successfully." in lines  # sic
    assert "Role name: Key Vault Secrets User; Role definition name: 4633458b-17de-408a-b874-0445c86b69e6" in lines
    assert f"Role assignment for principal {sample_identity['clientId']} fetched successfully." in lines
    assert "Role assignment deleted successfully." in lines and "Role definition deleted successfully." in lines
    # it cleaned up after itself
    assert not list(acl.list_role_definitions("/", filter="roleName eq 'customRole'"))
    assert not list(acl.list_role_assignments("/", filter=f"principalId eq '{sample_identity['clientId']}'"))


def test_access_control_sample_async(acl_samples: Path, dev_server: DevServer, sample_identity: dict[str, Any],
                                     acl: KeyVaultAccessControlClient) -> None:
    lines = run_sample(dev_server, acl_samples, "access_control_operations_async.py", sample_identity)
    assert "Role definition 'customRole' created successfully." in lines
    assert "Role definition 'customRole' updated successfully." in lines
    assert "Role assignment deleted successfully." in lines and "Role definition deleted successfully." in lines
    assert not list(acl.list_role_assignments("/", filter=f"principalId eq '{sample_identity['clientId']}'"))
    # The async sample deletes the definition by its full id (`name=definition_id`), which the SDK sends as one
    # %2F-encoded path segment: no such role definition (404), which delete_role_definition ignores. So, as on
    # Azure, the role stays behind; remove it here so that the sample can run again.
    leftover = list(acl.list_role_definitions("/", filter="roleName eq 'customRole'"))
    assert len(leftover) == 1
    acl.delete_role_definition("/", leftover[0].name)
