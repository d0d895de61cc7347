"""What a route handler gets: the parsed request, its vault, caller and the pipeline."""

from __future__ import annotations

import asyncio
import functools
import weakref
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.datastructures import QueryParams
from starlette.requests import ClientDisconnect, Request

from coffer.core import Pipeline, RequestInfo
from coffer.errors import BadParameter, PayloadTooLarge, RequestTimeout
from coffer.identity.tokens import Caller


class _BodyDeadlines:
    """The deadlines of the request bodies being read on one event loop, checked by one timer for all of them: a
    timer per request (asyncio.timeout) cost ~6 µs, about a twentieth of a key operation. A body still incomplete at
    its deadline has its task cancelled (and the reader answers 408); the check runs every `_SWEEP_SECONDS` at most,
    so a deadline fires up to that late."""

    _SWEEP_SECONDS = 0.25
    _of_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _BodyDeadlines] = weakref.WeakKeyDictionary()

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._waiting: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> _BodyDeadlines:
        deadlines = cls._of_loop.get(loop)
        if deadlines is None:
            deadlines = cls._of_loop[loop] = cls(loop)
        return deadlines

    def add(self, seconds: float) -> asyncio.Task[Any]:
        task = asyncio.current_task(self._loop)
        assert task is not None
        self._waiting[task] = self._loop.time() + seconds
        if self._timer is None:
            self._timer = self._loop.call_later(min(self._SWEEP_SECONDS, seconds), self._sweep)
        return task

    def remove(self, task: asyncio.Task[Any]) -> None:
        self._waiting.pop(task, None)
        self._expired.discard(task)

    def expired(self, task: asyncio.Task[Any]) -> bool:
        return task in self._expired

    def _sweep(self) -> None:
        now = self._loop.time()
        for task, deadline in list(self._waiting.items()):
            if deadline <= now:
                del self._waiting[task]
                self._expired.add(task)
                task.cancel()
        self._timer = self._loop.call_later(self._SWEEP_SECONDS, self._sweep) if self._waiting else None


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
        deadlines = _BodyDeadlines.of(asyncio.get_running_loop())
        task = deadlines.add(self.read_timeout)
        try:
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
        except asyncio.CancelledError:
            if deadlines.expired(task):
                task.uncancel()
                raise RequestTimeout(
                    f"The request body was not received within {self.read_timeout:g} seconds."
                ) from None
            raise
        except ClientDisconnect:
            raise BadParameter("The client closed the connection before the request body was complete.") from None
        finally:
            deadlines.remove(task)
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
