"""Append-only JSON-lines audit log with Azure `AuditEvent` field names.

Records name the operation, caller, object id and outcome; never a secret value, key material,
token or password (callers pass only such fields). No request is answered before its record is durable: a write
waits for it before its transaction commits (`write`, from a worker thread), a read before its response is sent
(`write_async`, on the event loop, which serves other requests meanwhile). If that fails, the request fails.

Group commit: one flusher thread writes and fsyncs every record that is waiting as one batch, so concurrent
requests share an fsync; every caller of a batch that failed gets AuditError.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson


class AuditError(Exception):
    """The audit record could not be made durable."""


class _Entry:
    __slots__ = ("done", "error", "future", "line")

    def __init__(self, line: bytes, future: asyncio.Future[None] | None = None) -> None:
        self.line = line
        self.future = future  # set for write_async: resolved on its event loop
        self.done = False
        self.error: str | None = None


def _line(record: dict[str, Any]) -> bytes:
    record.setdefault("time", datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"))
    record.setdefault("category", "AuditEvent")
    return orjson.dumps(record) + b"\n"


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._cond = threading.Condition()
        self._pending: list[_Entry] = []
        self._closing = False
        self._flusher = threading.Thread(target=self._flush_forever, name="coffer-audit", daemon=True)
        self._flusher.start()

    def write(self, *records: dict[str, Any]) -> None:
        """Append records and return once they are durable (blocks the calling thread)."""
        entries = [_Entry(_line(record)) for record in records]
        with self._cond:
            for entry in entries:
                self._enqueue(entry)
            while not all(entry.done for entry in entries):
                self._cond.wait()
        for entry in entries:
            if entry.error is not None:
                raise AuditError(f"audit log write failed: {entry.error}")

    async def write_async(self, record: dict[str, Any]) -> None:
        """Append a record and return once it is durable, without holding a thread meanwhile."""
        entry = _Entry(_line(record), asyncio.get_running_loop().create_future())
        assert entry.future is not None
        with self._cond:
            self._enqueue(entry)
        await entry.future

    def _enqueue(self, entry: _Entry) -> None:  # holding the condition's lock
        if self._closing:
            entry.error, entry.done = "the audit log is closed", True
            if entry.future is not None:
                entry.future.set_exception(AuditError("audit log write failed: the audit log is closed"))
            return
        self._pending.append(entry)
        if len(self._pending) == 1:
            self._cond.notify_all()

    def _flush_forever(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending:
                    return
                batch, self._pending = self._pending, []
            error = None
            try:
                os.write(self._fd, b"".join(e.line for e in batch))
                os.fsync(self._fd)
            except OSError as exc:
                error = exc.strerror or type(exc).__name__
            with self._cond:
                for entry in batch:
                    entry.error, entry.done = error, True
                self._cond.notify_all()
            loops: dict[asyncio.AbstractEventLoop, list[_Entry]] = {}
            for entry in batch:
                if entry.future is not None:
                    loops.setdefault(entry.future.get_loop(), []).append(entry)
            for loop, entries in loops.items():
                with contextlib.suppress(RuntimeError):  # RuntimeError: that loop has closed, nobody waits any more
                    loop.call_soon_threadsafe(_resolve, entries)

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._flusher.is_alive() and self._flusher is not threading.current_thread():
            self._flusher.join()
        with self._cond:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def _resolve(entries: list[_Entry]) -> None:
    """On the waiting loop: complete each request's wait (unless it was cancelled meanwhile)."""
    for entry in entries:
        assert entry.future is not None
        if entry.future.done():
            continue
        if entry.error is None:
            entry.future.set_result(None)
        else:
            entry.future.set_exception(AuditError(f"audit log write failed: {entry.error}"))
