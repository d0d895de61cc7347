from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from coffer.app import Coffer
from coffer.config import Config


@pytest.fixture()
def in_process(tmp_path: Path) -> Iterator[Coffer]:
    """A dev Coffer in this process (see tests/support/inprocess.py)."""
    app = Coffer(Config(data_dir=tmp_path / "data", dev=True))
    app.start_dev()
    yield app
    app.close()
