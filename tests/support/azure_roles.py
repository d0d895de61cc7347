"""An independent oracle of Azure Key Vault RBAC, transcribed by hand from
/work/shared/reference/azure-key-vault.md §6.1-6.2 (docs `built-in-roles/security.md`, `permissions/security.md`,
`rbac-guide.md`, REST reference "This operation requires the secrets/… permission").

Deliberately imports nothing from `coffer`: the tests compare Coffer's decisions with this transcription, so a
mistake in `coffer.authz.roles` or `coffer.authz.decide` cannot hide behind a shared table.
"""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "Microsoft.KeyVault/vaults/"


@dataclass(frozen=True)
class BuiltInRole:
    name: str
    id: str
    data_actions: tuple[str, ...]
    not_data_actions: tuple[str, ...] = ()


def _v(*suffixes: str) -> tuple[str, ...]:
    return tuple(PREFIX + s for s in suffixes)


# §6.1 "Vault built-in roles": the 11 roles that act on the data plane or manage its access. "No built-in data role
# has notDataActions."
BUILT_IN_ROLES: tuple[BuiltInRole, ...] = (
    BuiltInRole("Key Vault Administrator", "00482a5a-887f-4fb3-b363-3b7fe8e74483", _v("*")),
    BuiltInRole(
        "Key Vault Reader", "21090545-7ca7-4776-b22c-e363652d74d2", _v("*/read", "secrets/readMetadata/action")
    ),
    BuiltInRole("Key Vault Secrets Officer", "b86a8fe4-44ce-4948-aee5-eccb2c155cd7", _v("secrets/*")),
    BuiltInRole(
        "Key Vault Secrets User",
        "4633458b-17de-408a-b874-0445c86b69e6",
        _v("secrets/getSecret/action", "secrets/readMetadata/action"),
    ),
    BuiltInRole(
        "Key Vault Crypto Officer", "14b46e9e-c2b7-41b4-b07b-48a6ebf60603", _v("keys/*", "keyrotationpolicies/*")
    ),
    BuiltInRole(
        "Key Vault Crypto User",
        "12338af0-0e69-4776-bea7-57ae8d297424",
        _v(
            "keys/read",
            "keys/update/action",
            "keys/backup/action",
            "keys/encrypt/action",
            "keys/decrypt/action",
            "keys/wrap/action",
            "keys/unwrap/action",
            "keys/sign/action",
            "keys/verify/action",
        ),
    ),
    BuiltInRole(
        "Key Vault Crypto Service Encryption User",
        "e147488a-f6f5-4113-8e2d-b22465e65bf6",
        _v("keys/read", "keys/wrap/action", "keys/unwrap/action"),
    ),
    BuiltInRole(
        "Key Vault Crypto Service Release User", "08bbd89e-9f13-488c-ac41-acfcb10c90ab", _v("keys/release/action")
    ),
    BuiltInRole(
        "Key Vault Certificates Officer",
        "a4417e6f-fecd-4de8-b567-7b0420556985",
        _v("certificatecas/*", "certificates/*", "certificatecontacts/write"),
    ),
    BuiltInRole(
        "Key Vault Certificate User",
        "db79e9a7-68ee-4b58-9aeb-b90e7c24fcba",
        _v("certificates/read", "secrets/getSecret/action", "secrets/readMetadata/action", "keys/read"),
    ),
    BuiltInRole("Key Vault Data Access Administrator", "8b54135c-b56d-4d72-a534-26097cfdc8d8", ()),
)

# The last row of the §6.1 table: a control-plane-only role (no dataActions; manages vault resources).
CONTROL_PLANE_ONLY_ROLES: dict[str, str] = {"Key Vault Contributor": "f25e0fa2-a7c8-4377-a976-54943a77a395"}

# §6.1 "Full vault dataAction catalogue" (prefix Microsoft.KeyVault/vaults/).
CATALOGUE: dict[str, tuple[str, ...]] = {
    "certificatecas": ("delete", "read", "write"),
    "certificatecontacts": ("write",),
    "certificates": (
        "delete",
        "read",
        "backup/action",
        "purge/action",
        "update/action",
        "create/action",
        "import/action",
        "recover/action",
        "restore/action",
    ),
    "keyrotationpolicies": ("read", "write"),
    "keys": (
        "read",
        "update/action",
        "create/action",
        "import/action",
        "recover/action",
        "restore/action",
        "delete",
        "backup/action",
        "purge/action",
        "encrypt/action",
        "decrypt/action",
        "wrap/action",
        "unwrap/action",
        "sign/action",
        "verify/action",
        "release/action",
        "rotate/action",
    ),
    "secrets": (
        "delete",
        "backup/action",
        "purge/action",
        "update/action",
        "recover/action",
        "restore/action",
        "readMetadata/action",
        "getSecret/action",
        "setSecret/action",
    ),
    "storageaccounts": (
        "read",
        "set/action",
        "delete",
        "backup/action",
        "purge/action",
        "regeneratekey/action",
        "recover/action",
        "restore/action",
        "sas/set/action",
        "sas/delete",
        "sas/read",
    ),
}

