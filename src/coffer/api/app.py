"""The ASGI application: host → vault or server, route, then the pipeline. Errors become Azure's envelope."""

from __future__ import annotations

import base64
import logging
import time
import traceback
from pathlib import Path
from typing import Any

import orjson
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from coffer.api.request import ApiRequest, query_params
from coffer.api.routes import access, admin, ca, certificates, identity, keys, rbac, secrets, system, tokens
from coffer.api.routing import Route, RouteTable, resolve
from coffer.audit import AuditError
from coffer.core import RequestInfo, Result
from coffer.crypto import DecryptionFailed
from coffer.errors import (
    BadParameter,
    CofferError,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    Sealed,
    Throttled,
    Unauthorized,
)
from coffer.identity.tokens import Caller
from coffer.storage import StorageError

log = logging.getLogger("coffer.api")

VAULT_ROUTES = RouteTable(secrets.ROUTES + keys.ROUTES + certificates.ROUTES + rbac.ROUTES)
SERVER_PUBLIC_ROUTES = RouteTable(system.PUBLIC_ROUTES + tokens.ROUTES + ca.PUBLIC_ROUTES)
SERVER_ROUTES = RouteTable(system.ROUTES + admin.ROUTES + ca.ROUTES + identity.ROUTES + access.ROUTES)

_SECURITY_HEADERS = {
    "cache-control": "no-cache",
    "pragma": "no-cache",
    "expires": "-1",
    "x-content-type-options": "nosniff",
    "strict-transport-security": "max-age=31536000;includeSubDomains",
    "x-ms-keyvault-service-version": "coffer",
}


