"""Two ASGI apps that answer every request with the same small JSON body and the same headers.

`raw`       talks ASGI directly: one `http.response.start` and one `http.response.body` message.
`starlette` does what coffer.api.app.Api does per request: wraps the scope in starlette.requests.Request,
            reads the path, query string, a few headers and the client address, then answers with a
            starlette.responses.Response carrying Coffer's security headers.

The difference between the two is the per-request cost of Starlette's Request/Response objects.
Both handle the lifespan protocol, because granian's `asgi` interface runs it.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

HEADERS = {
    "cache-control": "no-cache",
    "pragma": "no-cache",
    "expires": "-1",
    "x-content-type-options": "nosniff",
    "strict-transport-security": "max-age=31536000;includeSubDomains",
    "x-ms-keyvault-service-version": "coffer",
}
BODY: dict[str, Any] = {
    "value": "hello",
    "id": "https://dev.vault.localhost:8443/secrets/hello/0123456789abcdef0123456789abcdef",
    "attributes": {"enabled": True, "created": 1700000000, "updated": 1700000000, "recoveryLevel": "Recoverable"},
}


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


_RAW_HEADERS = [(k.encode(), v.encode()) for k, v in HEADERS.items()]


async def raw(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    body = orjson.dumps({**BODY, "path": scope["path"]})
    headers = [
        *_RAW_HEADERS,
        (b"content-type", b"application/json; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def starlette(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    request = Request(scope, receive)
    # The same per-request reads coffer.api.app.Api.handle does before routing.
    path = request.url.path
    _ = request.query_params.get("api-version")
    _ = request.client.host if request.client else ""
    _ = request.headers.get("x-ms-client-request-id")
    _ = request.headers.get("user-agent")
    _ = request.headers.get("host", "")
    _ = request.headers.get("authorization")
    headers = dict(HEADERS)
    response = Response(
        orjson.dumps({**BODY, "path": path}),
        status_code=200,
        headers=headers,
        media_type="application/json; charset=utf-8",
    )
    await response(scope, receive, send)
