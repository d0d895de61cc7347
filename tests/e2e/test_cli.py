"""The `coffer` CLI against real servers: vault administration on a dev server, and the production
flow (sealed start, operator init, restart, Shamir unseal, bootstrap administrator)."""

from __future__ import annotations

import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.identity import ClientSecretCredential
from azure.keyvault.secrets import SecretClient

from tests.e2e.helpers import base_env, credential, identity_env, release_connections, run_cli, secret_client
from tests.support.server import DevServer, storage_env


def admin_token(authority: str, ca: str, tenant: str, client_id: str, client_secret: str) -> str:
    response = httpx.post(f"{authority}/{tenant}/oauth2/v2.0/token", verify=trust(ca), data={
        "grant_type": "client_credentials", "client_id": client_id, "client_secret": client_secret,
        "scope": f"{authority}/.default"})
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def trust(ca: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca)


def tls_handshake(host: str, port: int, ca: str) -> None:
    """Raises ssl.SSLCertVerificationError unless the server's certificate is valid for `host`."""
    context = ssl.create_default_context(cafile=ca)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock, context.wrap_socket(
            sock, server_hostname=host, do_handshake_on_connect=False) as tls:
        tls.do_handshake()  # (a failed handshake still closes the socket: no lingering connection)


def table_row(output: str, name: str) -> str:
    rows = [line for line in output.splitlines() if re.search(rf"(^|\W){re.escape(name)}\W", line)
            and "https://" in line]
    assert len(rows) == 1, output
    return rows[0]


# --- dev server: vault administration ----------------------------------------------------------


def test_vault_lifecycle_with_cli_and_sdk(fresh_server: DevServer, tmp_path: Path) -> None:
    server = fresh_server
    env = server.client_env()
    port = server.port

    def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, env=env, cwd=tmp_path, check=check)

    # a vault host the certificate does not cover yet (OpenSSL ignores *.localhost)
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_handshake("appvault.localhost", port, server.ca)

    created = cli("vault", "create", "AppVault", "--retention-days", "7").stdout
    row = table_row(created, "appvault")
    assert f"https://appvault.localhost:{port}" in row
    assert re.search(r"\b7\b", row) and "False" in row and "CustomizedRecoverable+Purgeable" in row
    tls_handshake("appvault.localhost", port, server.ca)  # the certificate was reissued

    pp = table_row(cli("vault", "create", "ppvault").stdout, "ppvault")
    assert re.search(r"\b90\b", pp) and "Recoverable+Purgeable" in pp

    duplicate = cli("vault", "create", "appvault", check=False)
    assert duplicate.returncode == 1 and "VaultAlreadyExists" in duplicate.stderr
    for bad in ("ab", "bad--name", "1vault", "vault-"):
        refused = cli("vault", "create", bad, check=False)
        assert refused.returncode == 1 and "VaultNameNotValid" in refused.stderr, (bad, refused.stderr)
    out_of_range = cli("vault", "create", "shortvault", "--retention-days", "3", check=False)
    assert out_of_range.returncode == 1 and "softDeleteRetentionInDays" in out_of_range.stderr

    listed = cli("vault", "list").stdout
    assert {"dev", "appvault", "ppvault"} <= set(re.findall(r"^\W*([a-z0-9-]+)\s.*https://", listed, re.M))
    assert "shortvault" not in listed and "bad--name" not in listed

    shown = table_row(cli("vault", "show", "appvault").stdout, "appvault")
    assert re.search(r"\b7\b", shown)
    updated = table_row(cli("vault", "update", "appvault", "--retention-days", "30").stdout, "appvault")
    assert re.search(r"\b30\b", updated) and "CustomizedRecoverable+Purgeable" in updated

    locked = table_row(cli("vault", "update", "ppvault", "--purge-protection").stdout, "ppvault")
    assert "True" in locked and re.search(r"\bRecoverable\b(?!\+)", locked)
    # turning purge protection off: the CLI has no switch for it, and the API refuses it
    assert cli("vault", "update", "ppvault", "--no-purge-protection", check=False).returncode == 2
    token = admin_token(server.authority, server.ca, env["COFFER_TENANT_ID"], env["COFFER_CLIENT_ID"],
                        env["COFFER_CLIENT_SECRET"])
    patch = httpx.patch(f"{server.authority}/admin/vaults/ppvault", json={"enablePurgeProtection": False},
                        headers={"authorization": f"Bearer {token}"}, verify=trust(server.ca))
    assert patch.status_code == 400, patch.text
    assert patch.json()["error"]["code"] == "BadParameter"
    assert "True" in table_row(cli("vault", "show", "ppvault").stdout, "ppvault")

    # the real SDK on the new vaults' own host names
    with identity_env(server):
        cred = credential(server)
        app = secret_client(server, f"https://appvault.localhost:{port}", cred)
        locked_client = secret_client(server, f"https://ppvault.localhost:{port}", cred)
        assert app.set_secret("db-password", "app-value").value == "app-value"
        assert app.get_secret("db-password").value == "app-value"
        deleted = app.begin_delete_secret("db-password").result()
        assert deleted.recovery_id
        assert deleted.scheduled_purge_date and deleted.deleted_date
        assert (deleted.scheduled_purge_date - deleted.deleted_date).days == 30
        app.purge_deleted_secret("db-password")  # allowed without purge protection

        locked_client.set_secret("api-key", "pp-value")
        locked_client.begin_delete_secret("api-key").wait()
        with pytest.raises(HttpResponseError) as refused_purge:
            locked_client.purge_deleted_secret("api-key")
        assert refused_purge.value.status_code == 403
        assert "purge protection" in str(refused_purge.value.message)
        assert locked_client.get_deleted_secret("api-key").name == "api-key"  # still there
        # vaults are separate: the dev vault does not see either secret
        with secret_client(server, cred=cred) as dev_client, pytest.raises(ResourceNotFoundError):
            dev_client.get_secret("api-key")

        # deleting a purge-protected vault that still holds (deleted) objects is refused
        refused = cli("vault", "delete", "ppvault", "--yes", check=False)
        assert refused.returncode == 1 and "ConflictError" in refused.stderr
        assert locked_client.get_deleted_secret("api-key").name == "api-key"

        # without --yes and nothing on stdin the CLI does not delete
        aborted = cli("vault", "delete", "appvault", check=False)
        assert aborted.returncode != 0
        assert "appvault" in cli("vault", "show", "appvault").stdout

        app.set_secret("left-behind", "value")
        assert "Deleted vault appvault" in cli("vault", "delete", "appvault", "--yes").stdout
        gone = cli("vault", "show", "appvault", check=False)
        assert gone.returncode == 1 and "VaultNotFound" in gone.stderr
        with pytest.raises(ResourceNotFoundError):
            app.get_secret("left-behind")
        app.close()
        locked_client.close()
        cred.close()
        del refused_purge
        release_connections()
    final = cli("vault", "list").stdout
    assert "appvault" not in final and "ppvault" in final


