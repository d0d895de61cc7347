"""Client assertions (`client_assertion` JWTs) at the token endpoint: what principal and credential they prove.

Two kinds, told apart by the header and `iss`:
- certificate (MSAL / azure-identity CertificateCredential): signed with the application's private key; the
  header names the registered certificate by `x5t` (SHA-1) or `x5t#S256` (SHA-256) thumbprint; `iss` == `sub`
  == client_id; `aud` is the token endpoint; `jti` is single-use across the installation (every process and node).
- federated (workload identity): a JWT minted by an external issuer the tenant trusts (e.g. a Kubernetes
  service-account token), matched by (iss, sub) to a federated credential of the application and verified
  against the issuer's JWKS and the credential's audiences.

The storage lookups run in one short read transaction; signature checks (and any JWKS fetch) run after it.
Errors are `InvalidAssertion`: an Entra-like AADSTS code and a message safe for clients and the audit log.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from coffer.identity import principals
from coffer.identity.external import (
    InvalidExternalToken,
    JwksCache,
    algorithm,
    decode,
    key_type,
    same_issuer,
    unverified_claims,
    unverified_header,
)
from coffer.storage import CredentialRow, IssuerRow, PrincipalRow, Storage, Transaction

CERTIFICATE_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")
MAX_ASSERTION_LIFETIME = 24 * 3600  # a certificate assertion may not be valid further ahead than this
_TOKEN_PATHS = ("oauth2/v2.0/token", "oauth2/token")

# Entra's codes for the same failures
APP_NOT_FOUND = 700016
BAD_SIGNATURE = 700027
EXPIRED = 700024
NO_FEDERATED_MATCH = 70021
UNTRUSTED_ISSUER = 700211
WRONG_AUDIENCE = 700212


class InvalidAssertion(Exception):
    """The assertion proves nothing. `message` is safe to show and audit; `reason` is for the audit log."""

    def __init__(self, message: str, aadsts: int, reason: str) -> None:
        super().__init__(message)
        self.message = message
        self.aadsts = aadsts
        self.reason = reason


class ReplayCache:
    """`jti` values of accepted certificate assertions, remembered until they expire; thread-safe, bounded."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._seen: dict[str, float] = {}
        self._expiry: list[tuple[float, str]] = []  # min-heap of (expires, key)
        self._lock = threading.Lock()

    def first_use(self, key: str, expires: float) -> bool:
        """Record `key`; False if it was already used and has not expired."""
        now = time.time()
        with self._lock:
            self._prune(now)
            if key in self._seen:
                return False
            self._seen[key] = expires
            heapq.heappush(self._expiry, (expires, key))
            return True

    def _prune(self, now: float) -> None:
        while self._expiry and (self._expiry[0][0] <= now or len(self._expiry) >= self.max_entries):
            expires, key = heapq.heappop(self._expiry)
            if self._seen.get(key) == expires:
                del self._seen[key]


# A certificate assertion's first use is recorded in storage (`meta`, under this prefix), where every process and
# node sees it; the process's ReplayCache answers repeats it has seen itself without a storage write. The entry names
# the time from which it may be forgotten first, so that `forget_used_assertions` finds the oldest first, then a hash
# of the client id and jti. That time is the assertion's exp plus a margin for the leeway of the exp check and for
# clocks of other nodes that run behind the leader's: until then an expired assertion could still be accepted.
USED_ASSERTION = "used-assertion:"
_FORGET_AFTER_EXP_SECONDS = 600


def _first_use_everywhere(storage: Storage, key: str, forget_at: float) -> bool:
    entry = f"{USED_ASSERTION}{math.ceil(forget_at):012d}:{hashlib.sha256(key.encode()).hexdigest()}"
    with storage.write() as tx:  # writes are serialized: of two processes, the second finds the first's entry
        if tx.meta_get(entry) is not None:
            return False
        tx.meta_put(entry, b"", touch=False)
    return True


def forget_used_assertions(storage: Storage, now: float, limit: int = 1000) -> int:
    """Drop the records of assertions that have expired (a maintenance job). Returns how many."""
    with storage.read() as tx:
        entries = tx.meta_list(USED_ASSERTION, limit)
    expired = [e for e, _ in entries if int(e[len(USED_ASSERTION) :].split(":", 1)[0]) <= now]
    if expired:
        with storage.write() as tx:
            for entry in expired:
                tx.meta_delete(entry)
    return len(expired)


@dataclass(frozen=True)
class _Found:
    principal: PrincipalRow
    credential: CredentialRow
    issuer: IssuerRow | None = None


def _fail(message: str, aadsts: int, reason: str) -> InvalidAssertion:
    return InvalidAssertion(message, aadsts, reason)


def _thumbprint(value: Any) -> str | None:
    return value.rstrip("=") if isinstance(value, str) and value else None


