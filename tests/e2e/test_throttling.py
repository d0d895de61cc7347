"""The data plane's service limits (COFFER_THROTTLE_*): over a vault's or a principal's budget a request gets 429
`Throttled` with Azure's message and a Retry-After, other budgets and other vaults are unaffected, refused requests
are not counted, and the real SDK waits and succeeds."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from azure.identity import ClientSecretCredential

from tests.e2e.helpers import credential, identity_env, release_connections, secret_client
from tests.support.server import DevServer

LIMITS = {"COFFER_THROTTLE_VAULT": "40", "COFFER_THROTTLE_VAULT_CREATES": "8", "COFFER_THROTTLE_PRINCIPAL": "25"}
API = "api-version=7.5"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    running = DevServer(tmp_path_factory.mktemp("throttle") / "data", server_env=LIMITS).start()
    yield running
    release_connections()
    running.stop()


def _bearer(server: DevServer) -> dict[str, str]:
    cred = ClientSecretCredential(
        server.env["COFFER_TENANT_ID"], server.env["COFFER_CLIENT_ID"], server.env["COFFER_CLIENT_SECRET"],
        authority=server.authority, disable_instance_discovery=True, connection_verify=server.ca,
    )
    token = cred.get_token(f"{server.authority}/.default").token
    cred.close()
    return {"Authorization": f"Bearer {token}"}


def test_over_the_create_budget_429_with_retry_after_and_reads_still_pass(server: DevServer, tmp_path: Path) -> None:
    headers = _bearer(server)
    with httpx.Client(verify=ssl.create_default_context(cafile=server.ca), headers=headers, timeout=30) as http:
        url = f"{server.vault_url}/secrets/budget?{API}"
        answers = [http.put(url, json={"value": f"v{i}"}) for i in range(12)]
        assert [a.status_code for a in answers[:8]] == [200] * 8
        refused = answers[8]
        assert refused.status_code == 429
        assert refused.json() == {"error": {
            "code": "Throttled",
            "message": "Request was not processed because too many requests were received. "
                       "Reason: VaultRequestTypeLimitReached",
        }}
        assert 1 <= int(refused.headers["retry-after"]) <= 10
        assert all(a.status_code == 429 for a in answers[9:])  # refused requests are not counted...
        assert http.get(url).status_code == 200  # ...and other transactions have their own budget
        assert http.get(f"{server.vault_url}/secrets/budget/{answers[0].json()['id'].rsplit('/', 1)[1]}?{API}"
                        ).json()["value"] == "v0"

    # the SDK honours Retry-After: its set succeeds once the window has moved on
    started = time.monotonic()
    with identity_env(server), secret_client(server) as client:
        assert client.set_secret("budget", "after-the-wait").value == "after-the-wait"
    assert time.monotonic() - started < 15


def test_one_principal_cannot_use_up_the_vault(server: DevServer) -> None:
    time.sleep(10.5)  # a fresh window
    headers = _bearer(server)
    with httpx.Client(verify=ssl.create_default_context(cafile=server.ca), headers=headers, timeout=30) as http:
        statuses = [http.get(f"{server.vault_url}/secrets?{API}").status_code for _ in range(30)]
    assert statuses[:25] == [200] * 25 and set(statuses[25:]) == {429}
    with identity_env(server):  # another principal (the dev managed identity) still has its share
        mi = credential(server)
        with secret_client(server, cred=mi, retry_total=0) as other:
            assert [p.name for p in other.list_properties_of_secrets()] == ["budget"]
        mi.close()
