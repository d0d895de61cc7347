"""uvicorn's httptools protocol with the two limits it lacks: a deadline for the request head and a cap on its size.

uvicorn closes a connection only when it stays idle `timeout_keep_alive` seconds after a response, and every byte
received restarts that timer; a new connection that never completes a request, or a client dripping its headers
one byte at a time (slowloris), holds a connection (and the headers read so far, which have no size limit) for as
long as it likes. Here each request head (request line and headers) must be complete within `head_timeout` seconds
of the connection opening or of the previous response, whatever the client trickles in the meantime, and may not
exceed `max_head_bytes`. The body is the application's business (`ApiRequest.body_bytes` has its own deadline).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

DEFAULT_MAX_HEAD_BYTES = 64 * 1024
_CLOSE_GRACE_SECONDS = 1.0


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    head_timeout: float = 30.0
    max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_deadline: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._head_started = False  # some byte of the next request's head has arrived
        self._head_too_large = False
        self._lost = False

    # --- the deadline: armed when a connection opens and after each response; only a complete head disarms it ----

    def _arm_head_deadline(self) -> None:
        self._disarm_head_deadline()
        self._head_started = False
        self._head_deadline = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _disarm_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if self.transport.is_closing():
            return
        if self._head_started:
            self._refuse(408, "RequestTimeout", "The request headers were not received in time.")
        else:  # an idle connection: close it quietly, as the keep-alive timeout does
            self._close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._disarm_head_deadline()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline:
            self._arm_head_deadline()

    # --- the size cap ------------------------------------------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        """uvicorn answers a parser error (which is what an exception in a parser callback becomes) with this: in
        Azure's error envelope, as every other refusal."""
        if self._head_too_large:
            self._refuse(431, "RequestHeaderFieldsTooLarge",
                         f"The request line and headers are larger than {self.max_head_bytes} bytes.")
        else:
            self._refuse(400, "BadParameter", "The request is not valid HTTP/1.1.")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._head_started = True
        if self._head_deadline is None:  # a pipelined request: its own deadline
            self._head_deadline = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self.max_head_bytes:
            self._head_too_large = True
            raise ValueError("request head too large")  # the parser stops; uvicorn calls send_400_response

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm_head_deadline()
        super().on_headers_complete()
        if self.cycle is not None:  # the cycle uvicorn just made for this request
            self.cycle.transport = _CoalescingTransport(self.transport, self.loop)  # type: ignore[assignment]

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Azure's error envelope, then close: the connection is in no state to carry another request."""
        self._disarm_head_deadline()
        body = orjson.dumps({"error": {"code": code, "message": message}})
        reason = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}[status]
        head = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
        for name, value in self.server_state.default_headers:
            head.append(name + b": " + value + b"\r\n")
        head.append(b"content-type: application/json; charset=utf-8\r\n")
        head.append(b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body))
        self.transport.write(b"".join(head) + body)
        self._close()

    def _close(self) -> None:
        """Close with TLS's close_notify; a peer that keeps sending instead of closing its side would hold that
        graceful close open (uvloop waits for its close_notify up to the SSL shutdown timeout, 30 s): cut it off
        after a grace period."""
        self.transport.close()
        self.loop.call_later(_CLOSE_GRACE_SECONDS, self._abort_if_open)

    def _abort_if_open(self) -> None:
        if not self._lost:
            self.transport.abort()


class _CoalescingTransport:
    """The transport as a request's response cycle sees it. uvicorn writes a response's head and its body separately,
    so each response cost two TLS records and two send() calls; here the head waits for the body's write (in the same
    step of the event loop, as Coffer sends them) and both go out together. Whatever is still held when that step
    ends (a head whose body comes later, a 100 Continue) is written then."""

    __slots__ = ("_held", "_loop", "_started", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._started = False

    def write(self, data: bytes) -> None:
        if self._held is not None:
            data, self._held = self._held + data, None
        elif not self._started:  # the first write: hold it until the next one or the end of this loop step
            self._started = True
            self._held = data
            self._loop.call_soon(self.flush)
            return
        self._transport.write(data)

    def flush(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def guarded_protocol(head_timeout: float, max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES) -> type[HttpToolsProtocol]:
    """The protocol class for uvicorn.Config(http=...), with these limits."""
    return type("CofferHttpProtocol", (GuardedHttpToolsProtocol,),
                {"head_timeout": head_timeout, "max_head_bytes": max_head_bytes})
