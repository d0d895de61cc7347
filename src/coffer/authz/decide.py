"""Authorization decisions: Azure RBAC (role assignments down to a single object) or a vault's legacy
access policies, decided in memory from an index rebuilt after every change.

Scopes are paths: "/" (the whole server), "/vaults/{v}", "/vaults/{v}/{kind}s", "/vaults/{v}/{kind}s/{name}".
An action is allowed when an assignment at the scope or above grants it through a role whose dataActions match
and whose notDataActions do not. Management (vaults, identities, role assignments, access policies, the seal)
is always decided by RBAC: Key Vault Administrator manages what it covers; Data Access Administrator manages
role assignments of eight roles and access policies; any role at or above a scope may read its assignments.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from functools import lru_cache

from coffer.authz import roles
from coffer.authz.policies import policy_permissions
from coffer.errors import Forbidden
from coffer.identity.tokens import Caller
from coffer.storage import RoleAssignmentRow, Transaction, VaultRow

_HELP_RBAC = (
    "If role assignments, deny assignments or role definitions were changed recently, please observe propagation time."
)
_ACCESS_CHANGES = (
    "Microsoft.Authorization/roleAssignments/write",
    "Microsoft.Authorization/roleAssignments/delete",
    "Microsoft.KeyVault/vaults/accessPolicies/write",
)
# Open to every authenticated caller: the handler shows only what the caller may see (its vaults, its tenant).
_FILTERED = frozenset({"Microsoft.KeyVault/vaults/list", "Microsoft.Coffer/identity/tenant/read"})


@dataclass(frozen=True)
class Decision:
    allowed: bool
    model: str  # "rbac" | "accessPolicy"
    reason: str
    assignment_id: str | None = None


@lru_cache(maxsize=4096)
def _pattern(pattern: str) -> re.Pattern[str]:
    return re.compile("^" + ".*".join(re.escape(p) for p in pattern.split("*")) + "$", re.IGNORECASE)


# Data actions: those of the vault object collections (secrets/, keys/, ...) and of Managed HSM. The other actions
# under Microsoft.KeyVault/vaults/ (read, write, delete, accessPolicies/write) manage the vault itself. Action names
# compare case-insensitively, so their class does too.
_VAULT_DATA_PREFIXES = tuple(sorted({a[: a.index("/", len(roles.V)) + 1].lower() for a in roles.VAULT_DATA_ACTIONS}))
_DATA_PREFIXES = (*_VAULT_DATA_PREFIXES, roles.H.lower())


def _is_data(action: str, prefixes: tuple[str, ...] = _DATA_PREFIXES) -> bool:
    return action.lower().startswith(prefixes)


def matches(pattern: str, action: str) -> bool:
    return bool(_pattern(pattern).match(action))


def grants(role: roles.Role, action: str, *, data: bool) -> bool:
    allowed, denied = (role.data_actions, role.not_data_actions) if data else (role.actions, role.not_actions)
    return any(matches(p, action) for p in allowed) and not any(matches(p, action) for p in denied)


def scope_chain(scope: str) -> list[str]:
    """ "/vaults/v/secrets/n" → ["/", "/vaults/v", "/vaults/v/secrets", "/vaults/v/secrets/n"]."""
    parts = [p for p in scope.split("/") if p]
    chain = ["/"]
    for i in range(2, len(parts) + 1):
        chain.append("/" + "/".join(parts[:i]))
    return chain


def object_scope(vault: str, relative: str) -> str:
    """A vault-relative operation scope ("/secrets/n", "/deletedsecrets/n", "/secrets") as an RBAC scope."""
    parts = [p for p in relative.split("/") if p]
    if parts and parts[0].lower().startswith("deleted"):
        parts[0] = parts[0][len("deleted") :]
    return "/".join(["", "vaults", vault.lower(), *parts[:2]])


def role_from_row(row: object) -> roles.Role:
    from coffer.storage import RoleDefinitionRow

    assert isinstance(row, RoleDefinitionRow)
    perms = row.permissions[0] if row.permissions else {}
    return roles.Role(
        id=row.id,
        name=row.role_name,
        description=row.description,
        data_actions=tuple(perms.get("dataActions", [])),
        not_data_actions=tuple(perms.get("notDataActions", [])),
        actions=tuple(perms.get("actions", [])),
        not_actions=tuple(perms.get("notActions", [])),
        built_in=False,
        scope=row.scope,
        assignable_scopes=tuple(row.assignable_scopes),
    )


_GRANTS_KEPT = 50_000


class Authorizer:
    def __init__(self) -> None:
        self._custom: dict[str, roles.Role] = {}
        self._by_principal: dict[str, list[RoleAssignmentRow]] = {}
        self._lock = threading.Lock()
        # RBAC grants already decided, by (principal, action, scope): replaced (not cleared) on reload, so a decision
        # made from the old assignments while reloading lands in the old dictionary, never in the new one
        self._granted: dict[tuple[str, str, str], Decision] = {}

    def reload(self, tx: Transaction) -> None:
        custom = {r.id.lower(): role_from_row(r) for r in tx.role_definition_list()}
        by_principal: dict[str, list[RoleAssignmentRow]] = {}
        for assignment in tx.role_assignment_list():
            by_principal.setdefault(assignment.principal_id, []).append(assignment)
        with self._lock:
            self._custom, self._by_principal, self._granted = custom, by_principal, {}

    def role(self, role_id: str) -> roles.Role | None:
        key = role_id.lower()
        return roles.BUILT_IN.get(key) or self._custom.get(key)

    def all_roles(self) -> list[roles.Role]:
        return [*roles.BUILT_IN.values(), *self._custom.values()]

    def can_see(self, caller: Caller, scope: str) -> bool:
        """Whether the caller holds any role at `scope` or above (or, for a vault, anywhere inside it)."""
        scope = scope.lower().rstrip("/")
        for assignment in self._by_principal.get(caller.object_id, []):
            held = assignment.scope.lower()
            if held == "/" or held == scope or held.startswith(scope + "/") or scope.startswith(held + "/"):
                return True
        return False

    def assignments_at(self, caller: Caller, scope: str) -> list[tuple[RoleAssignmentRow, roles.Role]]:
        """The caller's assignments at `scope` or above, with their roles."""
        chain = {s.lower() for s in scope_chain(scope)}
        found = []
        for assignment in self._by_principal.get(caller.object_id, []):
            role = self.role(assignment.role_definition_id)
            if role is not None and assignment.scope.lower() in chain:
                found.append((assignment, role))
        return found

    # --- the decision --------------------------------------------------------------------------
    def authorize(
        self, caller: Caller, action: str, scope: str, vault: VaultRow | None, policy: str | None = None
    ) -> Decision:
        """Raise Forbidden unless `caller` may perform `action` at `scope` (vault-relative if `vault`).
        `policy` names the access-policy permission when one data action covers several (list vs get)."""
        if action in _FILTERED:
            return Decision(True, "rbac", "listing filtered to visible items")
        if vault is not None:
            full = object_scope(vault.name, scope)
            if _is_data(action, _VAULT_DATA_PREFIXES) and not vault.rbac_authorization:
                return self._access_policy(caller, action, vault, policy)
        else:
            full = scope if scope.startswith("/") else "/" + scope
        granted = self._granted
        key = (caller.object_id, action, full)
        decision = granted.get(key)
        if decision is not None:
            return decision
        data = _is_data(action)
        held = self.assignments_at(caller, full)
        for assignment, role in held:
            if grants(role, action, data=data) or (not data and self._manages(role, action)):
                decision = Decision(True, "rbac", f"granted by {role.name}", assignment.id)
                if len(granted) >= _GRANTS_KEPT:
                    granted.clear()
                granted[key] = decision
                return decision
        raise self._denied(caller, action, full, vault)

    @staticmethod
    def _manages(role: roles.Role, action: str) -> bool:
        """Management that Coffer's roles carry beyond Azure's control-plane action lists."""
        if action.endswith("/read"):
            return True  # any role at or above a scope may read what is there (vaults, assignments, roles)
        if role.id == roles.ADMINISTRATOR:
            return True
        return role.id == roles.DATA_ACCESS_ADMINISTRATOR and action in _ACCESS_CHANGES

    def may_assign(self, caller: Caller, role_id: str, scope: str) -> bool:
        """Data Access Administrators may assign or remove only the eight roles of their ABAC condition."""
        for _assignment, role in self.assignments_at(caller, scope):
            if role.id == roles.ADMINISTRATOR:
                return True
            if role.id == roles.DATA_ACCESS_ADMINISTRATOR and role_id.lower() in roles.DATA_ACCESS_ASSIGNABLE:
                return True
        return False

    def _access_policy(self, caller: Caller, action: str, vault: VaultRow, policy: str | None) -> Decision:
        kind, wanted = policy_permissions(action)
        if policy is not None:
            wanted = frozenset({policy.lower()})
        for index, entry in enumerate(vault.access_policies):
            if entry.get("tenantId") != caller.tenant_id or entry.get("objectId") != caller.object_id:
                continue
            if entry.get("applicationId") and entry["applicationId"] != caller.client_id:
                continue
            held = {p.lower() for p in entry.get("permissions", {}).get(kind, [])}
            if "all" in held or held & wanted:
                return Decision(True, "accessPolicy", f"access policy entry {index}")
        permission = sorted(wanted)[0] if wanted else action
        raise Forbidden(
            f"The user, group or application 'appid={caller.client_id};oid={caller.object_id};numgroups=0;"
            f"iss={caller.issuer or 'coffer'}/{caller.tenant_id}/' does not have {kind} {permission} permission on "
            f"key vault '{vault.name};location=local'. For help resolving this issue, please see "
            "https://go.microsoft.com/fwlink/?linkid=2125287",
            inner="AccessDenied",
        )

    @staticmethod
    def _denied(caller: Caller, action: str, scope: str, vault: VaultRow | None) -> Forbidden:
        message = (
            f"Caller is not authorized to perform action on resource.\r\n{_HELP_RBAC}\r\n"
            f"Caller: appid={caller.client_id};oid={caller.object_id};iss={caller.issuer or 'coffer'}"
            f"/{caller.tenant_id}/\r\nAction: '{action}'\r\nResource: '{scope.lower()}'\r\n"
            "Assignment: (not found)\r\nDenyAssignmentId: null\r\nDecisionReason: 'DeniedWithNoValidRBAC' \r\n"
        )
        if vault is not None:
            message += f"Vault: {vault.name};location=local\r\n"
        return Forbidden(message, inner="ForbiddenByRbac")
