"""Several worker processes on one node (COFFER_WORKERS): connections are spread over whole Coffer processes, an
unseal share may reach any of them, unsealing and sealing reach all, and a worker that dies is replaced, unsealed."""

from __future__ import annotations

import base64
import datetime
import hashlib
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.e2e.helpers import base_env, identity_env, release_connections, run_cli, secret_client
from tests.support.server import DevServer

WORKERS = 2


def _children(pid: int) -> list[int]:
    found = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in found.read_text().split()] if found.exists() else []


def _fresh_get(url: str, ca: str) -> httpx.Response:
    """A request on a new connection (any worker may accept it)."""
    with httpx.Client(verify=ssl.create_default_context(cafile=ca), timeout=10) as client:
        return client.get(url)


def _fresh_post(url: str, ca: str, body: dict[str, object]) -> httpx.Response:
    with httpx.Client(verify=ssl.create_default_context(cafile=ca), timeout=30) as client:
        return client.post(url, json=body)


def test_dev_server_with_workers_serves_through_every_worker(tmp_path: Path) -> None:
    server = DevServer(tmp_path / "data", server_env={"COFFER_WORKERS": str(WORKERS)}).start()
    try:
        assert server.proc is not None
        assert len(_children(server.proc.pid)) == WORKERS
        with identity_env(server):
            for i in range(6):  # new clients, new connections
                with secret_client(server) as client:
                    client.set_secret(f"w{i}", f"value-{i}")
            for i in range(6):
                with secret_client(server) as client:
                    assert client.get_secret(f"w{i}").value == f"value-{i}"
    finally:
        release_connections()
        assert server.stop() == 0


def test_sighup_makes_every_worker_continue_the_audit_log_in_a_new_file(tmp_path: Path) -> None:
    """Log rotation: move audit.log away, SIGHUP the server; each worker continues in a new audit.log, and the
    server keeps serving (SIGHUP's default action would have ended it)."""
    server = DevServer(tmp_path / "data", server_env={"COFFER_WORKERS": str(WORKERS)}).start()
    audit, rotated = server.data_dir / "audit.log", server.data_dir / "audit.log.1"
    try:
        assert server.proc is not None
        with identity_env(server), secret_client(server) as client:
            client.set_secret("before-rotation", "value")
        os.rename(audit, rotated)
        server.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        while sum("audit log reopened" in line for line in server.output) < WORKERS:
            assert time.monotonic() < deadline, "".join(server.output)
            time.sleep(0.05)
        with identity_env(server):
            for i in range(8):  # new clients, new connections: both workers answer some
                with secret_client(server) as client:
                    client.set_secret(f"after-rotation-{i}", "value")
        assert server.proc.poll() is None
    finally:
        release_connections()
        assert server.stop() == 0

    old, new = rotated.read_text(), audit.read_text()
    assert "before-rotation" in old and "after-rotation" not in old
    assert all(f"after-rotation-{i}" in new for i in range(8)) and "before-rotation" not in new


