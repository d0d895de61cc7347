"""Crash durability: every write the server acknowledged survives kill -9, and SIGTERM is a clean stop.

On SQLite the database files exactly as the kill left them must be consistent; on PostgreSQL
(COFFER_TEST_STORAGE=postgres) the database outlives the server, and must be consistent and hold every
acknowledged write just the same."""

from __future__ import annotations

import os
import random
import secrets
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from azure.keyvault.secrets import SecretClient

from tests.e2e.helpers import credential, identity_env, secret_client, sqlite_integrity, wait_for_output
from tests.support.server import DevServer

CYCLES = int(os.environ.get("COFFER_CRASH_CYCLES", "3"))
NAMES_PER_CYCLE = 4


def assert_consistent(server: DevServer) -> None:
    """The server's store passes its backend's integrity check (read-only for SQLite: the files are not touched)."""
    if server.on_postgres:
        storage = server.open_storage()
        try:
            assert storage.integrity_check() == []
        finally:
            storage.close()
    else:
        assert sqlite_integrity(server.data_dir / "coffer.db") == ["ok"]


class Writer(threading.Thread):
    """Sets secrets as fast as the server answers; records only what the server acknowledged."""

    def __init__(self, client: SecretClient, prefix: str) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.prefix = prefix
        self.acked: list[tuple[str, str, str]] = []  # (name, version, value)
        self.attempted = 0
        self.error: BaseException | None = None
        self.stopping = threading.Event()

    def run(self) -> None:
        index = 0
        while not self.stopping.is_set():
            name = f"{self.prefix}-{index % NAMES_PER_CYCLE}"
            value = f"{self.prefix}:{index}:{secrets.token_urlsafe(24)}"
            self.attempted += 1
            try:
                result = self.client.set_secret(name, value)
            except BaseException as exc:  # the kill: connection refused / reset mid-request
                self.error = exc
                return
            assert result.value == value
            assert result.properties.version
            self.acked.append((name, result.properties.version, value))
            index += 1


@pytest.fixture
def unthrottled(tmp_path: Path) -> Iterator[DevServer]:
    """The writers set secrets as fast as the server answers, and after each restart a reader checks every write
    acknowledged so far, as the same principal: no service limits (they have their own test, test_throttling.py).
    With only the secret-set limit off, a fast machine reached the principal's 2,000 requests per 10 s (the checks
    of the earlier cycles plus the next writer) and the writer got 429."""
    limits_off = {"COFFER_THROTTLE_VAULT_CREATES": "0", "COFFER_THROTTLE_VAULT": "0", "COFFER_THROTTLE_PRINCIPAL": "0"}
    server = DevServer(tmp_path / "data", server_env=limits_off).start()
    yield server
    server.stop()


def test_acknowledged_writes_survive_kill_9(unthrottled: DevServer) -> None:
    server = unthrottled
    acked: list[tuple[str, str, str]] = []
    kills = 0
    with identity_env(server):
        for cycle in range(CYCLES):
            # no retries: a request cut by the kill must fail, not be replayed after the restart
            writer_credential = credential(server)
            client = secret_client(server, cred=writer_credential, retry_total=0)
            client.set_secret(f"warm-{cycle}", "x")  # token fetched, connection open
            writer = Writer(client, f"crash{cycle}")
            writer.start()
            time.sleep(random.uniform(1.0, 2.0))
            assert writer.is_alive(), f"writer stopped before the kill: {writer.error!r}"
            server.kill()
            kills += 1
            writer.join(30)
            assert not writer.is_alive()
            assert writer.error is not None, "the writer should have seen the server die"
            client.close()
            writer_credential.close()
            assert len(writer.acked) >= 5, f"too few writes in {cycle=}: {len(writer.acked)}"
            acked += writer.acked

            # the files exactly as kill -9 left them are a consistent database (SQLite), or the database is (PostgreSQL)
            assert_consistent(server)

            server.restart()
            reader_credential = credential(server)
            with secret_client(server, cred=reader_credential) as reader:

                def check(item: tuple[str, str, str], reader: SecretClient = reader) -> None:
                    name, version, value = item
                    got = reader.get_secret(name, version)
                    assert got.value == value, (name, version)
                    assert got.properties.version == version

                with ThreadPoolExecutor(8) as pool:
                    list(pool.map(check, acked))  # re-raises the first failure

                # at most the one request in flight at each kill may have committed unacknowledged
                by_name: dict[str, set[str]] = defaultdict(set)
                for name, version, _ in acked:
                    by_name[name].add(version)
                extra = 0
                for name, versions in by_name.items():
                    listed = {p.version for p in reader.list_properties_of_secret_versions(name)}
                    assert versions <= listed
                    extra += len(listed - versions)
                assert extra <= kills

                # and the restarted server takes new writes
                fresh = reader.set_secret(f"after-restart-{cycle}", f"value-{cycle}")
                assert reader.get_secret(fresh.name, fresh.properties.version).value == f"value-{cycle}"
            reader_credential.close()  # no idle connection left to slow the final stop

    assert server.stop() == 0
    assert wait_for_output(server, "Coffer stopped.")
    assert_consistent(server)


def test_sigterm_is_a_clean_stop(fresh_server: DevServer) -> None:
    server = fresh_server
    with identity_env(server):
        client = secret_client(server)
        version = client.set_secret("before-sigterm", "kept").properties.version
        # the client keeps its idle keep-alive connection open across the stop, as real clients do
        started = time.monotonic()
        code = server.stop()
        elapsed = time.monotonic() - started
        assert code == 0, "".join(server.output)
        assert wait_for_output(server, "Coffer stopped."), "".join(server.output)
        assert elapsed < 15, f"SIGTERM took {elapsed:.1f}s"
        assert_consistent(server)
        client.close()

        server.restart()
        reader_credential = credential(server)
        with secret_client(server, cred=reader_credential) as client:
            assert client.get_secret("before-sigterm", version).value == "kept"
        reader_credential.close()
