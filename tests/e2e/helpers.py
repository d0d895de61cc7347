"""Shared pieces of the end-to-end tests: SDK clients for a DevServer, the CLI, file scans."""

from __future__ import annotations

import gc
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from azure.identity import ManagedIdentityCredential
from azure.keyvault.secrets import SecretClient

from tests.support.server import DevServer

# Variables that would steer ManagedIdentityCredential away from the App Service endpoint of dev.env.
FOREIGN_IDENTITY_VARIABLES = (
    "MSI_ENDPOINT", "MSI_SECRET", "IMDS_ENDPOINT", "IDENTITY_SERVER_THUMBPRINT",
    "AZURE_POD_IDENTITY_AUTHORITY_HOST", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_TENANT_ID",
    "AZURE_FEDERATED_TOKEN_FILE", "AZURE_CLIENT_CERTIFICATE_PATH",
)


@contextmanager
def identity_env(server: DevServer) -> Iterator[None]:
    """IDENTITY_ENDPOINT / IDENTITY_HEADER of the server's dev.env in os.environ, as on App Service."""
    with pytest.MonkeyPatch.context() as mp:
        for name in FOREIGN_IDENTITY_VARIABLES:
            mp.delenv(name, raising=False)
        mp.setenv("IDENTITY_ENDPOINT", server.env["IDENTITY_ENDPOINT"])
        mp.setenv("IDENTITY_HEADER", server.env["IDENTITY_HEADER"])
        yield


def credential(server: DevServer, **kwargs: Any) -> ManagedIdentityCredential:
    """Must be built inside `identity_env(server)`."""
    return ManagedIdentityCredential(connection_verify=server.ca, **kwargs)


def secret_client(server: DevServer, vault_url: str | None = None, cred: Any = None,
                  **kwargs: Any) -> SecretClient:
    """A real SecretClient on `vault_url` (default: the dev vault), trusting the dev CA explicitly."""
    return SecretClient(vault_url or server.vault_url, cred or credential(server), connection_verify=server.ca,
                        **kwargs)


def run_cli(*args: str, env: dict[str, str], cwd: Path, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`python -m coffer ARGS` with a wide terminal, so rich never wraps what a test parses."""
    full_env = {**env, "COLUMNS": "400", "NO_COLOR": "1", "TERM": "dumb"}
    result = subprocess.run([sys.executable, "-m", "coffer", *args], env=full_env, cwd=cwd, capture_output=True,
                            text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"coffer {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def sqlite_integrity(db: Path) -> list[str]:
    """PRAGMA integrity_check through a read-only connection (the file is not modified)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [row[0] for row in conn.execute("PRAGMA integrity_check").fetchall()]
    finally:
        conn.close()


def wait_for_output(server: DevServer, text: str, timeout: float = 10) -> bool:
    """The output is drained by a background thread: give it a moment after the process ends."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in "".join(server.output):
            return True
        time.sleep(0.05)
    return False


def files_under(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file())


def base_env() -> dict[str, str]:
    """os.environ without anything that would make a CLI pick up some other server or identity."""
    env = dict(os.environ)
    for key in list(env):
        if key.startswith(("COFFER_", "AZURE_")) or key in FOREIGN_IDENTITY_VARIABLES:
            env.pop(key)
    return env


def release_connections() -> None:
    """The SDK's error responses (404, 403, ...) keep their connection checked out of the pool until
    they are garbage-collected, even after the client is closed; an idle open connection would make
    the server's SIGTERM wait for its graceful-shutdown timeout. Collect them."""
    gc.collect()
