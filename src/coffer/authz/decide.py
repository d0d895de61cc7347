"""Authorization decisions.

For now every authenticated principal of a vault's tenant may use that vault, and server-level
administration is open to principals of any tenant on this server. Role-based access control
(Azure's built-in roles down to a single object) and access policies replace this function.
"""

from __future__ import annotations

from dataclasses import dataclass

from coffer.errors import Forbidden
from coffer.identity.tokens import Caller
from coffer.storage import VaultRow


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str


def authorize(caller: Caller, action: str, scope: str, vault: VaultRow | None) -> Decision:
    """Raise Forbidden unless `caller` may perform `action` (an Azure data action) on `scope`."""
    if vault is not None and caller.tenant_id != vault.tenant_id:
        raise Forbidden(
            f"Caller is not authorized to perform action on resource.\r\nCaller: appid={caller.client_id};"
            f"oid={caller.object_id}\r\nAction: '{action}'\r\nResource: '{scope}'\r\n"
            f"DecisionReason: 'TenantMismatch'\r\nVault: {vault.name};location=local\r\n",
            inner="ForbiddenByRbac",
        )
    return Decision(True, "TenantMember")
