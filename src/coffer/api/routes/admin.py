"""Coffer's admin API for vaults (the CLI's `coffer vault ...` talks to it). Bearer-authenticated;
every call runs through the same pipeline as the data plane.

A vault's permission model is `enableRbacAuthorization` (default true: Azure RBAC); false makes its
`accessPolicies` decide data-plane requests. The policies themselves are edited through
/admin/vaults/{name}/accessPolicies (api/routes/access.py)."""

from __future__ import annotations

from typing import Any

from coffer.api.request import ApiRequest
from coffer.api.routing import Route
from coffer.barrier import VaultView
from coffer.core import Context, Operation, Result
from coffer.errors import NotFound
from coffer.objects import certificate, vault
from coffer.storage import VaultRow

_ACTION = "Microsoft.KeyVault/vaults/"
_ACCESS_FIELDS = ("enableRbacAuthorization", "accessPolicies")


async def _run(req: ApiRequest, name: str, action: str, scope: str, write: bool, run: Any) -> Result:
    op = Operation(name=name, action=_ACTION + action, scope=scope, vault=None, write=write, run=run)
    assert req.caller is not None
    return await req.pipeline.execute(op, req.caller, req.info)


def _own(ctx: Context, name: str) -> VaultRow:
    row = vault.get(ctx.tx, name)
    if row.tenant_id != ctx.caller.tenant_id:  # other tenants' vaults are invisible
        raise NotFound(f"Vault {name[:64]} was not found.", code="VaultNotFound")
    return row


def _body(req: ApiRequest, row: VaultRow) -> dict[str, Any]:
    return vault.as_dict(row, req.app.vault_url(row.name))


async def list_vaults(req: ApiRequest) -> Result:
    def run(ctx: Context) -> Result:
        rows = [
            v
            for v in ctx.tx.vault_list()
            if v.tenant_id == ctx.caller.tenant_id and ctx.authorizer.can_see(ctx.caller, f"/vaults/{v.name}")
        ]
        return Result(body={"value": [_body(req, v) for v in rows]})

    return await _run(req, "VaultList", "list", "/vaults", False, run)


async def get_vault(req: ApiRequest) -> Result:
    name = req.params["name"]

    def run(ctx: Context) -> Result:
        return Result(body=_body(req, _own(ctx, name)))

    return await _run(req, "VaultGet", "read", f"/vaults/{name}", False, run)


async def create_vault(req: ApiRequest) -> Result:
    name = req.params["name"]
    body = await req.json(required=False)

    def run(ctx: Context) -> Result:
        row = vault.create(ctx.tx, ctx.barrier, name, ctx.caller.tenant_id, body)
        return Result(status=201, body=_body(req, row))

    result = await _run(req, "VaultPut", "write", f"/vaults/{name}", True, run)
    await req.app.vault_added(name)
    req.app.access_changed()
    return result


async def update_vault(req: ApiRequest) -> Result:
    name = req.params["name"]
    body = await req.json()

    def run(ctx: Context) -> Result:
        _own(ctx, name)
        return Result(body=_body(req, vault.update(ctx.tx, name, body)))

    result = await _run(req, "VaultPatch", "write", f"/vaults/{name}", True, run)
    if any(f in body for f in _ACCESS_FIELDS):
        req.app.access_changed()
    return result


async def delete_vault(req: ApiRequest) -> Result:
    name = req.params["name"]

    def run(ctx: Context) -> Result:
        row = _own(ctx, name)
        certificate.release_vault_hsm_objects(VaultView(ctx.tx, ctx.barrier, row), req.app.key_backends)
        vault.delete(ctx.tx, name)
        return Result(status=204)

    result = await _run(req, "VaultDelete", "delete", f"/vaults/{name}", True, run)
    req.app.vault_removed(name)
    return result


ROUTES = [
    Route("GET", "/admin/vaults", list_vaults),
    Route("GET", "/admin/vaults/{name}", get_vault),
    Route("PUT", "/admin/vaults/{name}", create_vault),
    Route("PATCH", "/admin/vaults/{name}", update_vault),
    Route("DELETE", "/admin/vaults/{name}", delete_vault),
]
