"""Coffer's identity admin API (the CLI's `coffer identity ...` talks to it): applications and managed
identities of the caller's tenant, their credentials, the tenant's trusted external issuers.

Bearer-authenticated; every call runs through the pipeline (authorize, one transaction, audit). A caller
sees only its own tenant: anything of another tenant answers 404, as if it did not exist. Secrets
(client secrets, managed-identity endpoint secrets) are returned once, by the call that creates them.
After every successful write the server refreshes its revocation index (`Coffer.identity_changed`),
so a deleted principal or a removed credential stops working at once.
"""

from __future__ import annotations

import re
import uuid
from typing import Any
from urllib.parse import urlsplit

import orjson

from coffer.api.request import ApiRequest
from coffer.api.routing import Route
from coffer.clock import now
from coffer.core import Context, Operation, Result
from coffer.errors import BadParameter, Conflict, NotFound
from coffer.identity import principals
from coffer.storage import CredentialRow, IssuerRow, PrincipalRow

_ACTION = "Microsoft.Coffer/identity/"
_MAX_LIFETIME_DAYS = 3650
_MAX_TEXT = 256
_MAX_URL = 600
# Azure's rule for user-assigned identity names: the name is the last segment of the resource id (mi_res_id)
_IDENTITY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{2,127}$")
_FEDERATED_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{2,119}$")


async def _run(req: ApiRequest, name: str, action: str, scope: str, write: bool, run: Any) -> Result:
    op = Operation(name=name, action=_ACTION + action, scope=scope, vault=None, write=write, run=run)
    assert req.caller is not None
    result = await req.pipeline.execute(op, req.caller, req.info)
    if write:
        req.app.identity_changed()
    return result


# --- request bodies -------------------------------------------------------------------------------


def _text(body: dict[str, Any], key: str, *, required: bool = True, limit: int = _MAX_TEXT) -> str | None:
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise BadParameter(f"{key} must be a non-empty string of at most {limit} characters.")
    return value


def _description(body: dict[str, Any]) -> str:
    value = body.get("description")
    if value is None or value == "":
        return ""
    if not isinstance(value, str) or len(value) > _MAX_TEXT:
        raise BadParameter(f"description must be a string of at most {_MAX_TEXT} characters.")
    return value


def _https_url(value: str, key: str, *, query: bool = False) -> str:
    try:
        parts = urlsplit(value)
    except ValueError:
        raise BadParameter(f"{key} must be an https URL.") from None
    if parts.scheme != "https" or not parts.hostname or parts.fragment or len(value) > _MAX_URL:
        raise BadParameter(f"{key} must be an https URL.")
    if parts.query and not query:
        raise BadParameter(f"{key} must be an https URL without a query.")
    return value


def _jwks_document(value: Any) -> str:
    """An inline JWKS, checked and normalised to compact JSON."""
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            raise BadParameter("jwks is not valid JSON.") from None
    keys = value.get("keys") if isinstance(value, dict) else None
    if not isinstance(keys, list) or not keys or not all(isinstance(k, dict) and k.get("kty") for k in keys):
        raise BadParameter('An inline jwks must be a JSON object {"keys": [...]} of one or more JWKs.')
    if any(private in k for k in keys for private in ("d", "p", "q", "dp", "dq", "qi", "k")):
        raise BadParameter("The jwks holds private or symmetric key material: give only the public keys.")
    return orjson.dumps({"keys": keys}).decode()


def _jwks_source(value: Any) -> str:
    """Where the server gets the issuer's signing keys: an https URL, a file path on the server, or inline."""
    if isinstance(value, dict) or (isinstance(value, str) and value.lstrip().startswith("{")):
        return _jwks_document(value)
    if not isinstance(value, str) or not value.strip() or len(value) > _MAX_URL:
        raise BadParameter("jwks must be an https URL, an absolute file path on the server, or a JWKS document.")
    if "://" in value:
        return _https_url(value, "jwks", query=True)
    if not value.startswith("/") or "\x00" in value:
        raise BadParameter("A jwks file path must be an absolute path on the server.")
    return value


# --- shapes -------------------------------------------------------------------------------------


