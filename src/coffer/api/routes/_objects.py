"""Handlers the Secrets, Keys and Certificates APIs share: delete, the three list pages (latest, deleted, versions),
the deleted object's get, recover and purge, and backup and restore.

A route module describes its object kind once (`ObjectKind`: names, paths, wire shapes) and passes the domain
function to call (e.g. `secret.get_deleted`) to these helpers from its own named handlers. Operation names are the
kind's prefix plus a fixed suffix ("Secret" + "GetDeleted"), data actions live under
Microsoft.KeyVault/vaults/{collection}/, and paths are /{collection} and /deleted{collection}.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from coffer.api import wire
from coffer.api.request import ApiRequest
from coffer.barrier import VaultView
from coffer.core import Context, Operation, Result
from coffer.storage import ObjectRow, VaultRow, VersionRow

_ACTION = "Microsoft.KeyVault/vaults/"


class _Versioned(Protocol):
    """An object version as the domain modules return it (secret.Secret, key.Key, certificate.Certificate)."""

    @property
    def obj(self) -> ObjectRow: ...

    @property
    def row(self) -> VersionRow: ...


T = TypeVar("T", bound=_Versioned)
T_contra = TypeVar("T_contra", bound=_Versioned, contravariant=True)


class _Bundle(Protocol[T_contra]):
    def __call__(self, req: ApiRequest, ctx: Context, item: T_contra, *, deleted: bool = ...) -> Result: ...


class _ListLatest(Protocol[T]):
    def __call__(self, view: VaultView, *, deleted: bool, after: str | None, limit: int) -> list[T]: ...


class _ListVersions(Protocol[T]):
    def __call__(self, view: VaultView, name: str, *, after_seq: int | None, limit: int) -> list[T]: ...


@dataclass(frozen=True)
class ObjectKind(Generic[T]):
    operation: str  # prefix of the audit operation names: "Secret" → SecretList, SecretGetDeleted, ...
    collection: str  # "secrets": the paths /secrets and /deletedsecrets, the data actions .../vaults/secrets/...
    read_action: str  # the data action of listing and of getting a deleted object, e.g. "read"
    bundle: _Bundle[T]  # an object's full body (with the deleted fields when deleted=True)
    item: Callable[[ApiRequest, VaultRow, T, bool], dict[str, Any]]  # a list entry; the bool: versioned
    deleted_fields: Callable[[ApiRequest, T], dict[str, Any]]  # what a deleted list entry adds


async def _run(
    req: ApiRequest,
    kind: ObjectKind[T],
    operation: str,
    action: str,
    scope: str,
    write: bool,
    run: Callable[[Context], Result],
    policy: str | None = None,
) -> Result:
    op = Operation(
        name=kind.operation + operation,
        action=f"{_ACTION}{kind.collection}/{action}",
        scope=scope,
        vault=req.vault,
        write=write,
        run=run,
        policy=policy,
    )
    assert req.caller is not None
    return await req.pipeline.execute(op, req.caller, req.info)


async def delete(req: ApiRequest, kind: ObjectKind[T], remove: Callable[[VaultView, str], T]) -> Result:
    name = req.params["name"]

    def run(ctx: Context) -> Result:
        return kind.bundle(req, ctx, remove(ctx.require_view(), name), deleted=True)

    return await _run(req, kind, "Delete", "delete", f"/{kind.collection}/{name}", True, run)


# --- list pages ----------------------------------------------------------------------------------------------
def _page(
    req: ApiRequest,
    ctx: Context,
    kind: ObjectKind[T],
    items: list[T],
    size: int,
    path: str,
    last: str | None,
    *,
    versioned: bool,
    deleted: bool = False,
) -> Result:
    assert ctx.vault is not None
    values = []
    for item in items:
        value = kind.item(req, ctx.vault, item, versioned)
        if deleted:
            value.update(kind.deleted_fields(req, item))
        values.append(value)
    return Result(
        body=wire.page(
            values, vault_url=req.vault_url, path=path, api_version=req.info.api_version, last=last, size=size
        )
    )


async def list_latest(req: ApiRequest, kind: ObjectKind[T], fetch: _ListLatest[T], *, deleted: bool) -> Result:
    """GET /{collection} or /deleted{collection}: one page of objects by name, `$skiptoken` the last name shown."""
    size, after = wire.page_size(req.query), wire.skiptoken(req.query)
    path = f"/deleted{kind.collection}" if deleted else f"/{kind.collection}"

    def run(ctx: Context) -> Result:
        items = fetch(ctx.require_view(), deleted=deleted, after=after, limit=size + 1)
        more = len(items) > size
        items = items[:size]
        last = items[-1].obj.name.lower() if more and items else None
        return _page(req, ctx, kind, items, size, path, last, versioned=False, deleted=deleted)

    operation = "ListDeleted" if deleted else "List"
    return await _run(req, kind, operation, kind.read_action, path, False, run, "list")


async def list_versions(req: ApiRequest, kind: ObjectKind[T], fetch: _ListVersions[T]) -> Result:
    """GET /{collection}/{name}/versions: one page of versions, `$skiptoken` the last version's position."""
    name = req.params["name"]
    size, after = wire.page_size(req.query), wire.version_position(req.query)

    def run(ctx: Context) -> Result:
        items = fetch(ctx.require_view(), name, after_seq=after, limit=size + 1)
        more = len(items) > size
        items = items[:size]
        last = str(items[-1].row.seq) if more and items else None
        path = f"/{kind.collection}/{items[0].obj.name if items else name}/versions"
        return _page(req, ctx, kind, items, size, path, last, versioned=True)

    scope = f"/{kind.collection}/{name}"
    return await _run(req, kind, "ListVersions", kind.read_action, scope, False, run, "list")


