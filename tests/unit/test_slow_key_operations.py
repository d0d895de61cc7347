"""A private-key operation of an RSA key larger than 2048 bits runs in a worker thread after its read transaction
(Result.finish), one of an RSA-2048 key on the event loop: either way its answer and its audit record are those of
the operation, also when the operation itself fails."""

from __future__ import annotations

import asyncio
import base64
import threading

import orjson
import pytest
from tests.support.inprocess import vault_client

from coffer.app import Coffer
from coffer.crypto.software import SoftwareBackend


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.mark.parametrize(("key_size", "in_thread"), [(2048, False), (3072, True)])
def test_an_rsa_sign_answers_and_is_audited_once_whether_it_succeeds_or_fails(
    in_process: Coffer, monkeypatch: pytest.MonkeyPatch, key_size: int, in_thread: bool
) -> None:
    threads: set[str] = set()
    sign = SoftwareBackend.sign

    def recording_sign(self: SoftwareBackend, *args: object, **kwargs: object) -> bytes:
        threads.add(threading.current_thread().name)
        return sign(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(SoftwareBackend, "sign", recording_sign)

    async def scenario() -> str:
        async with vault_client(in_process) as client:
            created = await client.post("/keys/k/create", json={"kty": "RSA", "key_size": key_size})
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
            return threading.current_thread().name

    loop_thread = asyncio.run(scenario())
    if in_thread:
        assert threads and all(name.startswith("coffer-slow") for name in threads), threads
    else:
        assert threads == {loop_thread}
    records = [orjson.loads(line) for line in in_process.config.audit_path.read_bytes().splitlines()]
    signs = [r for r in records if r["properties"]["requestUri"].startswith("/keys/k//sign")]
    assert [r["resultType"] for r in signs] == ["Success"] * 8 + ["Failure"]  # the failed one: no success record
    assert signs[-1]["resultSignature"] == "BadRequest"
