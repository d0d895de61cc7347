"""The HTTP edge's transport for a response: its head and body leave in one write (one TLS record, one send())."""

from __future__ import annotations

import asyncio

from coffer.api.protocol import _CoalescingTransport


class _Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after close"
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str) -> str:
        return f"extra {name}"


def test_head_and_body_are_written_together_then_writes_pass_through() -> None:
    async def scenario() -> list[bytes]:
        raw = _Transport()
        transport = _CoalescingTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
        transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
        assert raw.writes == []
        transport.write(b"body")
        transport.write(b"more")
        await asyncio.sleep(0)
        assert transport.get_extra_info("peername") == "extra peername"
        return raw.writes

    assert asyncio.run(scenario()) == [b"HTTP/1.1 200 OK\r\n\r\nbody", b"more"]


def test_a_lone_head_goes_out_at_the_end_of_the_loop_step_and_close_flushes_first() -> None:
    async def scenario() -> tuple[list[bytes], list[bytes]]:
        loop = asyncio.get_running_loop()
        lone = _Transport()
        transport = _CoalescingTransport(lone, loop)  # type: ignore[arg-type]
        transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await asyncio.sleep(0)
        closing = _Transport()
        transport = _CoalescingTransport(closing, loop)  # type: ignore[arg-type]
        transport.write(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
        transport.close()
        await asyncio.sleep(0)  # the scheduled flush finds nothing (and does not write after the close)
        return lone.writes, closing.writes

    lone, closing = asyncio.run(scenario())
    assert lone == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    assert closing == [b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n"]
