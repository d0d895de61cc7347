"""The token service's endpoints, shaped as Entra ID's so MSAL and azure-identity accept them (C12-C15)."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qs

import anyio.to_thread

from coffer.api.request import ApiRequest
from coffer.api.routing import Route
from coffer.core import Result
from coffer.errors import CofferError, Sealed
from coffer.identity import principals
from coffer.storage import PrincipalRow

_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class OAuthError(CofferError):
    """An OAuth 2.0 error response ({"error", "error_description"}), as Entra ID sends."""

    def __init__(self, status: int, error: str, description: str, code: int) -> None:
        super().__init__(description, code=error)
        self.status = status
        self.aadsts = code

    def envelope(self) -> dict[str, object]:
        return {
            "error": self.code,
            "error_description": f"AADSTS{self.aadsts}: {self.message}",
            "error_codes": [self.aadsts],
            "timestamp": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
        }


def _audience(req: ApiRequest, requested: str) -> str:
    resource: str = req.app.resource
    wanted = requested.strip()
    if wanted.endswith("/.default"):
        wanted = wanted[: -len("/.default")]
    if wanted.rstrip("/") != resource:
        raise OAuthError(
            400,
            "invalid_scope",
            f"The resource '{wanted[:200]}' is not served by this token service. Ask for '{resource}/.default'.",
            500011,
        )
    return resource


def _audit(req: ApiRequest, principal: PrincipalRow | None, status: int, description: str | None) -> None:
    record: dict[str, Any] = {
        "operationName": "Authentication",
        "resultType": "Success" if status < 400 else "Failure",
        "resultSignature": "OK" if status < 400 else "Unauthorized",
        "callerIpAddress": req.info.caller_ip,
        "durationMs": str(int((time.perf_counter() - req.info.started) * 1000)),
        "identity": {"claim": {"oid": principal.object_id, "appid": principal.client_id, "tid": principal.tenant_id}}
        if principal
        else None,
        "properties": {
            "requestUri": req.info.request_uri,
            "httpStatusCode": status,
            "clientInfo": req.info.client_info,
        },
    }
    if description:
        record["resultDescription"] = description
    req.pipeline.audit.write(record)


async def openid_configuration(req: ApiRequest) -> Result:
    tenant = req.params["tenant"]
    base = f"{req.app.authority}/{tenant}"
    return Result(
        body={
            "issuer": f"{base}/v2.0",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "jwks_uri": f"{base}/discovery/v2.0/keys",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt"],
            "grant_types_supported": ["client_credentials"],
            "response_types_supported": ["token"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "tenant_region_scope": None,
            "subject_types_supported": ["pairwise"],
        }
    )


async def jwks(req: ApiRequest) -> Result:
    return Result(body=req.pipeline.tokens.jwks())


async def token(req: ApiRequest) -> Result:
    if req.app.barrier.sealed:  # no signing key: answer 503, not an internal error
        raise Sealed()
    tenant = req.params["tenant"]
    raw = await req.body_bytes()
    try:
        form = {k: v[0] for k, v in parse_qs(raw.decode("utf-8"), strict_parsing=False).items()}
    except UnicodeDecodeError:
        raise OAuthError(400, "invalid_request", "The request body must be form-encoded.", 900144) from None
    if form.get("grant_type") != "client_credentials":
        raise OAuthError(400, "unsupported_grant_type", "Only the client_credentials grant is supported.", 70003)
    client_id, scope = form.get("client_id", ""), form.get("scope", "")
    if not client_id:
        raise OAuthError(400, "invalid_request", "The request body must contain 'client_id'.", 900144)
    audience = _audience(req, scope)
    if form.get("client_assertion_type") == _ASSERTION_TYPE or "client_assertion" in form:
        raise OAuthError(400, "invalid_client", "Client assertions are not supported yet by this server.", 700027)
    secret = form.get("client_secret", "")

    def authenticate() -> Result:
        with req.pipeline.storage.read() as tx:
            principal = None
            if principals.tenant_exists(tx, tenant) and secret:
                found = principals.authenticate_client_secret(tx, tenant, client_id, secret)
                principal = found[0] if found else None
        if principal is None:
            _audit(req, None, 401, "invalid client or secret")
            raise OAuthError(
                401,
                "invalid_client",
                "Invalid client secret provided, or the application "
                f"'{client_id[:64]}' was not found in tenant '{tenant[:64]}'.",
                7000215,
            )
        access, expires = req.pipeline.tokens.issue(
            object_id=principal.object_id,
            tenant_id=tenant,
            client_id=principal.client_id,
            kind=principal.kind,
            audience=audience,
        )
        _audit(req, principal, 200, None)
        lifetime = expires - int(time.time())
        return Result(
            body={"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime, "access_token": access}
        )

    return await anyio.to_thread.run_sync(authenticate)


async def managed_identity_token(req: ApiRequest) -> Result:
    """App Service managed-identity protocol: GET {IDENTITY_ENDPOINT}?resource=...&api-version=2019-08-01."""
    if req.app.barrier.sealed:
        raise Sealed()
    header = req.http.headers.get("x-identity-header", "")
    resource = req.query.get("resource", "")
    if not header:
        raise OAuthError(400, "invalid_request", "The X-IDENTITY-HEADER header is required.", 900144)
    audience = _audience(req, resource)
    selector = {k: req.query[k] for k in ("client_id", "object_id", "principal_id", "mi_res_id") if k in req.query}

    def authenticate() -> Result:
        with req.pipeline.storage.read() as tx:
            endpoint = principals.authenticate_identity_endpoint(tx, header)
            principal = principals.select_identity(tx, endpoint, selector) if endpoint else None
        if endpoint is None:
            _audit(req, None, 401, "invalid identity header")
            raise OAuthError(401, "invalid_client", "The X-IDENTITY-HEADER is not valid.", 7000215)
        if principal is None:
            _audit(req, None, 400, "identity selector does not match")
            raise OAuthError(
                400,
                "invalid_request",
                "No managed identity matching the requested client_id/object_id/mi_res_id is assigned "
                "to this endpoint.",
                700016,
            )
        access, expires = req.pipeline.tokens.issue(
            object_id=principal.object_id,
            tenant_id=principal.tenant_id,
            client_id=principal.client_id,
            kind=principal.kind,
            audience=audience,
        )
        _audit(req, principal, 200, None)
        return Result(
            body={
                "access_token": access,
                "expires_on": str(expires),
                "resource": audience,
                "token_type": "Bearer",
                "client_id": principal.client_id,
            }
        )

    return await anyio.to_thread.run_sync(authenticate)


ROUTES = [
    Route("GET", "/{tenant}/v2.0/.well-known/openid-configuration", openid_configuration),
    Route("GET", "/{tenant}/discovery/v2.0/keys", jwks),
    Route("POST", "/{tenant}/oauth2/v2.0/token", token),
    Route("GET", "/msi/token", managed_identity_token),
]