# --- deleted objects -----------------------------------------------------------------------------------------
async def get_deleted(req: ApiRequest, kind: ObjectKind[T], fetch: Callable[[VaultView, str], T]) -> Result:
    name = req.params["name"]

    def run(ctx: Context) -> Result:
        return kind.bundle(req, ctx, fetch(ctx.require_view(), name), deleted=True)

    scope = f"/deleted{kind.collection}/{name}"
    return await _run(req, kind, "GetDeleted", kind.read_action, scope, False, run, "get")


async def recover(req: ApiRequest, kind: ObjectKind[T], undelete: Callable[[VaultView, str], T]) -> Result:
    name = req.params["name"]

    def run(ctx: Context) -> Result:
        return kind.bundle(req, ctx, undelete(ctx.require_view(), name))

    return await _run(req, kind, "Recover", "recover/action", f"/deleted{kind.collection}/{name}", True, run)


async def purge(req: ApiRequest, kind: ObjectKind[T], erase: Callable[[VaultView, str], None]) -> Result:
    name = req.params["name"]

    def run(ctx: Context) -> Result:
        erase(ctx.require_view(), name)
        return Result(status=204, object_id=f"{req.vault_url}/deleted{kind.collection}/{name}")

    return await _run(req, kind, "Purge", "purge/action", f"/deleted{kind.collection}/{name}", True, run)


# --- backup and restore --------------------------------------------------------------------------------------
async def backup(req: ApiRequest, kind: ObjectKind[T], export: Callable[[VaultView, str], bytes]) -> Result:
    name = req.params["name"]

    def run(ctx: Context) -> Result:
        blob = export(ctx.require_view(), name)
        return Result(body={"value": wire.b64url_encode(blob)}, object_id=f"{req.vault_url}/{kind.collection}/{name}")

    return await _run(req, kind, "Backup", "backup/action", f"/{kind.collection}/{name}", False, run)


async def restore(req: ApiRequest, kind: ObjectKind[T], load: Callable[[VaultView, bytes], T]) -> Result:
    body = await req.json()
    blob = wire.b64url_decode(body.get("value"))

    def run(ctx: Context) -> Result:
        return kind.bundle(req, ctx, load(ctx.require_view(), blob))

    return await _run(req, kind, "Restore", "restore/action", f"/{kind.collection}", True, run)
