"""Start a real `coffer server --dev` process over HTTPS for tests (never an in-process fake)."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


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

    def start(self, timeout: float = 60) -> DevServer:
        cmd = [sys.executable, "-m", "coffer", "server", "--dev", "--data-dir", str(self.data_dir),
               "--port", str(self.port), *self.extra_args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True, env={**os.environ, **self.server_env})
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
        # drain the rest of the output in the background so the pipe never fills
        import threading

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
