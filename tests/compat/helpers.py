"""Assertions shared by the compatibility tests."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from azure.core.exceptions import HttpResponseError

UTC = dt.UTC


def unique(prefix: str = "t") -> str:
    """A secret name no other test (or earlier run against the same server) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def whole_seconds(delta: dt.timedelta) -> dt.datetime:
    """now + delta, truncated to seconds (Key Vault timestamps are integer epoch seconds)."""
    return (dt.datetime.now(UTC) + delta).replace(microsecond=0)


def envelope(exc: HttpResponseError) -> dict[str, Any]:
    """The raw error body; it must be exactly Azure's `{"error": {"code", "message", ...}}`."""
    assert exc.response is not None
    body = exc.response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error.get("code"), str) and error["code"], body
    assert isinstance(error.get("message"), str) and error["message"], body
    assert "retry-after" not in {k.lower() for k in exc.response.headers}, "4xx must not carry Retry-After (C11)"
    return error


def check_error(exc: BaseException, status: int, code: str, *, inner: str | None = None,
                exc_type: type[HttpResponseError] = HttpResponseError) -> HttpResponseError:
    """`exc` is the SDK's exception for `status` with Azure's `error.code` (and `innererror.code`)."""
    assert isinstance(exc, HttpResponseError), f"{type(exc).__name__}: {exc}"
    if exc_type is HttpResponseError:
        # 400/403 are plain HttpResponseErrors; 404 and 409 must map to the typed subclasses
        assert type(exc) is HttpResponseError, f"unexpected {type(exc).__name__}: {exc}"
    else:
        assert isinstance(exc, exc_type), f"expected {exc_type.__name__}, got {type(exc).__name__}: {exc}"
    assert exc.status_code == status, str(exc)
    assert exc.error is not None and exc.error.code == code, str(exc)
    error = envelope(exc)
    assert error["code"] == code
    if inner is not None:
        assert error.get("innererror", {}).get("code") == inner, error
    return exc
