"""Issue and verify Entra-shaped JWT access tokens (RS256, signing key sealed by the barrier).

Tokens are verified statelessly, so they stay valid across restarts until they expire (C10).
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt

from coffer.crypto import signing
from coffer.errors import Unauthorized

ALGORITHMS = ["RS256"]
_CACHE_LIMIT = 10000


@dataclass(frozen=True)
class Caller:
    """An authenticated principal, as its token describes it."""

    object_id: str
    tenant_id: str
    client_id: str
    kind: str  # "app" | "managedIdentity"
    expires: int

    def audit_identity(self) -> dict[str, Any]:
        return {
            "claim": {
                "http://schemas.microsoft.com/identity/claims/objectidentifier": self.object_id,
                "oid": self.object_id,
                "appid": self.client_id,
                "tid": self.tenant_id,
                "idtyp": "app",
            }
        }


class TokenService:
    def __init__(self, authority: str, audience: str, lifetime: int) -> None:
        self.authority = authority.rstrip("/")
        self.audience = audience.rstrip("/")
        self.lifetime = lifetime
        self._private_pem: bytes | None = None
        self._public_key: Any = None
        self.kid = ""
        self._cache: dict[str, Caller] = {}
        self._lock = threading.Lock()

    def load_key(self, private_pem: bytes) -> None:
        self._private_pem = private_pem
        self.kid = signing.key_id(private_pem)
        self._public_key = jwt.algorithms.RSAAlgorithm.from_jwk(signing.public_jwk(private_pem, self.kid))
        with self._lock:
            self._cache.clear()

    def unload(self) -> None:
        self._private_pem = self._public_key = None
        with self._lock:
            self._cache.clear()

    def issuer(self, tenant_id: str) -> str:
        return f"{self.authority}/{tenant_id}/v2.0"

    def jwks(self) -> dict[str, Any]:
        if self._private_pem is None:
            return {"keys": []}
        return {"keys": [signing.public_jwk(self._private_pem, self.kid)]}

    def issue(self, *, object_id: str, tenant_id: str, client_id: str, kind: str, audience: str) -> tuple[str, int]:
        if self._private_pem is None:
            raise RuntimeError("token signing key not loaded")
        now = int(time.time())
        expires = now + self.lifetime
        claims = {
            "aud": audience.rstrip("/"),
            "iss": self.issuer(tenant_id),
            "iat": now,
            "nbf": now,
            "exp": expires,
            "sub": object_id,
            "oid": object_id,
            "tid": tenant_id,
            "appid": client_id,
            "azp": client_id,
            "idtyp": "app",
            "ver": "2.0",
            "uti": uuid.uuid4().hex,
            "coffer_kind": kind,
        }
        token = jwt.encode(claims, self._private_pem, algorithm="RS256", headers={"kid": self.kid})
        return token, expires

    def verify(self, token: str) -> Caller:
        """Check signature, algorithm, issuer, audience, times and tenant; raise Unauthorized."""
        cached = self._cache.get(token)
        now = time.time()
        if cached is not None and cached.expires > now:
            return cached
        if self._public_key is None:
            raise Unauthorized("AKV10032: Invalid token.")
        try:
            header = jwt.get_unverified_header(token)
            if header.get("alg") not in ALGORITHMS or header.get("kid") != self.kid:
                raise Unauthorized("AKV10032: Invalid token: unknown signing key or algorithm.", claims_challenge=True)
            claims = jwt.decode(
                token,
                self._public_key,
                algorithms=ALGORITHMS,
                audience=self.audience,
                leeway=60,
                options={"require": ["exp", "iat", "nbf", "iss", "aud", "tid", "oid"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("AKV10022: Invalid token: the token has expired.", claims_challenge=True) from None
        except jwt.InvalidAudienceError:
            raise Unauthorized("AKV10022: Invalid audience: the token was not issued for this server.") from None
        except jwt.PyJWTError:
            raise Unauthorized("AKV10032: Invalid token.", claims_challenge=True) from None
        tenant = str(claims["tid"])
        if claims["iss"] != self.issuer(tenant):
            raise Unauthorized("AKV10032: Invalid issuer.", claims_challenge=True)
        caller = Caller(
            object_id=str(claims["oid"]),
            tenant_id=tenant,
            client_id=str(claims.get("appid", "")),
            kind=str(claims.get("coffer_kind", "app")),
            expires=int(claims["exp"]),
        )
        with self._lock:
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[token] = caller
        return caller
