"""Start a real `coffer server --dev` process over HTTPS for tests (never an in-process fake)."""

from __future__ import annotations

import contextlib
import importlib
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tests.support import postgres

if TYPE_CHECKING:
    from coffer.storage import Storage


_databases: dict[Path, str] = {}
_databases_lock = threading.Lock()


_SDK_CHALLENGE_CACHES = (
    "azure.keyvault.secrets._shared.http_challenge_cache",
    "azure.keyvault.keys._shared.http_challenge_cache",
    "azure.keyvault.certificates._shared.http_challenge_cache",
    "azure.keyvault.administration._internal.http_challenge_cache",
)


def forget_sdk_challenges() -> None:
    """The Azure SDK keeps each vault host's 401 challenge, which names its tenant, for the life of the process, and
    asks its credential for a token of that tenant before the next request to the host. A new installation on a port
    that an earlier one used in this process (port 0 hands ports out again) has another tenant: with the stale
    challenge the credential refuses (ClientAuthenticationError: "not configured to acquire tokens for tenant ...")."""
    for name in _SDK_CHALLENGE_CACHES:
        with contextlib.suppress(ImportError):
            importlib.import_module(name).clear()


def _database_for(data_dir: Path) -> str:
    """With COFFER_TEST_STORAGE=postgres: the database of the installation in `data_dir`, a fresh one the first time
    (servers started on the same data directory, one after the other or side by side, share it)."""
    key = data_dir.resolve()
    with _databases_lock:
        if key not in _databases:
            _databases[key] = postgres.shared_server().new_database()
        return _databases[key]


def storage_env(data_dir: Path) -> dict[str, str]:
    """For a server started by hand on `data_dir`: COFFER_DATABASE_URL of its database with
    COFFER_TEST_STORAGE=postgres, else nothing (SQLite in the data directory)."""
    return {"COFFER_DATABASE_URL": _database_for(data_dir)} if postgres.storage_kind() == "postgres" else {}


def read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.startswith("export ") and "=" in line:
            key, _, value = line[len("export "):].partition("=")
            values[key] = shlex.split(value)[0] if value else ""
    return values


@dataclass
class DevServer:
    data_dir: Path
    port: int = 0
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[str] | None = None
    # `env` holds the server's dev.env (what clients need); `server_env` is merged into the
    # server process's own environment (e.g. {"COFFER_PURGE_INTERVAL": "1"}).
    env: dict[str, str] = field(default_factory=dict)
    server_env: dict[str, str] = field(default_factory=dict)
    output: list[str] = field(default_factory=list)
    # COFFER_DATABASE_URL of the server: with COFFER_TEST_STORAGE=postgres, a fresh database of the session's
    # throwaway PostgreSQL per data directory, kept across restarts (the data directory still holds the TLS files,
    # audit log and dev unseal key). None: SQLite in the data directory.
    database_url: str | None = None
    first_started: float | None = None  # time.time() before the first start
    sqlite: bool = False  # SQLite in the data directory even with COFFER_TEST_STORAGE=postgres

    @property
    def vault_url(self) -> str:
        return self.env["VAULT_URL"]

    @property
    def authority(self) -> str:
        return self.env["AZURE_AUTHORITY_HOST"]

    @property
    def ca(self) -> str:
        return self.env["REQUESTS_CA_BUNDLE"]

    def client_env(self) -> dict[str, str]:
        """os.environ plus dev.env, as a user who ran `source dev.env` would have."""
        merged = dict(os.environ)
        for key in ("AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE"):
            merged.pop(key, None)
        merged.update(self.env)
        return merged

    @property
    def on_postgres(self) -> bool:
        return self.database_url is not None

    def open_storage(self) -> Storage:
        """The server's storage, opened (not migrated) by this test process: its PostgreSQL database, or its SQLite
        file. Close it when done."""
        if self.database_url is not None:
            from coffer.storage.postgres import PostgresStorage

            return PostgresStorage(self.database_url)
        from coffer.storage.sqlite import SqliteStorage

        return SqliteStorage(self.data_dir / "coffer.db")

    def stored_files(self) -> list[Path]:
        """Every file that can hold what this server stored: its data directory and, on PostgreSQL, its database's
        files in the cluster (the WAL written since the server first started, the database's files, the log)."""
        files = sorted(p for p in self.data_dir.rglob("*") if p.is_file())
        if self.database_url is not None:
            assert self.first_started is not None
            files += postgres.shared_server().files_of(self.database_url, self.first_started)
        return files

    def start(self, timeout: float = 60) -> DevServer:
        if self.first_started is None:
            self.first_started = time.time() - 2  # file times can be coarser than time.time()
        if "COFFER_DATABASE_URL" in self.server_env:
            self.database_url = self.server_env["COFFER_DATABASE_URL"]
        elif self.database_url is None and postgres.storage_kind() == "postgres" and not self.sqlite:
            self.database_url = _database_for(self.data_dir)
        env = {**os.environ, **self.server_env}
        env.pop("COFFER_DATABASE_URL", None)  # never a database of the machine's environment
        if self.database_url is not None:
            env["COFFER_DATABASE_URL"] = self.database_url
        cmd = [sys.executable, "-m", "coffer", "server", "--dev", "--data-dir", str(self.data_dir),
               "--port", str(self.port), *self.extra_args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True, env=env)
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("coffer server exited early:\n" + "".join(self.output))
            self.output.append(line)
            if "ready at" in line:
                break
        else:
            raise RuntimeError("coffer server did not become ready:\n" + "".join(self.output))
        self.env = read_env_file(self.data_dir / "dev.env")
        self.port = int(self.env["AZURE_AUTHORITY_HOST"].rsplit(":", 1)[1])
        forget_sdk_challenges()
        # drain the rest of the output in the background so the pipe never fills
        threading.Thread(target=self._drain, daemon=True).start()
        return self

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        """kill -9: no chance to flush or clean up."""
        self.stop(signal.SIGKILL)

    def restart(self) -> DevServer:
        """Start again on the same port and data directory."""
        self.proc = None
        self.output = []
        return self.start()
