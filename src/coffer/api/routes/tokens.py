"""The token service's endpoints, shaped as Entra ID's so MSAL and azure-identity accept them (C12-C15)."""

from __future__ import annotations

import ipaddress
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import anyio.to_thread

from coffer.api.request import ApiRequest
from coffer.api.routing import Route
from coffer.core import Pipeline, Result
from coffer.errors import CofferError, NotFound, Sealed
from coffer.identity import principals
from coffer.identity.assertions import AssertionVerifier, InvalidAssertion, token_endpoints
from coffer.identity.throttle import AuthThrottle
from coffer.storage import CredentialRow, PrincipalRow, Transaction

_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_IMDS_SELECTORS = {
    "client_id": "client_id",
    "object_id": "object_id",
    "msi_res_id": "mi_res_id",
    "mi_res_id": "mi_res_id",
}
_PROXY_HEADERS = ("x-forwarded-for", "forwarded", "x-real-ip")  # a local proxy relays remote callers: refuse
_MULTIPLE_IDENTITIES = (
    "Multiple user assigned identities exist, please specify the clientId / resourceId of the identity "
    "in the token request"
)


class OAuthError(CofferError):
    """An OAuth 2.0 error response ({"error", "error_description"}), as Entra ID sends."""

    def __init__(
        self,
        status: int,
        error: str,
        description: str,
        code: int,
        *,
        reason: str | None = None,
        auth_failure: bool = False,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(description, code=error)
        self.status = status
        self.aadsts = code
        self.reason = reason or description  # for the audit log
        self.auth_failure = auth_failure  # a failed credential check: counts towards the throttle
        self.retry_after = retry_after

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


class ImdsError(OAuthError):
    """An Azure IMDS error: only {"error", "error_description"}."""

    def envelope(self) -> dict[str, object]:
        return {"error": self.code, "error_description": self.message}


@dataclass
class Guards:
    """Per-server state of the token endpoints: the assertion verifier (JWKS and jti caches) and the throttle."""

    assertions: AssertionVerifier
    throttle: AuthThrottle


_GUARDS: weakref.WeakKeyDictionary[Pipeline, Guards] = weakref.WeakKeyDictionary()
_GUARDS_LOCK = threading.Lock()


def guards(pipeline: Pipeline) -> Guards:
    with _GUARDS_LOCK:
        found = _GUARDS.get(pipeline)
        if found is None:
            found = _GUARDS[pipeline] = Guards(AssertionVerifier(jwks=pipeline.tokens.jwks_cache), AuthThrottle())
        return found


def _record(
    req: ApiRequest,
    principal: PrincipalRow | None,
    status: int,
    description: str | None,
    *,
    client_id: str | None = None,
    credential: CredentialRow | None = None,
) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "requestUri": req.info.request_uri,
        "httpStatusCode": status,
        "clientInfo": req.info.client_info,
    }
    if client_id and principal is None:
        properties["clientId"] = client_id[:64]  # who was claimed; never the secret or assertion
    if credential is not None:
        properties["credentialId"] = credential.id
        properties["credentialKind"] = credential.kind
    record: dict[str, Any] = {
        "operationName": "Authentication",
        "resultType": "Success" if status < 400 else "Failure",
        "resultSignature": "OK" if status < 400 else ("TooManyRequests" if status == 429 else "Unauthorized"),
        "callerIpAddress": req.info.caller_ip,
        "correlationId": req.info.correlation_id,
        "durationMs": str(int((time.perf_counter() - req.info.started) * 1000)),
        "identity": {"claim": {"oid": principal.object_id, "appid": principal.client_id, "tid": principal.tenant_id}}
        if principal
        else None,
        "properties": properties,
    }
    if description:
        record["resultDescription"] = description
    return record


