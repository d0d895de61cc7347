"""Append-only JSON-lines audit log with Azure `AuditEvent` field names.

Records name the operation, caller, object id and outcome; never a secret value, key material,
token or password (callers pass only such fields). A record is written and fsynced before the
request's transaction commits; if that fails, the request fails.
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


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def write(self, record: dict[str, Any]) -> None:
        record.setdefault("time", datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"))
        record.setdefault("category", "AuditEvent")
        line = orjson.dumps(record) + b"\n"
        try:
            with self._lock:
                os.write(self._fd, line)
                os.fsync(self._fd)
        except OSError as exc:
            raise AuditError(f"audit log write failed: {exc.strerror}") from exc

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
