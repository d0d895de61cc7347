"""An RSA private-key operation runs in a worker thread after its read transaction (Result.finish): its answer and
its audit record are those of the operation, also when the operation itself fails."""

from __future__ import annotations

import asyncio
import base64

import orjson
from tests.support.inprocess import vault_client

from coffer.app import Coffer


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_an_rsa_sign_answers_and_is_audited_once_whether_it_succeeds_or_fails(in_process: Coffer) -> None:
    async def scenario() -> None:
        async with vault_client(in_process) as client:
            created = await client.post("/keys/k/create", json={"kty": "RSA", "key_size": 2048})
            kid = created.json()["key"]["kid"]
            signs = await asyncio.gather(
                *(client.post("/keys/k//sign", json={"alg": "RS256", "value": _b64(bytes([n]) * 32)}) for n in range(8))
            )
            for n, signed in enumerate(signs):
                assert signed.status_code == 200, signed.text
                assert signed.json()["kid"] == kid
                body = {"alg": "RS256", "digest": _b64(bytes([n]) * 32), "value": signed.json()["value"]}
                verified = await client.post("/keys/k//verify", json=body)
                assert verified.json() == {"value": True}
            refused = await client.post("/keys/k//sign", json={"alg": "RS256", "value": _b64(b"short")})
            assert refused.status_code == 400
            assert refused.json()["error"]["code"] == "BadParameter"

    asyncio.run(scenario())
    records = [orjson.loads(line) for line in in_process.config.audit_path.read_bytes().splitlines()]
    signs = [r for r in records if r["properties"]["requestUri"].startswith("/keys/k//sign")]
    assert [r["resultType"] for r in signs] == ["Success"] * 8 + ["Failure"]  # the failed one: no success record
    assert signs[-1]["resultSignature"] == "BadRequest"
