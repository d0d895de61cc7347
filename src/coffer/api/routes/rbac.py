"""The data-plane role API of a vault (specs/keyvault/7.4/rbac.json), as azure-keyvault-administration's
KeyVaultAccessControlClient speaks it: role definitions and role assignments under
`/{scope}/providers/Microsoft.Authorization/...` on the vault's own host.

Scopes on the wire are vault-relative: "/" (the SDK sends `//providers/...`), "/keys", "/secrets",
"/certificates" and single objects ("/keys/{name}"). They map to Coffer's absolute scopes inside the vault
("/" → "/vaults/{vault}", "/keys" → "/vaults/{vault}/keys", ...); responses show them vault-relative again.
The domain logic lives in coffer.authz.manage; after every successful write the decision index is rebuilt
before the response goes out.
"""

from __future__ import annotations

import re
from typing import Any

import anyio.to_thread

from coffer.api.request import ApiRequest
from coffer.api.routing import Route
from coffer.authz import manage, roles
from coffer.authz.decide import role_from_row, scope_chain
from coffer.core import Context, Operation, Result
from coffer.errors import BadParameter, Conflict, Forbidden, NotFound
from coffer.storage import RoleAssignmentRow

_DEFINITIONS = "Microsoft.Authorization/roleDefinitions/"
_ASSIGNMENTS = "Microsoft.Authorization/roleAssignments/"
_KINDS = ("secrets", "keys", "certificates")
_SCOPE_PARAMS = ("s0", "s1", "s2")

_ROLE_NAME_EQ = re.compile(r"^rolename\s+eq\s+'((?:[^']|'')*)'$", re.IGNORECASE)
_PRINCIPAL_EQ = re.compile(r"^principalid\s+eq\s+'((?:[^']|'')*)'$", re.IGNORECASE)
_ASSIGNED_TO = re.compile(r"^assignedto\(\s*'((?:[^']|'')*)'\s*\)$", re.IGNORECASE)
_AT_SCOPE = re.compile(r"^atscope\(\s*\)$", re.IGNORECASE)
_AT_SCOPE_AND_BELOW = re.compile(r"^atscopeandbelow\(\s*\)$", re.IGNORECASE)
_AND = re.compile(r"\s+and\s+", re.IGNORECASE)


# --- scopes --------------------------------------------------------------------------------------------
class _Scope:
    """The scope a request names: as the client wrote it (vault-relative) and as Coffer stores it."""

    def __init__(self, vault: str, parts: list[str]) -> None:
        self.vault = vault.lower()
        self.shown = "/" + "/".join(parts)
        self.absolute = manage.check_scope(f"/vaults/{self.vault}{self.shown if parts else ''}")

    def relative(self, absolute: str) -> str:
        """An absolute scope as seen from this vault ("/vaults/v/keys" → "/keys"; the server scope → "/")."""
        prefix = f"/vaults/{self.vault}"
        if absolute == "/" or absolute.lower() == prefix:
            return "/"
        if absolute.lower().startswith(prefix + "/"):
            return absolute[len(prefix) :]
        return absolute

    def inside(self, absolute: str) -> bool:
        """Whether an absolute scope lies in this vault (the vault itself or below it)."""
        prefix = f"/vaults/{self.vault}"
        return absolute.lower() == prefix or absolute.lower().startswith(prefix + "/")

    def covers(self, absolute: str) -> bool:
        """At or below this scope."""
        held, mine = absolute.lower(), self.absolute.lower()
        return held == mine or held.startswith(mine + "/")

    def related(self, absolute: str) -> bool:
        """At, above or below this scope: what a listing at this scope shows."""
        held = absolute.lower()
        mine = self.absolute.lower()
        return held in {s.lower() for s in scope_chain(self.absolute)} or held.startswith(mine + "/")


def _parse_scope(req: ApiRequest) -> _Scope:
    parts = [req.params[key] for key in _SCOPE_PARAMS if key in req.params]
    if parts and parts[0] == "":
        parts = parts[1:]  # `//providers/...`: the SDK's serialisation of the scope "/"
    problem = len(parts) > 2 or any(not p for p in parts) or (parts and parts[0].lower() not in _KINDS)
    if problem:
        raise BadParameter(
            f"The scope '/{'/'.join(parts)[:200]}' is not valid for a vault. Use /, /keys, /secrets, /certificates "
            "or /KIND/NAME."
        )
    if parts:
        parts[0] = parts[0].lower()
    assert req.vault is not None
    return _Scope(req.vault, parts)