def _principal_body(row: PrincipalRow) -> dict[str, Any]:
    body: dict[str, Any] = {
        "objectId": row.object_id,
        "clientId": row.client_id,
        "tenantId": row.tenant_id,
        "displayName": row.display_name,
        "kind": row.kind,
        "created": row.created,
    }
    if row.kind == principals.MANAGED_IDENTITY:
        body["resourceId"] = principals.resource_id(row)
    return body


def _credential_body(row: CredentialRow) -> dict[str, Any]:
    body = principals.describe_credential(row)
    if row.data.get("imds"):
        body["imds"] = True
    return body


def _issuer_body(row: IssuerRow) -> dict[str, Any]:
    jwks: Any = row.jwks
    if jwks.startswith("{"):
        jwks = orjson.loads(jwks)
    return {"id": row.id, "issuer": row.issuer, "jwks": jwks, "audience": row.audience, "created": row.created}


def _principal(ctx: Context, id_or_client_id: str) -> PrincipalRow:
    return principals.get_principal(ctx.tx, ctx.caller.tenant_id, id_or_client_id)


def _scope(row: PrincipalRow) -> str:
    return f"/identity/principals/{row.object_id}"


# --- principals ---------------------------------------------------------------------------------


async def list_principals(req: ApiRequest) -> Result:
    def run(ctx: Context) -> Result:
        rows = ctx.tx.principal_list(ctx.caller.tenant_id)
        return Result(body={"value": [_principal_body(p) for p in rows]})

    return await _run(req, "PrincipalList", "principals/read", "/identity/principals", False, run)


async def create_principal(req: ApiRequest) -> Result:
    body = await req.json()
    display_name = _text(body, "displayName")
    kind = body.get("kind")
    if kind not in principals.KINDS:
        raise BadParameter(f"kind must be one of {', '.join(principals.KINDS)}.")
    assert display_name is not None
    if kind == principals.MANAGED_IDENTITY and not _IDENTITY_NAME.match(display_name):
        raise BadParameter(
            "The displayName of a managed identity is its resource name: 3-128 letters, digits, '-' or '_', "
            "starting with a letter or digit."
        )

    def run(ctx: Context) -> Result:
        tenant = ctx.caller.tenant_id
        if kind == principals.MANAGED_IDENTITY and any(
            p.kind == kind and p.display_name.lower() == display_name.lower() for p in ctx.tx.principal_list(tenant)
        ):
            raise Conflict(f"A managed identity named {display_name} already exists.", code="IdentityAlreadyExists")
        row = principals.create_principal(ctx.tx, tenant, display_name, kind)
        shown = _principal_body(row)
        if kind == principals.MANAGED_IDENTITY:
            issued = principals.add_secret(ctx.tx, row, principals.IDENTITY_ENDPOINT)
            shown["identityHeader"] = issued.secret
            shown["identityEndpoint"] = f"{req.app.authority}/msi/token"
            shown["credentialId"] = issued.credential_id
        return Result(status=201, body=shown, object_id=_scope(row))

    return await _run(req, "PrincipalCreate", "principals/write", "/identity/principals", True, run)


async def get_principal(req: ApiRequest) -> Result:
    pid = req.params["id"]

    def run(ctx: Context) -> Result:
        row = _principal(ctx, pid)
        return Result(body=_principal_body(row), object_id=_scope(row))

    return await _run(req, "PrincipalGet", "principals/read", f"/identity/principals/{pid}", False, run)


async def delete_principal(req: ApiRequest) -> Result:
    pid = req.params["id"]

    def run(ctx: Context) -> Result:
        row = _principal(ctx, pid)
        if row.object_id == ctx.caller.object_id:
            raise Conflict(
                "A principal cannot delete itself. Delete it with the credentials of another principal.",
                code="CannotDeleteSelf",
            )
        principals.delete_principal(ctx.tx, row)
        return Result(status=204, object_id=_scope(row))

    return await _run(req, "PrincipalDelete", "principals/delete", f"/identity/principals/{pid}", True, run)


# --- credentials --------------------------------------------------------------------------------


async def list_credentials(req: ApiRequest) -> Result:
    pid = req.params["id"]

    def run(ctx: Context) -> Result:
        row = _principal(ctx, pid)
        credentials = sorted(ctx.tx.credential_list(row.object_id), key=lambda c: (c.created, c.id))
        return Result(body={"value": [_credential_body(c) for c in credentials]}, object_id=_scope(row))

    scope = f"/identity/principals/{pid}/credentials"
    return await _run(req, "CredentialList", "principals/credentials/read", scope, False, run)


