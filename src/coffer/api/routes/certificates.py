"""The Certificates API of Key Vault (specs/keyvault/2026-04-01/certificates.json).

Implemented: create (issuer Self or an internal CA issues at once; issuer Unknown returns a CSR, then merge, cancel
or delete the pending operation; key types RSA, EC, and RSA-HSM, EC-HSM on premium vaults), import (PKCS#12, PEM),
get, list, versions, update, policy, soft delete, recover, purge, backup and restore. Data actions: merging uses
certificates/create/action; cancelling or deleting a pending operation uses certificates/update/action; everything
that reads uses certificates/read, contacts included (their writes use certificatecontacts/write); issuers use
certificatecas/read|write|delete. Contacts and issuers are per-vault objects of kinds "certificate-contacts" and
"certificate-issuer" (objects/certificate.py).
"""

from __future__ import annotations

from typing import Any

from coffer.api import wire
from coffer.api.request import ApiRequest
from coffer.api.routes import _objects
from coffer.api.routing import Route
from coffer.core import Context, Operation, Result
from coffer.objects import certificate, key, rules
from coffer.storage import ObjectRow, VaultRow, VersionRow

_ACTION = "Microsoft.KeyVault/vaults/"


async def _run(
    req: ApiRequest,
    name: str,
    action: str,
    scope: str,
    write: bool,
    run: Any,
    policy: str | None = None,
    *,
    family: str = "certificates/",
) -> Result:
    op = Operation(
        name=name, action=_ACTION + family + action, scope=scope, vault=req.vault, write=write, run=run, policy=policy
    )
    assert req.caller is not None
    return await req.pipeline.execute(op, req.caller, req.info)


def _backends(req: ApiRequest) -> key.Backends:
    backends: key.Backends = req.app.key_backends
    return backends


# --- wire shapes ---------------------------------------------------------------------------------------------
def _attributes(row: VersionRow, vault: VaultRow) -> dict[str, Any]:
    result: dict[str, Any] = {"enabled": row.enabled}
    if row.nbf is not None:
        result["nbf"] = row.nbf
    if row.exp is not None:
        result["exp"] = row.exp
    result.update(
        created=row.created,
        updated=row.updated,
        recoverableDays=vault.retention_days,
        recoveryLevel=rules.recovery_level(vault),
    )
    return result


def _cert_id(req: ApiRequest, obj: ObjectRow, version: str | None = None) -> str:
    base = f"{req.vault_url}/certificates/{obj.name}"
    return f"{base}/{version}" if version else base


def _policy_body(req: ApiRequest, obj: ObjectRow, policy: dict[str, Any]) -> dict[str, Any]:
    return {"id": f"{_cert_id(req, obj)}/policy", **policy}


def _bundle(req: ApiRequest, ctx: Context, item: certificate.Certificate, *, deleted: bool = False) -> Result:
    assert ctx.vault is not None
    obj, row = item.obj, item.row
    body: dict[str, Any] = {
        "id": _cert_id(req, obj, row.version),
        "kid": f"{req.vault_url}/keys/{obj.name}/{row.version}",
        "sid": f"{req.vault_url}/secrets/{obj.name}/{row.version}",
        "x5t": item.x5t,
        "cer": item.cer,
        "attributes": _attributes(row, ctx.vault),
    }
    if row.content_type is not None:
        body["contentType"] = row.content_type
    if row.tags is not None:
        body["tags"] = row.tags
    if item.policy:
        body["policy"] = _policy_body(req, obj, item.policy)
    if deleted:
        body.update(_deleted_fields(req, obj))
    return Result(body=body, object_id=body["id"])


def _deleted_fields(req: ApiRequest, obj: ObjectRow) -> dict[str, Any]:
    return {
        "recoveryId": f"{req.vault_url}/deletedcertificates/{obj.name}",
        "deletedDate": obj.deleted,
        "scheduledPurgeDate": obj.purge_at,
    }


def _item(req: ApiRequest, vault: VaultRow, item: certificate.Certificate, versioned: bool) -> dict[str, Any]:
    value: dict[str, Any] = {
        "id": _cert_id(req, item.obj, item.row.version if versioned else None),
        "x5t": item.x5t,
        "attributes": _attributes(item.row, vault),
    }
    if item.row.tags is not None:
        value["tags"] = item.row.tags
    return value


_KIND: _objects.ObjectKind[certificate.Certificate] = _objects.ObjectKind(
    operation="Certificate",
    collection="certificates",
    read_action="read",
    bundle=_bundle,
    item=_item,
    deleted_fields=lambda req, item: _deleted_fields(req, item.obj),
)


