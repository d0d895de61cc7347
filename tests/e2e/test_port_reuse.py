"""A new installation on a port an earlier one used, in the same client process: the Azure SDK keeps each host's
401 challenge (and so the earlier installation's tenant) for the life of the process. The test servers forget it
when they start (tests/support/server.py: forget_sdk_challenges); without that, this failed as the crash harness
once did in CI ("not configured to acquire tokens for tenant ...")."""

from __future__ import annotations

from pathlib import Path

from azure.identity import ClientSecretCredential
from azure.keyvault.secrets import SecretClient

from tests.e2e.helpers import release_connections
from tests.support.server import DevServer


def _set_and_get(server: DevServer, value: str) -> str:
    credential = ClientSecretCredential(
        server.env["COFFER_TENANT_ID"], server.env["COFFER_CLIENT_ID"], server.env["COFFER_CLIENT_SECRET"],
        authority=server.authority, disable_instance_discovery=True, connection_verify=server.ca,
    )
    with SecretClient(server.vault_url, credential, connection_verify=server.ca) as client:
        client.set_secret("reused-port", value)
        return client.get_secret("reused-port").value or ""


def test_a_new_installation_on_a_reused_port_works_with_new_sdk_clients(tmp_path: Path) -> None:
    first = DevServer(tmp_path / "first").start()
    try:
        assert _set_and_get(first, "one") == "one"
        port = first.port
    finally:
        release_connections()
        assert first.stop() == 0
    second = DevServer(tmp_path / "second", port=port).start()
    try:
        assert second.env["COFFER_TENANT_ID"] != first.env["COFFER_TENANT_ID"]
        assert _set_and_get(second, "two") == "two"
    finally:
        release_connections()
        assert second.stop() == 0