async def _refused(req: ApiRequest, error: OAuthError, client_key: str | None, client_id: str | None) -> Result:
    """The response to a failed request: audited once with its reason (on the event loop, without blocking it),
    counted if credentials were wrong."""
    if error.auth_failure:
        guards(req.pipeline).throttle.failed(client_key, req.info.caller_ip)
    await req.pipeline.audit.write_async(_record(req, None, error.status, error.reason, client_id=client_id))
    headers = {"retry-after": str(error.retry_after)} if error.retry_after else {}
    return Result(status=error.status, body=error.envelope(), headers=headers)


def _check_throttle(req: ApiRequest, client_key: str | None) -> None:
    """429 before any credential is checked while the client or the source address is locked out."""
    wait = guards(req.pipeline).throttle.retry_after(client_key, req.info.caller_ip)
    if wait is not None:
        raise OAuthError(
            429,
            "temporarily_unavailable",
            "Too many failed authentication attempts from this client or address. Try again later.",
            50053,
            reason="throttled: too many failed authentications",
            retry_after=wait,
        )


def _issue(req: ApiRequest, principal: PrincipalRow, credential: CredentialRow, audience: str) -> tuple[str, int]:
    managed = principal.kind == principals.MANAGED_IDENTITY
    token = req.pipeline.tokens.issue(
        object_id=principal.object_id,
        tenant_id=principal.tenant_id,
        client_id=principal.client_id,
        kind=principal.kind,
        audience=audience,
        credential_id=credential.id,
        resource_id=principals.resource_id(principal) if managed else None,
    )
    req.pipeline.audit.write(_record(req, principal, 200, None, credential=credential))
    return token


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


# --- client credentials grant ---------------------------------------------------------------------


async def token(req: ApiRequest) -> Result:
    if req.app.barrier.sealed:  # no signing key: answer 503, not an internal error
        raise Sealed()
    tenant = req.params["tenant"]
    form: dict[str, str] = {}
    try:
        form = await _form(req)
        client_id, audience = _grant(req, form)
    except OAuthError as error:
        return await _refused(req, error, None, form.get("client_id"))
    client_key = f"{tenant.lower()}/{client_id.lower()}"
    try:
        _check_throttle(req, client_key)
        return await anyio.to_thread.run_sync(_client_credentials, req, tenant, client_id, form, audience, client_key)
    except OAuthError as error:
        return await _refused(req, error, client_key, client_id)


async def _form(req: ApiRequest) -> dict[str, str]:
    raw = await req.body_bytes()
    try:
        return {k: v[0] for k, v in parse_qs(raw.decode("utf-8"), strict_parsing=False).items()}
    except UnicodeDecodeError:
        raise OAuthError(400, "invalid_request", "The request body must be form-encoded.", 900144) from None


def _grant(req: ApiRequest, form: dict[str, str]) -> tuple[str, str]:
    """(client_id, audience) of a well-formed client_credentials request."""
    if form.get("grant_type") != "client_credentials":
        raise OAuthError(400, "unsupported_grant_type", "Only the client_credentials grant is supported.", 70003)
    client_id = form.get("client_id", "")
    if not client_id or len(client_id) > 256:
        raise OAuthError(400, "invalid_request", "The request body must contain 'client_id'.", 900144)
    audience = _audience(req, form.get("scope", ""))
    if "client_assertion" in form or "client_assertion_type" in form:
        if form.get("client_assertion_type") != _ASSERTION_TYPE or not form.get("client_assertion"):
            raise OAuthError(
                400,
                "invalid_request",
                f"A client assertion needs client_assertion_type '{_ASSERTION_TYPE}' and a client_assertion.",
                900144,
            )
        if "client_secret" in form:
            raise OAuthError(400, "invalid_request", "Send either client_secret or client_assertion, not both.", 900144)
    return client_id, audience


