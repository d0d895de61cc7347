"""The Keys API of Key Vault (specs/keyvault/2026-04-01/keys.json)."""

from __future__ import annotations

from typing import Any

from coffer.api import wire
from coffer.api.request import ApiRequest
from coffer.api.routes import _objects
from coffer.api.routing import Route
from coffer.core import Context, Operation, Result
from coffer.errors import BadParameter
from coffer.objects import key

_ACTION = "Microsoft.KeyVault/vaults/"
_OPS = {
    "encrypt": "encrypt",
    "decrypt": "decrypt",
    "sign": "sign",
    "verify": "verify",
    "wrapkey": "wrapKey",
    "unwrapkey": "unwrapKey",
}
_OP_ACTIONS = {
    "encrypt": "encrypt",
    "decrypt": "decrypt",
    "sign": "sign",
    "verify": "verify",
    "wrapKey": "wrap",
    "unwrapKey": "unwrap",
}
_OP_NAMES = {
    "encrypt": "KeyEncrypt",
    "decrypt": "KeyDecrypt",
    "sign": "KeySign",
    "verify": "KeyVerify",
    "wrapKey": "KeyWrap",
    "unwrapKey": "KeyUnwrap",
}


async def _run(
    req: ApiRequest,
    name: str,
    action: str,
    scope: str,
    write: bool,
    run: Any,
    policy: str | None = None,
) -> Result:
    op = Operation(
        name=name,
        action=_ACTION + action,
        scope=scope,
        vault=req.vault,
        write=write,
        run=run,
        policy=policy,
    )
    assert req.caller is not None
    return await req.pipeline.execute(op, req.caller, req.info)


def _backends(req: ApiRequest) -> key.Backends:
    backends: key.Backends = req.app.key_backends
    return backends


def _bundle(req: ApiRequest, ctx: Context, item: key.Key, *, deleted: bool = False) -> Result:
    assert ctx.vault is not None
    body = wire.key_bundle(item, ctx.vault, req.vault_url)
    if deleted:
        body.update(wire.deleted_key_fields(item, req.vault_url))
    return Result(body=body, object_id=wire.key_id(req.vault_url, item))


_KIND: _objects.ObjectKind[key.Key] = _objects.ObjectKind(
    operation="Key",
    collection="keys",
    read_action="read",
    bundle=_bundle,
    item=lambda req, vault, item, versioned: wire.key_item(item, vault, req.vault_url, versioned=versioned),
    deleted_fields=lambda req, item: wire.deleted_key_fields(item, req.vault_url),
)


async def create_key(req: ApiRequest) -> Result:
    name, body = req.params["name"], await req.json()

    def run(ctx: Context) -> Result:
        return _bundle(req, ctx, key.create(ctx.require_view(), _backends(req), name, body))

    return await _run(req, "KeyCreate", "keys/create/action", f"/keys/{name}", True, run)


async def import_key(req: ApiRequest) -> Result:
    name, body = req.params["name"], await req.json()

    def run(ctx: Context) -> Result:
        return _bundle(req, ctx, key.import_key(ctx.require_view(), _backends(req), name, body))

    return await _run(req, "KeyImport", "keys/import/action", f"/keys/{name}", True, run)


async def rotate_key(req: ApiRequest) -> Result:
    name = req.params["name"]

    def run(ctx: Context) -> Result:
        return _bundle(req, ctx, key.rotate(ctx.require_view(), _backends(req), name))

    return await _run(req, "KeyRotate", "keys/rotate/action", f"/keys/{name}", True, run)


async def get_key(req: ApiRequest) -> Result:
    name, version = req.params["name"], req.params.get("version") or None

    def run(ctx: Context) -> Result:
        return _bundle(req, ctx, key.get(ctx.require_view(), name, version))

    return await _run(req, "KeyGet", "keys/read", f"/keys/{name}", False, run, "get")


async def update_key(req: ApiRequest) -> Result:
    name, version = req.params["name"], req.params.get("version") or None
    body = await req.json()

    def run(ctx: Context) -> Result:
        return _bundle(req, ctx, key.update(ctx.require_view(), name, version, body))

    return await _run(req, "KeyUpdate", "keys/update/action", f"/keys/{name}", True, run)


async def delete_key(req: ApiRequest) -> Result:
    return await _objects.delete(req, _KIND, key.delete)


async def list_keys(req: ApiRequest) -> Result:
    return await _objects.list_latest(req, _KIND, key.list_latest, deleted=False)


async def list_deleted_keys(req: ApiRequest) -> Result:
    return await _objects.list_latest(req, _KIND, key.list_latest, deleted=True)


async def list_key_versions(req: ApiRequest) -> Result:
    return await _objects.list_versions(req, _KIND, key.list_versions)


async def get_deleted_key(req: ApiRequest) -> Result:
    return await _objects.get_deleted(req, _KIND, key.get_deleted)


async def purge_deleted_key(req: ApiRequest) -> Result:
    return await _objects.purge(req, _KIND, lambda view, name: key.purge(view, _backends(req), name))


async def recover_deleted_key(req: ApiRequest) -> Result:
    return await _objects.recover(req, _KIND, key.recover)


async def backup_key(req: ApiRequest) -> Result:
    return await _objects.backup(req, _KIND, key.backup)


async def restore_key(req: ApiRequest) -> Result:
    return await _objects.restore(req, _KIND, lambda view, blob: key.restore(view, _backends(req), blob))


def _optional_b64(body: dict[str, Any], field: str) -> bytes | None:
    return wire.b64url_decode(body[field], field) if body.get(field) not in (None, "") else None


