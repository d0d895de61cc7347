"""Development mode's own HSM: a SoftHSM2 token in the data directory, when SoftHSM2 is installed.

    DATA/softhsm/softhsm2.conf   directories.tokendir = DATA/softhsm/tokens
    DATA/softhsm/tokens/         the token "coffer-dev" (SoftHSM's files)
    DATA/softhsm/pin             its user PIN (mode 0600)

`coffer server --dev` without COFFER_PKCS11_* calls `prepare(config)` before anything loads the PKCS#11 module. On
the first start it initialises the token with random user and SO PINs (softhsm2-util takes them as arguments: that
is unavoidable with this tool and acceptable for a development token; the SO PIN is not kept). Then it points
SOFTHSM2_CONF at the token's configuration in this process's environment: SoftHSM reads that variable when the
module is initialised, so it must be set first. Besides `coffer.config`, this is the only place that touches the
environment. Without SoftHSM2 (no module or, for a new token, no softhsm2-util) dev mode runs without an HSM.

Development only: the PIN sits beside the token, and anyone who can read the data directory can use every key.
"""

from __future__ import annotations

import ctypes.util
import logging
import os
import secrets
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

from coffer.config import Config

__all__ = ["TOKEN_LABEL", "find_module", "prepare"]

log = logging.getLogger("coffer.hsm")

TOKEN_LABEL = "coffer-dev"  # noqa: S105 (a token label, not a password)
MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",  # Debian, Ubuntu
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",  # Fedora
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",  # macOS
)


def find_module() -> str | None:
    """The SoftHSM2 PKCS#11 module: a known location, else what the dynamic linker finds; None if not installed."""
    for candidate in MODULE_CANDIDATES:
        if Path(candidate).is_file():
            return candidate
    return ctypes.util.find_library("softhsm2")


def prepare(config: Config) -> Config:
    """`config` using the dev token (created on first use), or `config` unchanged without SoftHSM2 or when an HSM
    is configured. Sets SOFTHSM2_CONF for this process: call it before the PKCS#11 module is loaded."""
    if not config.dev or config.hsm_configured:
        return config
    if config.database_path.exists() and not config.unseal_key_path.exists():
        return config  # a production installation, which --dev refuses to start: leave its directory alone
    module = find_module()
    if module is None:
        return config
    directory = (config.data_dir / "softhsm").resolve()  # SOFTHSM2_CONF and the token directory: absolute
    conf, pin_file = directory / "softhsm2.conf", directory / "pin"
    if not pin_file.exists():
        util = shutil.which("softhsm2-util")
        if util is None:
            log.warning("SoftHSM2's module is installed but softhsm2-util is not: dev mode runs without an HSM")
            return config
        try:
            _create_token(util, directory, conf, pin_file)
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("cannot create the dev SoftHSM2 token (%s): dev mode runs without an HSM", exc)
            return config
    os.environ["SOFTHSM2_CONF"] = str(conf)
    return replace(config, pkcs11_module=Path(module), pkcs11_token=TOKEN_LABEL, pkcs11_pin_file=pin_file,
                   pkcs11_pin=None)


def _create_token(util: str, directory: Path, conf: Path, pin_file: Path) -> None:
    """A new configuration and token. The PIN file is written last: without it, an earlier attempt did not finish
    and its token directory is started afresh."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    tokens = directory / "tokens"
    shutil.rmtree(tokens, ignore_errors=True)
    tokens.mkdir(mode=0o700)
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
                    "slots.removable = false\n", encoding="utf-8")
    pin, so_pin = secrets.token_hex(16), secrets.token_hex(16)
    result = subprocess.run(
        [util, "--init-token", "--free", "--label", TOKEN_LABEL, "--pin", pin, "--so-pin", so_pin],
        env={**os.environ, "SOFTHSM2_CONF": str(conf)}, capture_output=True, text=True, timeout=60, check=False,
    )
    if result.returncode != 0:
        output = (result.stderr or result.stdout).strip()[:200]
        raise subprocess.SubprocessError(f"softhsm2-util exited {result.returncode}: {output}")
    tmp = pin_file.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(pin + "\n")
    os.replace(tmp, pin_file)
    log.info("created the development SoftHSM2 token '%s' in %s", TOKEN_LABEL, directory)
