"""Azure's built-in Key Vault data-plane roles, with their exact names, ids and data actions, and the
catalogue of data actions custom roles may name."""

from __future__ import annotations

from dataclasses import dataclass, field

V = "Microsoft.KeyVault/vaults/"
H = "Microsoft.KeyVault/managedHsm/"


@dataclass(frozen=True)
class Role:
    id: str
    name: str
    description: str
    data_actions: tuple[str, ...]
    not_data_actions: tuple[str, ...] = ()
    actions: tuple[str, ...] = ()
    not_actions: tuple[str, ...] = ()
    built_in: bool = True
    scope: str = "/"
    assignable_scopes: tuple[str, ...] = ("/",)
    extra: dict[str, object] = field(default_factory=dict, compare=False)


_READ_SET = (
    "Microsoft.Authorization/*/read",
    "Microsoft.Insights/alertRules/*",
    "Microsoft.Resources/deployments/*",
    "Microsoft.Resources/subscriptions/resourceGroups/read",
    "Microsoft.Support/*",
    "Microsoft.KeyVault/checkNameAvailability/read",
    "Microsoft.KeyVault/deletedVaults/read",
    "Microsoft.KeyVault/locations/*/read",
    "Microsoft.KeyVault/vaults/*/read",
    "Microsoft.KeyVault/operations/read",
)

ADMINISTRATOR = "00482a5a-887f-4fb3-b363-3b7fe8e74483"
READER = "21090545-7ca7-4776-b22c-e363652d74d2"
SECRETS_OFFICER = "b86a8fe4-44ce-4948-aee5-eccb2c155cd7"
SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"
CRYPTO_OFFICER = "14b46e9e-c2b7-41b4-b07b-48a6ebf60603"
CRYPTO_USER = "12338af0-0e69-4776-bea7-57ae8d297424"
CRYPTO_SERVICE_ENCRYPTION_USER = "e147488a-f6f5-4113-8e2d-b22465e65bf6"
CRYPTO_SERVICE_RELEASE_USER = "08bbd89e-9f13-488c-ac41-acfcb10c90ab"
CERTIFICATES_OFFICER = "a4417e6f-fecd-4de8-b567-7b0420556985"
CERTIFICATE_USER = "db79e9a7-68ee-4b58-9aeb-b90e7c24fcba"
DATA_ACCESS_ADMINISTRATOR = "8b54135c-b56d-4d72-a534-26097cfdc8d8"

BUILT_IN: dict[str, Role] = {
    r.id: r
    for r in (
        Role(
            ADMINISTRATOR,
            "Key Vault Administrator",
            "Perform all data plane operations on a key vault and all objects in it, including certificates, "
            "keys, and secrets. Cannot manage key vault resources or manage role assignments. Only works for key "
            "vaults that use the 'Azure role-based access control' permission model.",
            (V + "*",),
            actions=_READ_SET,
        ),
        Role(
            READER,
            "Key Vault Reader",
            "Read metadata of key vaults and its certificates, keys, and secrets. Cannot read sensitive values such "
            "as secret contents or key material. Only works for key vaults that use the 'Azure role-based access "
            "control' permission model.",
            (V + "*/read", V + "secrets/readMetadata/action"),
            actions=_READ_SET,
        ),
        Role(
            SECRETS_OFFICER,
            "Key Vault Secrets Officer",
            "Perform any action on the secrets of a key vault, except manage permissions. Only works for key vaults "
            "that use the 'Azure role-based access control' permission model.",
            (V + "secrets/*",),
            actions=_READ_SET,
        ),
        Role(
            SECRETS_USER,
            "Key Vault Secrets User",
            "Read secret contents. Only works for key vaults that use the 'Azure role-based access control' "
            "permission model.",
            (V + "secrets/getSecret/action", V + "secrets/readMetadata/action"),
        ),
        Role(
            CRYPTO_OFFICER,
            "Key Vault Crypto Officer",
            "Perform any action on the keys of a key vault, except manage permissions. Only works for key vaults "
            "that use the 'Azure role-based access control' permission model.",
            (V + "keys/*", V + "keyrotationpolicies/*"),
            actions=_READ_SET,
        ),
        Role(
            CRYPTO_USER,
            "Key Vault Crypto User",
            "Perform cryptographic operations using keys. Only works for key vaults that use the 'Azure role-based "
            "access control' permission model.",
            tuple(
                V + "keys/" + a
                for a in (
                    "read",
                    "update/action",
                    "backup/action",
                    "encrypt/action",
                    "decrypt/action",
                    "wrap/action",
                    "unwrap/action",
                    "sign/action",
                    "verify/action",
                )
            ),
        ),
        Role(
            CRYPTO_SERVICE_ENCRYPTION_USER,
            "Key Vault Crypto Service Encryption User",
            "Read metadata of keys and perform wrap/unwrap operations. Only works for key vaults that use the "
            "'Azure role-based access control' permission model.",
            (V + "keys/read", V + "keys/wrap/action", V + "keys/unwrap/action"),
            actions=(
                "Microsoft.EventGrid/eventSubscriptions/write",
                "Microsoft.EventGrid/eventSubscriptions/read",
                "Microsoft.EventGrid/eventSubscriptions/delete",
            ),
        ),
        Role(
            CRYPTO_SERVICE_RELEASE_USER,
            "Key Vault Crypto Service Release User",
            "Release keys.",
            (V + "keys/release/action",),
        ),
        Role(
            CERTIFICATES_OFFICER,
            "Key Vault Certificates Officer",
            "Perform any action on the certificates of a key vault, excluding reading the secret and key portions, "
            "and managing permissions. Only works for key vaults that use the 'Azure role-based access control' "
            "permission model.",
            (V + "certificatecas/*", V + "certificates/*", V + "certificatecontacts/write"),
            actions=_READ_SET,
        ),
        Role(
            CERTIFICATE_USER,
            "Key Vault Certificate User",
            "Read entire certificate contents including secret and key portion. Only works for key vaults that use "
            "the 'Azure role-based access control' permission model.",
            (
                V + "certificates/read",
                V + "secrets/getSecret/action",
                V + "secrets/readMetadata/action",
                V + "keys/read",
            ),
        ),
        Role(
            DATA_ACCESS_ADMINISTRATOR,
            "Key Vault Data Access Administrator",
            "Manage access to Azure Key Vault by adding or removing role assignments for the Key Vault "
            "Administrator, Key Vault Certificates Officer, Key Vault Crypto Officer, Key Vault Crypto Service "
            "Encryption User, Key Vault Crypto User, Key Vault Reader, Key Vault Secrets Officer, or Key Vault "
            "Secrets User roles. Includes an ABAC condition to constrain role assignments.",
            (),
            actions=(
                "Microsoft.Authorization/roleAssignments/write",
                "Microsoft.Authorization/roleAssignments/delete",
                "Microsoft.Authorization/*/read",
                "Microsoft.Resources/deployments/*",
                "Microsoft.Resources/subscriptions/resourceGroups/read",
                "Microsoft.KeyVault/vaults/*/read",
            ),
        ),
    )
}

