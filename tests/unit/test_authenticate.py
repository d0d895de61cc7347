"""The token of a principal the decision index does not know (deleted, or created a moment ago by another process)
is checked against the storage: on the event loop only where reads take microseconds (SQLite), in a worker thread
where they are a round trip (PostgreSQL), so that such tokens cannot stall every other request of the process."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import httpx
import pytest

from coffer.app import Coffer
from coffer.config import Config
from coffer.identity.tokens import Caller


@pytest.mark.parametrize("fast_reads", [True, False])
def test_an_unknown_principal_is_rechecked_off_the_loop_unless_reads_are_fast(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fast_reads: bool
) -> None:
    coffer = Coffer(Config(data_dir=tmp_path / "data", dev=True))
    dev = coffer.start_dev()
    monkeypatch.setattr(coffer.storage, "fast_reads", fast_reads)
    threads: list[threading.Thread] = []
    real = coffer.pipeline._recheck

    def recheck(caller: Caller) -> str | None:
        threads.append(threading.current_thread())
        return real(caller)

    monkeypatch.setattr(coffer.pipeline, "_recheck", recheck)
    token, _ = coffer.tokens.issue(  # a well-signed token of a principal that does not exist (any more)
        object_id="00000000-0000-0000-0000-00000000dead",
        tenant_id=dev.tenant_id,
        client_id=dev.client_id,
        kind="application",
        audience=coffer.resource,
    )

    async def call() -> tuple[httpx.Response, threading.Thread]:
        transport = httpx.ASGITransport(app=coffer.api, client=("127.0.0.1", 50000))
        async with httpx.AsyncClient(transport=transport, base_url=coffer.vault_url("dev")) as client:
            response = await client.get("/secrets", params={"api-version": "7.5"},
                                        headers={"authorization": f"Bearer {token}"})
        return response, threading.current_thread()

    try:
        response, loop_thread = asyncio.run(call())
    finally:
        coffer.close()
    assert response.status_code == 401 and response.json()["error"]["code"] == "Unauthorized"
    assert len(threads) == 1 and (threads[0] is loop_thread) is fast_reads
