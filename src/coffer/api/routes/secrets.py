"""The Secrets API of Key Vault (specs/keyvault/2026-04-01/secrets.json)."""

from __future__ import annotations

from typing import Any

from coffer.api import wire
from coffer.api.request import ApiRequest
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
    name = req.params["name"]

    def run(ctx: Context) -> Result:
        return _bundle(req, ctx, secret.delete(ctx.require_view(), name), deleted=True)

    return await _run(req, "SecretDelete", "delete", f"/secrets/{name}", True, run)


def _page(
    req: ApiRequest,
    ctx: Context,
    items: list[secret.Secret],
    size: int,
    path: str,
    after: str | None,
    *,
    versioned: bool,
    deleted: bool = False,
) -> Result:
    assert ctx.vault is not None
    values = []
    for item in items:
        value = wire.secret_item(item, ctx.vault, req.vault_url, versioned=versioned)
        if deleted:
            value.update(wire.deleted_fields(item, req.vault_url))
        values.append(value)
    return Result(
        body=wire.page(
            values, vault_url=req.vault_url, path=path, api_version=req.info.api_version, last=after, size=size
        )
    )


async def list_secrets(req: ApiRequest) -> Result:
    size, after = wire.page_size(req.query), wire.skiptoken(req.query)

    def run(ctx: Context) -> Result:
        items = secret.list_latest(ctx.require_view(), deleted=False, after=after, limit=size + 1)
        more = len(items) > size
        items = items[:size]
        last = items[-1].obj.name.lower() if more and items else None
        return _page(req, ctx, items, size, "/secrets", last, versioned=False)

    return await _run(req, "SecretList", "readMetadata/action", "/secrets", False, run, "list")


async def list_deleted_secrets(req: ApiRequest) -> Result:
    size, after = wire.page_size(req.query), wire.skiptoken(req.query)

    def run(ctx: Context) -> Result:
        items = secret.list_latest(ctx.require_view(), deleted=True, after=after, limit=size + 1)
        more = len(items) > size
        items = items[:size]
        last = items[-1].obj.name.lower() if more and items else None
        return _page(req, ctx, items, size, "/deletedsecrets", last, versioned=False, deleted=True)

    return await _run(req, "SecretListDeleted", "readMetadata/action", "/deletedsecrets", False, run, "list")


async def list_secret_versions(req: ApiRequest) -> Result:
    name = req.params["name"]
    size, after = wire.page_size(req.query), wire.version_position(req.query)

    def run(ctx: Context) -> Result:
        items = secret.list_versions(ctx.require_view(), name, after_seq=after, limit=size + 1)
        more = len(items) > size
        items = items[:size]
        last = str(items[-1].row.seq) if more and items else None
        return _page(
            req, ctx, items, size, f"/secrets/{items[0].obj.name if items else name}/versions", last, versioned=True
        )

    return await _run(req, "SecretListVersions", "readMetadata/action", f"/secrets/{name}", False, run, "list")


async def get_deleted_secret(req: ApiRequest) -> Result:
    name = req.params["name"]

    def run(ctx: Context) -> Result:
        return _bundle(req, ctx, secret.get_deleted(ctx.require_view(), name), deleted=True)

    return await _run(req, "SecretGetDeleted", "readMetadata/action", f"/deletedsecrets/{name}", False, run, "get")


async def purge_deleted_secret(req: ApiRequest) -> Result:
    name = req.params["name"]

    def run(ctx: Context) -> Result:
        secret.purge(ctx.require_view(), name)
        return Result(status=204, object_id=f"{req.vault_url}/deletedsecrets/{name}")

    return await _run(req, "SecretPurge", "purge/action", f"/deletedsecrets/{name}", True, run)


async def recover_deleted_secret(req: ApiRequest) -> Result:
    name = req.params["name"]

    def run(ctx: Context) -> Result:
        return _bundle(req, ctx, secret.recover(ctx.require_view(), name))

    return await _run(req, "SecretRecover", "recover/action", f"/deletedsecrets/{name}", True, run)


async def backup_secret(req: ApiRequest) -> Result:
    name = req.params["name"]

    def run(ctx: Context) -> Result:
        blob = secret.backup(ctx.require_view(), name)
        return Result(body={"value": wire.b64url_encode(blob)}, object_id=f"{req.vault_url}/secrets/{name}")

    return await _run(req, "SecretBackup", "backup/action", f"/secrets/{name}", False, run)


async def restore_secret(req: ApiRequest) -> Result:
    body = await req.json()
    blob = wire.b64url_decode(body.get("value"))

    def run(ctx: Context) -> Result:
        return _bundle(req, ctx, secret.restore(ctx.require_view(), blob))

    return await _run(req, "SecretRestore", "restore/action", "/secrets", True, run)


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