def is_certificate_assertion(header: dict[str, Any], claims: dict[str, Any], client_id: str) -> bool:
    return bool(_thumbprint(header.get("x5t")) or _thumbprint(header.get("x5t#S256"))) or (
        claims.get("iss") == client_id
    )


def token_endpoints(bases: Sequence[str], tenant_id: str) -> list[str]:
    """The `aud` values a certificate assertion may carry: the token endpoint (v2.0 or v1) or the tenant's
    authority/issuer URL, under any base URL the server answers at."""
    found: list[str] = []
    for base in bases:
        root = f"{base.rstrip('/')}/{tenant_id}"
        found += [root, f"{root}/v2.0", *(f"{root}/{path}" for path in _TOKEN_PATHS)]
    return [_normal(url) for url in found]


def _normal(url: str) -> str:
    parts = urlsplit(url.strip())
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{parts.path.rstrip('/').lower()}"


def _audience_ok(aud: Any, accepted: Sequence[str]) -> bool:
    values = aud if isinstance(aud, list) else [aud]
    return any(isinstance(v, str) and _normal(v) in accepted for v in values)


class AssertionVerifier:
    """Verifies client assertions; one per server (it holds the JWKS and replay caches)."""

    def __init__(self, jwks: JwksCache | None = None, replay: ReplayCache | None = None) -> None:
        self.jwks = jwks or JwksCache()
        self.replay = replay or ReplayCache()

    def verify(
        self, storage: Storage, assertion: str, *, tenant_id: str, client_id: str, audiences: Sequence[str]
    ) -> tuple[PrincipalRow, CredentialRow]:
        """The (principal, credential) `assertion` proves for `client_id` in `tenant_id`, or InvalidAssertion.
        `audiences` are the accepted token-endpoint URLs (see `token_endpoints`)."""
        try:
            header = unverified_header(assertion)
            claims = unverified_claims(assertion)
        except InvalidExternalToken as error:
            raise _fail("The client assertion is not a well-formed JWT.", BAD_SIGNATURE, error.reason) from None
        certificate = is_certificate_assertion(header, claims, client_id)
        with storage.read() as tx:
            if certificate:
                found = _certificate_credential(tx, header, tenant_id, client_id)
            else:
                found = _federated_credential(tx, claims, tenant_id, client_id)
        if certificate:
            self._check_certificate(storage, assertion, header, found.credential, client_id, audiences)
        else:
            self._check_federated(assertion, found.credential, found.issuer)
        return found.principal, found.credential

    # --- certificate ----------------------------------------------------------------------------
    def _check_certificate(
        self,
        storage: Storage,
        assertion: str,
        header: dict[str, Any],
        credential: CredentialRow,
        client_id: str,
        audiences: Sequence[str],
    ) -> None:
        claims = _verified(assertion, header, credential)
        if claims.get("iss") != client_id or claims.get("sub") != client_id:
            raise _fail("The client assertion's iss and sub must be the client id.", BAD_SIGNATURE, "iss/sub")
        if not _audience_ok(claims.get("aud"), [_normal(a) for a in audiences]):
            raise _fail("The client assertion's audience must be this token endpoint.", BAD_SIGNATURE, "wrong audience")
        exp, jti = claims.get("exp"), claims.get("jti")
        if not isinstance(exp, int | float) or exp > time.time() + MAX_ASSERTION_LIFETIME:
            raise _fail("The client assertion is valid for too long (at most 24 h).", EXPIRED, "exp too far")
        if not isinstance(jti, str) or not jti or len(jti) > 256:
            raise _fail("The client assertion must have a jti claim.", BAD_SIGNATURE, "no jti")
        key, forget_at = f"{client_id} {jti}", float(exp) + _FORGET_AFTER_EXP_SECONDS
        if not self.replay.first_use(key, forget_at) or not _first_use_everywhere(storage, key, forget_at):
            raise _fail("The client assertion has already been used (replayed jti).", BAD_SIGNATURE, "replayed jti")

    # --- federated ------------------------------------------------------------------------------
    def _check_federated(self, assertion: str, credential: CredentialRow, issuer: IssuerRow | None) -> None:
        if issuer is None:
            raise _fail("The assertion's issuer is not trusted by the tenant.", UNTRUSTED_ISSUER, "no issuer")
        audiences = [str(a) for a in credential.data.get("audiences", [])]
        try:
            claims = self.jwks.verify(assertion, issuer, audiences)
        except InvalidExternalToken as error:
            raise _external_failure(error) from None
        if claims.get("sub") != credential.data.get("subject"):
            raise _fail("The assertion's subject does not match the federated credential.", NO_FEDERATED_MATCH, "sub")