def _lifetime(body: dict[str, Any]) -> int | None:
    days = body.get("lifetimeDays")
    if days is None:
        return None
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= _MAX_LIFETIME_DAYS:
        raise BadParameter(f"lifetimeDays must be a whole number of days from 1 to {_MAX_LIFETIME_DAYS}.")
    return days * 86400


def _add_credential(ctx: Context, req: ApiRequest, row: PrincipalRow, body: dict[str, Any]) -> dict[str, Any]:
    kind = body.get("kind")
    if kind == principals.CLIENT_SECRET:
        issued = principals.add_secret(ctx.tx, row, kind, _lifetime(body), _description(body))
        created = ctx.tx.credential_get(issued.credential_id)
        assert created is not None
        return {**_credential_body(created), "secret": issued.secret}
    if kind == principals.CERTIFICATE:
        pem = body.get("certificate")
        if not isinstance(pem, str) or not pem.strip():
            raise BadParameter("certificate must be the PEM text of an X.509 certificate.")
        return _credential_body(principals.add_certificate(ctx.tx, row, pem.encode("utf-8"), _description(body)))
    if kind == principals.FEDERATED:
        name = _text(body, "name", limit=120)
        assert name is not None
        if not _FEDERATED_NAME.match(name):
            raise BadParameter("name must be 3-120 letters, digits, '-' or '_', starting with a letter or digit.")
        issuer = _text(body, "issuer", limit=_MAX_URL)
        subject = _text(body, "subject", limit=_MAX_URL)
        assert issuer is not None and subject is not None
        audiences = body.get("audiences")
        if audiences is not None and (not isinstance(audiences, list) or len(audiences) > 20):
            raise BadParameter("audiences must be a list of at most 20 strings.")
        if any(c.kind == kind and c.data.get("name") == name for c in ctx.tx.credential_list(row.object_id)):
            raise Conflict(f"A federated credential named {name} already exists on the principal.")
        credential = principals.add_federated(
            ctx.tx, row, name=name, issuer=_https_url(issuer, "issuer"), subject=subject, audiences=audiences
        )
        return _credential_body(credential)
    if kind == principals.IDENTITY_ENDPOINT:
        imds = body.get("imds", False)
        if not isinstance(imds, bool):
            raise BadParameter("imds must be true or false.")
        issued = principals.add_secret(ctx.tx, row, kind, None, _description(body))
        created = ctx.tx.credential_get(issued.credential_id)
        assert created is not None
        if imds:
            created.data["imds"] = True
            ctx.tx.credential_put(created)
        return {
            **_credential_body(created),
            "identityHeader": issued.secret,
            "identityEndpoint": f"{req.app.authority}/msi/token",
        }
    kinds = (principals.CLIENT_SECRET, principals.CERTIFICATE, principals.FEDERATED, principals.IDENTITY_ENDPOINT)
    raise BadParameter(f"kind must be one of {', '.join(kinds)}.")


async def add_credential(req: ApiRequest) -> Result:
    pid = req.params["id"]
    body = await req.json()

    def run(ctx: Context) -> Result:
        row = _principal(ctx, pid)
        shown = _add_credential(ctx, req, row, body)
        return Result(status=201, body=shown, object_id=f"{_scope(row)}/credentials/{shown['id']}")

    scope = f"/identity/principals/{pid}/credentials"
    return await _run(req, "CredentialCreate", "principals/credentials/write", scope, True, run)


async def remove_credential(req: ApiRequest) -> Result:
    pid, cid = req.params["id"], req.params["credentialId"]

    def run(ctx: Context) -> Result:
        row = _principal(ctx, pid)
        principals.remove_credential(ctx.tx, row, cid)
        return Result(status=204, object_id=f"{_scope(row)}/credentials/{cid}")

    scope = f"/identity/principals/{pid}/credentials/{cid}"
    return await _run(req, "CredentialDelete", "principals/credentials/delete", scope, True, run)


