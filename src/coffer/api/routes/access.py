"""Coffer's access admin API on the server host (the CLI's `coffer role ...` and `coffer vault policy ...`):
role definitions, role assignments and a vault's legacy access policies.

    GET    /admin/roles/definitions?scope=S           built-in roles, and custom roles defined at S or above
    GET    /admin/roles/definitions/{id}[?scope=S]
    PUT    /admin/roles/definitions/{id}              {"properties": {...}, "scope"}; id "new" makes one
    DELETE /admin/roles/definitions/{id}
    GET    /admin/roles/assignments?scope=S&principalId=P
    PUT    /admin/roles/assignments/{id}              {"scope", "roleDefinitionId", "principalId"}; id "new"
    GET    /admin/roles/assignments/{id}
    DELETE /admin/roles/assignments/{id}
    GET    /admin/vaults/{name}/accessPolicies
    PUT    /admin/vaults/{name}/accessPolicies/{add|replace|remove}   {"accessPolicies": [...]}

Bearer-authenticated; every call runs through the pipeline (authorize at its absolute scope, one transaction,
audit), and the domain rules are those of `coffer.authz.manage`. Scopes naming a vault of another tenant answer
404, as if the vault did not exist; assignments of other tenants' principals are never listed. A principal may
be named by object id or client id; it is stored by object id. After every successful write the server
rebuilds its decision index (`Coffer.access_changed`), so the change applies to the very next request.
"""

from __future__ import annotations

from typing import Any

import anyio.to_thread

from coffer.api.request import ApiRequest
from coffer.api.routing import Route
from coffer.authz import manage, roles
from coffer.authz.decide import scope_chain
from coffer.core import Context, Operation, Result
from coffer.errors import BadParameter, Conflict, NotFound
from coffer.objects import vault
from coffer.storage import RoleAssignmentRow, Transaction, VaultRow

_DEFINITIONS = "Microsoft.Authorization/roleDefinitions/"
_ASSIGNMENTS = "Microsoft.Authorization/roleAssignments/"
_POLICIES_WRITE = "Microsoft.KeyVault/vaults/accessPolicies/write"
_VAULT_READ = "Microsoft.KeyVault/vaults/read"
_PROVIDER = "/providers/Microsoft.Authorization"
_UPDATE_KINDS = ("add", "replace", "remove")


async def _run(req: ApiRequest, name: str, action: str, scope: str, write: bool, run: Any) -> Result:
    op = Operation(name=name, action=action, scope=scope, vault=None, write=write, run=run)
    assert req.caller is not None
    result = await req.pipeline.execute(op, req.caller, req.info)
    if write:
        req.app.access_changed()
    return result


# --- scopes, tenants, principals -----------------------------------------------------------------


def _scope(value: Any, default: str = "/") -> str:
    if value is None or value == "":
        return default
    if not isinstance(value, str):
        raise BadParameter("scope must be a string.")
    return manage.check_scope(value)


def _vault_of(scope: str) -> str | None:
    parts = [p for p in scope.split("/") if p]
    return parts[1] if len(parts) >= 2 else None


def _own_vault(ctx: Context, name: str) -> VaultRow:
    row = ctx.tx.vault_get(name)
    if row is None or row.tenant_id != ctx.caller.tenant_id:  # other tenants' vaults are invisible
        raise NotFound(f"Vault {name[:64]} was not found.", code="VaultNotFound")
    return row


def _check_tenant(ctx: Context, scope: str) -> None:
    """A scope below "/" must name a vault of the caller's tenant."""
    name = _vault_of(scope)
    if name is not None:
        _own_vault(ctx, name)


def _own_vaults(tx: Transaction, tenant_id: str) -> set[str]:
    return {v.name.lower() for v in tx.vault_list() if v.tenant_id == tenant_id}


def _principal_object_id(ctx: Context, reference: str) -> str | None:
    """The object id of a principal of the caller's tenant named by object id or client id (None: unknown)."""
    row = ctx.tx.principal_get(reference) or ctx.tx.principal_by_client_id(ctx.caller.tenant_id, reference)
    if row is None or row.tenant_id != ctx.caller.tenant_id:
        return None
    return row.object_id


def _at_or_below(scope: str, above: str) -> bool:
    return above == "/" or scope.lower() == above.lower() or scope.lower().startswith(above.lower().rstrip("/") + "/")


# --- role definitions ----------------------------------------------------------------------------


