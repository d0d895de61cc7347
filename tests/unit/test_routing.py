"""The route index finds exactly what a scan of every route in order finds: the same route and parameters, the same
405 for a known path with another method, the same 404."""

from __future__ import annotations

import itertools

import pytest

from coffer.api.app import SERVER_PUBLIC_ROUTES, SERVER_ROUTES, VAULT_ROUTES
from coffer.api.routes import access, admin, ca, certificates, identity, keys, rbac, secrets, system, tokens
from coffer.api.routing import Route, RouteTable, resolve, split_path
from coffer.errors import MethodNotAllowed, NotFound

_TABLES: list[tuple[RouteTable, list[Route]]] = [
    (VAULT_ROUTES, secrets.ROUTES + keys.ROUTES + certificates.ROUTES + rbac.ROUTES),
    (SERVER_PUBLIC_ROUTES, system.PUBLIC_ROUTES + tokens.ROUTES + ca.PUBLIC_ROUTES),
    (SERVER_ROUTES, system.ROUTES + admin.ROUTES + ca.ROUTES + identity.ROUTES + access.ROUTES),
]


def _scan(routes: list[Route], method: str, path: str) -> tuple[str, object]:
    """What resolve did before the index: every route in order."""
    segments = split_path(path)
    allowed = False
    for route in routes:
        params = route.match(segments)
        if params is None:
            continue
        if route.method == method:
            return "found", (route, params)
        allowed = True
    return ("405", None) if allowed else ("404", None)


def _paths(routes: list[Route]) -> set[str]:
    paths = {"/", "", "/nothing", "/secrets", "/Secrets/", "/keys/a/b/c/d/e"}
    for route in routes:
        filled = "/".join("Name1" if part.startswith("{") else part for part in route.pattern.strip("/").split("/"))
        for variant in (filled, filled.upper(), filled.rsplit("/", 1)[0], filled + "/", filled + "/extra"):
            paths.add("/" + variant)
    return paths


@pytest.mark.parametrize("table, routes", _TABLES)
def test_the_index_resolves_as_the_scan_of_every_route(table: RouteTable, routes: list[Route]) -> None:
    methods = ["GET", "PUT", "POST", "PATCH", "DELETE", "HEAD"]
    for path, method in itertools.product(sorted(_paths(routes)), methods):
        expected = _scan(routes, method, path)
        try:
            got: tuple[str, object] = ("found", resolve(table, method, path))
        except MethodNotAllowed:
            got = ("405", None)
        except NotFound:
            got = ("404", None)
        assert got == expected, (method, path)
