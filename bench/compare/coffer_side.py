"""Coffer with production settings: `coffer server` (not --dev) on a fresh data directory, initialised and unsealed
through the API with 5 shares / threshold 3, a vault, an application principal holding only Key Vault Secrets
Officer and Key Vault Crypto User on that vault, and its client-credentials token from Coffer's token endpoint.
HTTPS (the local CA Coffer makes), bearer tokens verified, RBAC enforced, audit log written, values sealed."""

from __future__ import annotations

import json
import os
import ssl
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from bench.compare import procs
from bench.compare.model import KEY_API, SECRET_API, Workload

VAULT = "bench"
# A two-label suffix, as in production (`vault.example.com`): the server certificate's wildcard `*.vault.localhost`
# covers every vault host, so no certificate is reissued when the vault is created (with several worker processes
# only the worker that created the vault would reload it).
DNS_SUFFIX = "vault.localhost"
THROTTLE_OFF = {"COFFER_THROTTLE_VAULT": "0", "COFFER_THROTTLE_VAULT_CREATES": "0", "COFFER_THROTTLE_PRINCIPAL": "0"}
# Azure's built-in role ids (coffer.authz.roles has the same): what the application is given on the vault.
SECRETS_OFFICER = "b86a8fe4-44ce-4948-aee5-eccb2c155cd7"
CRYPTO_USER = "12338af0-0e69-4776-bea7-57ae8d297424"


