"""Private SoftHSM2 tokens for tests: each in its own directory with its own softhsm2.conf (SOFTHSM2_CONF).

    token = SoftHsmToken.create(tmp_path)        # initialises a fresh token; skips the test without softhsm2
    token.module, token.label, token.pin          # what COFFER_PKCS11_* need
    token.env                                     # {"SOFTHSM2_CONF": ...}: the variables the module reads
    token.coffer_env()                            # COFFER_PKCS11_MODULE/TOKEN/PIN plus SOFTHSM2_CONF, for a server

SoftHSM reads SOFTHSM2_CONF once, when a process loads and initialises the module; tests in one process that load the
module share one configuration: use `shared_token()` for those (the e2e servers are processes of their own).
CI installs softhsm2 (scripts/test, SYSTEM_PACKAGES); elsewhere these tests skip with the reason.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",  # Debian, Ubuntu
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",  # Fedora
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",
)


def find_module() -> str | None:
    configured = os.environ.get("SOFTHSM2_MODULE")
    for candidate in ((configured,) if configured else ()) + MODULE_CANDIDATES:
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def missing_reason() -> str | None:
    """Why SoftHSM2 tokens cannot be made here, or None."""
    if shutil.which("softhsm2-util") is None:
        return "softhsm2 is not installed (apt-get install softhsm2; scripts/test installs it)"
    if find_module() is None:
        return "softhsm2-util is installed but libsofthsm2.so was not found (set SOFTHSM2_MODULE)"
    return None


def require_softhsm() -> str:
    reason = missing_reason()
    if reason is not None:
        pytest.skip(reason)
    module = find_module()
    assert module is not None
    return module


@dataclass
class SoftHsmToken:
    directory: Path
    module: str
    label: str
    pin: str
    so_pin: str
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls, directory: Path, label: str | None = None, pin: str | None = None) -> SoftHsmToken:
        """A new SoftHSM2 configuration in `directory` (its own token directory) with one initialised token."""
        module = require_softhsm()
        directory.mkdir(parents=True, exist_ok=True)
        tokens = directory / "tokens"
        tokens.mkdir(exist_ok=True)
        conf = directory / "softhsm2.conf"
        conf.write_text(
            f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
            "slots.removable = false\n"
        )
        token = cls(
            directory=directory,
            module=module,
            label=label or f"coffer-test-{secrets.token_hex(4)}",
            pin=pin or secrets.token_hex(8),
            so_pin=secrets.token_hex(8),
            env={"SOFTHSM2_CONF": str(conf)},
        )
        token.init_token(token.label, token.pin)
        return token

    def init_token(self, label: str, pin: str) -> None:
        """Initialise another token in the next free slot of this configuration."""
        result = subprocess.run(
            ["softhsm2-util", "--init-token", "--free", "--label", label, "--pin", pin, "--so-pin", self.so_pin],
            env={**os.environ, **self.env}, capture_output=True, text=True, timeout=60,
        )
        if result.returncode != 0:
            raise RuntimeError(f"softhsm2-util --init-token failed: {result.stdout}{result.stderr}")

    def coffer_env(self, *, pin: str | None = None, label: str | None = None) -> dict[str, str]:
        """What a Coffer server needs to use this token (the PIN through the environment)."""
        return {
            **self.env,
            "COFFER_PKCS11_MODULE": self.module,
            "COFFER_PKCS11_TOKEN": label or self.label,
            "COFFER_PKCS11_PIN": pin or self.pin,
        }


_shared: SoftHsmToken | None = None


def shared_token() -> SoftHsmToken:
    """The one token of this test process; its SOFTHSM2_CONF goes into os.environ, where the module loaded in this
    process reads it. Removed when the process exits."""
    global _shared
    if _shared is None:
        require_softhsm()
        directory = Path(tempfile.mkdtemp(prefix="coffer-softhsm-"))
        atexit.register(shutil.rmtree, directory, True)
        _shared = SoftHsmToken.create(directory)
        os.environ.update(_shared.env)
    return _shared
