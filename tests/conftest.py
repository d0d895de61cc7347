from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import DevServer


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
