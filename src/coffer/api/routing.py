"""A small routing table: (method, path pattern) → handler, matched on split path segments.

Patterns use `{name}` for one segment and `{version?}` for an optional last segment, so that
`/secrets/n`, `/secrets/n/` and `/secrets/n/<version>` all reach the same handler (C4).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from coffer.errors import MethodNotAllowed, NotFound

if TYPE_CHECKING:
    from coffer.api.request import ApiRequest

Handler = Callable[["ApiRequest"], Awaitable[Any]]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: str
    handler: Handler
    name: str = ""  # Azure's audit operationName, used when the request fails before the pipeline

    def match(self, segments: list[str]) -> dict[str, str] | None:
        parts = self.pattern.strip("/").split("/") if self.pattern.strip("/") else []
        optional_tail = bool(parts) and parts[-1].endswith("?}")
        if len(segments) != len(parts) and not (optional_tail and len(segments) == len(parts) - 1):
            return None
        params: dict[str, str] = {}
        for index, part in enumerate(parts):
            value = segments[index] if index < len(segments) else ""
            if part.startswith("{"):
                params[part.strip("{}?")] = value
            elif value.lower() != part:
                return None
        return params


def split_path(path: str) -> list[str]:
    """`/secrets/n/` → ["secrets", "n", ""]; a trailing slash means an empty last segment."""
    stripped = path[1:] if path.startswith("/") else path
    return stripped.split("/") if stripped else []


def resolve(routes: list[Route], method: str, path: str) -> tuple[Route, dict[str, str]]:
    segments = split_path(path)
    allowed = False
    for route in routes:
        params = route.match(segments)
        if params is None:
            continue
        if route.method == method:
            return route, params
        allowed = True
    if allowed:
        raise MethodNotAllowed(f"The requested method {method} is not allowed for this resource.")
    raise NotFound("The requested resource was not found. Check the path of the operation.", code="NotFound")