_PRIVATE_OPS = {"sign", "decrypt", "unwrapKey"}
# RSA keys up to this size do their private-key operations on the event loop: handing an RSA-2048 signature (0.4 ms
# of OpenSSL) to a thread and back cost a 2-worker server 9-27 % of its throughput (docs/benchmarks.md, step 11)
_RSA_BITS_ON_LOOP = 2048


async def key_operation(req: ApiRequest) -> Result:
    name, version = req.params["name"], req.params.get("version") or None
    op = _OPS.get(req.params["op"].lower())
    if op is None:
        raise BadParameter(f"Unknown key operation {req.params['op'][:32]!r}.")
    body = await req.json()
    alg = body.get("alg")
    if not isinstance(alg, str) or not alg:
        raise BadParameter("Property alg is required.")
    inputs = {f: _optional_b64(body, f) for f in ("value", "iv", "aad", "tag", "digest")}
    if inputs["value"] is None:
        raise BadParameter("Property value is required.")

    def run(ctx: Context) -> Result:
        item, compute = key.operate(ctx.require_view(), _backends(req), name, version, op, inputs, alg)
        kid = wire.key_id(req.vault_url, item)

        def answer() -> dict[str, Any]:
            out = compute()
            if op == "verify":
                return {"value": bool(out["value"])}
            result: dict[str, Any] = {"kid": kid}
            for field in ("value", "iv", "tag", "aad"):
                data = out.get(field)
                if isinstance(data, bytes):
                    result[field] = wire.b64url_encode(data)
            return result

        # An HSM call, or a private-key operation of a larger RSA key (1 ms and more of OpenSSL, which releases the
        # GIL), runs in a worker thread once the transaction is over, while the event loop serves other requests;
        # the rest takes at most a few tenths of a millisecond and runs on the loop.
        if item.kty.endswith("-HSM") or (
            op in _PRIVATE_OPS and item.kty == "RSA" and int(item.row.extra.get("size") or 4096) > _RSA_BITS_ON_LOOP
        ):
            return Result(finish=answer, object_id=kid)
        return Result(body=answer(), object_id=kid)

    return await _run(req, _OP_NAMES[op], f"keys/{_OP_ACTIONS[op]}/action", f"/keys/{name}", False, run)


async def get_rotation_policy(req: ApiRequest) -> Result:
    name = req.params["name"]

    def run(ctx: Context) -> Result:
        policy = key.get_policy(ctx.require_view(), name)
        return Result(body={"id": f"{req.vault_url}/keys/{name}/rotationpolicy", **policy})

    return await _run(req, "KeyRotationPolicyGet", "keyrotationpolicies/read", f"/keys/{name}", False, run)


async def set_rotation_policy(req: ApiRequest) -> Result:
    name, body = req.params["name"], await req.json()

    def run(ctx: Context) -> Result:
        policy = key.set_policy(ctx.require_view(), name, body)
        return Result(body={"id": f"{req.vault_url}/keys/{name}/rotationpolicy", **policy})

    return await _run(req, "KeyRotationPolicySet", "keyrotationpolicies/write", f"/keys/{name}", True, run)


async def random_bytes(req: ApiRequest) -> Result:
    body = await req.json()
    value = key.random_bytes(body.get("count"))

    def run(ctx: Context) -> Result:
        return Result(body={"value": wire.b64url_encode(value)})

    return await _run(req, "GetRandomBytes", "keys/read", "/keys", False, run, "get")


async def not_supported(req: ApiRequest) -> Result:
    raise BadParameter("Key release and key attestation are not supported by this server.", code="NotSupported")


ROUTES = [
    Route("GET", "/keys", list_keys, "KeyList"),
    Route("POST", "/keys/restore", restore_key, "KeyRestore"),
    Route("POST", "/rng", random_bytes, "GetRandomBytes"),
    Route("GET", "/keys/{name}/versions", list_key_versions, "KeyListVersions"),
    Route("POST", "/keys/{name}/create", create_key, "KeyCreate"),
    Route("POST", "/keys/{name}/rotate", rotate_key, "KeyRotate"),
    Route("POST", "/keys/{name}/backup", backup_key, "KeyBackup"),
    Route("GET", "/keys/{name}/rotationpolicy", get_rotation_policy, "KeyRotationPolicyGet"),
    Route("PUT", "/keys/{name}/rotationpolicy", set_rotation_policy, "KeyRotationPolicySet"),
    Route("PUT", "/keys/{name}", import_key, "KeyImport"),
    Route("DELETE", "/keys/{name}", delete_key, "KeyDelete"),
    Route("POST", "/keys/{name}/{version}/release", not_supported, "KeyRelease"),
    Route("GET", "/keys/{name}/{version}/attestation", not_supported, "KeyGetAttestation"),
    Route("POST", "/keys/{name}/{version}/{op}", key_operation, "KeyOperation"),
    Route("GET", "/keys/{name}/{version?}", get_key, "KeyGet"),
    Route("PATCH", "/keys/{name}/{version?}", update_key, "KeyUpdate"),
    Route("GET", "/deletedkeys", list_deleted_keys, "KeyListDeleted"),
    Route("GET", "/deletedkeys/{name}", get_deleted_key, "KeyGetDeleted"),
    Route("DELETE", "/deletedkeys/{name}", purge_deleted_key, "KeyPurge"),
    Route("POST", "/deletedkeys/{name}/recover", recover_deleted_key, "KeyRecover"),
]