def _absolute_scopes(scope: _Scope, values: Any) -> Any:
    """Vault-relative assignable scopes from a request body as absolute scopes inside this vault."""
    if not isinstance(values, list):
        return values
    result = []
    for value in values:
        if not isinstance(value, str):
            return values  # manage rejects the list
        parts = [p for p in value.split("/") if p]
        if len(parts) > 2 or (parts and parts[0].lower() not in _KINDS):
            raise BadParameter(f"The assignable scope {value[:200]!r} is not valid for a vault.")
        if parts:
            parts[0] = parts[0].lower()
        result.append(_Scope(scope.vault, parts).absolute)
    return result


# --- bodies ----------------------------------------------------------------------------------------------
def _definition(scope: _Scope, role: roles.Role) -> dict[str, Any]:
    body = manage.definition_body(role, scope.shown)
    props = body["properties"]
    if role.built_in:
        props["type"] = "AKVBuiltInRole"  # the RoleType of the Key Vault data-plane API (rbac.json)
    props["assignableScopes"] = [scope.relative(s) for s in role.assignable_scopes]
    return body


def _assignment(scope: _Scope, row: RoleAssignmentRow) -> dict[str, Any]:
    shown = scope.relative(row.scope)
    return manage.assignment_body(row, shown, shown)


def _odata_string(value: str) -> str:
    return value.replace("''", "'")


# --- plumbing --------------------------------------------------------------------------------------------
async def _run(req: ApiRequest, name: str, action: str, scope: _Scope, write: bool, run: Any) -> Result:
    op = Operation(name=name, action=action, scope=scope.shown, vault=req.vault, write=write, run=run)
    assert req.caller is not None
    result = await req.pipeline.execute(op, req.caller, req.info)
    if write:
        await anyio.to_thread.run_sync(req.app.access_changed)
    return result


def _object_id(req: ApiRequest, body: dict[str, Any]) -> str:
    return f"{req.vault_url}{body['id']}"


def _visible_role(ctx: Context, scope: _Scope, role_id: str) -> roles.Role:
    """A role this vault can see: built-in, defined at the server scope, or defined inside this vault."""
    role = ctx.authorizer.role(role_id)
    if role is None or not (role.built_in or role.scope == "/" or scope.inside(role.scope)):
        raise NotFound(f"Role definition {role_id[:64]} was not found.", code="RoleDefinitionNotFound")
    return role


def _editable_here(ctx: Context, scope: _Scope, role: roles.Role, action: str) -> None:
    """A custom role may be changed from this vault only if it is defined inside it, by a caller who may
    write role definitions at the scope where it is defined."""
    if role.built_in:
        return  # manage refuses built-in roles with its own error
    if role.scope != "/" and not scope.inside(role.scope):
        raise Conflict(
            f"A role definition named {role.id} already exists at another scope.", code="RoleDefinitionExists"
        )
    if not scope.inside(role.scope):
        raise Forbidden(
            f"The role definition '{role.name}' is defined at the server scope; change it with Coffer's admin API.",
            code="RoleDefinitionNotEditable",
        )
    assert ctx.vault is not None
    ctx.authorizer.authorize(ctx.caller, action, scope.relative(role.scope), ctx.vault)


# --- role definitions ------------------------------------------------------------------------------------
async def list_definitions(req: ApiRequest) -> Result:
    scope = _parse_scope(req)
    role_name: str | None = None
    below = False
    for clause in _clauses(req):
        if (match := _ROLE_NAME_EQ.match(clause)) is not None:
            role_name = _odata_string(match.group(1))
        elif _AT_SCOPE_AND_BELOW.match(clause):
            below = True
        else:
            raise BadParameter(f"The $filter clause {clause[:100]!r} is not supported for role definitions.")

    def run(ctx: Context) -> Result:
        found = manage.list_definitions(ctx.authorizer, scope.absolute)
        if below:
            seen = {r.id for r in found}
            mine = scope.absolute.lower()
            found += [
                r
                for r in ctx.authorizer.all_roles()
                if r.id not in seen and not r.built_in and r.scope.lower().startswith(mine + "/")
            ]
        if role_name is not None:
            found = [r for r in found if r.name.lower() == role_name.lower()]
        return Result(body={"value": [_definition(scope, r) for r in found], "nextLink": None})

    return await _run(req, "RoleDefinitionList", _DEFINITIONS + "read", scope, False, run)