def test_a_client_assertion_is_accepted_once_whichever_worker_receives_it(tmp_path: Path) -> None:
    """A certificate assertion's jti is single-use for the whole server, not per worker process: of the same
    assertion sent on eight new connections (spread over the workers by the kernel), only the first gets a token."""
    server = DevServer(tmp_path / "data", server_env={"COFFER_WORKERS": str(WORKERS)}).start()
    try:
        created = run_cli("identity", "principal", "create", "replay-app", env=server.client_env(), cwd=tmp_path)
        [row] = [line for line in created.stdout.splitlines() if "replay-app" in line and "│" in line]
        client_id = re.findall(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", row)[1]
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "replay-app")])
        start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(start)
                .not_valid_after(start + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
        pem = tmp_path / "replay-app.pem"
        pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        run_cli("identity", "certificate", "add", client_id, str(pem), env=server.client_env(), cwd=tmp_path)

        tenant, now = server.env["COFFER_TENANT_ID"], int(time.time())
        endpoint = f"{server.authority}/{tenant}/oauth2/v2.0/token"
        thumbprint = base64.urlsafe_b64encode(hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest())
        assertion = jwt.encode(
            {"iss": client_id, "sub": client_id, "aud": endpoint, "iat": now, "nbf": now, "exp": now + 600,
             "jti": uuid.uuid4().hex},
            key, algorithm="ES256", headers={"x5t#S256": thumbprint.rstrip(b"=").decode()},
        )
        form = {"grant_type": "client_credentials", "client_id": client_id, "scope": f"{server.authority}/.default",
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": assertion}
        answers = []
        for _ in range(8):  # new connections: either worker may accept each
            with httpx.Client(verify=ssl.create_default_context(cafile=server.ca), timeout=30) as client:
                answers.append(client.post(endpoint, data=form))
        assert answers[0].status_code == 200, answers[0].text
        for answer in answers[1:]:
            assert answer.status_code == 401, answer.text
            body = answer.json()
            assert body["error"] == "invalid_client" and "already been used" in body["error_description"]
    finally:
        release_connections()
        assert server.stop() == 0


@pytest.fixture
def production(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str, str, list[str]]]:
    """A non-dev server with workers: (process, address, CA file, output lines)."""
    env = {**base_env(), "COFFER_WORKERS": str(WORKERS)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "coffer", "server", "--data-dir", str(tmp_path / "data"), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True,
    )
    assert proc.stdout is not None
    output: list[str] = []
    deadline = time.monotonic() + 60
    address = ca = None
    while time.monotonic() < deadline and (address is None or ca is None):
        line = proc.stdout.readline()
        if not line:
            break
        output.append(line)
        if found := re.search(r"Coffer ready at (https://\S+)", line):
            address = found.group(1)
        if found := re.search(r"CA certificate: (\S+)", line):
            ca = found.group(1)
    assert address and ca, "".join(output)
    threading.Thread(target=lambda: output.extend(proc.stdout or []), daemon=True).start()
    try:
        yield proc, address, ca, output
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise


def _all_healthy(address: str, ca: str, want: int, tries: int = 12, seen: list[str] | None = None) -> bool:
    """`tries` fresh /healthz all answer `want`; `seen` collects the answers, code and body status (stops at the
    first other)."""
    for _ in range(tries):
        response = _fresh_get(f"{address}/healthz", ca)
        if seen is not None:
            seen.append(f"{response.status_code} {response.json().get('status')}")
        if response.status_code != want:
            return False
    return True


def _wait_all_healthy(address: str, ca: str, want: int, failure: str, output: list[str]) -> None:
    deadline = time.monotonic() + 5
    while True:
        seen: list[str] = []
        if _all_healthy(address, ca, want, tries=6, seen=seen):
            return
        assert time.monotonic() < deadline, f"{failure}; last /healthz answers {seen}\n" + "".join(output)
        time.sleep(0.1)


def test_unseal_shares_reach_every_worker_and_a_dead_worker_comes_back_unsealed(
    production: tuple[subprocess.Popen[str], str, str, list[str]],
) -> None:
    proc, address, ca, output = production
    init = _fresh_post(f"{address}/v1/sys/init", ca, {"shares": 3, "threshold": 2}).json()
    # initialising unsealed the worker that answered; the others follow through the supervisor
    _wait_all_healthy(address, ca, 200, "a worker stayed sealed after init", output)

    # sealing through one worker seals all
    with httpx.Client(verify=ssl.create_default_context(cafile=ca), timeout=30) as client:
        issued = client.post(
            f"{address}/{init['tenantId']}/oauth2/v2.0/token",
            data={"grant_type": "client_credentials", "client_id": init["clientId"],
                  "client_secret": init["clientSecret"], "scope": f"{address}/.default"},
        ).json()
        sealed = client.post(f"{address}/v1/sys/seal", headers={"Authorization": f"Bearer {issued['access_token']}"})
        assert sealed.status_code == 204, sealed.text
    _wait_all_healthy(address, ca, 503, "a worker stayed unsealed after seal", output)

    # each share on a new connection (any worker): the threshold is reached across workers
    for share in init["shares"][:2]:
        _fresh_post(f"{address}/v1/sys/unseal", ca, {"key": share})
    _wait_all_healthy(address, ca, 200, "shares given to different workers did not unseal them all", output)

    # a worker killed is replaced and unsealed by the supervisor
    victim = _children(proc.pid)[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:
        children = _children(proc.pid)
        seen: list[str] = []
        if len(children) == WORKERS and victim not in children and _all_healthy(address, ca, 200, seen=seen):
            break
        assert time.monotonic() < deadline, (
            f"victim {victim}, children now {children}, last /healthz statuses {seen}\n" + "".join(output)
        )
        time.sleep(0.2)
