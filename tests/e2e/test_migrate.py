"""`coffer operator migrate`: a whole installation copied to another storage backend, sealed data as it is,
verified, and served from there: to the suite's backend, and SQLite/PostgreSQL → PostgreSQL → SQLite."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from tests.e2e.helpers import base_env, identity_env, release_connections, run_cli, secret_client
from tests.support import postgres
from tests.support.server import DevServer

_DATABASE_FILES = ("coffer.db", "coffer.db-wal", "coffer.db-shm", "coffer.db.leader", "coffer.db.writer")


def _populate(data_dir: Path) -> str:
    """A dev installation with versions and a deleted secret; returns where it is stored (for --from)."""
    server = DevServer(data_dir).start()
    try:
        with identity_env(server), secret_client(server) as client:
            client.set_secret("kept", "first")
            client.set_secret("kept", "second")
            client.set_secret("gone", "deleted-value")
            client.begin_delete_secret("gone").wait()
    finally:
        release_connections()
        server.stop()
    return server.database_url or str(data_dir)


def _beside(source: Path, destination: Path) -> None:
    """Everything of a data directory but its database (TLS files, dev unseal key, dev token)."""
    shutil.copytree(source, destination, ignore=lambda _dir, names: [n for n in names if n in _DATABASE_FILES])


def _check_served(data_dir: Path, database_url: str | None = None) -> None:
    if database_url is not None:
        server = DevServer(data_dir, server_env={"COFFER_DATABASE_URL": database_url}).start()
    else:
        server = DevServer(data_dir, sqlite=True).start()
    try:
        with identity_env(server), secret_client(server) as client:
            assert client.get_secret("kept").value == "second"
            assert len(list(client.list_properties_of_secret_versions("kept"))) == 2
            assert [d.name for d in client.list_deleted_secrets()] == ["gone"]
            client.begin_recover_deleted_secret("gone").wait()
            assert client.get_secret("gone").value == "deleted-value"
    finally:
        release_connections()
        server.stop()


def migrate(source: str, destination: str, cwd: Path, check: bool = True) -> tuple[int, str]:
    result = run_cli("operator", "migrate", "--from", source, "--to", destination, env=base_env(), cwd=cwd,
                     check=check)
    return result.returncode, result.stdout + result.stderr


def test_migrate_copies_verifies_and_refuses_to_overwrite(tmp_path: Path) -> None:
    source = _populate(tmp_path / "one")
    _beside(tmp_path / "one", tmp_path / "two")
    code, output = migrate(source, str(tmp_path / "two" / "coffer.db"), tmp_path)
    assert code == 0
    assert re.search(r"versions\s*│\s*3\s*│\s*[0-9a-f]{64}", output), output
    _check_served(tmp_path / "two")

    code, output = migrate(source, str(tmp_path / "two" / "coffer.db"), tmp_path, check=False)
    assert code == 1
    assert "not empty" in output


def test_migrate_to_postgresql_and_back(tmp_path: Path) -> None:
    server = postgres.shared_server()  # skips when PostgreSQL is not installed
    source = _populate(tmp_path / "one")
    database = server.new_database()
    assert migrate(source, database, tmp_path)[0] == 0
    _beside(tmp_path / "one", tmp_path / "three")
    assert migrate(database, str(tmp_path / "three" / "coffer.db"), tmp_path)[0] == 0

    _beside(tmp_path / "one", tmp_path / "two")
    _check_served(tmp_path / "two", database_url=database)  # served from PostgreSQL
    _check_served(tmp_path / "three")  # and back in SQLite


def test_migrate_of_a_missing_source_fails_cleanly(tmp_path: Path) -> None:
    code, output = migrate(str(tmp_path / "nothing"), str(tmp_path / "x.db"), tmp_path, check=False)
    assert code == 2
    assert "does not exist" in output
    assert not (tmp_path / "x.db").exists()