def _definition_scope(role: roles.Role | None) -> str:
    return role.scope if role is not None and not role.built_in else "/"


def _definition(role: roles.Role) -> dict[str, Any]:
    return manage.definition_body(role, _definition_scope(role))


def _visible_definition(ctx: Context, role_id: str, scope: str) -> roles.Role:
    """A definition the caller may see from `scope`: built-in, or custom and defined at `scope` or above."""
    role = ctx.authorizer.role(role_id)
    chain = {s.lower() for s in scope_chain(scope)}
    if role is None or (not role.built_in and role.scope.lower() not in chain):
        raise NotFound(f"Role definition {role_id[:64]} was not found.", code="RoleDefinitionNotFound")
    _check_tenant(ctx, _definition_scope(role))
    return role


async def list_definitions(req: ApiRequest) -> Result:
    scope = _scope(req.query.get("scope"))

    def run(ctx: Context) -> Result:
        _check_tenant(ctx, scope)
        found = manage.list_definitions(ctx.authorizer, scope)
        return Result(body={"value": [_definition(r) for r in found]})

    return await _run(req, "RoleDefinitionList", _DEFINITIONS + "read", scope, False, run)


async def get_definition(req: ApiRequest) -> Result:
    role_id = manage.check_guid(req.params["id"], "role definition name")
    known = req.app.authorizer.role(role_id)
    scope = _scope(req.query.get("scope"), _definition_scope(known))

    def run(ctx: Context) -> Result:
        role = _visible_definition(ctx, role_id, scope)
        path = f"{_definition_scope(role).rstrip('/')}{_PROVIDER}/roleDefinitions/{role.id}"
        return Result(body=_definition(role), object_id=path)

    return await _run(req, "RoleDefinitionGet", _DEFINITIONS + "read", scope, False, run)


async def put_definition(req: ApiRequest) -> Result:
    raw_id = req.params["id"]
    role_id = manage.new_id() if raw_id.lower() == "new" else manage.check_guid(raw_id, "role definition name")
    body = await req.json()
    known = req.app.authorizer.role(role_id)
    if known is not None and known.built_in:
        scope = "/"  # refused by manage.put_definition, after authorization
    elif known is not None:
        scope = known.scope  # a definition stays where it was defined
    else:
        scope = _scope(body.get("scope"))
        if len([p for p in scope.split("/") if p]) > 2:
            raise BadParameter("A role definition is defined at / (the server) or /vaults/NAME (one vault).")
    props = body.get("properties", body)
    assignable = props.get("assignableScopes") if isinstance(props, dict) else None
    if isinstance(assignable, list):
        for item in assignable:
            if not isinstance(item, str) or not _at_or_below(_scope(item), scope):
                raise BadParameter(
                    f"The assignable scope {str(item)[:200]!r} is not at or below the scope the role is defined at "
                    f"({scope})."
                )

    def run(ctx: Context) -> Result:
        _check_tenant(ctx, scope)
        existed = ctx.tx.role_definition_get(role_id) is not None
        role = manage.put_definition(ctx.tx, scope, role_id, body)
        return Result(
            status=200 if existed else 201,
            body=_definition(role),
            object_id=f"{scope.rstrip('/')}{_PROVIDER}/roleDefinitions/{role.id}",
        )

    return await _run(req, "RoleDefinitionWrite", _DEFINITIONS + "write", scope, True, run)


async def delete_definition(req: ApiRequest) -> Result:
    role_id = manage.check_guid(req.params["id"], "role definition name")
    scope = _definition_scope(req.app.authorizer.role(role_id))

    def run(ctx: Context) -> Result:
        _check_tenant(ctx, scope)
        role = manage.delete_definition(ctx.tx, ctx.authorizer, role_id)
        return Result(body=_definition(role), object_id=f"{scope.rstrip('/')}{_PROVIDER}/roleDefinitions/{role.id}")

    return await _run(req, "RoleDefinitionDelete", _DEFINITIONS + "delete", scope, True, run)


# --- role assignments ----------------------------------------------------------------------------


def _assignment(ctx: Context, row: RoleAssignmentRow) -> dict[str, Any]:
    role = ctx.authorizer.role(row.role_definition_id)
    body = manage.assignment_body(row, row.scope, _definition_scope(role))
    body["properties"]["roleName"] = role.name if role is not None else None
    body["properties"]["createdOn"] = row.created
    return body


