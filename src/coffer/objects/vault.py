"""Vault administration: create, list, show, update, delete. Runs inside a storage transaction."""

from __future__ import annotations

import re
from typing import Any

from coffer.authz.policies import check_entries
from coffer.barrier import Barrier
from coffer.clock import now
from coffer.errors import BadParameter, Conflict, NotFound
from coffer.objects import rules
from coffer.storage import Transaction, VaultRow

VAULT_NAME = re.compile(r"^[a-zA-Z](?!.*--)[a-zA-Z0-9-]{1,22}[a-zA-Z0-9]$")
SKUS = ("standard", "premium")


def check_vault_name(name: str) -> str:
    if not VAULT_NAME.fullmatch(name):
        raise BadParameter(
            f"The vault name {name[:64]!r} is not valid. A vault name must be 3-24 characters long, start with "
            "a letter, end with a letter or digit, and contain only 0-9, a-z, A-Z and non-consecutive -.",
            code="VaultNameNotValid",
        )
    return name.lower()


def _retention(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 7 <= value <= 90:
        raise BadParameter("softDeleteRetentionInDays must be an integer between 7 and 90.")
    return value


def as_dict(vault: VaultRow, vault_url: str) -> dict[str, Any]:
    return {
        "name": vault.name,
        "vaultUri": vault_url,
        "tenantId": vault.tenant_id,
        "sku": vault.sku,
        "softDeleteRetentionInDays": vault.retention_days,
        "enablePurgeProtection": vault.purge_protection,
        "enableSoftDelete": True,
        "enableRbacAuthorization": vault.rbac_authorization,
        "accessPolicies": vault.access_policies,
        "recoveryLevel": rules.recovery_level(vault),
        "created": vault.created,
        "updated": vault.updated,
    }


def _rbac(value: Any) -> bool:
    if not isinstance(value, bool):
        raise BadParameter("enableRbacAuthorization must be a boolean.")
    return value


def get(tx: Transaction, name: str) -> VaultRow:
    vault = tx.vault_get(name)
    if vault is None:
        raise NotFound(f"Vault {name[:64]} was not found.", code="VaultNotFound")
    return vault


def create(tx: Transaction, barrier: Barrier, name: str, tenant_id: str, body: dict[str, Any]) -> VaultRow:
    name = check_vault_name(name)
    if tx.vault_get(name) is not None:
        raise Conflict(f"A vault named {name} already exists.", code="VaultAlreadyExists")
    sku = body.get("sku", "standard")
    if sku not in SKUS:
        raise BadParameter("sku must be 'standard' or 'premium'.", code="SkuNotSupported")
    purge_protection = body.get("enablePurgeProtection", False)
    if not isinstance(purge_protection, bool):
        raise BadParameter("enablePurgeProtection must be a boolean.")
    rbac = _rbac(body.get("enableRbacAuthorization", True))
    policies = check_entries(body.get("accessPolicies", []), tenant_id)
    stamp = now()
    vault = VaultRow(
        name=name,
        tenant_id=tenant_id,
        created=stamp,
        updated=stamp,
        retention_days=_retention(body.get("softDeleteRetentionInDays", 90)),
        purge_protection=purge_protection,
        sku=sku,
        rbac_authorization=rbac,
        access_policies=policies,
        wrapped_key=barrier.new_vault_key(name),
        key_term=1,
    )
    tx.vault_put(vault)
    return vault


def update(tx: Transaction, name: str, body: dict[str, Any]) -> VaultRow:
    vault = get(tx, name)
    if "enablePurgeProtection" in body:
        value = body["enablePurgeProtection"]
        if value is not True and not (value is False and not vault.purge_protection):
            raise BadParameter(
                'The property "enablePurgeProtection" cannot be set to false. Enabling the purge '
                "protection for a vault is an irreversible action."
            )
        vault.purge_protection = value
    if "softDeleteRetentionInDays" in body:
        vault.retention_days = _retention(body["softDeleteRetentionInDays"])
    if "sku" in body:
        if body["sku"] not in SKUS:
            raise BadParameter("sku must be 'standard' or 'premium'.", code="SkuNotSupported")
        vault.sku = body["sku"]
    if "enableRbacAuthorization" in body:  # the permission model: Azure RBAC, or the vault's access policies
        vault.rbac_authorization = _rbac(body["enableRbacAuthorization"])
    if "accessPolicies" in body:  # the whole list, as Azure's vault update replaces it
        vault.access_policies = check_entries(body["accessPolicies"], vault.tenant_id)
    vault.updated = now()
    tx.vault_put(vault)
    return vault


def delete(tx: Transaction, name: str) -> None:
    vault = get(tx, name)
    if vault.purge_protection:
        for kind in ("secret", "key", "certificate"):
            for deleted in (False, True):
                if tx.object_list(vault.name, kind, deleted=deleted, after=None, limit=1):
                    raise Conflict(
                        f"Vault {vault.name} has purge protection enabled and still holds objects; it cannot "
                        "be deleted until they are purged after their retention period.",
                        code="ConflictError",
                    )
    tx.vault_delete(vault.name)
