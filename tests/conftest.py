from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import leaks
from tests.support.postgres import PostgresServer, shared_server, stop_shared_server
from tests.support.server import DevServer


@pytest.fixture(scope="session")
def postgres_server() -> PostgresServer:
    """The session's throwaway PostgreSQL (started on first request; skips without PostgreSQL installed). Its
    `new_database()` gives each user a fresh database. With COFFER_TEST_STORAGE=postgres every DevServer runs on
    a database of it too."""
    return shared_server()


leaks.install()  # records the secret values, private keys and client secrets tests use, and every DevServer


def pytest_sessionfinish(session: pytest.Session) -> None:
    leaks.report(session)  # scans every file every test server wrote (before PostgreSQL stops: its files too)
    stop_shared_server()  # after every fixture (and so every server using it) is torn down


@pytest.fixture(scope="session")
def dev_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    """One real dev server (HTTPS, real tokens, real storage) shared by the session's SDK tests."""
    server = DevServer(Path(tmp_path_factory.mktemp("coffer-data"))).start()
    yield server
    server.stop()


@pytest.fixture()
def fresh_server(tmp_path: Path) -> Iterator[DevServer]:
    """A dev server of its own, for tests that restart, kill or inspect the data directory."""
    server = DevServer(tmp_path / "data").start()
    yield server
    server.stop()