def _assignment_path(row: RoleAssignmentRow) -> str:
    return f"{row.scope.rstrip('/')}{_PROVIDER}/roleAssignments/{row.id}"


def _visible_assignment(ctx: Context, row: RoleAssignmentRow, own_vaults: set[str] | None = None) -> bool:
    """Of the caller's tenant: its principal, and its scope ("/" or one of the tenant's vaults)."""
    principal = ctx.tx.principal_get(row.principal_id)
    if principal is None or principal.tenant_id != ctx.caller.tenant_id:
        return False
    name = _vault_of(row.scope)
    if name is None:
        return True
    if own_vaults is None:
        own_vaults = _own_vaults(ctx.tx, ctx.caller.tenant_id)
    return name.lower() in own_vaults


async def _assignment_scope(req: ApiRequest, assignment_id: str) -> str:
    """Where an assignment is, to authorize reading or removing it there ("/" when there is none)."""

    def read() -> str:
        with req.app.storage.read() as tx:
            row = tx.role_assignment_get(assignment_id)
        return row.scope if row is not None else "/"

    return await anyio.to_thread.run_sync(read)


def _stored_assignment(ctx: Context, assignment_id: str, scope: str) -> RoleAssignmentRow:
    row = manage.get_assignment(ctx.tx, assignment_id)
    if row.scope != scope:
        raise Conflict("The role assignment changed while the request was authorized; try again.")
    if not _visible_assignment(ctx, row):
        raise NotFound(f"Role assignment {assignment_id[:64]} was not found.", code="RoleAssignmentNotFound")
    return row


async def list_assignments(req: ApiRequest) -> Result:
    scope = _scope(req.query.get("scope"))
    principal = req.query.get("principalId") or None

    def run(ctx: Context) -> Result:
        _check_tenant(ctx, scope)
        principal_id = principal and (_principal_object_id(ctx, principal) or principal)
        own = _own_vaults(ctx.tx, ctx.caller.tenant_id)
        rows = [r for r in manage.list_assignments(ctx.tx, scope, principal_id) if _visible_assignment(ctx, r, own)]
        rows.sort(key=lambda r: (r.scope.lower(), r.created, r.id))
        return Result(body={"value": [_assignment(ctx, r) for r in rows]})

    return await _run(req, "RoleAssignmentList", _ASSIGNMENTS + "read", scope, False, run)


async def create_assignment(req: ApiRequest) -> Result:
    raw_id = req.params["id"]
    assignment_id = manage.new_id() if raw_id.lower() == "new" else manage.check_guid(raw_id, "role assignment name")
    body = await req.json()
    props = body.get("properties", body)
    if not isinstance(props, dict):
        raise BadParameter("properties must be an object.")
    if "scope" not in props:
        raise BadParameter("scope is required: /, /vaults/NAME, /vaults/NAME/KIND or /vaults/NAME/KIND/OBJECT.")
    scope = _scope(props.get("scope"))
    reference = props.get("principalId")
    if not isinstance(reference, str) or not reference:
        raise BadParameter("principalId is required (the object id or client id of a principal).")

    def run(ctx: Context) -> Result:
        _check_tenant(ctx, scope)
        principal_id = _principal_object_id(ctx, reference)
        if principal_id is None:
            if ctx.tx.principal_get(reference) is not None or len(reference) > 256:  # another tenant's principal
                raise BadParameter(
                    f"Principal {reference[:64]} does not exist in the tenant {ctx.caller.tenant_id}.",
                    code="PrincipalNotFound",
                )
            principal_id = reference  # the object id (oid or sub) of a trusted external issuer's identity
        role_ref = props.get("roleDefinitionId")
        role = ctx.authorizer.role(manage.role_id_of(role_ref)) if isinstance(role_ref, str) else None
        if role is not None:
            if not any(_at_or_below(scope, s) for s in role.assignable_scopes):
                raise BadParameter(
                    f"The role '{role.name}' cannot be assigned at scope '{scope}': its assignable scopes are "
                    f"{', '.join(role.assignable_scopes)}.",
                    code="InvalidRoleAssignmentScope",
                )
            if any(
                r.scope.lower() == scope.lower()
                and r.role_definition_id.lower() == role.id.lower()
                and r.principal_id == principal_id
                for r in ctx.tx.role_assignment_list()
            ):
                raise Conflict("The role assignment already exists.", code="RoleAssignmentExists")
        row = manage.create_assignment(
            ctx.tx,
            ctx.authorizer,
            ctx.caller,
            scope,
            assignment_id,
            {"roleDefinitionId": role_ref, "principalId": principal_id},
        )
        return Result(status=201, body=_assignment(ctx, row), object_id=_assignment_path(row))

    return await _run(req, "RoleAssignmentWrite", _ASSIGNMENTS + "write", scope, True, run)


