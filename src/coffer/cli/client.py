"""A small HTTPS client for Coffer's admin and system APIs (client-credentials token, then bearer calls)."""

from __future__ import annotations

import os
import shlex
import ssl
from pathlib import Path
from typing import Any

import httpx


class ClientError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


def _dev_env(data_dir: Path) -> dict[str, str]:
    """The variables of DIR/dev.env, so the CLI works next to a dev server without `source`."""
    path = data_dir / "dev.env"
    values: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.startswith("export ") and "=" in line:
                key, _, value = line[len("export ") :].partition("=")
                values[key] = shlex.split(value)[0] if value else ""
    return values


class CofferClient:
    def __init__(
        self,
        addr: str | None = None,
        ca_cert: str | None = None,
        data_dir: Path = Path(".coffer"),
        tenant_id: str | None = None,
        client_id: str | None = None,
        client_secret: str | None = None,
    ) -> None:
        dev = _dev_env(data_dir)
        env = {**dev, **os.environ}
        self.addr = (addr or env.get("COFFER_ADDR") or "https://localhost:8443").rstrip("/")
        # the dev server's CA before a REQUESTS_CA_BUNDLE the machine may set for other purposes
        ca_file = (
            ca_cert or os.environ.get("COFFER_CACERT") or dev.get("REQUESTS_CA_BUNDLE") or env.get("REQUESTS_CA_BUNDLE")
        )
        verify: Any = ssl.create_default_context(cafile=ca_file) if ca_file else True
        self.http = httpx.Client(verify=verify, timeout=30)
        self.tenant_id = tenant_id or env.get("COFFER_TENANT_ID")
        self.client_id = client_id or env.get("COFFER_CLIENT_ID")
        self.client_secret = client_secret or env.get("COFFER_CLIENT_SECRET")
        self._token: str | None = None

    def _check(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                error = response.json().get("error")
            except ValueError:
                error = None
            if isinstance(error, dict):
                raise ClientError(response.status_code, error.get("code", ""), error.get("message", ""))
            if isinstance(error, str):
                raise ClientError(response.status_code, error, response.json().get("error_description", ""))
            raise ClientError(response.status_code, "HttpError", response.text[:200])
        return response.json() if response.content else None

    def token(self) -> str:
        if self._token is None:
            if not (self.tenant_id and self.client_id and self.client_secret):
                raise ClientError(
                    0,
                    "NoCredentials",
                    "Set COFFER_TENANT_ID, COFFER_CLIENT_ID and COFFER_CLIENT_SECRET (or source dev.env).",
                )
            body = self._check(
                self.http.post(
                    f"{self.addr}/{self.tenant_id}/oauth2/v2.0/token",
                    data={
                        "grant_type": "client_credentials",
                        "client_id": self.client_id,
                        "client_secret": self.client_secret,
                        "scope": f"{self.addr}/.default",
                    },
                )
            )
            self._token = str(body["access_token"])
        return self._token

    def call(self, method: str, path: str, json: Any = None, *, auth: bool = True) -> Any:
        headers = {"authorization": f"Bearer {self.token()}"} if auth else {}
        return self._check(self.http.request(method, f"{self.addr}{path}", json=json, headers=headers))
