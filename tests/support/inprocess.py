"""A whole Coffer in this process (dev set-up, SQLite in a temporary directory) and an httpx client that calls its
ASGI app directly, with a bearer token of the dev principal: for tests that patch the server's internals (a failing
fsync), which a separate server process cannot have."""

from __future__ import annotations

import httpx

from coffer.app import Coffer


def vault_client(coffer: Coffer, vault: str = "dev") -> httpx.AsyncClient:
    return _client(coffer, coffer.vault_url(vault), coffer.resource, {"api-version": "7.5"})


def server_client(coffer: Coffer) -> httpx.AsyncClient:
    """The same principal on the server host (admin API), with a token for it."""
    return _client(coffer, coffer.authority, coffer.authority, {})


def _client(coffer: Coffer, base_url: str, audience: str, params: dict[str, str]) -> httpx.AsyncClient:
    dev = coffer.start_dev()
    with coffer.storage.read() as tx:
        principal = tx.principal_by_client_id(dev.tenant_id, dev.client_id)
    assert principal is not None
    token, _ = coffer.tokens.issue(
        object_id=principal.object_id,
        tenant_id=dev.tenant_id,
        client_id=dev.client_id,
        kind="application",
        audience=audience,
    )
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=coffer.api, client=("127.0.0.1", 50000)),
        base_url=base_url,
        headers={"authorization": f"Bearer {token}"},
        params=params,
    )


def failing_fsync(fd: int) -> None:
    raise OSError(28, "No space left on device")
