"""Legacy access policies: Azure's permission names, and which of them each data action needs."""

from __future__ import annotations

from typing import Any

from coffer.errors import BadParameter

MAX_ENTRIES = 1024
PERMISSIONS: dict[str, frozenset[str]] = {
    "keys": frozenset(
        "all encrypt decrypt wrapKey unwrapKey sign verify get list create update import delete backup restore "
        "recover purge release rotate getrotationpolicy setrotationpolicy".split()
    ),
    "secrets": frozenset("all get list set delete backup restore recover purge".split()),
    "certificates": frozenset(
        "all get list delete create import update managecontacts getissuers listissuers setissuers deleteissuers "
        "manageissuers recover purge backup restore".split()
    ),
    "storage": frozenset(
        "all get list delete set update regeneratekey recover purge backup restore setsas listsas getsas "
        "deletesas".split()
    ),
}

# data action (after "Microsoft.KeyVault/vaults/") → (permission type, permissions any of which allow it)
_NEEDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "secrets/getSecret/action": ("secrets", ("get",)),
    "secrets/readMetadata/action": ("secrets", ("list", "get")),
    "secrets/setSecret/action": ("secrets", ("set",)),
    "secrets/update/action": ("secrets", ("set",)),
    "secrets/delete": ("secrets", ("delete",)),
    "secrets/backup/action": ("secrets", ("backup",)),
    "secrets/restore/action": ("secrets", ("restore",)),
    "secrets/recover/action": ("secrets", ("recover",)),
    "secrets/purge/action": ("secrets", ("purge",)),
    "keys/read": ("keys", ("get", "list")),
    "keys/update/action": ("keys", ("update",)),
    "keys/create/action": ("keys", ("create",)),
    "keys/import/action": ("keys", ("import",)),
    "keys/delete": ("keys", ("delete",)),
    "keys/backup/action": ("keys", ("backup",)),
    "keys/restore/action": ("keys", ("restore",)),
    "keys/recover/action": ("keys", ("recover",)),
    "keys/purge/action": ("keys", ("purge",)),
    "keys/encrypt/action": ("keys", ("encrypt",)),
    "keys/decrypt/action": ("keys", ("decrypt",)),
    "keys/wrap/action": ("keys", ("wrapkey",)),
    "keys/unwrap/action": ("keys", ("unwrapkey",)),
    "keys/sign/action": ("keys", ("sign",)),
    "keys/verify/action": ("keys", ("verify",)),
    "keys/release/action": ("keys", ("release",)),
    "keys/rotate/action": ("keys", ("rotate",)),
    "keyrotationpolicies/read": ("keys", ("getrotationpolicy",)),
    "keyrotationpolicies/write": ("keys", ("setrotationpolicy",)),
    "certificates/read": ("certificates", ("get", "list")),
    "certificates/create/action": ("certificates", ("create",)),
    "certificates/import/action": ("certificates", ("import",)),
    "certificates/update/action": ("certificates", ("update",)),
    "certificates/delete": ("certificates", ("delete",)),
    "certificates/backup/action": ("certificates", ("backup",)),
    "certificates/restore/action": ("certificates", ("restore",)),
    "certificates/recover/action": ("certificates", ("recover",)),
    "certificates/purge/action": ("certificates", ("purge",)),
    "certificatecontacts/write": ("certificates", ("managecontacts",)),
    "certificatecas/read": ("certificates", ("getissuers", "listissuers", "manageissuers")),
    "certificatecas/write": ("certificates", ("setissuers", "manageissuers")),
    "certificatecas/delete": ("certificates", ("deleteissuers", "manageissuers")),
}


def policy_permissions(action: str) -> tuple[str, frozenset[str]]:
    """The permission type and the (lower-cased) permissions that allow a data action."""
    relative = action.split("Microsoft.KeyVault/vaults/", 1)[-1]
    kind, needed = _NEEDS.get(relative, (relative.split("/", 1)[0], ()))
    return kind, frozenset(p.lower() for p in needed)


def check_entries(entries: Any, tenant_id: str) -> list[dict[str, Any]]:
    """Validate a whole access-policy list (Azure's shape); raise BadParameter."""
    if not isinstance(entries, list):
        raise BadParameter("accessPolicies must be a list.")
    if len(entries) > MAX_ENTRIES:
        raise BadParameter(f"A vault supports at most {MAX_ENTRIES} access policy entries.")
    checked = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("objectId"), str) or not entry["objectId"]:
            raise BadParameter("Each access policy entry needs tenantId, objectId and permissions.")
        if entry.get("tenantId", tenant_id) != tenant_id:
            raise BadParameter("Access policy entries must use the vault's tenant.")
        permissions = entry.get("permissions", {})
        if not isinstance(permissions, dict):
            raise BadParameter("permissions must be an object of lists.")
        clean: dict[str, list[str]] = {}
        for kind, values in permissions.items():
            allowed = {p.lower(): p for p in PERMISSIONS.get(kind, frozenset())}
            if kind not in PERMISSIONS or not isinstance(values, list):
                raise BadParameter(f"Unknown permission type {str(kind)[:32]!r}.")
            for value in values:
                if not isinstance(value, str) or value.lower() not in allowed:
                    raise BadParameter(f"Unknown {kind} permission {str(value)[:32]!r}.")
            clean[kind] = [allowed[v.lower()] for v in values]
        item: dict[str, Any] = {"tenantId": tenant_id, "objectId": entry["objectId"], "permissions": clean}
        if entry.get("applicationId"):
            item["applicationId"] = str(entry["applicationId"])
        checked.append(item)
    return checked
