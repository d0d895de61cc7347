"""Issue and verify Entra-shaped JWT access tokens.

Coffer's own tokens are RS256 JWTs signed by a key ring kept under the barrier: the newest key signs,
older keys still verify until every token they signed has expired, and JWKS publishes them all. So
tokens stay valid across restarts and key rotations (C10). Tokens of trusted external issuers (real
Entra ID, Keycloak, any OIDC provider) are verified against that issuer's JWKS.
Verified tokens are cached until they expire; the cache is bounded.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt

from coffer.crypto import signing
from coffer.errors import Unauthorized
from coffer.identity.external import InvalidExternalToken, JwksCache
from coffer.storage import IssuerRow

ALGORITHMS = ["RS256"]
LEEWAY = 60
_CACHE_LIMIT = 50_000
_INVALID = "AKV10032: Invalid token."


@dataclass(frozen=True)
class Caller:
    """An authenticated principal, as its token describes it."""

    object_id: str
    tenant_id: str
    client_id: str
    kind: str  # "application" | "managedIdentity" | "external"
    expires: int
    credential_id: str | None = None
    issuer: str = ""

    def audit_identity(self) -> dict[str, Any]:
        claim: dict[str, Any] = {
            "http://schemas.microsoft.com/identity/claims/objectidentifier": self.object_id,
            "oid": self.object_id,
            "appid": self.client_id,
            "tid": self.tenant_id,
            "idtyp": "app",
        }
        if self.issuer:
            claim["iss"] = self.issuer
        return {"claim": claim}


@dataclass(frozen=True)
class SigningKey:
    kid: str
    pem: bytes
    created: int


class TokenService:
    def __init__(self, authority: str, audience: str, lifetime: int, jwks_cache: JwksCache | None = None) -> None:
        self.authority = authority.rstrip("/")
        self.audience = audience.rstrip("/")
        self.lifetime = max(lifetime, 600)  # clients refresh tokens with under 5 minutes left (C9)
        self._keys: list[SigningKey] = []
        self._public: dict[str, Any] = {}
        self._external: dict[str, list[IssuerRow]] = {}  # issuer URL → the tenants' trust entries
        self.jwks_cache = jwks_cache or JwksCache()
        self._cache: dict[str, Caller] = {}
        self._lock = threading.Lock()
        self.reload_keys: Callable[[], None] | None = None  # set by the composition root
        self._last_reload = 0.0

    # --- keys ---------------------------------------------------------------------------------
    def load_keys(self, keys: list[SigningKey]) -> None:
        public = {k.kid: jwt.algorithms.RSAAlgorithm.from_jwk(signing.public_jwk(k.pem, k.kid)) for k in keys}
        with self._lock:
            self._keys = list(keys)
            self._public = public
            self._cache.clear()

    def trust_issuers(self, issuers: list[IssuerRow]) -> None:
        """External issuers whose tokens are accepted on the data plane (those with an audience)."""
        external: dict[str, list[IssuerRow]] = {}
        for issuer in issuers:
            if issuer.audience:
                external.setdefault(issuer.issuer.rstrip("/"), []).append(issuer)
        with self._lock:
            self._external = external
            self._cache.clear()

    def forget_cached(self) -> None:
        with self._lock:
            self._cache.clear()

    def unload(self) -> None:
        with self._lock:
            self._keys, self._public, self._external = [], {}, {}
            self._cache.clear()

    @property
    def kid(self) -> str:
        return self._keys[-1].kid if self._keys else ""

    def issuer(self, tenant_id: str) -> str:
        return f"{self.authority}/{tenant_id}/v2.0"

    def jwks(self) -> dict[str, Any]:
        return {"keys": [signing.public_jwk(k.pem, k.kid) for k in reversed(self._keys)]}

    # --- issuing ------------------------------------------------------------------------------
    def issue(
        self,
        *,
        object_id: str,
        tenant_id: str,
        client_id: str,
        kind: str,
        audience: str,
        credential_id: str | None = None,
        resource_id: str | None = None,
    ) -> tuple[str, int]:
        if not self._keys:
            raise RuntimeError("token signing key not loaded")
        key = self._keys[-1]
        now = int(time.time())
        expires = now + self.lifetime
        claims: dict[str, Any] = {
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
        if credential_id:
            claims["coffer_cred"] = credential_id
        if resource_id:
            claims["xms_mirid"] = resource_id
        token = jwt.encode(claims, key.pem, algorithm="RS256", headers={"kid": key.kid})
        return token, expires

    # --- verifying ----------------------------------------------------------------------------
    def verify(self, token: str, tenant: str | None = None) -> Caller:
        """Check signature, algorithm, issuer, audience and times; raise Unauthorized (reason for the audit).
        `tenant` (the vault's) picks among tenants that trust the same external issuer."""
        cached = self._cache.get(token)
        fresh = cached is not None and cached.expires > time.time()
        if fresh and cached and (cached.kind != "external" or not tenant or cached.tenant_id == tenant):
            return cached
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise Unauthorized(_INVALID, reason="malformed token") from None
        issuer = str(unverified.get("iss", "")).rstrip("/")
        # Coffer's own issuers ({authority}/{tenant}/v2.0) are never an external issuer's: a trusted issuer
        # registered under this server's authority must not take over (and lock out) a tenant's own tokens.
        own = issuer.lower().startswith(self.authority.lower() + "/")
        trusting = [] if own else self._external.get(issuer, [])
        external = next((i for i in trusting if i.tenant_id == tenant), trusting[0] if trusting else None)
        caller = self._verify_external(token, external) if external else self._verify_own(token, header)
        with self._lock:
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[token] = caller
        return caller

    def _key_for(self, kid: Any) -> Any:
        key = self._public.get(kid) if isinstance(kid, str) else None
        if key is None and self.reload_keys is not None and time.monotonic() - self._last_reload > 1:
            self._last_reload = time.monotonic()  # a key rotated by another process or node
            self.reload_keys()
            key = self._public.get(kid) if isinstance(kid, str) else None
        return key

    def _verify_own(self, token: str, header: dict[str, Any]) -> Caller:
        if header.get("alg") not in ALGORITHMS:
            raise Unauthorized(_INVALID, reason=f"algorithm {str(header.get('alg'))[:16]!r} not allowed")
        key = self._key_for(header.get("kid"))
        if key is None:
            raise Unauthorized(_INVALID, reason="unknown signing key", claims_challenge=True)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=ALGORITHMS,
                audience=self.audience,
                leeway=LEEWAY,
                options={"require": ["exp", "iat", "nbf", "iss", "aud", "tid", "oid"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized(_INVALID, reason="token expired", claims_challenge=True) from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized(_INVALID, reason="token not yet valid", claims_challenge=True) from None
        except jwt.InvalidAudienceError:
            raise Unauthorized(_INVALID, reason="wrong audience") from None
        except jwt.PyJWTError as exc:
            raise Unauthorized(_INVALID, reason=f"invalid token: {type(exc).__name__}", claims_challenge=True) from None
        tenant = str(claims["tid"])
        if claims["iss"] != self.issuer(tenant):
            raise Unauthorized(_INVALID, reason="wrong issuer")
        return Caller(
            object_id=str(claims["oid"]),
            tenant_id=tenant,
            client_id=str(claims.get("appid", "")),
            kind=str(claims.get("coffer_kind", "application")),
            expires=int(claims["exp"]),
            credential_id=claims.get("coffer_cred"),
        )

    def _verify_external(self, token: str, issuer: IssuerRow) -> Caller:
        try:
            claims = self.jwks_cache.verify(token, issuer, [issuer.audience or self.audience])
        except InvalidExternalToken as exc:
            raise Unauthorized(_INVALID, reason=f"external token from {issuer.issuer}: {exc}") from None
        subject = claims.get("oid") or claims.get("sub")
        if not subject:
            raise Unauthorized(_INVALID, reason="external token without oid or sub")
        return Caller(
            object_id=str(subject),
            tenant_id=issuer.tenant_id,
            client_id=str(claims.get("appid") or claims.get("azp") or claims.get("client_id") or ""),
            kind="external",
            expires=int(claims["exp"]),
            issuer=issuer.issuer,
        )
