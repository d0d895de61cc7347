"""Dev mode's SoftHSM2 token (coffer.devhsm): made once in DATA/softhsm, used only by --dev without COFFER_PKCS11_*,
and dev mode without SoftHSM2 as before. The module is never loaded here (that is the e2e/compat servers' job)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from tests.support.softhsm import missing_reason

from coffer import devhsm
from coffer.cli.server import _dev_hsm_line
from coffer.config import Config

needs_softhsm = pytest.mark.skipif(missing_reason() is not None, reason=missing_reason() or "")


@pytest.fixture(autouse=True)
def _keep_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """prepare() sets SOFTHSM2_CONF in os.environ: unset it for the test, and put back what was there after it
    (setenv first, so that monkeypatch records the variable even when it was not set)."""
    monkeypatch.setenv("SOFTHSM2_CONF", "")
    monkeypatch.delenv("SOFTHSM2_CONF")


def dev_config(tmp_path: Path, **values: Any) -> Config:
    return Config(data_dir=tmp_path / "data", dev=True, **values)


def dev_tokens(conf: Path) -> int:
    """How many tokens of the configuration are labelled coffer-dev."""
    shown = subprocess.run(["softhsm2-util", "--show-slots"], env={**os.environ, "SOFTHSM2_CONF": str(conf)},
                           capture_output=True, text=True, timeout=60, check=True).stdout
    return len(re.findall(r"Label:\s+coffer-dev\s*$", shown, re.M))


def test_without_softhsm_dev_runs_as_before(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devhsm, "find_module", lambda: None)
    config = dev_config(tmp_path)
    assert devhsm.prepare(config) is config
    assert not (tmp_path / "data" / "softhsm").exists() and "SOFTHSM2_CONF" not in os.environ
    assert _dev_hsm_line(SimpleNamespace(hsm_backend=None), False) == "HSM: none (install softhsm2 for HSM keys)"  # type: ignore[arg-type]


def test_only_dev_without_a_configured_hsm(tmp_path: Path) -> None:
    production = Config(data_dir=tmp_path / "data")
    configured = dev_config(tmp_path, pkcs11_module=Path("/opt/hsm.so"), pkcs11_token="t", pkcs11_pin="1234")
    for config in (production, configured):
        assert devhsm.prepare(config) is config
    assert not (tmp_path / "data" / "softhsm").exists() and "SOFTHSM2_CONF" not in os.environ


def test_a_production_data_directory_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "coffer.db").write_bytes(b"")  # a database without the dev unseal key
    config = dev_config(tmp_path)
    assert devhsm.prepare(config) is config and not (tmp_path / "data" / "softhsm").exists()


def test_module_without_softhsm2_util(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devhsm, "find_module", lambda: "/usr/lib/softhsm/libsofthsm2.so")
    monkeypatch.setattr(devhsm.shutil, "which", lambda name: None)
    config = dev_config(tmp_path)
    assert devhsm.prepare(config) is config and "SOFTHSM2_CONF" not in os.environ


@needs_softhsm
def test_the_dev_token_is_made_once(tmp_path: Path) -> None:
    config = devhsm.prepare(dev_config(tmp_path))
    softhsm = (tmp_path / "data" / "softhsm").resolve()
    conf, pin_file = softhsm / "softhsm2.conf", softhsm / "pin"
    assert config.pkcs11_token == "coffer-dev" and config.pkcs11_pin_file == pin_file and config.pkcs11_pin is None
    assert config.pkcs11_module is not None and config.pkcs11_module.name == "libsofthsm2.so"
    assert os.environ["SOFTHSM2_CONF"] == str(conf)
    assert f"directories.tokendir = {softhsm / 'tokens'}" in conf.read_text()
    assert pin_file.stat().st_mode & 0o777 == 0o600 and softhsm.stat().st_mode & 0o777 == 0o700
    pin = pin_file.read_text()
    assert len(pin.strip()) == 32
    assert dev_tokens(conf) == 1
    # the next start uses it as it is
    assert devhsm.prepare(dev_config(tmp_path)) == config
    assert pin_file.read_text() == pin and dev_tokens(conf) == 1
    # an attempt that did not finish (no PIN file) is started afresh, not left as a second token
    pin_file.unlink()
    devhsm.prepare(dev_config(tmp_path))
    assert pin_file.read_text() != pin and dev_tokens(conf) == 1