def _operation(req: ApiRequest, obj: ObjectRow, pending: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": f"{_cert_id(req, obj)}/pending",
        "issuer": pending.get("issuer") or {"name": "Self"},
        "csr": pending.get("csr"),
        "cancellation_requested": bool(pending.get("cancellation_requested")),
        "status": pending.get("status"),
        "status_details": pending.get("status_details"),
        "request_id": pending.get("request_id"),
    }
    if pending.get("target"):
        body["target"] = _cert_id(req, obj)
    if pending.get("error"):
        body["error"] = pending["error"]
    # Key Vault leaves out what an operation does not have (no CSR of a certificate issued at once, no details):
    # the specs type these fields as strings, never null
    return {field: value for field, value in body.items() if value is not None}


# Key Vault's status_details of a create's 202 answer (spec example CreateCertificate-example.json)
_IN_PROGRESS_DETAILS = (
    "Pending certificate created. Certificate request is in progress. This may take some time based on the issuer "
    "provider. Please check again later."
)


# --- handlers --------------------------------------------------------------------------------------------------
async def create_certificate(req: ApiRequest) -> Result:
    name, body = req.params["name"], await req.json()

    def run(ctx: Context) -> Result:
        obj, _ = certificate.create(ctx.require_view(), _backends(req), name, body, vault_url=req.vault_url)
        # issuer Self has issued already, but the SDK's poller only polls (and then fetches the certificate) when
        # the first answer is inProgress (contract C22); GET .../pending answers completed
        pending = obj.data["pending"]
        op = _operation(req, obj, {**pending, "status": "inProgress", "target": None,
                                   "status_details": pending.get("status_details") or _IN_PROGRESS_DETAILS})
        return Result(status=202, body=op, object_id=op["id"], headers={"Location": op["id"]})

    return await _run(req, "CertificateCreate", "create/action", f"/certificates/{name}", True, run)


async def import_certificate(req: ApiRequest) -> Result:
    name, body = req.params["name"], await req.json()

    def run(ctx: Context) -> Result:
        view = ctx.require_view()
        item = certificate.import_certificate(view, _backends(req), name, body, vault_url=req.vault_url)
        return _bundle(req, ctx, item)

    return await _run(req, "CertificateImport", "import/action", f"/certificates/{name}", True, run)


async def backup_certificate(req: ApiRequest) -> Result:
    return await _objects.backup(req, _KIND, certificate.backup)


async def restore_certificate(req: ApiRequest) -> Result:
    return await _objects.restore(req, _KIND, lambda view, blob: certificate.restore(view, _backends(req), blob))


async def get_pending(req: ApiRequest) -> Result:
    name = req.params["name"]

    def run(ctx: Context) -> Result:
        obj, pending = certificate.pending_operation(ctx.require_view(), name)
        op = _operation(req, obj, pending)
        return Result(body=op, object_id=op["id"])

    return await _run(req, "CertificatePendingGet", "read", f"/certificates/{name}", False, run, "get")


async def merge_certificate(req: ApiRequest) -> Result:
    name, body = req.params["name"], await req.json()

    def run(ctx: Context) -> Result:
        item = certificate.merge(ctx.require_view(), name, body, vault_url=req.vault_url)
        result = _bundle(req, ctx, item)
        result.status = 201
        return result

    return await _run(req, "CertificatePendingMerge", "create/action", f"/certificates/{name}", True, run)


async def delete_pending(req: ApiRequest) -> Result:
    name = req.params["name"]

    def run(ctx: Context) -> Result:
        obj, pending = certificate.delete_pending(ctx.require_view(), _backends(req), name)
        op = _operation(req, obj, pending)
        return Result(body=op, object_id=op["id"])

    return await _run(req, "CertificatePendingDelete", "update/action", f"/certificates/{name}", True, run)


async def cancel_pending(req: ApiRequest) -> Result:
    name, body = req.params["name"], await req.json()

    def run(ctx: Context) -> Result:
        obj, pending = certificate.cancel_pending(ctx.require_view(), _backends(req), name, body)
        op = _operation(req, obj, pending)
        return Result(body=op, object_id=op["id"])

    return await _run(req, "CertificatePendingUpdate", "update/action", f"/certificates/{name}", True, run)


async def get_certificate(req: ApiRequest) -> Result:
    name, version = req.params["name"], req.params.get("version") or None

    def run(ctx: Context) -> Result:
        return _bundle(req, ctx, certificate.get(ctx.require_view(), name, version))

    return await _run(req, "CertificateGet", "read", f"/certificates/{name}", False, run, "get")


