"""Azure RBAC through the unmodified `azure.keyvault.secrets.SecretClient` against a real Coffer server: every
built-in role assigned at each of the four scope levels (server, vault, the vault's secrets, one secret) to its own
application, and every Secrets operation run by each. Allowed (the operation succeeds) and refused (403 Forbidden /
ForbiddenByRbac naming the right action and resource) must match the independent oracle in
tests/support/azure_roles.py exactly.

Principals, client secrets, role assignments and the secrets the operations need are written straight into the
stopped server's storage (no admin role API is assumed), then the server is restarted and only the SDK talks to it.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError
from azure.identity import ClientSecretCredential
from azure.keyvault.secrets import SecretClient

from coffer.app import DEV_VAULT, Coffer
from coffer.barrier import VaultView
from coffer.config import Config
from coffer.identity import principals
from coffer.objects import secret
from coffer.storage import RoleAssignmentRow
from tests.support.azure_roles import BUILT_IN_ROLES, SECRET_OPERATIONS, BuiltInRole, allowed, scope_levels
from tests.support.server import DevServer

OPERATIONS = {op.name: op for op in SECRET_OPERATIONS}
ORDER = ("get", "list_versions", "update", "backup", "set", "list", "list_deleted", "delete", "get_deleted",
         "recover", "purge", "restore")
assert sorted(ORDER) == sorted(OPERATIONS)
VALUE = "matrix-value"


@dataclass
class Principal:
    role: BuiltInRole
    level: str
    scope: str
    client_id: str
    secret: str
    target: str  # the secret it works on (the assigned one at the object level)
    restore_blob: bytes  # the backup of a secret that no longer exists (purged), to restore


@dataclass
class Outcome:
    role: BuiltInRole
    level: str
    scope: str
    operation: str
    expected: bool
    result: str  # "allowed" | "refused" | a description of anything else
    detail: str = ""


def provision(server: DevServer) -> tuple[list[Principal], str]:
    """With the server stopped: one application per (role, level), its assignment, and its secrets."""
    server.stop()
    coffer = Coffer(Config(data_dir=server.data_dir, dev=True, database_url=server.database_url))
    made: list[Principal] = []
    try:
        dev = coffer.start_dev()
        with coffer.storage.write() as tx:
            vault = tx.vault_get(DEV_VAULT)
            assert vault is not None and vault.rbac_authorization
            view = VaultView(tx, coffer.barrier, vault)
            for r, role in enumerate(BUILT_IN_ROLES):
                for level in ("server", "vault", "kind", "object"):
                    target = f"target-{r:02d}-{level}"
                    scope = scope_levels(DEV_VAULT, "secrets", target)[level]
                    app = principals.create_principal(tx, dev.tenant_id, f"rbac-{r:02d}-{level}",
                                                      principals.APPLICATION)
                    issued = principals.add_secret(tx, app, principals.CLIENT_SECRET)
                    tx.role_assignment_put(RoleAssignmentRow(f"rbac-matrix-{r:02d}-{level}", scope, role.id,
                                                             app.object_id, int(time.time())))
                    secret.set(view, target, VALUE)
                    gone = f"restored-{r:02d}-{level}"
                    secret.set(view, gone, "to be restored")
                    blob = secret.backup(view, gone)
                    secret.delete(view, gone)
                    secret.purge(view, gone)
                    made.append(Principal(role, level, scope, app.client_id, issued.secret, target, blob))
        tenant = dev.tenant_id
    finally:
        coffer.close()
    server.restart()
    return made, tenant


def classify(call: Any) -> tuple[str, str]:
    """("allowed", "") when the call succeeds; ("refused", message) on Azure's RBAC 403; otherwise what happened."""
    try:
        call()
    except HttpResponseError as error:
        response = error.response
        body: Any = None
        with contextlib.suppress(ValueError):
            body = json.loads(response.text()) if response is not None else None
        if error.status_code == 403 and isinstance(body, dict):
            envelope = body.get("error") or {}
            inner = (envelope.get("innererror") or {}).get("code")
            if envelope.get("code") == "Forbidden" and inner == "ForbiddenByRbac" and type(error) is HttpResponseError:
                return "refused", str(envelope.get("message", ""))
        return f"HTTP {error.status_code} {body}", ""
    except Exception as error:  # any other failure is reported, not raised from a worker
        return f"{type(error).__name__}: {error}", ""
    return "allowed", ""


