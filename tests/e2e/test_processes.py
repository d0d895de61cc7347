"""Several server processes on one installation (one SQLite data directory here; the PostgreSQL nodes in
test_cluster.py): a permission removed through one process stops working in the other within a second, and the
background jobs run in exactly one process, moving to another when it dies."""

from __future__ import annotations

import ssl
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from azure.core.exceptions import HttpResponseError
from azure.identity import ClientSecretCredential
from azure.keyvault.administration import KeyVaultAccessControlClient, KeyVaultRoleScope
from azure.keyvault.secrets import SecretClient

from coffer.authz import roles
from coffer.cli.client import CofferClient
from tests.e2e.helpers import release_connections
from tests.support.server import DevServer


def _leader(server: DevServer) -> bool:
    response = httpx.get(f"{server.authority}/healthz", verify=ssl.create_default_context(cafile=server.ca), timeout=10)
    return bool(response.json()["jobLeader"])


def _leaders(*servers: DevServer, timeout: float = 15) -> list[bool]:
    """Which processes lead, once exactly one does (a process checks every few seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        leaders = [_leader(s) for s in servers]
        if sum(leaders) == 1 or time.monotonic() > deadline:
            return leaders
        time.sleep(0.2)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[DevServer, DevServer]]:
    env = {"COFFER_PURGE_INTERVAL": "1"}
    first = DevServer(tmp_path / "data", server_env=env).start()
    second = DevServer(tmp_path / "data", server_env=env).start()
    try:
        yield first, second
    finally:
        release_connections()
        for server in (first, second):
            server.stop()


def test_revoked_role_stops_working_in_the_other_process_within_a_second(
    pair: tuple[DevServer, DevServer],
) -> None:
    first, second = pair
    admin = CofferClient(addr=first.authority, ca_cert=first.ca, data_dir=first.data_dir)
    created = admin.call("POST", "/admin/identity/principals", {"displayName": "reader", "kind": "application"})
    credentials = f"/admin/identity/principals/{created['clientId']}/credentials"
    added = admin.call("POST", credentials, {"kind": "clientSecret"})
    tenant = first.env["COFFER_TENANT_ID"]
    dev_credential = ClientSecretCredential(
        tenant, first.env["COFFER_CLIENT_ID"], first.env["COFFER_CLIENT_SECRET"],
        authority=first.authority, disable_instance_discovery=True, connection_verify=first.ca,
    )
    reader = ClientSecretCredential(
        tenant, created["clientId"], added["secret"], authority=second.authority, disable_instance_discovery=True,
        connection_verify=second.ca,
    )
    with (
        KeyVaultAccessControlClient(first.vault_url, dev_credential, connection_verify=first.ca) as acl,
        SecretClient(first.vault_url, dev_credential, connection_verify=first.ca) as writer,
        SecretClient(second.vault_url, reader, connection_verify=second.ca, retry_total=0) as other,
    ):
        writer.set_secret("shared", "v1")
        # granted through the first process: the second lets the reader in (caches reloaded from the feed)
        assignment = acl.create_role_assignment(
            KeyVaultRoleScope.GLOBAL, f"/providers/Microsoft.Authorization/roleDefinitions/{roles.SECRETS_USER}",
            created["objectId"], name=str(uuid.uuid4()),
        )
        deadline = time.monotonic() + 1.0
        while True:
            try:
                assert other.get_secret("shared").value == "v1"
                break
            except HttpResponseError as error:
                assert error.status_code == 403
                assert time.monotonic() < deadline, "the grant did not reach the other process within a second"
                time.sleep(0.05)

        # a write through the first process is read through the second at once (one database)
        writer.set_secret("shared", "v2")
        assert other.get_secret("shared").value == "v2"

        # revoked through the first process: refused by the second within a second
        acl.delete_role_assignment(KeyVaultRoleScope.GLOBAL, assignment.name)
        revoked = time.monotonic()
        while True:
            try:
                other.get_secret("shared")
            except HttpResponseError as error:
                assert error.status_code == 403
                break
            assert time.monotonic() - revoked < 1.0, "the revocation did not reach the other process within a second"
            time.sleep(0.05)

        # a deleted principal is refused at once too (identity index)
        admin.call("DELETE", f"/admin/identity/principals/{created['clientId']}")
    dev_credential.close()
    reader.close()


def test_background_jobs_run_in_one_process_and_move_when_it_dies(pair: tuple[DevServer, DevServer]) -> None:
    first, second = pair
    leaders = _leaders(first, second)
    assert sum(leaders) == 1, leaders
    leader, follower = (first, second) if leaders[0] else (second, first)
    leader.kill()
    died = time.monotonic()
    deadline = died + 10
    while not _leader(follower):
        assert time.monotonic() < deadline, "the jobs did not move to the surviving process within 10 s"
        time.sleep(0.2)