def test_cli_without_credentials_or_server(tmp_path: Path) -> None:
    no_credentials = run_cli("vault", "list", "--addr", "https://localhost:1", env=base_env(), cwd=tmp_path,
                             check=False)
    assert no_credentials.returncode == 1 and "NoCredentials" in no_credentials.stderr


# --- production mode --------------------------------------------------------------------------


@dataclass
class ProdServer:
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

    def start(self) -> list[str]:
        """Start `coffer server` (no --dev); return the lines it printed when ready."""
        self.output = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "coffer", "server", "--data-dir", str(self.data_dir), "--port", str(self.port)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
            env={**base_env(), **storage_env(self.data_dir)})
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
def prod_server(tmp_path: Path) -> Iterator[ProdServer]:
    server = ProdServer(tmp_path / "prod-data")
    yield server
    if server.proc is not None:
        server.stop()


def assert_sealed_envelope(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "ServiceUnavailable"
    assert "sealed" in error["message"].lower()


def test_production_init_restart_unseal_and_bootstrap_admin(prod_server: ProdServer, tmp_path: Path) -> None:
    server = prod_server
    announced = server.start()
    assert server.port > 0
    assert any(line.startswith("Not initialized: run `coffer operator init") for line in announced), announced
    assert not (server.data_dir / "dev-unseal.key").exists()
    assert not (server.data_dir / "dev.env").exists()
    http = httpx.Client(verify=trust(server.ca), timeout=30)

    status = http.get(f"{server.addr}/v1/sys/seal-status").json()
    assert (status["initialized"], status["sealed"]) == (False, True)
    assert http.get(f"{server.addr}/healthz").status_code == 503
    # data requests are refused with Key Vault's error envelope, with or without a token
    assert_sealed_envelope(http.get(f"https://dev.localhost:{server.port}/secrets?api-version=7.4"))
    assert_sealed_envelope(http.get(f"https://dev.localhost:{server.port}/secrets/x?api-version=7.4",
                                    headers={"authorization": "Bearer not-a-token"}))
    assert_sealed_envelope(http.get(f"{server.addr}/admin/vaults", headers={"authorization": "Bearer x"}))

    env = base_env()
    ca_args = ("--addr", server.addr, "--ca-cert", server.ca)
    init = run_cli("operator", "init", "--shares", "3", "--threshold", "2", *ca_args, env=env, cwd=tmp_path)
    shares = re.findall(r"^Unseal share (\d): (.+)$", init.stdout, re.M)
    assert [number for number, _ in shares] == ["1", "2", "3"], init.stdout
    assert all(len(share.split()) >= 20 for _, share in shares)
    admin = dict(re.findall(r"^\s*(COFFER_(?:TENANT_ID|CLIENT_ID|CLIENT_SECRET))=(\S+)$", init.stdout, re.M))
    assert set(admin) == {"COFFER_TENANT_ID", "COFFER_CLIENT_ID", "COFFER_CLIENT_SECRET"}, init.stdout
    assert "Threshold: 2 of 3" in init.stdout
    again = run_cli("operator", "init", *ca_args, env=env, cwd=tmp_path, check=False)
    assert again.returncode == 1 and "AlreadyInitialized" in again.stderr
    assert http.get(f"{server.addr}/v1/sys/seal-status").json()["sealed"] is False

    # a restart forgets the root key
    assert server.stop() == 0
    announced = server.start()
    assert any("Sealed: run `coffer operator unseal" in line and "2 of 3" in line for line in announced), announced
    status = http.get(f"{server.addr}/v1/sys/seal-status").json()
    assert (status["initialized"], status["sealed"], status["progress"]) == (True, True, 0)
    assert_sealed_envelope(http.get(f"https://dev.localhost:{server.port}/secrets?api-version=7.4"))
    admin_env = {**env, **admin, "COFFER_ADDR": server.addr, "COFFER_CACERT": server.ca}
    sealed_create = run_cli("vault", "create", "prodvault", env=admin_env, cwd=tmp_path, check=False)
    assert sealed_create.returncode == 1 and "ServiceUnavailable" in sealed_create.stderr, sealed_create.stderr
    # the token endpoints answer 503 too (no signing key while sealed), never an internal error
    assert_sealed_envelope(http.post(f"{server.addr}/{admin['COFFER_TENANT_ID']}/oauth2/v2.0/token", data={
        "grant_type": "client_credentials", "client_id": admin["COFFER_CLIENT_ID"],
        "client_secret": admin["COFFER_CLIENT_SECRET"], "scope": f"{server.addr}/.default"}))
    assert_sealed_envelope(http.get(f"{server.addr}/msi/token", params={"resource": server.addr},
                                    headers={"x-identity-header": "x.y"}))

    first = run_cli("operator", "unseal", shares[0][1], *ca_args, env=env, cwd=tmp_path)
    assert "state: sealed" in first.stdout and "progress: 1/2" in first.stdout, first.stdout
    status_out = run_cli("operator", "status", *ca_args, env=env, cwd=tmp_path).stdout
    assert "state: sealed" in status_out and "progress: 1/2" in status_out
    second = run_cli("operator", "unseal", shares[2][1], *ca_args, env=env, cwd=tmp_path)
    assert "state: unsealed" in second.stdout, second.stdout
    assert http.get(f"{server.addr}/healthz").status_code == 200

    # the bootstrap administrator, from the environment init printed, creates a vault
    created = run_cli("vault", "create", "prodvault", env=admin_env, cwd=tmp_path)
    assert f"https://prodvault.localhost:{server.port}" in table_row(created.stdout, "prodvault")
    listed = run_cli("vault", "list", env=admin_env, cwd=tmp_path).stdout
    assert "prodvault" in listed and "dev.localhost" not in listed  # no dev vault in production

    # and the SDK (client secret, self-hosted authority) uses it
    cred = ClientSecretCredential(admin["COFFER_TENANT_ID"], admin["COFFER_CLIENT_ID"],
                                  admin["COFFER_CLIENT_SECRET"], authority=server.addr,
                                  disable_instance_discovery=True, connection_verify=server.ca)
    with SecretClient(f"https://prodvault.localhost:{server.port}", cred, connection_verify=server.ca) as client:
        assert client.set_secret("prod-secret", "prod-value").value == "prod-value"
        assert client.get_secret("prod-secret").value == "prod-value"
    cred.close()
    http.close()
    assert server.stop() == 0
    deadline = time.monotonic() + 10
    while "Coffer stopped." not in "".join(server.output):
        assert time.monotonic() < deadline, "".join(server.output)
        time.sleep(0.05)