def run_principal(server: DevServer, tenant: str, admin: SecretClient, p: Principal) -> list[Outcome]:
    credential = ClientSecretCredential(tenant, p.client_id, p.secret, authority=server.authority,
                                        disable_instance_discovery=True, connection_verify=server.ca)
    client = SecretClient(server.vault_url, credential, connection_verify=server.ca)
    name = p.target

    def get() -> None:
        assert client.get_secret(name).value == VALUE

    def list_versions() -> None:
        assert [v.name for v in client.list_properties_of_secret_versions(name)] == [name]

    def update() -> None:
        assert client.update_secret_properties(name, content_type="text/matrix").content_type == "text/matrix"

    def backup() -> None:
        assert client.backup_secret(name)

    def set_() -> None:
        assert client.set_secret(name, VALUE).value == VALUE

    def list_() -> None:
        assert name in {s.name for s in client.list_properties_of_secrets()}

    def list_deleted() -> None:
        list(client.list_deleted_secrets())

    def delete() -> None:
        assert client.begin_delete_secret(name).result().name == name

    def get_deleted() -> None:
        assert client.get_deleted_secret(name).name == name

    def recover() -> None:
        assert client.begin_recover_deleted_secret(name).result().name == name

    def purge() -> None:
        client.purge_deleted_secret(name)

    def restore() -> None:
        assert (client.restore_secret_backup(p.restore_blob).name or "").startswith("restored-")

    calls = {"get": get, "list_versions": list_versions, "update": update, "backup": backup, "set": set_,
             "list": list_, "list_deleted": list_deleted, "delete": delete, "get_deleted": get_deleted,
             "recover": recover, "purge": purge, "restore": restore}
    outcomes: list[Outcome] = []
    try:
        for op_name in ORDER:
            operation = OPERATIONS[op_name]
            resource = operation.rbac_scope(DEV_VAULT, name)
            expected = allowed(p.role, p.scope, operation.data_action, resource)
            result, message = classify(calls[op_name])
            detail = ""
            if result == "refused":
                named = re.search(r"Action: '([^']*)'", message)
                where = re.search(r"Resource: '([^']*)'", message)
                if not named or named.group(1) != operation.data_action:
                    detail += f" 403 names action {named.group(1) if named else None!r}"
                if not where or where.group(1).lower() != resource.lower():
                    detail += f" 403 names resource {where.group(1) if where else None!r}, expected {resource!r}"
            outcomes.append(Outcome(p.role, p.level, p.scope, op_name, expected, result, detail.strip()))
            # keep the state each next operation needs, whatever this one did
            if op_name == "delete" and result != "allowed":
                admin.begin_delete_secret(name).result()
            if op_name == "recover" and result == "allowed":
                admin.begin_delete_secret(name).result()
    finally:
        client.close()
        credential.close()
    return outcomes


def test_every_role_at_every_scope_level_through_the_sdk(
    fresh_server: DevServer, capsys: pytest.CaptureFixture[str]
) -> None:
    server = fresh_server
    started = time.monotonic()
    made, tenant = provision(server)
    assert len(made) == len(BUILT_IN_ROLES) * 4

    admin_credential = ClientSecretCredential(
        server.env["COFFER_TENANT_ID"], server.env["COFFER_CLIENT_ID"], server.env["COFFER_CLIENT_SECRET"],
        authority=server.authority, disable_instance_discovery=True, connection_verify=server.ca)
    assert server.env["COFFER_TENANT_ID"] == tenant
    with SecretClient(server.vault_url, admin_credential, connection_verify=server.ca) as admin:
        assert admin.get_secret(made[0].target).value == VALUE  # the writes made while stopped are served
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(lambda p: run_principal(server, tenant, admin, p), made))
    admin_credential.close()
    outcomes = [o for per_principal in results for o in per_principal]

    problems = []
    for o in outcomes:
        want = "allowed" if o.expected else "refused"
        if o.result != want or o.detail:
            problems.append(
                f"{o.role.name} at {o.level} ({o.scope}): {o.operation} "
                f"[{OPERATIONS[o.operation].data_action}] → Coffer {o.result[:300]}"
                f"{' (' + o.detail + ')' if o.detail else ''}; Azure {'allows' if o.expected else 'refuses'}"
            )
    allowed_count = sum(o.result == "allowed" for o in outcomes)
    refused_count = sum(o.result == "refused" for o in outcomes)
    with capsys.disabled():
        print(f"\nrbac matrix (SDK): {len(made)} principals x {len(ORDER)} operations = {len(outcomes)} calls; "
              f"{allowed_count} allowed, {refused_count} refused, {len(problems)} mismatches; "
              f"{time.monotonic() - started:.1f} s")
    assert len(outcomes) == len(made) * len(ORDER)
    assert allowed_count > 0 and refused_count > 0
    assert not problems, f"{len(problems)} mismatches:\n" + "\n".join(problems)