async def update_certificate(req: ApiRequest) -> Result:
    name, version = req.params["name"], req.params.get("version") or None
    body = await req.json()

    def run(ctx: Context) -> Result:
        return _bundle(req, ctx, certificate.update(ctx.require_view(), name, version, body))

    return await _run(req, "CertificateUpdate", "update/action", f"/certificates/{name}", True, run)


async def get_policy(req: ApiRequest) -> Result:
    name = req.params["name"]

    def run(ctx: Context) -> Result:
        obj, policy = certificate.get_policy(ctx.require_view(), name)
        return Result(body=_policy_body(req, obj, policy), object_id=_cert_id(req, obj))

    return await _run(req, "CertificatePolicyGet", "read", f"/certificates/{name}", False, run, "get")


async def update_policy(req: ApiRequest) -> Result:
    name, body = req.params["name"], await req.json()

    def run(ctx: Context) -> Result:
        obj, policy = certificate.set_policy(ctx.require_view(), name, body)
        return Result(body=_policy_body(req, obj, policy), object_id=_cert_id(req, obj))

    return await _run(req, "CertificatePolicyUpdate", "update/action", f"/certificates/{name}", True, run)


async def delete_certificate(req: ApiRequest) -> Result:
    return await _objects.delete(req, _KIND, certificate.delete)


async def list_certificates(req: ApiRequest) -> Result:
    return await _objects.list_latest(req, _KIND, certificate.list_latest, deleted=False)


async def list_deleted_certificates(req: ApiRequest) -> Result:
    return await _objects.list_latest(req, _KIND, certificate.list_latest, deleted=True)


async def list_certificate_versions(req: ApiRequest) -> Result:
    return await _objects.list_versions(req, _KIND, certificate.list_versions)


async def get_deleted_certificate(req: ApiRequest) -> Result:
    return await _objects.get_deleted(req, _KIND, certificate.get_deleted)


async def purge_deleted_certificate(req: ApiRequest) -> Result:
    return await _objects.purge(req, _KIND, lambda view, name: certificate.purge(view, _backends(req), name))


async def recover_deleted_certificate(req: ApiRequest) -> Result:
    return await _objects.recover(req, _KIND, certificate.recover)


# --- contacts and issuers ------------------------------------------------------------------------------------------
def _contacts(req: ApiRequest, contacts: list[dict[str, Any]]) -> Result:
    url = f"{req.vault_url}/certificates/contacts"
    return Result(body={"id": url, "contacts": contacts}, object_id=url)


async def set_contacts(req: ApiRequest) -> Result:
    body = await req.json()

    def run(ctx: Context) -> Result:
        return _contacts(req, certificate.set_contacts(ctx.require_view(), body))

    return await _run(
        req, "CertificateContactsSet", "write", "/certificates/contacts", True, run, family="certificatecontacts/"
    )


async def get_contacts(req: ApiRequest) -> Result:
    def run(ctx: Context) -> Result:
        return _contacts(req, certificate.get_contacts(ctx.require_view()))

    return await _run(req, "CertificateContactsGet", "read", "/certificates/contacts", False, run, "get")


async def delete_contacts(req: ApiRequest) -> Result:
    def run(ctx: Context) -> Result:
        return _contacts(req, certificate.delete_contacts(ctx.require_view()))

    return await _run(
        req, "CertificateContactsDelete", "write", "/certificates/contacts", True, run, family="certificatecontacts/"
    )


def _issuer_id(req: ApiRequest, name: str) -> str:
    return f"{req.vault_url}/certificates/issuers/{name}"


def _issuer(req: ApiRequest, issuer: dict[str, Any]) -> Result:
    body = {"id": _issuer_id(req, issuer["name"]), **{k: v for k, v in issuer.items() if k != "name"}}
    return Result(body=body, object_id=body["id"])


async def _run_issuer(
    req: ApiRequest, operation: str, action: str, name: str, write: bool, run: Any, policy: str
) -> Result:
    """An operation on the issuer `name`: data action certificatecas/{action}, scope /certificates/issuers/{name}."""
    scope = f"/certificates/issuers/{name}"
    return await _run(req, operation, action, scope, write, run, policy, family="certificatecas/")


async def set_issuer(req: ApiRequest) -> Result:
    name, body = req.params["name"], await req.json()

    def run(ctx: Context) -> Result:
        return _issuer(req, certificate.set_issuer(ctx.require_view(), name, body))

    return await _run_issuer(req, "CertificateIssuerSet", "write", name, True, run, "setissuers")


