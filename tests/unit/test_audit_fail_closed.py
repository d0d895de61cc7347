"""Fail closed, in process through the whole ASGI app: a request whose audit record cannot be made durable is refused
with Azure's envelope (500), a read returns no value, a write changes nothing; the next requests work again.

Reads run on the event loop and wait for their record without a thread (AuditLog.write_async), writes wait inside
their transaction (AuditLog.write): both paths are covered."""

from __future__ import annotations

import asyncio
from unittest import mock

from tests.support.inprocess import failing_fsync, vault_client

from coffer.app import Coffer

VALUE = "fail-closed-value-4d1f9c"


def test_no_answer_without_a_durable_audit_record(in_process: Coffer) -> None:
    async def scenario() -> None:
        async with vault_client(in_process) as client:
            assert (await client.put("/secrets/s", json={"value": VALUE})).status_code == 200
            with mock.patch("coffer.audit.log.os.fsync", failing_fsync):
                read = await client.get("/secrets/s")
                write = await client.put("/secrets/s", json={"value": VALUE + "-2"})
            for response in (read, write):
                assert response.status_code == 500
                assert set(response.json()["error"]) >= {"code", "message"}
                assert VALUE not in response.text
                assert "No space" not in response.text  # the cause goes to the operator's log, not the client
            after = await client.get("/secrets/s")
            assert after.status_code == 200
            assert after.json()["value"] == VALUE  # the refused write changed nothing
            versions = await client.get("/secrets/s/versions")
            assert len(versions.json()["value"]) == 1

    asyncio.run(scenario())
