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


@pytest.fixture()
def hsm_in_process(tmp_path: Path) -> Iterator[Coffer]:
    """A dev Coffer in this process whose HSM is the shared SoftHSM2 token (tests/support/softhsm.py)."""
    from tests.support.softhsm import shared_token

    token = shared_token()
    config = Config(
        data_dir=tmp_path / "data",
        dev=True,
        pkcs11_module=Path(token.module),
        pkcs11_token=token.label,
        pkcs11_pin=token.pin,
    )
    app = Coffer(config)
    app.start_dev()
    yield app
    app.close()
