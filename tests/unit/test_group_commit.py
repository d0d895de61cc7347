"""Group commit of writes, in process through the whole ASGI app: concurrent writes share transactions, a write
that fails undoes only its own part (its savepoint), and a batch whose audit fails commits nothing."""

from __future__ import annotations

import asyncio
from typing import Any
from unittest import mock

from tests.support.inprocess import failing_fsync, vault_client

from coffer.app import Coffer


def _count_transactions(coffer: Coffer) -> tuple[list[int], Any]:
    counted = [0]
    real = coffer.storage.write

    def counting() -> Any:
        counted[0] += 1
        return real()

    return counted, mock.patch.object(coffer.storage, "write", counting)


def test_concurrent_writes_share_transactions_and_fail_alone(in_process: Coffer) -> None:
    async def scenario() -> None:
        async with vault_client(in_process) as client:
            counted, patch = _count_transactions(in_process)
            with patch:
                calls = []
                for n in range(40):
                    calls.append(client.put(f"/secrets/s{n}", json={"value": f"v{n}"}))
                    if n % 4 == 0:  # a write that fails inside the transaction: the secret does not exist
                        calls.append(client.patch(f"/secrets/missing{n}/0123456789abcdef0123456789abcdef",
                                                  json={"tags": {"a": "b"}}))
                responses = await asyncio.gather(*calls)
            sets = [r for r in responses if r.request.method == "PUT"]
            updates = [r for r in responses if r.request.method == "PATCH"]
            assert [r.status_code for r in sets] == [200] * 40
            assert {r.status_code for r in updates} == {404}
            assert counted[0] < len(responses)  # some writes were committed together
            for n in range(40):
                got = await client.get(f"/secrets/s{n}")
                assert got.json()["value"] == f"v{n}"

    asyncio.run(scenario())


def test_a_batch_whose_audit_fails_commits_nothing(in_process: Coffer) -> None:
    async def scenario() -> None:
        async with vault_client(in_process) as client:
            with mock.patch("coffer.audit.log.os.fsync", failing_fsync):
                responses = await asyncio.gather(
                    *(client.put(f"/secrets/t{n}", json={"value": f"v{n}"}) for n in range(20))
                )
            assert {r.status_code for r in responses} == {500}
            listed = await client.get("/secrets")
            assert not [item for item in listed.json()["value"] if "/secrets/t" in item["id"]]

    asyncio.run(scenario())


def test_a_write_with_a_slow_part_fails_and_is_undone(in_process: Coffer) -> None:
    """Result.finish is for reads: a write's would run after its commit (and could fail after the client's change
    was made), so a write that sets one is refused and undone, never answered with an empty body."""
    real_run = in_process.pipeline._run

    def with_finish(tx: Any, op: Any, caller: Any, info: Any) -> Any:
        result, record = real_run(tx, op, caller, info)
        if op.write:
            result.finish = lambda: {"value": "late"}
        return result, record

    async def scenario() -> None:
        async with vault_client(in_process) as client:
            with mock.patch.object(in_process.pipeline, "_run", with_finish):
                response = await client.put("/secrets/slow", json={"value": "v"})
            assert response.status_code == 500 and response.json()["error"]["code"]
            assert (await client.get("/secrets/slow")).status_code == 404

    asyncio.run(scenario())
