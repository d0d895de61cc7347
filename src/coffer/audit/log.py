"""Append-only JSON-lines audit log with Azure `AuditEvent` field names.

Records name the operation, caller, object id and outcome; never a secret value, key material,
token or password (callers pass only such fields). A record is written and fsynced before the
request's transaction commits; if that fails, the request fails.

Group commit: records that arrive while one fsync runs are written and fsynced together by the next
caller in line (no extra thread); every caller returns only once its own record is durable, and every
caller of a batch that failed gets AuditError.
"""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson


class AuditError(Exception):
    """The audit record could not be made durable."""


class _Entry:
    __slots__ = ("done", "error", "line")

    def __init__(self, line: bytes) -> None:
        self.line = line
        self.done = False
        self.error: str | None = None


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._cond = threading.Condition()
        self._pending: list[_Entry] = []
        self._writing = False

    def write(self, record: dict[str, Any]) -> None:
        record.setdefault("time", datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"))
        record.setdefault("category", "AuditEvent")
        entry = _Entry(orjson.dumps(record) + b"\n")
        with self._cond:
            self._pending.append(entry)
            while not entry.done:
                if self._writing:
                    self._cond.wait()
                else:
                    self._flush()
        if entry.error is not None:
            raise AuditError(f"audit log write failed: {entry.error}")

    def _flush(self) -> None:
        """Write and fsync every pending record as one batch (called holding the condition's lock, which is
        released while the disk works)."""
        batch, self._pending = self._pending, []
        self._writing = True
        self._cond.release()
        error = None
        try:
            if self._fd < 0:
                error = "the audit log is closed"
            else:
                os.write(self._fd, b"".join(e.line for e in batch))
                os.fsync(self._fd)
        except OSError as exc:
            error = exc.strerror or type(exc).__name__
        finally:
            self._cond.acquire()
            self._writing = False
        for entry in batch:
            entry.error, entry.done = error, True
        self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            while self._writing:
                self._cond.wait()
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