def _client_credentials(
    req: ApiRequest, tenant: str, client_id: str, form: dict[str, str], audience: str, client_key: str
) -> Result:
    if form.get("client_assertion"):
        principal, credential = _by_assertion(req, tenant, client_id, form["client_assertion"])
    else:
        principal, credential = _by_secret(req, tenant, client_id, form.get("client_secret", ""))
    guards(req.pipeline).throttle.succeeded(client_key)
    access, expires = _issue(req, principal, credential, audience)
    lifetime = expires - int(time.time())
    return Result(
        body={"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime, "access_token": access}
    )


def _by_secret(req: ApiRequest, tenant: str, client_id: str, secret: str) -> tuple[PrincipalRow, CredentialRow]:
    with req.pipeline.storage.read() as tx:
        found = None
        if principals.tenant_exists(tx, tenant) and secret:
            found = principals.authenticate_client_secret(tx, tenant, client_id, secret)
    if found is None:
        raise OAuthError(
            401,
            "invalid_client",
            "Invalid client secret provided, or the application "
            f"'{client_id[:64]}' was not found in tenant '{tenant[:64]}'.",
            7000215,
            reason="invalid client or secret" if secret else "no client secret or assertion",
            auth_failure=True,
        )
    return found


def _by_assertion(req: ApiRequest, tenant: str, client_id: str, assertion: str) -> tuple[PrincipalRow, CredentialRow]:
    bases = [req.app.authority]
    host = req.headers.get("host", "")
    if host:
        bases.append(f"https://{host}")
    try:
        return guards(req.pipeline).assertions.verify(
            req.pipeline.storage,
            assertion,
            tenant_id=tenant,
            client_id=client_id,
            audiences=token_endpoints(bases, tenant),
        )
    except InvalidAssertion as error:
        status, code = (400, "unauthorized_client") if error.aadsts == 700016 else (401, "invalid_client")
        raise OAuthError(
            status, code, error.message, error.aadsts, reason=f"client assertion: {error.reason}", auth_failure=True
        ) from None


# --- managed identity: App Service protocol -------------------------------------------------------


async def managed_identity_token(req: ApiRequest) -> Result:
    """App Service managed-identity protocol: GET {IDENTITY_ENDPOINT}?resource=...&api-version=2019-08-01."""
    if req.app.barrier.sealed:
        raise Sealed()
    header = req.headers.get("x-identity-header", "")
    endpoint_key = f"endpoint/{header.partition('.')[0][:64]}" if header else None
    try:
        if not header:
            raise OAuthError(400, "invalid_request", "The X-IDENTITY-HEADER header is required.", 900144)
        audience = _audience(req, req.query.get("resource", ""))
        _check_throttle(req, endpoint_key)
        selector = {k: req.query[k] for k in ("client_id", "object_id", "principal_id", "mi_res_id") if k in req.query}
        return await anyio.to_thread.run_sync(_app_service, req, header, selector, audience)
    except OAuthError as error:
        return await _refused(req, error, endpoint_key, req.query.get("client_id"))


def _app_service(req: ApiRequest, header: str, selector: dict[str, str], audience: str) -> Result:
    with req.pipeline.storage.read() as tx:
        endpoint = principals.authenticate_identity_endpoint(tx, header)
        principal = principals.select_identity(tx, endpoint, selector) if endpoint else None
    if endpoint is None:
        raise OAuthError(
            401,
            "invalid_client",
            "The X-IDENTITY-HEADER is not valid.",
            7000215,
            reason="invalid identity header",
            auth_failure=True,
        )
    if principal is None:
        raise OAuthError(
            400,
            "invalid_request",
            "No managed identity matching the requested client_id/object_id/mi_res_id is assigned to this endpoint.",
            700016,
            reason="identity selector does not match",
        )
    access, expires = _issue(req, principal, endpoint, audience)
    return Result(
        body={
            "access_token": access,
            "expires_on": str(expires),
            "resource": audience,
            "token_type": "Bearer",
            "client_id": principal.client_id,
        }
    )


# --- managed identity: IMDS protocol (the node's 169.254.169.254) ---------------------------------


def _loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


async def imds_token(req: ApiRequest) -> Result:
    """Azure IMDS: GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=R with `Metadata: true`,
    answered only to callers on this host, for the managed identities of the endpoint flagged `imds`."""
    if not req.app.config.imds:
        raise NotFound("The instance metadata endpoint is off on this server (start it with --imds).")
    if req.app.barrier.sealed:
        raise Sealed()
    try:
        _imds_request(req)
        audience = _imds_audience(req)
        selector = {_IMDS_SELECTORS[k]: req.query[k] for k in _IMDS_SELECTORS if req.query.get(k)}
        return await anyio.to_thread.run_sync(_imds, req, selector, audience)
    except OAuthError as error:
        return await _refused(req, error, None, req.query.get("client_id"))


def _imds_request(req: ApiRequest) -> None:
    if not _loopback(req.info.caller_ip) or any(h in req.headers for h in _PROXY_HEADERS):
        raise ImdsError(
            403,
            "forbidden",
            "The instance metadata endpoint answers only requests from this host.",
            0,
            reason="IMDS request from a non-loopback address or through a proxy",
        )
    if req.headers.get("metadata", "").lower() != "true":
        raise ImdsError(400, "invalid_request", "Required metadata header not specified", 0)
    if not req.query.get("api-version"):
        raise ImdsError(400, "invalid_request", "Required query variable 'api-version' is missing", 0)


def _imds_audience(req: ApiRequest) -> str:
    resource = req.query.get("resource", "")
    if not resource:
        raise ImdsError(400, "invalid_request", "Required query variable 'resource' is missing", 0)
    try:
        return _audience(req, resource)
    except OAuthError as error:
        raise ImdsError(400, "invalid_resource", error.message, 500011) from None


def _imds(req: ApiRequest, selector: dict[str, str], audience: str) -> Result:
    with req.pipeline.storage.read() as tx:
        endpoint, principal = _imds_identity(tx, selector)
    access, expires = _issue(req, principal, endpoint, audience)
    now = int(time.time())
    lifetime = str(expires - now)
    return Result(
        body={
            "access_token": access,
            "client_id": principal.client_id,
            "expires_in": lifetime,
            "expires_on": str(expires),
            "ext_expires_in": lifetime,
            "not_before": str(now),
            "resource": audience,
            "token_type": "Bearer",
        }
    )


def _imds_endpoints(tx: Transaction) -> list[CredentialRow]:
    found = [
        c
        for c in tx.credential_all()
        if c.data.get("imds") is True and principals.valid(c, principals.IDENTITY_ENDPOINT)
    ]
    return sorted(found, key=lambda c: (c.created, c.id))


def _imds_identity(tx: Transaction, selector: dict[str, str]) -> tuple[CredentialRow, PrincipalRow]:
    endpoints = _imds_endpoints(tx)
    if selector:
        for endpoint in endpoints:
            principal = principals.select_identity(tx, endpoint, selector)
            if principal is not None:
                return endpoint, principal
        raise ImdsError(400, "invalid_request", "Identity not found", 0, reason="IMDS selector matches no identity")
    if not endpoints:
        raise ImdsError(400, "invalid_request", "Identity not found", 0, reason="no endpoint is flagged for IMDS")
    endpoint = endpoints[0]
    principal = principals.select_identity(tx, endpoint, {})
    if principal is not None:
        return endpoint, principal
    assigned = [r for r in (tx.principal_get(oid) for oid in endpoint.data.get("identities", [])) if r is not None]
    if len(assigned) != 1:
        message = _MULTIPLE_IDENTITIES if assigned else "Identity not found"
        raise ImdsError(400, "invalid_request", message, 0, reason="IMDS request without a selector is ambiguous")
    return endpoint, assigned[0]


ROUTES = [
    Route("GET", "/{tenant}/v2.0/.well-known/openid-configuration", openid_configuration),
    Route("GET", "/{tenant}/discovery/v2.0/keys", jwks),
    Route("POST", "/{tenant}/oauth2/v2.0/token", token),
    Route("GET", "/msi/token", managed_identity_token),
    Route("GET", "/metadata/identity/oauth2/token", imds_token),
]