def _external_failure(error: InvalidExternalToken) -> InvalidAssertion:
    codes = {"expired": EXPIRED, "not_yet_valid": EXPIRED, "audience": WRONG_AUDIENCE, "issuer": UNTRUSTED_ISSUER}
    message = f"The federated assertion was rejected: {error.message}"
    return _fail(message, codes.get(error.reason, BAD_SIGNATURE), f"federated: {error.reason}")


def _principal(tx: Transaction, tenant_id: str, client_id: str) -> PrincipalRow:
    principal = tx.principal_by_client_id(tenant_id, client_id)
    if principal is None or principal.tenant_id != tenant_id:
        raise _fail(
            f"Application with identifier '{client_id[:64]}' was not found in the directory '{tenant_id[:64]}'.",
            APP_NOT_FOUND,
            "application not found",
        )
    return principal


def _certificate_credential(tx: Transaction, header: dict[str, Any], tenant_id: str, client_id: str) -> _Found:
    principal = _principal(tx, tenant_id, client_id)
    sha1, sha256 = _thumbprint(header.get("x5t")), _thumbprint(header.get("x5t#S256"))
    if sha1:
        candidates = tx.credential_by_lookup(sha1)
    else:
        candidates = [c for c in tx.credential_list(principal.object_id) if c.data.get("x5t#S256") == sha256]
    for credential in candidates:
        if credential.object_id == principal.object_id and principals.valid(credential, principals.CERTIFICATE):
            return _Found(principal, credential)
    raise _fail(
        "The certificate used to sign the client assertion is not registered (or has expired) on the application.",
        BAD_SIGNATURE,
        "unknown certificate",
    )


def _public_key(credential: CredentialRow) -> Any:
    pem = credential.data.get("publicKey")
    if not isinstance(pem, str):
        raise _fail("The registered certificate has no usable public key.", BAD_SIGNATURE, "no public key")
    return serialization.load_pem_public_key(pem.encode("ascii"))


def _verified(assertion: str, header: dict[str, Any], credential: CredentialRow) -> dict[str, Any]:
    try:
        alg = algorithm(header, CERTIFICATE_ALGORITHMS)
    except InvalidExternalToken as error:
        raise _fail(error.message, BAD_SIGNATURE, "algorithm") from None
    key = _public_key(credential)
    kind = "RSA" if isinstance(key, rsa.RSAPublicKey) else "EC" if isinstance(key, ec.EllipticCurvePublicKey) else ""
    if kind != key_type(alg):
        raise _fail("The assertion's algorithm does not fit the certificate's key.", BAD_SIGNATURE, "key type")
    try:
        return decode(assertion, key, alg, audience=None, require=["exp", "iss", "sub", "aud", "jti"])
    except InvalidExternalToken as error:
        if error.reason in ("expired", "not_yet_valid"):
            raise _fail("The client assertion is not within its valid time range.", EXPIRED, error.reason) from None
        if error.reason == "signature":
            raise _fail("The client assertion failed signature validation.", BAD_SIGNATURE, "signature") from None
        raise _fail(f"The client assertion is invalid: {error.message}", BAD_SIGNATURE, error.reason) from None


def _federated_credential(tx: Transaction, claims: dict[str, Any], tenant_id: str, client_id: str) -> _Found:
    issuer, subject = claims.get("iss"), claims.get("sub")
    if not isinstance(issuer, str) or not isinstance(subject, str) or not issuer or not subject:
        raise _fail("The client assertion has no iss and sub claims.", BAD_SIGNATURE, "no iss/sub")
    principal = _principal(tx, tenant_id, client_id)
    for credential in tx.credential_by_lookup(principals.federated_lookup(issuer[:600], subject[:600])):
        if credential.object_id == principal.object_id and principals.valid(credential, principals.FEDERATED):
            trusted = _trusted_issuer(tx, tenant_id, issuer)
            return _Found(principal, credential, trusted)
    raise _fail(
        "No matching federated identity record found for presented assertion. "
        f"Assertion Issuer: '{issuer[:200]}'. Assertion Subject: '{subject[:200]}'.",
        NO_FEDERATED_MATCH,
        "no federated credential",
    )


def _trusted_issuer(tx: Transaction, tenant_id: str, issuer: str) -> IssuerRow:
    for row in tx.issuer_list(tenant_id):
        if same_issuer(issuer, row.issuer):
            return row
    raise _fail(
        f"The issuer '{issuer[:200]}' is not a trusted issuer of the tenant (register its JWKS).",
        UNTRUSTED_ISSUER,
        "issuer not trusted",
    )


__all__ = [
    "USED_ASSERTION",
    "AssertionVerifier",
    "InvalidAssertion",
    "ReplayCache",
    "forget_used_assertions",
    "is_certificate_assertion",
    "token_endpoints",
]
