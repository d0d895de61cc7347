"""What a route handler gets: the parsed request, its vault, caller and the pipeline."""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.datastructures import QueryParams
from starlette.requests import ClientDisconnect, Request

from coffer.core import Pipeline, RequestInfo
from coffer.errors import BadParameter, PayloadTooLarge, RequestTimeout
from coffer.identity.tokens import Caller


def query_params(raw: bytes) -> QueryParams:
    """A request's query parameters; the short query strings that recur (`api-version=7.5`) are parsed once."""
    return _recurring_query(raw) if len(raw) <= 128 else QueryParams(raw)


@functools.lru_cache(maxsize=256)
def _recurring_query(raw: bytes) -> QueryParams:
    return QueryParams(raw)  # immutable: safe to share between requests


@dataclass
class ApiRequest:
    http: Request
    headers: dict[str, str]  # by lower-case name, the first of each (read once by the edge)
    params: dict[str, str]
    pipeline: Pipeline
    info: RequestInfo
    vault: str | None
    vault_url: str
    caller: Caller | None
    max_body: int
    app: Any  # coffer.app.Coffer (kept untyped here to keep the edge below the composition root)
    read_timeout: float = 30.0  # seconds for the whole body to arrive (slow clients)
    _body: bytes | None = field(default=None, repr=False)  # once read

    @property
    def query(self) -> QueryParams:
        return query_params(self.http.scope["query_string"])

    async def body_bytes(self) -> bytes:
        if self._body is None:
            self._body = await self._read_body()
        return self._body

    async def _read_body(self) -> bytes:
        declared = self.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            raise PayloadTooLarge(f"The request body is larger than {self.max_body} bytes.")
        chunks: list[bytes] = []
        size = 0
        receive = self.http.receive
        try:
            async with asyncio.timeout(self.read_timeout):
                while True:
                    message = await receive()
                    if message["type"] != "http.request":  # http.disconnect
                        raise ClientDisconnect()
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_body:
                        raise PayloadTooLarge(f"The request body is larger than {self.max_body} bytes.")
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            raise RequestTimeout(f"The request body was not received within {self.read_timeout:g} seconds.") from None
        except ClientDisconnect:
            raise BadParameter("The client closed the connection before the request body was complete.") from None
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def json(self, *, required: bool = True) -> dict[str, Any]:
        raw = await self.body_bytes()
        if not raw.strip():
            if required:
                raise BadParameter("The request body is required and must be a JSON object.")
            return {}
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise BadParameter("The request body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise BadParameter("The request body must be a JSON object.")
        return body
