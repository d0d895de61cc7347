"""The Secrets API of Key Vault (specs/keyvault/2026-04-01/secrets.json)."""

from __future__ import annotations

from typing import Any

from coffer.api import wire
from coffer.api.request import ApiRequest
from coffer.api.routes import _objects
from coffer.api.routing import Route
from coffer.core import Context, Operation, Result
from coffer.errors import BadParameter
from coffer.objects import secret

_ACTION = "Microsoft.KeyVault/vaults/secrets/"


async def _run(
    req: ApiRequest, name: str, action: str, scope: str, write: bool, run: Any, policy: str | None = None
) -> Result:
    op = Operation(
        name=name, action=_ACTION + action, scope=scope, vault=req.vault, write=write, run=run, policy=policy
    )
    assert req.caller is not None
    return await req.pipeline.execute(op, req.caller, req.info)


def _bundle(
    req: ApiRequest, ctx: Context, item: secret.Secret, *, with_value: bool = False, deleted: bool = False
) -> Result:
    assert ctx.vault is not None
    body = wire.secret_bundle(item, ctx.vault, req.vault_url, req.info.api_version, with_value=with_value)
    if deleted:
        body.update(wire.deleted_fields(item, req.vault_url))
    return Result(body=body, object_id=wire.secret_id(req.vault_url, item))


_KIND: _objects.ObjectKind[secret.Secret] = _objects.ObjectKind(
    operation="Secret",
    collection="secrets",
    read_action="readMetadata/action",
    bundle=_bundle,
    item=lambda req, vault, item, versioned: wire.secret_item(item, vault, req.vault_url, versioned=versioned),
    deleted_fields=lambda req, item: wire.deleted_fields(item, req.vault_url),
)


async def set_secret(req: ApiRequest) -> Result:
    name = req.params["name"]
    body = await req.json()
    if "value" not in body:
        raise BadParameter("Property value is required.")

    def run(ctx: Context) -> Result:
        item = secret.set(
            ctx.require_view(),
            name,
            body.get("value"),
            content_type=body.get("contentType"),
            tags=body.get("tags"),
            attributes=body.get("attributes"),
        )
        return _bundle(req, ctx, item, with_value=True)

    return await _run(req, "SecretSet", "setSecret/action", f"/secrets/{name}", True, run)


async def get_secret(req: ApiRequest) -> Result:
    name, version = req.params["name"], req.params.get("version") or None
    out_content_type = req.query.get("outContentType")  # certificate secrets: PKCS#12 → PEM (2025-06-01-preview+)

    def run(ctx: Context) -> Result:
        item = secret.convert(secret.get(ctx.require_view(), name, version), out_content_type)
        return _bundle(req, ctx, item, with_value=True)

    return await _run(req, "SecretGet", "getSecret/action", f"/secrets/{name}", False, run)


async def update_secret(req: ApiRequest) -> Result:
    name, version = req.params["name"], req.params.get("version") or None
    body = await req.json()

    def run(ctx: Context) -> Result:
        item = secret.update(
            ctx.require_view(),
            name,
            version,
            content_type=body.get("contentType"),
            tags=body.get("tags"),
            attributes=body.get("attributes"),
            fields=frozenset(body),
        )
        return _bundle(req, ctx, item)

    return await _run(req, "SecretUpdate", "update/action", f"/secrets/{name}", True, run)


async def delete_secret(req: ApiRequest) -> Result:
    return await _objects.delete(req, _KIND, secret.delete)


async def list_secrets(req: ApiRequest) -> Result:
    return await _objects.list_latest(req, _KIND, secret.list_latest, deleted=False)


async def list_deleted_secrets(req: ApiRequest) -> Result:
    return await _objects.list_latest(req, _KIND, secret.list_latest, deleted=True)


async def list_secret_versions(req: ApiRequest) -> Result:
    return await _objects.list_versions(req, _KIND, secret.list_versions)


async def get_deleted_secret(req: ApiRequest) -> Result:
    return await _objects.get_deleted(req, _KIND, secret.get_deleted)


async def purge_deleted_secret(req: ApiRequest) -> Result:
    return await _objects.purge(req, _KIND, secret.purge)


async def recover_deleted_secret(req: ApiRequest) -> Result:
    return await _objects.recover(req, _KIND, secret.recover)


async def backup_secret(req: ApiRequest) -> Result:
    return await _objects.backup(req, _KIND, secret.backup)


async def restore_secret(req: ApiRequest) -> Result:
    return await _objects.restore(req, _KIND, secret.restore)


ROUTES = [
    Route("GET", "/secrets", list_secrets, "SecretList"),
    Route("POST", "/secrets/restore", restore_secret, "SecretRestore"),
    Route("GET", "/secrets/{name}/versions", list_secret_versions, "SecretListVersions"),
    Route("POST", "/secrets/{name}/backup", backup_secret, "SecretBackup"),
    Route("PUT", "/secrets/{name}", set_secret, "SecretSet"),
    Route("DELETE", "/secrets/{name}", delete_secret, "SecretDelete"),
    Route("GET", "/secrets/{name}/{version?}", get_secret, "SecretGet"),
    Route("PATCH", "/secrets/{name}/{version?}", update_secret, "SecretUpdate"),
    Route("GET", "/deletedsecrets", list_deleted_secrets, "SecretListDeleted"),
    Route("GET", "/deletedsecrets/{name}", get_deleted_secret, "SecretGetDeleted"),
    Route("DELETE", "/deletedsecrets/{name}", purge_deleted_secret, "SecretPurge"),
    Route("POST", "/deletedsecrets/{name}/recover", recover_deleted_secret, "SecretRecover"),
]