@dataclass
class CofferSide:
    workdir: Path
    workers: int | None = None
    python: str = sys.executable
    port: int = 0
    server: procs.Server | None = None
    shares: list[str] = field(default_factory=list)
    admin: dict[str, str] = field(default_factory=dict)  # tenant id, client id, secret of the bootstrap admin
    app: dict[str, str] = field(default_factory=dict)  # the bench application's
    key_versions: dict[str, str] = field(default_factory=dict)
    token: str = ""
    _http: httpx.Client | None = None

    # --- addressing ---------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.workdir / "coffer-data"

    @property
    def ca(self) -> Path:
        return self.data_dir / "tls" / "ca.pem"

    @property
    def authority(self) -> str:
        return f"https://{DNS_SUFFIX}:{self.port}"

    @property
    def vault_url(self) -> str:
        return f"https://{VAULT}.{DNS_SUFFIX}:{self.port}"

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    @property
    def http(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(verify=self.ssl_context(), timeout=60)
        return self._http

    # --- process ------------------------------------------------------------------------------
    def start(self) -> None:
        """Start (or restart) the server on a free port; returns once it answers (sealed or not)."""
        self.port = procs.free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("COFFER_")}
        if self.workers:
            env["COFFER_WORKERS"] = str(self.workers)
        # Key Vault's service limits (429 beyond 2,000 requests per 10 s per principal and vault, 300 secret sets per
        # 10 s per vault) would cap what is measured: off (0), as OpenBao has no rate-limit quota by default.
        env.update(THROTTLE_OFF)
        argv = [
            self.python,
            "-m",
            "coffer",
            "server",
            "--data-dir",
            str(self.data_dir),
            "--port",
            str(self.port),
            "--dns-suffix",
            DNS_SUFFIX,
        ]
        self.server = procs.Server("coffer", argv, self.workdir / "coffer.log", env=env)
        if self._http is not None:
            self._http.close()
            self._http = None

        def answers() -> bool:
            if not self.server or not self.server.alive():
                raise RuntimeError("coffer server exited:\n" + (self.server.log_tail() if self.server else ""))
            if not self.ca.exists():
                return False
            return self.http.get(f"{self.authority}/v1/sys/seal-status").status_code == 200

        procs.wait_until(answers, 60, "the Coffer server to answer")

    def stop(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None
        if self.server is not None:
            self.server.stop()
            self.server = None

    # --- API helpers --------------------------------------------------------------------------
    def _check(self, response: httpx.Response, *expected: int) -> Any:
        if response.status_code not in (expected or (200,)):
            request = response.request
            raise RuntimeError(f"{request.method} {request.url.path} -> {response.status_code}: {response.text[:300]}")
        return response.json() if response.content else None

    def get_token(self, who: dict[str, str]) -> str:
        body = self._check(
            self.http.post(
                f"{self.authority}/{who['tenantId']}/oauth2/v2.0/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": who["clientId"],
                    "client_secret": who["clientSecret"],
                    "scope": f"{self.authority}/.default",
                },
            )
        )
        return str(body["access_token"])

    def call(self, token: str, method: str, url: str, body: Any = None, *expected: int) -> Any:
        headers = {"authorization": f"Bearer {token}"}
        return self._check(self.http.request(method, url, json=body, headers=headers), *expected)

    # --- setup --------------------------------------------------------------------------------
    def initialize(self) -> None:
        """POST /v1/sys/init (5 shares, threshold 3), then three shares to /v1/sys/unseal."""
        result = self._check(self.http.post(f"{self.authority}/v1/sys/init", json={"shares": 5, "threshold": 3}))
        self.shares = list(result["shares"])
        self.admin = {k: result[k] for k in ("tenantId", "clientId", "clientSecret")}
        # Kept for the 1,000,000-secret filler and restarts; mode 0600, inside the run's work directory.
        secrets_file = self.workdir / "coffer-init.json"
        fd = os.open(secrets_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({"shares": self.shares, "admin": self.admin}, handle)
        self.unseal()

    def unseal(self) -> None:
        status: dict[str, Any] = {}
        for share in self.shares[:3]:
            status = self._check(self.http.post(f"{self.authority}/v1/sys/unseal", json={"key": share}))
            if not status.get("sealed", True):
                break
        if status.get("sealed", True):
            raise RuntimeError(f"Coffer is still sealed after 3 shares: {status}")

        # With several workers the unseal is relayed to every worker: wait until fresh connections all find it open.
        def all_open() -> bool:
            for _ in range(4 * (self.workers or 1)):
                with httpx.Client(verify=self.ssl_context(), timeout=10) as fresh:
                    if fresh.get(f"{self.authority}/healthz").status_code != 200:
                        return False
            return True

        procs.wait_until(all_open, 60, "every Coffer worker to be unsealed", interval=0.2)

    def provision(self, workload: Workload) -> None:
        """The vault, the application principal and its two role assignments, its token, the keys and secrets."""
        admin_token = self.get_token(self.admin)
        self.call(admin_token, "PUT", f"{self.authority}/admin/vaults/{VAULT}", {}, 200, 201)
        principal = self.call(
            admin_token,
            "POST",
            f"{self.authority}/admin/identity/principals",
            {"displayName": "bench-app", "kind": "application"},
            201,
        )
        credential = self.call(
            admin_token,
            "POST",
            f"{self.authority}/admin/identity/principals/{principal['objectId']}/credentials",
            {"kind": "clientSecret", "description": "benchmark"},
            201,
        )
        self.app = {
            "tenantId": principal["tenantId"],
            "clientId": principal["clientId"],
            "clientSecret": credential["secret"],
            "objectId": principal["objectId"],
        }
        for role in (SECRETS_OFFICER, CRYPTO_USER):
            self.call(
                admin_token,
                "PUT",
                f"{self.authority}/admin/roles/assignments/new",
                {"scope": f"/vaults/{VAULT}", "roleDefinitionId": role, "principalId": principal["objectId"]},
                201,
            )
        # The vault host's certificate name is issued when the vault is created: wait until TLS accepts it.
        procs.wait_until(
            lambda: self.http.get(f"{self.vault_url}/healthz").status_code in (200, 401, 404),
            30,
            "the vault host's certificate",
        )
        # Keys: the application may use keys (Crypto User) but not create them; the administrator creates them.
        for name, body in (("rsa", {"kty": "RSA", "key_size": 2048}), ("ec", {"kty": "EC", "crv": "P-256"})):
            created = self.call(admin_token, "POST", f"{self.vault_url}/keys/{name}/create?api-version={KEY_API}", body)
            self.key_versions[name] = created["key"]["kid"].rstrip("/").rsplit("/", 1)[-1]
        self.token = self.get_token(self.app)
        # Other worker processes learn of new role assignments from the change feed, polled every 0.25 s (Azure's
        # RBAC takes minutes): give it one round before the application uses them.
        time.sleep(0.5)
        self._put_secrets(workload)

    def _put_secrets(self, workload: Workload) -> None:
        items = workload.secret_items()
        headers = {"authorization": f"Bearer {self.token}"}

        def put(chunk: list[tuple[str, str]]) -> None:
            with httpx.Client(verify=self.ssl_context(), timeout=60, headers=headers) as client:
                for name, value in chunk:
                    self._check(
                        client.put(f"{self.vault_url}/secrets/{name}?api-version={SECRET_API}", json={"value": value})
                    )

        chunks = [items[i::8] for i in range(8)]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(put, chunks))
        listed = self.list_all(self.token)
        if listed != workload.secrets:
            raise RuntimeError(f"the vault lists {listed} secrets, expected {workload.secrets}")

    def list_all(self, token: str, client: httpx.Client | None = None) -> int:
        """Every page of GET /secrets, as the SDK's list_properties_of_secrets walks them; the number of items."""
        http = client or self.http
        url: str | None = f"{self.vault_url}/secrets?api-version={SECRET_API}"
        count = 0
        while url:
            page = self._check(http.get(url, headers={"authorization": f"Bearer {token}"}))
            count += len(page["value"])
            url = page.get("nextLink")
        return count

    def page_paths(self, token: str) -> list[str]:
        """The path and query of every page of the list, in order (what the SDK requests walking it)."""
        url: str | None = f"{self.vault_url}/secrets?api-version={SECRET_API}"
        paths = []
        while url:
            parsed = httpx.URL(url)
            paths.append(parsed.raw_path.decode())
            page = self._check(self.http.get(url, headers={"authorization": f"Bearer {token}"}))
            url = page.get("nextLink")
        return paths

    def pid(self) -> int:
        assert self.server is not None
        return self.server.pid