async def get_definition(req: ApiRequest) -> Result:
    scope = _parse_scope(req)
    role_id = manage.check_guid(req.params["name"], "role definition name")

    def run(ctx: Context) -> Result:
        body = _definition(scope, _visible_role(ctx, scope, role_id))
        return Result(body=body, object_id=_object_id(req, body))

    return await _run(req, "RoleDefinitionGet", _DEFINITIONS + "read", scope, False, run)


async def put_definition(req: ApiRequest) -> Result:
    scope = _parse_scope(req)
    role_id = manage.check_guid(req.params["name"], "role definition name")
    body = await req.json()
    props = body.get("properties")
    if not isinstance(props, dict):
        raise BadParameter('The request body must be {"properties": {...}}.')
    if props.get("assignableScopes"):
        props = {**props, "assignableScopes": _absolute_scopes(scope, props["assignableScopes"])}
    action = _DEFINITIONS + "write"

    def run(ctx: Context) -> Result:
        if role_id in roles.BUILT_IN:  # Key Vault's answer to a PUT on a built-in role's GUID
            raise BadParameter(
                "Cannot re-use the name/GUID matching that of a built-in role. Please use a unique role ID."
            )
        row = ctx.tx.role_definition_get(role_id)
        if row is not None:
            _editable_here(ctx, scope, role_from_row(row), action)
        role = manage.put_definition(ctx.tx, scope.absolute, role_id, {"properties": props})
        shown = _definition(scope, role)
        return Result(status=201, body=shown, object_id=_object_id(req, shown))

    return await _run(req, "RoleDefinitionCreate", action, scope, True, run)


async def delete_definition(req: ApiRequest) -> Result:
    scope = _parse_scope(req)
    role_id = manage.check_guid(req.params["name"], "role definition name")
    action = _DEFINITIONS + "delete"

    def run(ctx: Context) -> Result:
        role = _visible_role(ctx, scope, role_id)
        _editable_here(ctx, scope, role, action)
        deleted = manage.delete_definition(ctx.tx, ctx.authorizer, role.id)
        shown = _definition(scope, deleted)
        return Result(body=shown, object_id=_object_id(req, shown))

    return await _run(req, "RoleDefinitionDelete", action, scope, True, run)


# --- role assignments ------------------------------------------------------------------------------------
def _visible_assignment(ctx: Context, scope: _Scope, assignment_id: str) -> RoleAssignmentRow:
    row = manage.get_assignment(ctx.tx, assignment_id)
    if not scope.related(row.scope):
        raise NotFound(f"Role assignment {assignment_id[:64]} was not found.", code="RoleAssignmentNotFound")
    return row


async def list_assignments(req: ApiRequest) -> Result:
    scope = _parse_scope(req)
    principal: str | None = None
    at_scope = False
    for clause in _clauses(req):
        if (match := _PRINCIPAL_EQ.match(clause) or _ASSIGNED_TO.match(clause)) is not None:
            principal = _odata_string(match.group(1))
        elif _AT_SCOPE.match(clause):
            at_scope = True
        else:
            raise BadParameter(f"The $filter clause {clause[:100]!r} is not supported for role assignments.")

    def run(ctx: Context) -> Result:
        rows = manage.list_assignments(ctx.tx, scope.absolute, principal)
        if at_scope:  # at the scope and above it, as Azure's atScope() lists
            chain = {s.lower() for s in scope_chain(scope.absolute)}
            rows = [r for r in rows if r.scope.lower() in chain]
        rows.sort(key=lambda r: (r.created, r.id))
        return Result(body={"value": [_assignment(scope, r) for r in rows], "nextLink": None})

    return await _run(req, "RoleAssignmentList", _ASSIGNMENTS + "read", scope, False, run)


async def get_assignment(req: ApiRequest) -> Result:
    scope = _parse_scope(req)
    assignment_id = manage.check_guid(req.params["name"], "role assignment name")

    def run(ctx: Context) -> Result:
        body = _assignment(scope, _visible_assignment(ctx, scope, assignment_id))
        return Result(body=body, object_id=_object_id(req, body))

    return await _run(req, "RoleAssignmentGet", _ASSIGNMENTS + "read", scope, False, run)