async def update_issuer(req: ApiRequest) -> Result:
    name, body = req.params["name"], await req.json()

    def run(ctx: Context) -> Result:
        return _issuer(req, certificate.set_issuer(ctx.require_view(), name, body, partial=True))

    return await _run_issuer(req, "CertificateIssuerUpdate", "write", name, True, run, "setissuers")


async def get_issuer(req: ApiRequest) -> Result:
    name = req.params["name"]

    def run(ctx: Context) -> Result:
        return _issuer(req, certificate.get_issuer(ctx.require_view(), name))

    return await _run_issuer(req, "CertificateIssuerGet", "read", name, False, run, "getissuers")


async def delete_issuer(req: ApiRequest) -> Result:
    name = req.params["name"]

    def run(ctx: Context) -> Result:
        return _issuer(req, certificate.delete_issuer(ctx.require_view(), name))

    return await _run_issuer(req, "CertificateIssuerDelete", "delete", name, True, run, "deleteissuers")


async def list_issuers(req: ApiRequest) -> Result:
    size, after = wire.page_size(req.query), wire.skiptoken(req.query)

    def run(ctx: Context) -> Result:
        items = certificate.list_issuers(ctx.require_view(), after=after, limit=size + 1)
        more = len(items) > size
        items = items[:size]
        last = items[-1]["name"].lower() if more and items else None
        values = [{"id": _issuer_id(req, i["name"]), "provider": i["provider"]} for i in items]
        body = wire.page(
            values,
            vault_url=req.vault_url,
            path="/certificates/issuers",
            api_version=req.info.api_version,
            last=last,
            size=size,
        )
        return Result(body=body)

    return await _run(
        req,
        "CertificateIssuerList",
        "read",
        "/certificates/issuers",
        False,
        run,
        "listissuers",
        family="certificatecas/",
    )


ROUTES = [
    Route("PUT", "/certificates/contacts", set_contacts, "CertificateContactsSet"),
    Route("GET", "/certificates/contacts", get_contacts, "CertificateContactsGet"),
    Route("DELETE", "/certificates/contacts", delete_contacts, "CertificateContactsDelete"),
    Route("GET", "/certificates/issuers", list_issuers, "CertificateIssuerList"),
    Route("PUT", "/certificates/issuers/{name}", set_issuer, "CertificateIssuerSet"),
    Route("PATCH", "/certificates/issuers/{name}", update_issuer, "CertificateIssuerUpdate"),
    Route("GET", "/certificates/issuers/{name}", get_issuer, "CertificateIssuerGet"),
    Route("DELETE", "/certificates/issuers/{name}", delete_issuer, "CertificateIssuerDelete"),
    Route("GET", "/certificates", list_certificates, "CertificateList"),
    Route("POST", "/certificates/restore", restore_certificate, "CertificateRestore"),
    Route("POST", "/certificates/{name}/import", import_certificate, "CertificateImport"),
    Route("POST", "/certificates/{name}/backup", backup_certificate, "CertificateBackup"),
    Route("GET", "/certificates/{name}/versions", list_certificate_versions, "CertificateListVersions"),
    Route("POST", "/certificates/{name}/create", create_certificate, "CertificateCreate"),
    Route("GET", "/certificates/{name}/pending", get_pending, "CertificatePendingGet"),
    Route("DELETE", "/certificates/{name}/pending", delete_pending, "CertificatePendingDelete"),
    Route("PATCH", "/certificates/{name}/pending", cancel_pending, "CertificatePendingUpdate"),
    Route("POST", "/certificates/{name}/pending/merge", merge_certificate, "CertificatePendingMerge"),
    Route("GET", "/certificates/{name}/policy", get_policy, "CertificatePolicyGet"),
    Route("PATCH", "/certificates/{name}/policy", update_policy, "CertificatePolicyUpdate"),
    Route("DELETE", "/certificates/{name}", delete_certificate, "CertificateDelete"),
    Route("GET", "/certificates/{name}/{version?}", get_certificate, "CertificateGet"),
    Route("PATCH", "/certificates/{name}/{version?}", update_certificate, "CertificateUpdate"),
    Route("GET", "/deletedcertificates", list_deleted_certificates, "CertificateListDeleted"),
    Route("GET", "/deletedcertificates/{name}", get_deleted_certificate, "CertificateGetDeleted"),
    Route("DELETE", "/deletedcertificates/{name}", purge_deleted_certificate, "CertificatePurge"),
    Route("POST", "/deletedcertificates/{name}/recover", recover_deleted_certificate, "CertificateRecover"),
]