class Api:
    def __init__(self, coffer: Any) -> None:
        self.coffer = coffer  # coffer.app.Coffer
        self.pipeline = coffer.pipeline

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        audit = self.pipeline.audit
        audit.requests_in_flight += 1  # lets the audit log wait for their records to share one fsync
        try:
            response = await self.handle(Request(scope, receive))
            await response.send(send)
        finally:
            audit.requests_in_flight -= 1

    async def handle(self, request: Request) -> _Response:
        path: str = request.scope["path"]
        api_version = query_params(request.scope["query_string"]).get("api-version")
        headers, repeated = _headers(request.scope["headers"])
        client = request.scope.get("client")
        info = RequestInfo(
            request_uri=path if api_version is None else f"{path}?api-version={api_version}",
            caller_ip=client[0] if client else "",
            correlation_id=headers.get("x-ms-client-request-id"),
            api_version=api_version,
            client_info=headers.get("user-agent"),
        )
        kind, vault = self.coffer.host_kind(headers.get("host", ""))
        caller: Caller | None = None
        route: Route | None = None
        try:
            if repeated:  # which one counts would depend on who reads it
                raise BadParameter(f"The request has more than one {repeated.title()} header.")
            if kind is None:
                raise NotFound("No vault or service of this server answers at this host name.", code="NotFound")
            method = request.method
            params: dict[str, str] = {}
            if kind == "server":
                try:
                    route, params = resolve(SERVER_PUBLIC_ROUTES, method, path)
                except NotFound:
                    route = None
            if route is None:
                caller = await self.pipeline.authenticate(
                    headers.get("authorization"), self.coffer.tenant_of(vault) if vault else None
                )
                route, params = resolve(VAULT_ROUTES if kind == "vault" else SERVER_ROUTES, method, path)
            api_request = ApiRequest(
                http=request,
                headers=headers,
                params=params,
                pipeline=self.pipeline,
                info=info,
                vault=vault,
                vault_url=self.coffer.vault_url(vault) if vault else self.coffer.authority,
                caller=caller,
                max_body=self.coffer.config.max_body_bytes,
                app=self.coffer,
                read_timeout=self.coffer.config.request_read_timeout_seconds,
            )
            result: Result = await route.handler(api_request)
            return self._render(result.status, result.body, info, result.headers)
        except CofferError as error:
            return await self._fail(error, info, route, vault, caller)
        except DecryptionFailed as error:  # a stored blob was altered or moved: never garbage, and tell the operator
            log.error("request %s (%s): stored data failed its integrity check: %s", info.correlation_id or "-",
                      route.name if route else "-", _described(error))
            return await self._fail(
                CofferError("Stored data failed its integrity check; it may have been altered. Nothing was returned."),
                info, route, vault, caller,
            )
        except (AuditError, StorageError) as error:
            log.error("request %s failed closed: %s", info.correlation_id or "-", _described(error))
            return self._render(
                500,
                CofferError("The request could not be completed durably; nothing was changed. Try again.").envelope(),
                info,
            )
        except Exception as error:
            log.error(
                "unexpected error in request %s (%s): %s",
                info.correlation_id or "-",
                route.name if route else "-",
                _described(error),
            )
            return await self._fail(CofferError("An internal error occurred."), info, route, vault, caller)

    async def _fail(
        self,
        error: CofferError,
        info: RequestInfo,
        route: Route | None,
        vault: str | None,
        caller: Caller | None,
    ) -> _Response:
        headers: dict[str, str] = {}
        if isinstance(error, Unauthorized):
            headers["www-authenticate"] = self._challenge(vault, claims=error.claims_challenge)
        if isinstance(error, Throttled) and error.retry_after:
            headers["retry-after"] = str(error.retry_after)
        if isinstance(error, (RequestTimeout, PayloadTooLarge)):
            headers["connection"] = "close"  # the rest of the body may still be on its way: never read it
        try:
            name = route.name if route and route.name else ("Authentication" if error.status == 401 else "Unknown")
            await self.pipeline.audit_failure(name, vault, caller, info, error)
        except AuditError as audit_error:
            log.error("audit of request %s failed: %s", info.correlation_id or "-", _described(audit_error))
            error = CofferError("The request could not be audited; it was refused.")
        return self._render(error.status, error.envelope(), info, headers)

    def _challenge(self, vault: str | None, *, claims: bool) -> str:
        tenant = self.coffer.tenant_of(vault) if vault else ""
        authority = self.coffer.authority
        if claims:
            payload = orjson.dumps({"access_token": {"nbf": {"essential": True, "value": str(int(time.time()))}}})
            encoded = base64.urlsafe_b64encode(payload).rstrip(b"=").decode()
            return (
                f'Bearer realm="", authorization_uri="{authority}/{tenant}/oauth2/authorize", '
                f'error="insufficient_claims", claims="{encoded}"'
            )
        return f'Bearer authorization="{authority}/{tenant}", resource="{self.coffer.resource}"'

    @staticmethod
    def _render(status: int, body: Any, info: RequestInfo, extra: dict[str, str] | None = None) -> _Response:
        headers = list(_SECURITY_HEADERS_RAW)
        client_request_id = info.correlation_id  # the x-ms-client-request-id header
        if client_request_id:
            headers.append((b"x-ms-client-request-id", client_request_id[:128].encode("latin-1")))
        media_type = b"application/json; charset=utf-8"
        for name, value in (extra or {}).items():
            if name == "content-type":
                media_type = value.encode("latin-1")
            else:
                headers.append((name.encode("latin-1"), value.encode("latin-1")))
        if status == 204 or body is None:
            if status != 204:
                headers.append((b"content-length", b"0"))
            return _Response(status, headers, b"")
        if isinstance(body, bytes):  # a raw document (e.g. a published CA certificate)
            content = body
            if extra is None or "content-type" not in extra:
                media_type = b"application/octet-stream"
        else:
            content = orjson.dumps(body)
        headers.append((b"content-type", media_type))
        headers.append((b"content-length", str(len(content)).encode()))
        return _Response(status, headers, content)


class _Response:
    """A response as ASGI messages (the headers already encoded)."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    async def send(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})


_SECURITY_HEADERS_RAW = [(k.encode(), v.encode()) for k, v in _SECURITY_HEADERS.items()]
_UNIQUE = ("host", "authorization")


def _headers(raw: list[tuple[bytes, bytes]]) -> tuple[dict[str, str], str | None]:
    """The request's headers by (lower-case) name, read once; and the name of Host or Authorization if repeated."""
    headers: dict[str, str] = {}
    repeated = None
    for name, value in raw:
        key = name.decode("latin-1").lower()
        if key in headers:  # the first one counts, as for starlette's Headers.get
            if key in _UNIQUE:
                repeated = key
            continue
        headers[key] = value.decode("latin-1")
    return headers, repeated


__all__ = ["Api", "Sealed"]


def _described(error: BaseException) -> str:
    """An error for the log without its message (messages of low-level errors can quote data): its type and where it
    was raised."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return f"{type(error).__name__}{where}"
