"""Verify JWTs minted by a tenant's trusted external OIDC issuer (e.g. a Kubernetes service-account token
presented for workload identity federation).

An issuer's signing keys (JWKS) come from `IssuerRow.jwks`: an inline JSON document, an https URL or a file
path. They are cached for a TTL and reloaded once when a token names an unknown `kid`; every load of one
issuer's keys is at most once per 10 s, so forged tokens cannot make the server hammer the issuer.
Only asymmetric algorithms are accepted (never `none` or HS*), and the key type must match the algorithm.

Messages of `InvalidExternalToken` are safe for responses and audit logs: they never contain the token.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson

from coffer.storage import IssuerRow

log = logging.getLogger("coffer.identity.external")

ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")
LEEWAY_SECONDS = 60
MAX_TOKEN_CHARS = 16 * 1024
_KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC"}
_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
_MIN_RELOAD_SECONDS = 10.0
_MAX_DOCUMENT_BYTES = 1024 * 1024
_MAX_KEYS = 100
_MAX_ISSUERS = 1024


class InvalidExternalToken(Exception):
    """The token is not acceptable. `reason` is a short machine-readable cause (malformed, algorithm, key,
    signature, expired, not_yet_valid, issuer, audience, jwks); the message never contains the token."""

    def __init__(self, message: str, reason: str = "invalid") -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason


# --- token parsing helpers (also used for client assertions) ---------------------------------------


def unverified_header(token: str) -> dict[str, Any]:
    if not token or len(token) > MAX_TOKEN_CHARS or token.count(".") != 2:
        raise InvalidExternalToken("The token is not a well-formed signed JWT.", "malformed")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise InvalidExternalToken("The token is not a well-formed signed JWT.", "malformed") from None
    return header


def unverified_claims(token: str) -> dict[str, Any]:
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise InvalidExternalToken("The token's claims are not a JSON object.", "malformed") from None
    if not isinstance(claims, dict):
        raise InvalidExternalToken("The token's claims are not a JSON object.", "malformed")
    return claims


def algorithm(header: dict[str, Any], allowed: tuple[str, ...] = ALGORITHMS) -> str:
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in allowed:
        shown = alg[:16] if isinstance(alg, str) else "missing"
        raise InvalidExternalToken(f"The token's signing algorithm '{shown}' is not accepted.", "algorithm")
    return alg


def key_type(alg: str) -> str:
    """The JWK `kty` an algorithm needs: RSA for RS*/PS*, EC for ES*."""
    return _KEY_TYPES[alg[:2]]


def same_issuer(claimed: object, expected: str) -> bool:
    return isinstance(claimed, str) and claimed.rstrip("/") == expected.rstrip("/")


def decode(token: str, key: Any, alg: str, *, audience: list[str] | None, require: list[str]) -> dict[str, Any]:
    """Check signature, exp/nbf (60 s leeway) and, if given, the audience. Raises InvalidExternalToken."""
    options: dict[str, Any] = {"require": require, "verify_aud": audience is not None}
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[alg],
            audience=audience,
            leeway=LEEWAY_SECONDS,
            options=options,  # type: ignore[arg-type]
        )
    except jwt.InvalidSignatureError:
        raise InvalidExternalToken("The token's signature is not valid.", "signature") from None
    except jwt.ExpiredSignatureError:
        raise InvalidExternalToken("The token has expired.", "expired") from None
    except jwt.ImmatureSignatureError:
        raise InvalidExternalToken(
            "The token is not valid yet (nbf or iat is in the future).", "not_yet_valid"
        ) from None
    except (jwt.InvalidAudienceError, jwt.MissingRequiredClaimError) as error:
        reason = "audience" if isinstance(error, jwt.InvalidAudienceError) else "malformed"
        raise InvalidExternalToken(f"The token was rejected: {_safe(error)}.", reason) from None
    except jwt.PyJWTError as error:
        raise InvalidExternalToken(f"The token was rejected: {_safe(error)}.", "malformed") from None
    return claims


def _safe(error: Exception) -> str:
    """PyJWT's messages name claims and expectations, never the token; still, keep them short."""
    return str(error)[:200] or type(error).__name__


# --- JWKS loading -----------------------------------------------------------------------------------


def _ssl_context(ca_files: tuple[Path, ...]) -> ssl.SSLContext:
    """The system trust store, plus the configured private CAs (Config.trusted_ca_files)."""
    context = ssl.create_default_context()
    for path in ca_files:
        if path.is_file():
            context.load_verify_locations(cafile=str(path))
    return context


def _fetch(url: str, timeout: float, ca_files: tuple[Path, ...]) -> bytes:
    chunks: list[bytes] = []
    size = 0
    with (
        httpx.Client(verify=_ssl_context(ca_files), timeout=timeout, follow_redirects=False) as client,
        client.stream("GET", url, headers={"accept": "application/json"}) as response,
    ):
        if response.status_code != 200:
            raise InvalidExternalToken(f"The issuer's JWKS endpoint answered HTTP {response.status_code}.", "jwks")
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > _MAX_DOCUMENT_BYTES:
                raise InvalidExternalToken("The issuer's JWKS document is too large.", "jwks")
            chunks.append(chunk)
    return b"".join(chunks)


def _read_file(path: Path) -> bytes:
    with path.open("rb") as handle:
        data = handle.read(_MAX_DOCUMENT_BYTES + 1)
    if len(data) > _MAX_DOCUMENT_BYTES:
        raise InvalidExternalToken("The issuer's JWKS document is too large.", "jwks")
    return data