async def get_assignment(req: ApiRequest) -> Result:
    assignment_id = manage.check_guid(req.params["id"], "role assignment name")
    scope = await _assignment_scope(req, assignment_id)

    def run(ctx: Context) -> Result:
        row = _stored_assignment(ctx, assignment_id, scope)
        return Result(body=_assignment(ctx, row), object_id=_assignment_path(row))

    return await _run(req, "RoleAssignmentGet", _ASSIGNMENTS + "read", scope, False, run)


async def delete_assignment(req: ApiRequest) -> Result:
    assignment_id = manage.check_guid(req.params["id"], "role assignment name")
    scope = await _assignment_scope(req, assignment_id)

    def run(ctx: Context) -> Result:
        row = _stored_assignment(ctx, assignment_id, scope)
        shown = _assignment(ctx, row)
        manage.delete_assignment(ctx.tx, ctx.authorizer, ctx.caller, assignment_id)
        return Result(body=shown, object_id=_assignment_path(row))

    return await _run(req, "RoleAssignmentDelete", _ASSIGNMENTS + "delete", scope, True, run)


# --- access policies -----------------------------------------------------------------------------


def _policies(row: VaultRow) -> dict[str, Any]:
    return {
        "name": row.name,
        "enableRbacAuthorization": row.rbac_authorization,
        "accessPolicies": row.access_policies,
    }


async def get_policies(req: ApiRequest) -> Result:
    name = vault.check_vault_name(req.params["name"])

    def run(ctx: Context) -> Result:
        return Result(body=_policies(_own_vault(ctx, name)), object_id=f"/vaults/{name}/accessPolicies")

    return await _run(req, "VaultAccessPolicyGet", _VAULT_READ, f"/vaults/{name}", False, run)


async def update_policies(req: ApiRequest) -> Result:
    name = vault.check_vault_name(req.params["name"])
    kind = req.params["kind"].lower()
    if kind not in _UPDATE_KINDS:
        raise BadParameter("The update kind must be add, replace or remove.")
    body = await req.json()
    props = body.get("properties")
    entries = body.get("accessPolicies", props.get("accessPolicies") if isinstance(props, dict) else None)
    if not isinstance(entries, list):
        raise BadParameter('The body must be {"accessPolicies": [...]}.')

    def run(ctx: Context) -> Result:
        row = _own_vault(ctx, name)
        for entry in entries:  # a principal named by its client id is stored by its object id
            if isinstance(entry, dict) and isinstance(entry.get("objectId"), str) and entry["objectId"]:
                entry["objectId"] = _principal_object_id(ctx, entry["objectId"]) or entry["objectId"]
        manage.update_access_policies(row, kind, entries)
        ctx.tx.vault_put(row)
        return Result(body=_policies(row), object_id=f"/vaults/{name}/accessPolicies")

    return await _run(req, "VaultAccessPolicyUpdate", _POLICIES_WRITE, f"/vaults/{name}", True, run)


_D = "/admin/roles/definitions"
_A = "/admin/roles/assignments"

ROUTES = [
    Route("GET", _D, list_definitions, "RoleDefinitionList"),
    Route("GET", _D + "/{id}", get_definition, "RoleDefinitionGet"),
    Route("PUT", _D + "/{id}", put_definition, "RoleDefinitionWrite"),
    Route("DELETE", _D + "/{id}", delete_definition, "RoleDefinitionDelete"),
    Route("GET", _A, list_assignments, "RoleAssignmentList"),
    Route("PUT", _A + "/{id}", create_assignment, "RoleAssignmentWrite"),
    Route("GET", _A + "/{id}", get_assignment, "RoleAssignmentGet"),
    Route("DELETE", _A + "/{id}", delete_assignment, "RoleAssignmentDelete"),
    Route("GET", "/admin/vaults/{name}/accesspolicies", get_policies, "VaultAccessPolicyGet"),
    Route("PUT", "/admin/vaults/{name}/accesspolicies/{kind}", update_policies, "VaultAccessPolicyUpdate"),
]
