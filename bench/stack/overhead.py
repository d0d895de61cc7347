"""CPU cost of each app per request with no server and no network: the apps are called with an in-memory scope.

This isolates what the Starlette Request/Response objects add, independently of the server and of machine noise.
Prints one JSON object: {"raw": microseconds_per_request, "starlette": ..., "iterations": n}.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import apps
import uvloop

SCOPE: dict[str, Any] = {
    "type": "http",
    "asgi": {"version": "3.0", "spec_version": "2.3"},
    "http_version": "1.1",
    "server": ("127.0.0.1", 8443),
    "client": ("127.0.0.1", 50000),
    "scheme": "https",
    "method": "GET",
    "root_path": "",
    "path": "/secrets/hello",
    "raw_path": b"/secrets/hello",
    "query_string": b"api-version=7.5",
    "headers": [
        (b"host", b"127.0.0.1:8443"),
        (b"user-agent", b"azsdk-python-keyvault-secrets/4.9.0 Python/3.11.7"),
        (b"accept", b"application/json"),
        (b"authorization", b"Bearer eyJhbGciOiJFUzI1NiJ9.e30.sig"),
        (b"x-ms-client-request-id", b"0f8fad5b-d9cb-469f-a165-70867728950e"),
    ],
}


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message: dict[str, Any]) -> None:
    return None


async def measure(app: Any, n: int) -> float:
    for _ in range(n // 10):  # warm-up
        await app(dict(SCOPE), _receive, _send)
    t0 = time.perf_counter()
    for _ in range(n):
        await app(dict(SCOPE), _receive, _send)
    return (time.perf_counter() - t0) / n * 1e6


async def main(n: int) -> dict[str, float]:
    best: dict[str, float] = {}
    for _ in range(3):  # best of three, in alternation
        for name in ("raw", "starlette"):
            us = await measure(getattr(apps, name), n)
            best[name] = min(best.get(name, us), us)
    return {**{k: round(v, 2) for k, v in best.items()}, "iterations": n}


if __name__ == "__main__":
    print(json.dumps(uvloop.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 50_000))))
