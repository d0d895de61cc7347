"""Managing access: custom role definitions, role assignments and access policies, inside a transaction.

Edges (the vault-host role API that KeyVaultAccessControlClient speaks, Coffer's admin API, the CLI) call these;
after a successful write they call `Coffer.access_changed()` so decisions use the change at once.
Scopes are absolute: "/" (server), "/vaults/{v}", "/vaults/{v}/{kind}s", "/vaults/{v}/{kind}s/{name}".
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from coffer.authz import roles
from coffer.authz.decide import Authorizer, matches, role_from_row, scope_chain
from coffer.authz.policies import check_entries
from coffer.clock import now
from coffer.errors import BadParameter, Conflict, Forbidden, NotFound
from coffer.identity.tokens import Caller
from coffer.storage import RoleAssignmentRow, RoleDefinitionRow, Transaction, VaultRow

_SCOPE = re.compile(r"^/(vaults/[a-z0-9-]{3,24}(/(secrets|keys|certificates)(/[0-9a-zA-Z-]{1,127})?)?)?$")
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_ALL_ACTIONS = roles.DATA_ACTIONS


def check_scope(scope: str) -> str:
    parts = [p for p in scope.split("/") if p]
    if len(parts) >= 2:
        parts[1] = parts[1].lower()  # vault names are case-insensitive; object names keep their spelling
    normalized = "/" + "/".join(parts)
    if not _SCOPE.match(normalized):
        raise BadParameter(
            f"The scope {scope[:200]!r} is not valid. Use /, /vaults/NAME, /vaults/NAME/secrets|keys|certificates "
            "or /vaults/NAME/KIND/OBJECT."
        )
    return normalized


def check_guid(value: str, what: str) -> str:
    if not _GUID.match(value):
        raise BadParameter(f"The {what} {value[:64]!r} is not a GUID.")
    return value.lower()


def _check_actions(values: Any, field: str, *, data: bool) -> list[str]:
    if values is None:
        return []
    if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
        raise BadParameter(f"{field} must be a list of strings.")
    if data:
        for value in values:
            if not any(matches(value, action) for action in _ALL_ACTIONS):
                raise BadParameter(f"{field}: {value[:200]!r} names no data action of Azure's Key Vault catalog.")
    return list(values)


# --- role definitions ----------------------------------------------------------------------------------
def definition_body(role: roles.Role, scope: str) -> dict[str, Any]:
    """A role definition as the Key Vault RBAC API returns it."""
    return {
        "id": f"{scope.rstrip('/')}/providers/Microsoft.Authorization/roleDefinitions/{role.id}",
        "name": role.id,
        "type": "Microsoft.Authorization/roleDefinitions",
        "properties": {
            "roleName": role.name,
            "description": role.description,
            "type": "BuiltInRole" if role.built_in else "CustomRole",
            "permissions": [
                {
                    "actions": list(role.actions),
                    "notActions": list(role.not_actions),
                    "dataActions": list(role.data_actions),
                    "notDataActions": list(role.not_data_actions),
                }
            ],
            "assignableScopes": list(role.assignable_scopes),
        },
    }


def list_definitions(authorizer: Authorizer, scope: str) -> list[roles.Role]:
    """Built-in roles, and custom roles defined at `scope` or above."""
    chain = {s.lower() for s in _chain(scope)}
    return [r for r in authorizer.all_roles() if r.built_in or r.scope.lower() in chain]


def put_definition(tx: Transaction, scope: str, role_id: str, body: dict[str, Any]) -> roles.Role:
    role_id = check_guid(role_id, "role definition name")
    if role_id in roles.BUILT_IN:
        raise Forbidden("Built-in role definitions cannot be changed.", code="RoleDefinitionNotEditable")
    props = body.get("properties", body)
    if not isinstance(props, dict):
        raise BadParameter("properties must be an object.")
    name = props.get("roleName")
    if not isinstance(name, str) or not name or len(name) > 256:
        raise BadParameter("roleName is required (1-256 characters).")
    permissions = props.get("permissions") or [{}]
    if not isinstance(permissions, list) or len(permissions) != 1 or not isinstance(permissions[0], dict):
        raise BadParameter("permissions must be a list with one object.")
    perm = permissions[0]
    clean = {
        "actions": _check_actions(perm.get("actions"), "actions", data=False),
        "notActions": _check_actions(perm.get("notActions"), "notActions", data=False),
        "dataActions": _check_actions(perm.get("dataActions"), "dataActions", data=True),
        "notDataActions": _check_actions(perm.get("notDataActions"), "notDataActions", data=True),
    }
    assignable = props.get("assignableScopes") or [scope]
    if not isinstance(assignable, list) or not all(isinstance(a, str) for a in assignable):
        raise BadParameter("assignableScopes must be a list of scopes.")
    existing = tx.role_definition_get(role_id)
    defined_at = existing.scope if existing else scope
    same_scope = (r for r in tx.role_definition_list() if r.scope.lower() == defined_at.lower() and r.id != role_id)
    if any(r.role_name.lower() == name.lower() for r in same_scope) or any(
        r.name.lower() == name.lower() for r in roles.BUILT_IN.values()
    ):
        raise Conflict(f"A role definition named {name[:64]!r} already exists.", code="RoleDefinitionExists")
    stamp = now()
    row = RoleDefinitionRow(
        id=role_id,
        scope=existing.scope if existing else scope,
        role_name=name,
        description=str(props.get("description") or ""),
        permissions=[clean],
        assignable_scopes=[check_scope(a) if a != "/" else "/" for a in assignable],
        created=existing.created if existing else stamp,
        updated=stamp,
    )
    tx.role_definition_put(row)
    return role_from_row(row)


def delete_definition(tx: Transaction, authorizer: Authorizer, role_id: str) -> roles.Role:
    role = authorizer.role(role_id)
    if role is None or tx.role_definition_get(role_id) is None:
        if role is not None and role.built_in:
            raise Forbidden("Built-in role definitions cannot be deleted.", code="RoleDefinitionNotEditable")
        raise NotFound(f"Role definition {role_id[:64]} was not found.", code="RoleDefinitionNotFound")
    if any(a.role_definition_id.lower() == role_id.lower() for a in tx.role_assignment_list()):
        raise Conflict(
            "The role definition is still assigned; delete its assignments first.", code="RoleDefinitionHasAssignments"
        )
    tx.role_definition_delete(role_id)
    return role


# --- role assignments ----------------------------------------------------------------------------------
def assignment_body(row: RoleAssignmentRow, shown_scope: str, definition_scope: str) -> dict[str, Any]:
    return {
        "id": f"{shown_scope.rstrip('/')}/providers/Microsoft.Authorization/roleAssignments/{row.id}",
        "name": row.id,
        "type": "Microsoft.Authorization/roleAssignments",
        "properties": {
            "scope": shown_scope,
            "roleDefinitionId": f"{definition_scope.rstrip('/')}/providers/Microsoft.Authorization/roleDefinitions/"
            f"{row.role_definition_id}",
            "principalId": row.principal_id,
        },
    }


def role_id_of(reference: str) -> str:
    """A role definition id from a bare GUID or a full `.../roleDefinitions/{id}` reference."""
    return reference.rstrip("/").rsplit("/", 1)[-1].lower()


def create_assignment(
    tx: Transaction, authorizer: Authorizer, caller: Caller, scope: str, assignment_id: str, body: dict[str, Any]
) -> RoleAssignmentRow:
    assignment_id = check_guid(assignment_id, "role assignment name")
    props = body.get("properties", body)
    if not isinstance(props, dict):
        raise BadParameter("properties must be an object.")
    role_ref, principal_id = props.get("roleDefinitionId"), props.get("principalId")
    if not isinstance(role_ref, str) or not isinstance(principal_id, str) or not principal_id:
        raise BadParameter("roleDefinitionId and principalId are required.")
    role = authorizer.role(role_id_of(role_ref))
    if role is None:
        raise BadParameter(f"The role definition {role_ref[:200]!r} does not exist.", code="RoleDefinitionDoesNotExist")
    if not authorizer.may_assign(caller, role.id, scope):
        raise Forbidden(
            f"The caller may not assign the role '{role.name}' at scope '{scope}'. Only Key Vault Administrator, or "
            "Key Vault Data Access Administrator for the roles its condition allows, may change access.",
            inner="ForbiddenByRbac",
        )
    if tx.role_assignment_get(assignment_id) is not None:
        raise Conflict("The role assignment already exists.", code="RoleAssignmentExists")
    row = RoleAssignmentRow(assignment_id, scope, role.id, principal_id, now())
    tx.role_assignment_put(row)
    return row


def get_assignment(tx: Transaction, assignment_id: str) -> RoleAssignmentRow:
    row = tx.role_assignment_get(assignment_id)
    if row is None:
        raise NotFound(f"Role assignment {assignment_id[:64]} was not found.", code="RoleAssignmentNotFound")
    return row


def delete_assignment(tx: Transaction, authorizer: Authorizer, caller: Caller, assignment_id: str) -> RoleAssignmentRow:
    row = get_assignment(tx, assignment_id)
    if not authorizer.may_assign(caller, row.role_definition_id, row.scope):
        raise Forbidden("The caller may not remove this role assignment.", inner="ForbiddenByRbac")
    tx.role_assignment_delete(row.id)
    return row


def list_assignments(tx: Transaction, scope: str, principal_id: str | None = None) -> list[RoleAssignmentRow]:
    """Assignments at `scope`, above it and below it (as Azure lists them for a scope)."""
    scope_l = scope.lower().rstrip("/") or "/"
    chain = {s.lower() for s in _chain(scope)}
    rows = []
    for row in tx.role_assignment_list():
        held = row.scope.lower()
        related = held in chain or scope_l == "/" or held.startswith(scope_l + "/")
        if related and (principal_id is None or row.principal_id == principal_id):
            rows.append(row)
    return rows


# --- access policies -----------------------------------------------------------------------------------
def update_access_policies(vault: VaultRow, kind: str, entries: Any) -> list[dict[str, Any]]:
    """Azure's update kinds: add (merge permissions), replace (whole list), remove (drop permissions)."""
    new = check_entries(entries, vault.tenant_id)
    if kind == "replace":
        result = new
    elif kind in ("add", "remove"):
        result = [dict(e, permissions={k: list(v) for k, v in e["permissions"].items()}) for e in vault.access_policies]
        for entry in new:
            match = next(
                (
                    e
                    for e in result
                    if e["objectId"] == entry["objectId"] and e.get("applicationId") == entry.get("applicationId")
                ),
                None,
            )
            if kind == "add":
                if match is None:
                    result.append(entry)
                    continue
                for perm_kind, values in entry["permissions"].items():
                    held = match["permissions"].setdefault(perm_kind, [])
                    held += [v for v in values if v.lower() not in {h.lower() for h in held}]
            elif match is not None:
                if not entry["permissions"]:
                    result.remove(match)
                    continue
                for perm_kind, values in entry["permissions"].items():
                    drop = {v.lower() for v in values}
                    match["permissions"][perm_kind] = [
                        h for h in match["permissions"].get(perm_kind, []) if h.lower() not in drop
                    ]
    else:
        raise BadParameter("The update kind must be add, replace or remove.")
    result = check_entries(result, vault.tenant_id)  # the 1024-entry limit applies to the result
    vault.access_policies = result
    vault.updated = now()
    return result


def _chain(scope: str) -> list[str]:
    return scope_chain(scope)


def new_id() -> str:
    return str(uuid.uuid4())