async def assign_identity(req: ApiRequest) -> Result:
    pid, cid = req.params["id"], req.params["credentialId"]
    body = await req.json()
    identity_id = _text(body, "identity", limit=64)
    assert identity_id is not None

    def run(ctx: Context) -> Result:
        row = _principal(ctx, pid)
        endpoint = ctx.tx.credential_get(cid)
        if endpoint is None or endpoint.object_id != row.object_id:
            raise NotFound(f"Credential {cid[:64]} was not found on this principal.", code="CredentialNotFound")
        principals.assign_identity(ctx.tx, endpoint, _principal(ctx, identity_id))
        return Result(body=_credential_body(endpoint), object_id=f"{_scope(row)}/credentials/{cid}")

    scope = f"/identity/principals/{pid}/credentials/{cid}"
    return await _run(req, "IdentityAssign", "principals/credentials/write", scope, True, run)


# --- trusted issuers and the tenant -------------------------------------------------------------


async def list_issuers(req: ApiRequest) -> Result:
    def run(ctx: Context) -> Result:
        return Result(body={"value": [_issuer_body(i) for i in ctx.tx.issuer_list(ctx.caller.tenant_id)]})

    return await _run(req, "IssuerList", "issuers/read", "/identity/issuers", False, run)


async def add_issuer(req: ApiRequest) -> Result:
    body = await req.json()
    issuer = _text(body, "issuer", limit=_MAX_URL)
    assert issuer is not None
    issuer = _https_url(issuer, "issuer").rstrip("/")
    jwks = _jwks_source(body.get("jwks"))
    audience = _text(body, "audience", required=False, limit=_MAX_URL)

    def run(ctx: Context) -> Result:
        tenant = ctx.caller.tenant_id
        if any(i.issuer == issuer for i in ctx.tx.issuer_list(tenant)):
            raise Conflict(f"The issuer {issuer} is already trusted by this tenant.", code="IssuerAlreadyExists")
        row = IssuerRow(
            id=uuid.uuid4().hex, tenant_id=tenant, issuer=issuer, jwks=jwks, audience=audience, created=now()
        )
        ctx.tx.issuer_put(row)
        return Result(status=201, body=_issuer_body(row), object_id=f"/identity/issuers/{row.id}")

    return await _run(req, "IssuerCreate", "issuers/write", "/identity/issuers", True, run)


async def remove_issuer(req: ApiRequest) -> Result:
    iid = req.params["id"]

    def run(ctx: Context) -> Result:
        if not any(i.id == iid for i in ctx.tx.issuer_list(ctx.caller.tenant_id)):
            raise NotFound(f"Issuer {iid[:64]} was not found.", code="IssuerNotFound")
        ctx.tx.issuer_delete(iid)
        return Result(status=204, object_id=f"/identity/issuers/{iid}")

    return await _run(req, "IssuerDelete", "issuers/delete", f"/identity/issuers/{iid}", True, run)


async def get_tenant(req: ApiRequest) -> Result:
    def run(ctx: Context) -> Result:
        row = ctx.tx.tenant_get(ctx.caller.tenant_id)
        if row is None:
            raise NotFound("The tenant of the caller was not found.", code="TenantNotFound")
        return Result(body={"id": row.id, "displayName": row.display_name})

    return await _run(req, "TenantGet", "tenant/read", "/identity/tenant", False, run)


_P = "/admin/identity/principals/{id}"

ROUTES = [
    Route("GET", "/admin/identity/principals", list_principals, "PrincipalList"),
    Route("POST", "/admin/identity/principals", create_principal, "PrincipalCreate"),
    Route("GET", _P, get_principal, "PrincipalGet"),
    Route("DELETE", _P, delete_principal, "PrincipalDelete"),
    Route("GET", _P + "/credentials", list_credentials, "CredentialList"),
    Route("POST", _P + "/credentials", add_credential, "CredentialCreate"),
    Route("DELETE", _P + "/credentials/{credentialId}", remove_credential, "CredentialDelete"),
    Route("POST", _P + "/credentials/{credentialId}/identities", assign_identity, "IdentityAssign"),
    Route("GET", "/admin/identity/issuers", list_issuers, "IssuerList"),
    Route("POST", "/admin/identity/issuers", add_issuer, "IssuerCreate"),
    Route("DELETE", "/admin/identity/issuers/{id}", remove_issuer, "IssuerDelete"),
    Route("GET", "/admin/identity/tenant", get_tenant, "TenantGet"),
]
