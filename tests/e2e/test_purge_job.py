"""The background purge job of a running server (COFFER_PURGE_INTERVAL=1)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from azure.core.exceptions import ResourceNotFoundError

from tests.e2e.helpers import credential, identity_env, release_connections, run_cli, secret_client
from tests.support.server import DevServer


@pytest.fixture()
def purging_server(tmp_path: Path) -> Iterator[DevServer]:
    server = DevServer(tmp_path / "data", server_env={"COFFER_PURGE_INTERVAL": "1"}).start()
    yield server
    server.stop()


def test_purge_job_purges_only_what_is_due(purging_server: DevServer, tmp_path: Path) -> None:
    server = purging_server
    run_cli("vault", "create", "weekvault", "--retention-days", "7", env=server.client_env(), cwd=tmp_path)
    url = f"https://weekvault.localhost:{server.port}"
    with identity_env(server):
        cred = credential(server)
        with secret_client(server, url, cred) as client:
            for name in ("due-soon", "not-due"):
                client.set_secret(name, f"value of {name}")
                deleted = client.begin_delete_secret(name).result()
                assert deleted.scheduled_purge_date is not None and deleted.deleted_date is not None
                assert (deleted.scheduled_purge_date - deleted.deleted_date).total_seconds() == 7 * 86400
            time.sleep(2.5)  # two runs of the job: nothing is due for a week
            assert {s.name for s in client.list_deleted_secrets()} == {"due-soon", "not-due"}
        cred.close()

    # we cannot wait a week: move one scheduledPurgeDate into the past while the server is down
    assert server.stop() == 0
    storage = server.open_storage()  # SQLite or PostgreSQL, as the server
    try:
        with storage.write() as tx:
            due = tx.object_get("weekvault", "secret", "due-soon")
            assert due is not None and due.deleted is not None
            due.purge_at = due.deleted - 1
            tx.object_put(due)
    finally:
        storage.close()
    server.restart()

    with identity_env(server):
        cred = credential(server)
        with secret_client(server, url, cred) as client:
            deadline = time.monotonic() + 10
            while True:
                try:
                    client.get_deleted_secret("due-soon")
                except ResourceNotFoundError:
                    break
                assert time.monotonic() < deadline, "the purge job did not purge a due secret"
                time.sleep(0.2)
            assert client.get_deleted_secret("not-due").name == "not-due"
            assert {s.name for s in client.list_deleted_secrets()} == {"not-due"}
        cred.close()
    release_connections()

    records = [orjson.loads(line) for line in (server.data_dir / "audit.log").read_bytes().splitlines()]
    purges = [r for r in records if r["operationName"] == "SecretPurge"]
    assert len(purges) == 1
    assert purges[0]["identity"] == {"claim": {"oid": "coffer-scheduler"}}
    assert purges[0]["properties"]["vault"] == "weekvault"
    assert purges[0]["properties"]["id"] == f"{url}/deletedsecrets/due-soon"
    assert "purge job failed" not in "".join(server.output)
