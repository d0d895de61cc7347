"""Append-only JSON-lines audit log with Azure `AuditEvent` field names.

Records name the operation, caller, object id and outcome; never a secret value, key material,
token or password (callers pass only such fields). No request is answered before its record is durable: a write
waits for it before its transaction commits (`write`, from the writer thread, which fsyncs the records of a whole
group of writes itself), a read before its response is sent (`write_async`, on the event loop, which serves other
requests meanwhile). If that fails, the request fails.

Group commit of reads: one flusher thread writes and fsyncs every record that is waiting as one batch, so concurrent
requests share an fsync; every caller of a batch that failed gets AuditError. While other requests of this process are
in flight (the edge counts them in `requests_in_flight`), the flusher waits up to `GROUP_DELAY_SECONDS` for their
records to join the batch (as PostgreSQL's commit_delay with commit_siblings): under load an fsync per one or two
requests cost about a sixth of the CPU of a secret get; a lone request is never delayed.

Rotation: `reopen` (SIGHUP, see cli/server.py) continues in a new file at the same path once log rotation has moved
the old one away; a write and its fsync always go to the same file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from pathlib import Path
from typing import Any

import orjson


class AuditError(Exception):
    """The audit record could not be made durable."""


class _Entry:
    __slots__ = ("error", "future", "line")

    def __init__(self, line: bytes, future: asyncio.Future[None]) -> None:
        self.line = line
        self.future = future  # resolved on its event loop once the line is durable (or failed)
        self.error: str | None = None


def _line(record: dict[str, Any]) -> bytes:
    if "time" not in record:
        record["time"] = _timestamp()
    record.setdefault("category", "AuditEvent")
    return orjson.dumps(record) + b"\n"


_second: tuple[int, str] = (-1, "")  # the last whole second, formatted (replaced whole: threads see one or the other)


def _timestamp() -> str:
    """Now as 2026-11-29T16:42:58.123Z, the date and time formatted once a second (datetime.isoformat with a time
    zone cost about a third of an audit line)."""
    global _second
    now = time.time()
    second = int(now)
    cached = _second
    if cached[0] != second:
        cached = _second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{cached[1]}.{int((now - second) * 1000):03d}Z"


# How long the flusher waits for the records of requests in flight to join a batch (see the module's docstring).
GROUP_DELAY_SECONDS = 0.001


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = _open(path)
        self._io = threading.Lock()  # a write and its fsync go to one file, whatever `reopen` does meanwhile
        self._cond = threading.Condition()
        self._pending: list[_Entry] = []
        self._closing = False
        self._direct = 0  # write() calls in progress (close waits for them)
        self.requests_in_flight = 0  # counted by the HTTP edge (on the event loop; read here as a hint only)
        self._flusher = threading.Thread(target=self._flush_forever, name="coffer-audit", daemon=True)
        self._flusher.start()

    def write(self, *records: dict[str, Any]) -> None:
        """Append records and fsync them in the calling thread (which blocks until they are durable). The writer
        thread calls this once per group of writes; O_APPEND keeps its lines whole beside the flusher's."""
        data = b"".join(_line(record) for record in records)
        with self._cond:
            if self._closing:
                raise AuditError("audit log write failed: the audit log is closed")
            self._direct += 1
        try:
            self._append(data)
        except OSError as exc:
            raise AuditError(f"audit log write failed: {exc.strerror or type(exc).__name__}") from None
        finally:
            with self._cond:
                self._direct -= 1
                if not self._direct:
                    self._cond.notify_all()

    async def write_async(self, record: dict[str, Any]) -> None:
        """Append a record and return once it is durable, without holding a thread meanwhile."""
        entry = _Entry(_line(record), asyncio.get_running_loop().create_future())
        with self._cond:
            if self._closing:
                raise AuditError("audit log write failed: the audit log is closed")
            self._pending.append(entry)
            waiting = len(self._pending)
            if waiting == 1 or waiting >= self.requests_in_flight:  # the first, or the last one the flusher awaits
                self._cond.notify_all()
        await entry.future

    def _flush_forever(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending:
                    return
                deadline = time.monotonic() + GROUP_DELAY_SECONDS
                while len(self._pending) < self.requests_in_flight and not self._closing:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                batch, self._pending = self._pending, []
            error = None
            try:
                self._append(b"".join(e.line for e in batch))
            except OSError as exc:
                error = exc.strerror or type(exc).__name__
            loops: dict[asyncio.AbstractEventLoop, list[_Entry]] = {}
            for entry in batch:
                entry.error = error
                loops.setdefault(entry.future.get_loop(), []).append(entry)
            for loop, entries in loops.items():
                with contextlib.suppress(RuntimeError):  # RuntimeError: that loop has closed, nobody waits any more
                    loop.call_soon_threadsafe(_resolve, entries)

    def _append(self, data: bytes) -> None:
        with self._io:
            os.write(self._fd, data)
            os.fsync(self._fd)

    def reopen(self) -> None:
        """Continue in a new file at `path` (after log rotation moved the old one away; SIGHUP): records made
        durable so far stay in the old file, the next ones go to the new. If the new file cannot be opened, the
        old one stays in use and OSError is raised."""
        fd = _open(self.path)
        with self._io:
            if self._fd < 0:  # closed meanwhile
                os.close(fd)
                return
            old, self._fd = self._fd, fd
        os.close(old)

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._flusher.is_alive() and self._flusher is not threading.current_thread():
            self._flusher.join()
        with self._cond:
            while self._direct:
                self._cond.wait()
            with self._io:
                if self._fd >= 0:
                    os.close(self._fd)
                    self._fd = -1


def _open(path: Path) -> int:
    """The log for appending, created if need be; a new file's name is made durable too (its directory fsynced), or
    a crash could take records that were acknowledged as durable away with it."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _resolve(entries: list[_Entry]) -> None:
    """On the waiting loop: complete each request's wait (unless it was cancelled meanwhile)."""
    for entry in entries:
        if entry.future.done():
            continue
        if entry.error is None:
            entry.future.set_result(None)
        else:
            entry.future.set_exception(AuditError(f"audit log write failed: {entry.error}"))