def _parse(raw: bytes) -> list[dict[str, Any]]:
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidExternalToken("The issuer's JWKS document is not valid JSON.", "jwks") from None
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list):
        raise InvalidExternalToken("The issuer's JWKS document has no 'keys' array.", "jwks")
    return [k for k in keys if isinstance(k, dict)][:_MAX_KEYS]


def load_jwks(source: str, timeout: float, ca_files: tuple[Path, ...] = ()) -> list[dict[str, Any]]:
    """The keys of a JWKS given inline (JSON), as an https URL or as a file path."""
    text = source.strip()
    if text.startswith("{"):
        return _parse(text.encode("utf-8"))
    lowered = text.lower()
    if lowered.startswith("http://"):
        raise InvalidExternalToken("The issuer's JWKS URL must use https.", "jwks")
    if lowered.startswith("https://"):
        return _parse(_fetch(text, timeout, ca_files))
    return _parse(_read_file(Path(text)))


def _usable(jwk: dict[str, Any], kid: str | None, alg: str) -> Any:
    """The verification key of `jwk` if it may verify a token signed with `alg` under `kid`, else None."""
    if kid is not None and jwk.get("kid") != kid:
        return None
    if jwk.get("use", "sig") != "sig" or jwk.get("alg", alg) != alg or jwk.get("kty") != key_type(alg):
        return None
    if alg in _CURVES and jwk.get("crv") != _CURVES[alg]:
        return None
    try:
        return jwt.PyJWK(jwk, algorithm=alg).key
    except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
        return None


def usable_keys(keys: list[dict[str, Any]], kid: str | None, alg: str) -> list[Any]:
    found = [_usable(jwk, kid, alg) for jwk in keys]
    return [key for key in found if key is not None]


@dataclass
class _Entry:
    keys: list[dict[str, Any]] = field(default_factory=list)
    loaded: float = float("-inf")  # last successful load (monotonic)
    attempted: float = float("-inf")  # last load attempt, successful or not
    failure: str | None = None  # why the last attempt failed
    lock: threading.Lock = field(default_factory=threading.Lock)

    def knows(self, kid: str | None) -> bool:
        return kid is None or any(k.get("kid") == kid for k in self.keys)


class JwksCache:
    """Signing keys of trusted external issuers, cached per issuer; thread-safe."""

    def __init__(self, ttl_seconds: float = 300, fetch_timeout: float = 5, ca_files: tuple[Path, ...] = ()) -> None:
        self.ttl_seconds = ttl_seconds
        self.fetch_timeout = fetch_timeout
        self.ca_files = ca_files  # private CAs that JWKS URLs may chain to, beside the system store
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def verify(self, token: str, issuer: IssuerRow, audiences: list[str]) -> dict[str, Any]:
        """The verified claims of `token`, signed by `issuer`'s keys for one of `audiences`."""
        header = unverified_header(token)
        alg = algorithm(header)
        kid = header.get("kid") if isinstance(header.get("kid"), str) else None
        if not audiences:
            raise InvalidExternalToken("No audience is configured for this trust.", "audience")
        claims = self._decode(token, self._keys(issuer, kid, alg), alg, audiences)
        if not same_issuer(claims.get("iss"), issuer.issuer):
            raise InvalidExternalToken("The token's issuer is not the trusted issuer.", "issuer")
        return claims

    @staticmethod
    def _decode(token: str, keys: list[Any], alg: str, audiences: list[str]) -> dict[str, Any]:
        for key in keys[:-1]:  # without a kid several keys may fit: only a signature mismatch moves on
            try:
                return decode(token, key, alg, audience=audiences, require=["exp", "iss", "aud"])
            except InvalidExternalToken as error:
                if error.reason != "signature":
                    raise
        return decode(token, keys[-1], alg, audience=audiences, require=["exp", "iss", "aud"])

    def _keys(self, issuer: IssuerRow, kid: str | None, alg: str) -> list[Any]:
        entry = self._entry(issuer)
        with entry.lock:
            now = time.monotonic()
            stale = now - entry.loaded >= self.ttl_seconds
            if (stale or not entry.knows(kid)) and now - entry.attempted >= _MIN_RELOAD_SECONDS:
                self._load(entry, issuer, now)
            if not entry.keys and entry.failure:
                raise InvalidExternalToken(entry.failure, "jwks")
            keys = usable_keys(entry.keys, kid, alg)
        if not keys:
            raise InvalidExternalToken("No signing key of the issuer matches the token's kid and algorithm.", "key")
        return keys

    def _entry(self, issuer: IssuerRow) -> _Entry:
        key = (issuer.id, issuer.jwks)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _Entry()
                while len(self._entries) > _MAX_ISSUERS:
                    self._entries.popitem(last=False)
            else:
                self._entries.move_to_end(key)
            return entry

    def _load(self, entry: _Entry, issuer: IssuerRow, now: float) -> None:
        entry.attempted = now
        try:
            entry.keys = load_jwks(issuer.jwks, self.fetch_timeout, self.ca_files)
        except InvalidExternalToken as error:
            entry.failure, cause = error.message, error.message
        except (httpx.HTTPError, OSError) as error:
            entry.failure, cause = "The issuer's signing keys could not be loaded.", type(error).__name__
        else:
            entry.loaded, entry.failure = now, None
            return
        log.warning("JWKS of issuer %s unavailable: %s", issuer.issuer[:200], cause)


__all__ = [
    "ALGORITHMS",
    "InvalidExternalToken",
    "JwksCache",
    "algorithm",
    "decode",
    "key_type",
    "load_jwks",
    "same_issuer",
    "unverified_claims",
    "unverified_header",
    "usable_keys",
]