# (collection name, full data action) for every action of the catalogue.
VAULT_DATA_ACTIONS: tuple[tuple[str, str], ...] = tuple(
    (kind, f"{PREFIX}{kind}/{action}") for kind, actions in CATALOGUE.items() for action in actions
)


# --- Azure's semantics ---------------------------------------------------------------------------------------------


def wildcard_match(pattern: str, action: str) -> bool:
    """Azure action matching: case-insensitive; `*` matches any run of characters (slashes included).
    A hand-written two-pointer glob (no regex, no fnmatch), so it shares no code with the implementation."""
    p, a = pattern.casefold(), action.casefold()
    i = j = 0
    star, mark = -1, 0
    while j < len(a):
        if i < len(p) and p[i] != "*" and p[i] == a[j]:
            i += 1
            j += 1
        elif i < len(p) and p[i] == "*":
            star, mark = i, j
            i += 1
        elif star >= 0:
            i = star + 1
            mark += 1
            j = mark
        else:
            return False
    while i < len(p) and p[i] == "*":
        i += 1
    return i == len(p)


def permits(data_actions: tuple[str, ...], not_data_actions: tuple[str, ...], action: str) -> bool:
    """One role's effective data permission: matched by dataActions and not by notDataActions."""
    return any(wildcard_match(p, action) for p in data_actions) and not any(
        wildcard_match(p, action) for p in not_data_actions
    )


def _segments(scope: str) -> list[str]:
    return [s.casefold() for s in scope.split("/") if s]


def covers(assignment_scope: str, target_scope: str) -> bool:
    """An assignment applies at its scope and every scope below it (whole path segments, case-insensitive)."""
    held, target = _segments(assignment_scope), _segments(target_scope)
    return target[: len(held)] == held


def allowed(role: BuiltInRole, assignment_scope: str, action: str, target_scope: str) -> bool:
    return covers(assignment_scope, target_scope) and permits(role.data_actions, role.not_data_actions, action)


# --- the Secrets operations ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SecretOperation:
    """What Azure checks for one Secrets REST operation: its data action (suffix after `secrets/`), whether the
    resource is the secret itself ("object") or the vault's secrets ("collection": list, list deleted, restore, whose
    request names no single secret), and the access-policy permission the REST reference names for it."""

    name: str
    action: str
    target: str  # "object" | "collection"
    policy_permission: str

    @property
    def data_action(self) -> str:
        return f"{PREFIX}secrets/{self.action}"

    def relative_scope(self, name: str) -> str:
        """The vault-relative resource path of the request (what the REST URL names)."""
        deleted = self.name in ("get_deleted", "list_deleted", "recover", "purge")
        collection = "deletedsecrets" if deleted else "secrets"
        return f"/{collection}" if self.target == "collection" else f"/{collection}/{name}"

    def rbac_scope(self, vault: str, name: str) -> str:
        """The RBAC resource: a deleted secret keeps its secret's resource id."""
        return f"/vaults/{vault}/secrets" if self.target == "collection" else f"/vaults/{vault}/secrets/{name}"


SECRET_OPERATIONS: tuple[SecretOperation, ...] = (
    SecretOperation("get", "getSecret/action", "object", "get"),
    SecretOperation("list", "readMetadata/action", "collection", "list"),
    SecretOperation("list_versions", "readMetadata/action", "object", "list"),
    SecretOperation("set", "setSecret/action", "object", "set"),
    SecretOperation("update", "update/action", "object", "set"),
    SecretOperation("delete", "delete", "object", "delete"),
    SecretOperation("get_deleted", "readMetadata/action", "object", "get"),
    SecretOperation("list_deleted", "readMetadata/action", "collection", "list"),
    SecretOperation("recover", "recover/action", "object", "recover"),
    SecretOperation("purge", "purge/action", "object", "purge"),
    SecretOperation("backup", "backup/action", "object", "backup"),
    SecretOperation("restore", "restore/action", "collection", "restore"),
)

# §6.2: the secrets permissions of an access-policy entry ("all" grants every one of them).
SECRET_POLICY_PERMISSIONS: tuple[str, ...] = ("get", "list", "set", "delete", "backup", "restore", "recover", "purge")


def policy_allows(held: set[str], operation: SecretOperation) -> bool:
    lowered = {p.casefold() for p in held}
    return "all" in lowered or operation.policy_permission in lowered


# The four levels at which the tests place an assignment, for vault `vault`, collection `kind`, object `name`.
def scope_levels(vault: str, kind: str, name: str) -> dict[str, str]:
    return {
        "server": "/",
        "vault": f"/vaults/{vault}",
        "kind": f"/vaults/{vault}/{kind}",
        "object": f"/vaults/{vault}/{kind}/{name}",
    }