async def put_assignment(req: ApiRequest) -> Result:
    scope = _parse_scope(req)
    assignment_id = manage.check_guid(req.params["name"], "role assignment name")
    body = await req.json()

    def run(ctx: Context) -> Result:
        props = body.get("properties")
        role_ref = props.get("roleDefinitionId") if isinstance(props, dict) else None
        principal = props.get("principalId") if isinstance(props, dict) else None
        role = ctx.authorizer.role(manage.role_id_of(role_ref)) if isinstance(role_ref, str) else None
        if role is not None:
            assert isinstance(role_ref, str)
            if not (role.built_in or role.scope == "/" or scope.inside(role.scope)):
                raise BadParameter(  # a custom role of another vault
                    f"The role definition {role_ref[:200]!r} does not exist.", code="RoleDefinitionDoesNotExist"
                )
            chain = {s.lower() for s in scope_chain(scope.absolute)}
            if not any(s.lower() in chain for s in role.assignable_scopes):
                allowed = ", ".join(scope.relative(s) for s in role.assignable_scopes)
                raise BadParameter(
                    f"The role '{role.name}' cannot be assigned at scope '{scope.shown}': its assignable scopes are "
                    f"{allowed}.",
                    code="InvalidRoleAssignmentScope",
                )
            if any(
                r.scope.lower() == scope.absolute.lower()
                and r.role_definition_id.lower() == role.id.lower()
                and r.principal_id == principal
                and r.id != assignment_id
                for r in ctx.tx.role_assignment_list()
            ):
                raise Conflict("The role assignment already exists.", code="RoleAssignmentExists")
        row = manage.create_assignment(ctx.tx, ctx.authorizer, ctx.caller, scope.absolute, assignment_id, body)
        shown = _assignment(scope, row)
        return Result(status=201, body=shown, object_id=_object_id(req, shown))

    return await _run(req, "RoleAssignmentCreate", _ASSIGNMENTS + "write", scope, True, run)


async def delete_assignment(req: ApiRequest) -> Result:
    scope = _parse_scope(req)
    assignment_id = manage.check_guid(req.params["name"], "role assignment name")

    def run(ctx: Context) -> Result:
        row = _visible_assignment(ctx, scope, assignment_id)
        if not (scope.inside(row.scope) and scope.covers(row.scope)):
            raise NotFound(
                f"Role assignment {assignment_id[:64]} was not found at scope '{scope.shown}'. An assignment is "
                "deleted at its own scope or one above it inside the vault; server-wide assignments are managed "
                "with Coffer's admin API.",
                code="RoleAssignmentNotFound",
            )
        deleted = manage.delete_assignment(ctx.tx, ctx.authorizer, ctx.caller, row.id)
        shown = _assignment(scope, deleted)
        return Result(body=shown, object_id=_object_id(req, shown))

    return await _run(req, "RoleAssignmentDelete", _ASSIGNMENTS + "delete", scope, True, run)


def _clauses(req: ApiRequest) -> list[str]:
    raw = req.query.get("$filter")
    if raw is None or not raw.strip():
        return []
    if len(raw) > 1024:
        raise BadParameter("The $filter is too long.")
    return [c.strip() for c in _AND.split(raw.strip())]


# --- routes ----------------------------------------------------------------------------------------------
def _routes() -> list[Route]:
    table = (
        ("roledefinitions", "GET", list_definitions, "RoleDefinitionList", False),
        ("roledefinitions", "GET", get_definition, "RoleDefinitionGet", True),
        ("roledefinitions", "PUT", put_definition, "RoleDefinitionCreate", True),
        ("roledefinitions", "DELETE", delete_definition, "RoleDefinitionDelete", True),
        ("roleassignments", "GET", list_assignments, "RoleAssignmentList", False),
        ("roleassignments", "GET", get_assignment, "RoleAssignmentGet", True),
        ("roleassignments", "PUT", put_assignment, "RoleAssignmentCreate", True),
        ("roleassignments", "DELETE", delete_assignment, "RoleAssignmentDelete", True),
    )
    routes = []
    # the scope takes 0-3 segments: "/", "//" (the SDK's "/"), "/keys", "//keys", "/keys/k", "//keys/k"
    for depth in range(len(_SCOPE_PARAMS) + 1):
        prefix = "".join(f"/{{{p}}}" for p in _SCOPE_PARAMS[:depth])
        for collection, method, handler, name, item in table:
            pattern = f"{prefix}/providers/microsoft.authorization/{collection}" + ("/{name}" if item else "")
            routes.append(Route(method, pattern, handler, name))
    return routes


ROUTES = _routes()