# The roles a Data Access Administrator may assign or remove (its ABAC condition).
DATA_ACCESS_ASSIGNABLE = frozenset(
    {
        ADMINISTRATOR,
        CERTIFICATES_OFFICER,
        CRYPTO_OFFICER,
        CRYPTO_SERVICE_ENCRYPTION_USER,
        CRYPTO_USER,
        READER,
        SECRETS_OFFICER,
        SECRETS_USER,
    }
)

_CATALOGUE = {
    "certificatecas": "delete read write",
    "certificatecontacts": "write",
    "certificates": "delete read backup/action purge/action update/action create/action import/action "
    "recover/action restore/action",
    "keyrotationpolicies": "read write",
    "keys": "read update/action create/action import/action recover/action restore/action delete backup/action "
    "purge/action encrypt/action decrypt/action wrap/action unwrap/action sign/action verify/action release/action "
    "rotate/action",
    "secrets": "delete backup/action purge/action update/action recover/action restore/action readMetadata/action "
    "getSecret/action setSecret/action",
    "storageaccounts": "read set/action delete backup/action purge/action regeneratekey/action recover/action "
    "restore/action sas/set/action sas/delete sas/read",
}
VAULT_DATA_ACTIONS: tuple[str, ...] = tuple(
    f"{V}{kind}/{action}" for kind, actions in _CATALOGUE.items() for action in actions.split()
)
HSM_DATA_ACTIONS: tuple[str, ...] = tuple(
    H + a
    for a in (
        "keys/read/action",
        "keys/write/action",
        "keys/deletedKeys/read/action",
        "keys/deletedKeys/recover/action",
        "keys/backup/action",
        "keys/restore/action",
        "roleAssignments/delete/action",
        "roleAssignments/read/action",
        "roleAssignments/write/action",
        "roleDefinitions/read/action",
        "roleDefinitions/write/action",
        "roleDefinitions/delete/action",
        "keys/encrypt/action",
        "keys/decrypt/action",
        "keys/wrap/action",
        "keys/unwrap/action",
        "keys/sign/action",
        "keys/verify/action",
        "keys/create",
        "keys/delete",
        "keys/export/action",
        "keys/release/action",
        "keys/import/action",
        "keys/deletedKeys/delete",
        "securitydomain/download/action",
        "securitydomain/download/read",
        "securitydomain/upload/action",
        "securitydomain/upload/read",
        "securitydomain/transferkey/read",
        "backup/start/action",
        "restore/start/action",
        "backup/status/action",
        "restore/status/action",
        "rng/action",
        "keys/rotate/action",
    )
)
DATA_ACTIONS: tuple[str, ...] = VAULT_DATA_ACTIONS + HSM_DATA_ACTIONS
