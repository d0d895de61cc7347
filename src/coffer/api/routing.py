"""A small routing table: (method, path pattern) → handler, matched on split path segments.

Patterns use `{name}` for one segment and `{version?}` for an optional last segment, so that
`/secrets/n`, `/secrets/n/` and `/secrets/n/<version>` all reach the same handler (C4).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
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
    # the pattern split once: (literal, None) or (None, parameter name) per segment
    _parts: tuple[tuple[str | None, str | None], ...] = field(init=False, repr=False, compare=False)
    _optional_tail: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        stripped = self.pattern.strip("/")
        parts = stripped.split("/") if stripped else []
        split = tuple((None, p.strip("{}?")) if p.startswith("{") else (p, None) for p in parts)
        object.__setattr__(self, "_parts", split)
        object.__setattr__(self, "_optional_tail", bool(parts) and parts[-1].endswith("?}"))

    def match(self, segments: list[str]) -> dict[str, str] | None:
        parts = self._parts
        if len(segments) != len(parts) and not (self._optional_tail and len(segments) == len(parts) - 1):
            return None
        params: dict[str, str] = {}
        for index, (literal, name) in enumerate(parts):
            value = segments[index] if index < len(segments) else ""
            if name is not None:
                params[name] = value
            elif value.lower() != literal:
                return None
        return params


def split_path(path: str) -> list[str]:
    """`/secrets/n/` → ["secrets", "n", ""]; a trailing slash means an empty last segment."""
    stripped = path[1:] if path.startswith("/") else path
    return stripped.split("/") if stripped else []


class RouteTable:
    """Routes indexed by their number of segments and first literal segment, so that a request is matched against
    the few routes of its shape instead of all of them (in their declared order, as a plain list would be)."""

    def __init__(self, routes: list[Route]) -> None:
        shapes: dict[tuple[int, str | None], list[tuple[int, Route]]] = {}
        for index, route in enumerate(routes):
            first = route._parts[0][0] if route._parts else ""
            lengths = (len(route._parts), len(route._parts) - 1) if route._optional_tail else (len(route._parts),)
            for length in lengths:
                shapes.setdefault((length, first), []).append((index, route))
        # a route whose first segment is a parameter matches any first segment: add it to every list of its length
        for (length, first), entries in shapes.items():
            if first is not None:
                entries.extend(shapes.get((length, None), []))
                entries.sort(key=lambda entry: entry[0])
        self._shapes = {shape: [route for _, route in entries] for shape, entries in shapes.items()}

    def candidates(self, segments: list[str]) -> list[Route]:
        length = len(segments)
        first = segments[0].lower() if segments else ""
        found = self._shapes.get((length, first))
        return found if found is not None else self._shapes.get((length, None), [])


def resolve(table: RouteTable, method: str, path: str) -> tuple[Route, dict[str, str]]:
    segments = split_path(path)
    allowed = False
    for route in table.candidates(segments):
        params = route.match(segments)
        if params is None:
            continue
        if route.method == method:
            return route, params
        allowed = True
    if allowed:
        raise MethodNotAllowed(f"The requested method {method} is not allowed for this resource.")
    raise NotFound("The requested resource was not found. Check the path of the operation.", code="NotFound")
