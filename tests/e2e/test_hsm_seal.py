"""HSM auto-unseal end to end: a production `coffer server` with a SoftHSM2 token (COFFER_PKCS11_*), initialised
with `coffer operator init`, comes back unsealed after a restart without any share; with a wrong PIN or without its
token it stays sealed, says why in /v1/sys/seal-status, and the shares unseal it as before."""

from __future__ import annotations

import re
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.helpers import base_env, run_cli
from tests.support.server import storage_env
from tests.support.softhsm import SoftHsmToken, missing_reason

pytestmark = pytest.mark.skipif(missing_reason() is not None, reason=missing_reason() or "")


@dataclass
class HsmServer:
    data_dir: Path
    port: int = 0
    proc: subprocess.Popen[str] | None = None
    output: list[str] = field(default_factory=list)

    @property
    def addr(self) -> str:
        return f"https://localhost:{self.port}"

    @property
    def ca(self) -> str:
        return str(self.data_dir / "tls" / "ca.pem")

    def start(self, env: dict[str, str]) -> list[str]:
        """`coffer server` (production) with `env`; the lines it announced once ready."""
        self.output = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "coffer", "server", "--data-dir", str(self.data_dir), "--port", str(self.port)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
            env={**env, **storage_env(self.data_dir)})
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 60
        announced: list[str] = []
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError("server exited early:\n" + "".join(self.output))
            self.output.append(line)
            match = re.fullmatch(r"Coffer ready at https://localhost:(\d+)\n", line)
            if match:
                self.port = int(match.group(1))
                announced.append(line)
            elif announced:
                announced.append(line)
                if line.startswith("CA certificate:"):
                    break
        else:
            raise AssertionError("server not ready:\n" + "".join(self.output))
        threading.Thread(target=self._drain, daemon=True).start()
        return announced

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[HsmServer]:
    running = HsmServer(tmp_path / "data")
    yield running
    if running.proc is not None:
        running.stop()


def seal_status(http: httpx.Client, server: HsmServer) -> dict[str, Any]:
    response = http.get(f"{server.addr}/v1/sys/seal-status")
    assert response.status_code == 200, response.text
    return dict(response.json())


def admin_token_status(http: httpx.Client, server: HsmServer, admin: dict[str, str]) -> int:
    """The bootstrap administrator asks for a token: 200 only once unsealed (signing keys loaded)."""
    return http.post(f"{server.addr}/{admin['COFFER_TENANT_ID']}/oauth2/v2.0/token", data={
        "grant_type": "client_credentials", "client_id": admin["COFFER_CLIENT_ID"],
        "client_secret": admin["COFFER_CLIENT_SECRET"], "scope": f"{server.addr}/.default"}).status_code


