"""/healthz in process: 200 when the node can serve; 503 when it is sealed or its storage does not answer, within
HEALTH_STORAGE_SECONDS and without holding the event loop (a PostgreSQL pool that cannot connect waits 10 s)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from coffer.api.routes import system
from coffer.app import Coffer
from coffer.storage import StorageError


@pytest.fixture()
def coffer(in_process: Coffer) -> Coffer:
    return in_process


async def _health(coffer: Coffer) -> httpx.Response:
    transport = httpx.ASGITransport(app=coffer.api, client=("127.0.0.1", 50000))
    async with httpx.AsyncClient(transport=transport, base_url=coffer.authority) as client:
        return await client.get("/healthz")


def test_ok_when_unsealed_and_storage_answers(coffer: Coffer) -> None:
    response = asyncio.run(_health(coffer))
    assert response.status_code == 200
    assert response.json()["status"] == "ok" and response.json()["initialized"] is True


def test_storage_error_is_503_storage_unavailable(coffer: Coffer, monkeypatch: pytest.MonkeyPatch) -> None:
    @contextmanager
    def broken() -> Iterator[Any]:
        raise StorageError("connection refused")
        yield

    monkeypatch.setattr(coffer.storage, "read", broken)
    response = asyncio.run(_health(coffer))
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "storage unavailable" and body["sealed"] is False and body["initialized"] is True


def test_a_hanging_storage_is_503_in_time_and_the_loop_goes_on(
    coffer: Coffer, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()

    @contextmanager
    def hanging() -> Iterator[Any]:
        release.wait(10)  # as a pool waiting for a database that does not answer
        raise StorageError("pool timeout")
        yield

    monkeypatch.setattr(system, "HEALTH_STORAGE_SECONDS", 0.3)
    monkeypatch.setattr(coffer.storage, "read", hanging)

    async def check() -> tuple[httpx.Response, int]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        try:
            return await _health(coffer), ticks
        finally:
            ticker.cancel()

    started = time.monotonic()
    try:
        response, ticks = asyncio.run(check())
    finally:
        release.set()
    assert response.status_code == 503 and response.json()["status"] == "storage unavailable"
    assert time.monotonic() - started < 3
    assert ticks >= 5  # the event loop kept running while the probe waited
