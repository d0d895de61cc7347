"""Verification of tokens minted by trusted external OIDC issuers (placeholder: being written)."""

from __future__ import annotations

from typing import Any

from coffer.storage import IssuerRow


class InvalidExternalToken(Exception):
    """The external token failed verification (message safe for the audit log)."""


class JwksCache:
    def __init__(self, ttl_seconds: float = 300, fetch_timeout: float = 5) -> None:
        self.ttl_seconds = ttl_seconds
        self.fetch_timeout = fetch_timeout

    def verify(self, token: str, issuer: IssuerRow, audiences: list[str]) -> dict[str, Any]:
        raise InvalidExternalToken("external issuers are not supported yet")