def test_hsm_auto_unseal_and_the_shares_as_recovery(server: HsmServer, tmp_path: Path) -> None:
    token = SoftHsmToken.create(tmp_path / "softhsm")
    cli_env = base_env()
    good_env = {**base_env(), **token.coffer_env()}
    pin_file = tmp_path / "pin"
    pin_file.write_text(token.pin + "\n")
    pin_file.chmod(0o600)
    pin_file_env = {k: v for k, v in good_env.items() if k != "COFFER_PKCS11_PIN"}
    pin_file_env["COFFER_PKCS11_PIN_FILE"] = str(pin_file)

    # first start: not initialised; the token is there
    announced = server.start(good_env)
    assert any(line.startswith("Not initialized") for line in announced), announced
    # no keep-alive: an idle connection would hold each server stop for its graceful-shutdown timeout
    http = httpx.Client(verify=ssl.create_default_context(cafile=server.ca), timeout=30,
                        limits=httpx.Limits(max_keepalive_connections=0))
    status = seal_status(http, server)
    assert (status["initialized"], status["sealed"]) == (False, True)
    assert status["hsm"] == {"configured": True, "token": token.label, "available": True, "autoUnseal": False,
                             "error": None}

    ca_args = ("--addr", server.addr, "--ca-cert", server.ca)
    init = run_cli("operator", "init", "--shares", "3", "--threshold", "2", *ca_args, env=cli_env, cwd=tmp_path)
    assert "HSM auto-unseal: on" in init.stdout, init.stdout
    shares = [share for _, share in re.findall(r"^Unseal share (\d): (.+)$", init.stdout, re.M)]
    assert len(shares) == 3
    admin = dict(re.findall(r"^\s*(COFFER_(?:TENANT_ID|CLIENT_ID|CLIENT_SECRET))=(\S+)$", init.stdout, re.M))
    status = seal_status(http, server)
    assert status["sealed"] is False and status["hsm"]["autoUnseal"] is True

    # restart (PIN from a file this time): unsealed by the HSM, no share given
    assert server.stop() == 0
    announced = server.start(pin_file_env)
    assert any(f"Unsealed with the HSM (PKCS#11 token '{token.label}')" in line for line in announced), announced
    status = seal_status(http, server)
    assert (status["initialized"], status["sealed"]) == (True, False)
    assert status["hsm"]["available"] is True and status["hsm"]["error"] is None
    assert http.get(f"{server.addr}/healthz").status_code == 200
    assert admin_token_status(http, server, admin) == 200

    # restart with a wrong PIN: sealed, and the seal status says why (without the PIN)
    assert server.stop() == 0
    announced = server.start({**good_env, "COFFER_PKCS11_PIN": "wrong-pin-4242"})
    assert any("Sealed: run `coffer operator unseal" in line for line in announced), announced
    assert any("HSM auto-unseal unavailable" in line and "rejected the PIN" in line for line in announced), announced
    status = seal_status(http, server)
    assert status["sealed"] is True
    assert status["hsm"]["available"] is False and status["hsm"]["autoUnseal"] is True
    assert "rejected the PIN (PinIncorrect)" in status["hsm"]["error"], status
    assert admin_token_status(http, server, admin) == 503
    shown = run_cli("operator", "status", *ca_args, env=cli_env, cwd=tmp_path).stdout
    assert "hsm: token" in shown and "unavailable" in shown and "rejected the PIN" in shown, shown
    run_cli("operator", "unseal", shares[0], *ca_args, env=cli_env, cwd=tmp_path)
    unsealed = run_cli("operator", "unseal", shares[1], *ca_args, env=cli_env, cwd=tmp_path)
    assert "state: unsealed" in unsealed.stdout, unsealed.stdout
    assert admin_token_status(http, server, admin) == 200
    assert "wrong-pin-4242" not in "".join(server.output)

    # restart without the token (another label): sealed, explained, the shares unseal
    assert server.stop() == 0
    announced = server.start({**good_env, "COFFER_PKCS11_TOKEN": "no-such-token"})
    assert any("No PKCS#11 token labelled 'no-such-token'" in line for line in announced), announced
    status = seal_status(http, server)
    assert status["sealed"] is True
    assert status["hsm"]["available"] is False
    assert "No PKCS#11 token labelled 'no-such-token'" in status["hsm"]["error"]
    run_cli("operator", "unseal", shares[2], *ca_args, env=cli_env, cwd=tmp_path)
    unsealed = run_cli("operator", "unseal", shares[0], *ca_args, env=cli_env, cwd=tmp_path)
    assert "state: unsealed" in unsealed.stdout, unsealed.stdout

    # the failed starts changed nothing: with the token back, the server unseals itself again
    assert server.stop() == 0
    announced = server.start(good_env)
    assert any("Unsealed with the HSM" in line for line in announced), announced
    assert seal_status(http, server)["sealed"] is False
    assert admin_token_status(http, server, admin) == 200
    http.close()


def test_incomplete_hsm_configuration_is_refused(tmp_path: Path) -> None:
    env = {**base_env(), "COFFER_PKCS11_MODULE": "/usr/lib/softhsm/libsofthsm2.so", "COFFER_PKCS11_TOKEN": "t"}
    result = subprocess.run([sys.executable, "-m", "coffer", "server", "--data-dir", str(tmp_path / "d"), "--port",
                             "0"], env={**env, "COLUMNS": "200"}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "exactly one of COFFER_PKCS11_PIN_FILE and COFFER_PKCS11_PIN" in result.stderr
