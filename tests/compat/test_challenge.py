"""Raw HTTP (httpx) against the server's edge: the bearer challenge, token validation, the token
service's error answers, and Azure's error envelope for unknown hosts, routes and malformed bodies."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import httpx
import jwt
import pytest
from azure.keyvault.secrets._shared.http_challenge import HttpChallenge
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.compat.helpers import unique
from tests.support.server import DevServer

API = {"api-version": "2026-04-01"}
JSON = {"content-type": "application/json"}


# --- helpers ---------------------------------------------------------------------------------------

def envelope(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """Assert Azure's error shape `{"error": {"code", "message"}}` and return the inner error."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers.get("content-type", "").startswith("application/json"), response.headers
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, dict), body
    assert isinstance(error.get("code"), str) and error["code"], body
    assert isinstance(error.get("message"), str) and error["message"], body
    assert set(error) <= {"code", "message", "innererror"}, body
    if code is not None:
        assert error["code"] == code, body
    assert "retry-after" not in response.headers, "4xx/401 must never carry Retry-After (C11)"
    return error


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unsigned(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    return ".".join([b64url(json.dumps(header).encode()), b64url(json.dumps(claims).encode()), b64url(signature)])


@pytest.fixture(scope="module")
def http(dev_server: DevServer) -> Iterator[httpx.Client]:
    with httpx.Client(verify=dev_server.ca, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def tenant(dev_server: DevServer) -> str:
    return dev_server.env["COFFER_TENANT_ID"]


@pytest.fixture(scope="module")
def token(http: httpx.Client, dev_server: DevServer) -> str:
    response = http.get(dev_server.env["IDENTITY_ENDPOINT"],
                        params={"api-version": "2019-08-01", "resource": dev_server.authority},
                        headers={"X-IDENTITY-HEADER": dev_server.env["IDENTITY_HEADER"], "Metadata": "true"})
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


@pytest.fixture(scope="module")
def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def signing_key(dev_server: DevServer) -> bytes:
    """The dev server's own token-signing key, read from its data directory with its dev unseal key.

    Only to forge tokens whose signature is valid but whose claims are not (expired, wrong audience,
    wrong issuer...): the server must reject them on the claims, not only on the signature."""
    from coffer.barrier import Barrier
    storage = dev_server.open_storage()  # SQLite or PostgreSQL, as the server
    try:
        barrier = Barrier(storage)
        barrier.unseal_with_key(bytes.fromhex((dev_server.data_dir / "dev-unseal.key").read_text().strip()))
        with storage.read() as tx:
            ring = barrier.system_get(tx, "token-signing-keys")
    finally:
        storage.close()
    assert ring is not None
    return str(json.loads(ring)[-1]["pem"]).encode("ascii")  # the newest key signs


def _claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


# --- the challenge ---------------------------------------------------------------------------------

UNAUTHENTICATED_REQUESTS = [
    # the SDK's first request: the operation's method and URL, no body, but Content-Type: application/json
    ("PUT", "/secrets/{n}", b"", JSON),
    ("PUT", "/secrets/{n}", b"this is not json", JSON),
    ("PUT", "/secrets/{n}", b'{"value": 5}', JSON),
    ("PATCH", "/secrets/{n}/", b"", JSON),
    ("POST", "/secrets/restore", b"", JSON),
    ("POST", "/secrets/{n}/backup", b"", JSON),
    ("POST", "/deletedsecrets/{n}/recover", b"", JSON),
    ("DELETE", "/secrets/{n}", b"", {}),
    ("DELETE", "/deletedsecrets/{n}", b"", {}),
    ("GET", "/secrets/{n}/", b"", {}),
    ("GET", "/secrets/bad_name/", b"", {}),
    ("GET", "/secrets", b"", {}),
    ("GET", "/deletedsecrets", b"", {}),
    ("GET", "/no/such/route", b"", {}),
]


@pytest.mark.parametrize(("method", "path", "body", "headers"), UNAUTHENTICATED_REQUESTS,
                         ids=[f"{m} {p} {b[:8]!r}" for m, p, b, _ in UNAUTHENTICATED_REQUESTS])
def test_request_without_authorization_gets_the_challenge_first(
        http: httpx.Client, dev_server: DevServer, tenant: str,
        method: str, path: str, body: bytes, headers: dict[str, str]) -> None:
    url = dev_server.vault_url + path.format(n=unique("c"))
    response = http.request(method, url, params=API, content=body, headers=headers)
    error = envelope(response, 401, "Unauthorized")
    assert "Bearer or PoP token" in error["message"]
    assert response.headers["www-authenticate"] == (
        f'Bearer authorization="{dev_server.authority}/{tenant}", resource="{dev_server.authority}"')


def test_challenge_for_non_bearer_or_empty_authorization(http: httpx.Client, dev_server: DevServer) -> None:
    for value in ("Basic dXNlcjpwYXNz", "Bearer", "bearer", "Token abc", "PoP abc", "Basic"):
        response = http.put(f"{dev_server.vault_url}/secrets/{unique('c')}", params=API, content=b"",
                            headers={**JSON, "Authorization": value})
        envelope(response, 401, "Unauthorized")
        assert response.headers["www-authenticate"].startswith("Bearer authorization=")


def test_challenge_resource_is_a_strict_parent_domain_with_port(http: httpx.Client, dev_server: DevServer,
                                                                 tenant: str) -> None:
    response = http.get(f"{dev_server.vault_url}/secrets", params=API)
    header = response.headers["www-authenticate"]
    vault = urlparse(dev_server.vault_url)
    # parse it the way the SDK does (http_challenge.py), then apply the SDK's resource check (C7)
    challenge = HttpChallenge(dev_server.vault_url, header)
    assert challenge.tenant_id == tenant
    assert challenge.get_scope() == "" and challenge.get_resource() == dev_server.authority
    resource = urlparse(challenge.get_resource())
    assert resource.scheme == "https"
    assert resource.port == vault.port and vault.port is not None and vault.port != 443
    assert resource.netloc != vault.netloc
    assert vault.netloc.lower().endswith("." + resource.netloc.lower())
    # the values must survive the SDK's naive `,` / `=` splitting
    for part in header.removeprefix("Bearer ").split(","):
        _key, value = part.strip().split("=")
        assert value.startswith('"') and value.endswith('"') and "," not in value
    assert urlparse(challenge.get_authorization_server()).path.strip("/") == tenant


# --- forged and invalid tokens ---------------------------------------------------------------------

def _genuine_claims(dev_server: DevServer, token: str) -> dict[str, Any]:
    claims = _claims(token)
    assert claims["aud"] == dev_server.authority
    return claims


def _forged_tokens(dev_server: DevServer, http: httpx.Client, token: str, signing_key: bytes,
                   tenant: str) -> dict[str, str]:
    header = jwt.get_unverified_header(token)
    kid = header["kid"]
    good = _genuine_claims(dev_server, token)
    now = int(time.time())
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other_pem = other_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
    jwks = http.get(f"{dev_server.authority}/{tenant}/discovery/v2.0/keys").json()
    public = jwt.algorithms.RSAAlgorithm.from_jwk(json.dumps(jwks["keys"][0]))
    public_pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def real(claims: dict[str, Any], **headers: Any) -> str:
        return jwt.encode(claims, signing_key, algorithm="RS256", headers={"kid": kid, **headers})

    def hs256(secret: bytes) -> str:
        head = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
        body = b64url(json.dumps(good).encode())
        mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
        return f"{head}.{body}.{b64url(mac)}"

    head, body, signature = token.split(".")
    tampered_claims = {**good, "oid": str(uuid.uuid4())}
    forged = {
        "other-rsa-key-same-kid": jwt.encode(good, other_pem, algorithm="RS256", headers={"kid": kid}),
        "other-rsa-key-other-kid": jwt.encode(good, other_pem, algorithm="RS256", headers={"kid": "other"}),
        "alg-none": unsigned({"alg": "none", "typ": "JWT", "kid": kid}, good),
        "alg-none-with-signature": unsigned({"alg": "none", "kid": kid}, good, b"sig"),
        "alg-None-capitalised": unsigned({"alg": "None", "kid": kid}, good),
        "hs256-public-pem": hs256(public_pem),
        "hs256-public-pem-stripped": hs256(public_pem.strip()),
        "tampered-payload": f"{head}.{b64url(json.dumps(tampered_claims).encode())}.{signature}",
        "signature-stripped": f"{head}.{body}.",
        "signature-of-another-token": f"{head}.{body}.{b64url(b'x' * 256)}",
        "rs512-header": jwt.encode(good, signing_key, algorithm="RS512", headers={"kid": kid}),
        "expired": real({**good, "iat": now - 7200, "nbf": now - 7200, "exp": now - 3600}),
        "not-yet-valid": real({**good, "iat": now, "nbf": now + 3600, "exp": now + 7200}),
        "wrong-audience-azure": real({**good, "aud": "https://vault.azure.net"}),
        "wrong-audience-vault-host": real({**good, "aud": dev_server.vault_url}),
        "wrong-audience-list": real({**good, "aud": ["https://vault.azure.net"]}),
        "wrong-issuer": real({**good, "iss": f"https://login.microsoftonline.com/{tenant}/v2.0"}),
        "issuer-of-other-tenant": real({**good, "iss": f"{dev_server.authority}/{uuid.uuid4()}/v2.0"}),
        "missing-tid": real({k: v for k, v in good.items() if k != "tid"}),
        "missing-exp": real({k: v for k, v in good.items() if k != "exp"}),
        "missing-kid": jwt.encode(good, signing_key, algorithm="RS256"),
        "garbage": "garbage",
        "three-dots": "a.b.c",
        "only-dots": "....",
        "bad-base64": "!!!.@@@.###",
        "json-not-object": f"{b64url(b'[1]')}.{b64url(b'[2]')}.{b64url(b'x')}",
        "huge": "A" * 12000,
    }
    return forged


def test_forged_tokens_are_rejected_with_401_never_500(http: httpx.Client, dev_server: DevServer, token: str,
                                                       auth: dict[str, str], signing_key: bytes,
                                                       tenant: str) -> None:
    name = unique("forge")
    # control: the genuine token works, and so does a token re-signed with the real key
    assert http.put(f"{dev_server.vault_url}/secrets/{name}", params=API, json={"value": "v"},
                    headers=auth).status_code == 200
    resigned = jwt.encode(_claims(token), signing_key, algorithm="RS256",
                          headers={"kid": jwt.get_unverified_header(token)["kid"]})
    assert http.get(f"{dev_server.vault_url}/secrets/{name}/", params=API,
                    headers={"Authorization": f"Bearer {resigned}"}).status_code == 200

    failures = []
    for label, forged in _forged_tokens(dev_server, http, token, signing_key, tenant).items():
        headers = {"Authorization": f"Bearer {forged}"}
        for method, url, body in (("GET", f"{dev_server.vault_url}/secrets/{name}/", None),
                                  ("PUT", f"{dev_server.vault_url}/secrets/{name}", {"value": "hacked"})):
            response = http.request(method, url, params=API, json=body, headers=headers)
            if response.status_code != 401:
                failures.append(f"{label}: {method} {url} -> {response.status_code} {response.text[:200]}")
                continue
            envelope(response, 401, "Unauthorized")
            challenge = response.headers.get("www-authenticate", "")
            assert challenge.startswith("Bearer "), (label, challenge)
            HttpChallenge(url, challenge)  # the SDK can parse it (needs authorization or authorization_uri)
    assert not failures, "\n".join(failures)
    # nothing was written by a forged token
    response = http.get(f"{dev_server.vault_url}/secrets/{name}/", params=API, headers=auth)
    assert response.status_code == 200 and response.json()["value"] == "v"


# --- token service errors --------------------------------------------------------------------------

def _oauth_error(response: httpx.Response, status: int, error: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error, body
    assert isinstance(body.get("error_description"), str) and body["error_description"], body
    assert "retry-after" not in response.headers


def test_token_endpoint(http: httpx.Client, dev_server: DevServer, tenant: str) -> None:
    env = dev_server.env
    url = f"{dev_server.authority}/{tenant}/oauth2/v2.0/token"
    form = {"grant_type": "client_credentials", "client_id": env["COFFER_CLIENT_ID"],
            "client_secret": env["COFFER_CLIENT_SECRET"], "scope": f"{dev_server.authority}/.default"}

    ok = http.post(url, data=form)
    assert ok.status_code == 200, ok.text
    body = ok.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] >= 3000  # well over 300 s (C9)
    assert _claims(body["access_token"])["aud"] == dev_server.authority

    _oauth_error(http.post(url, data={**form, "client_secret": "wrong"}), 401, "invalid_client")
    _oauth_error(http.post(url, data={**form, "client_secret": ""}), 401, "invalid_client")
    _oauth_error(http.post(url, data={**form, "client_id": str(uuid.uuid4())}), 401, "invalid_client")
    _oauth_error(http.post(f"{dev_server.authority}/{uuid.uuid4()}/oauth2/v2.0/token", data=form),
                 401, "invalid_client")
    for scope in ("https://vault.azure.net/.default", f"{dev_server.vault_url}/.default", "", "openid"):
        _oauth_error(http.post(url, data={**form, "scope": scope}), 400, "invalid_scope")
    _oauth_error(http.post(url, data={**form, "grant_type": "password"}), 400, "unsupported_grant_type")

    discovery = http.get(f"{dev_server.authority}/{tenant}/v2.0/.well-known/openid-configuration").json()
    assert discovery["token_endpoint"] == url
    assert discovery["authorization_endpoint"].startswith(f"{dev_server.authority}/{tenant}/")


def test_managed_identity_endpoint(http: httpx.Client, dev_server: DevServer) -> None:
    env = dev_server.env
    params = {"api-version": "2019-08-01", "resource": dev_server.authority}
    good = {"X-IDENTITY-HEADER": env["IDENTITY_HEADER"], "Metadata": "true"}
    ok = http.get(env["IDENTITY_ENDPOINT"], params=params, headers=good)
    assert ok.status_code == 200, ok.text
    body = ok.json()
    assert body["token_type"] == "Bearer" and body["resource"] == dev_server.authority
    assert int(body["expires_on"]) - time.time() >= 3000
    assert _claims(body["access_token"])["aud"] == dev_server.authority

    for wrong in ("wrong", env["IDENTITY_HEADER"] + "x", env["IDENTITY_HEADER"].split(".")[0] + ".x"):
        response = http.get(env["IDENTITY_ENDPOINT"], params=params,
                            headers={"X-IDENTITY-HEADER": wrong, "Metadata": "true"})
        assert response.status_code == 401, response.text
        assert response.json()["error"] == "invalid_client"
    missing = http.get(env["IDENTITY_ENDPOINT"], params=params, headers={"Metadata": "true"})
    assert missing.status_code in (400, 401), missing.text
    assert "error" in missing.json()
    wrong_resource = http.get(env["IDENTITY_ENDPOINT"], headers=good,
                              params={**params, "resource": "https://vault.azure.net"})
    _oauth_error(wrong_resource, 400, "invalid_scope")


def test_tokens_are_not_accepted_as_identity_header_secrets(http: httpx.Client, dev_server: DevServer) -> None:
    """The client secret of the service principal is not a valid X-IDENTITY-HEADER."""
    response = http.get(dev_server.env["IDENTITY_ENDPOINT"],
                        params={"api-version": "2019-08-01", "resource": dev_server.authority},
                        headers={"X-IDENTITY-HEADER": dev_server.env["COFFER_CLIENT_SECRET"]})
    assert response.status_code == 401, response.text


# --- unknown hosts and routes ----------------------------------------------------------------------

def _via_localhost_sni(http: httpx.Client, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """Send to a host name the dev certificate does not cover (TLS clients ignore `*.localhost`), with
    SNI and certificate check for `localhost`; the Host header still names the requested host."""
    request = http.build_request(method, url, extensions={"sni_hostname": "localhost"}, **kwargs)
    return http.send(request)


def test_unknown_vault_host(http: httpx.Client, dev_server: DevServer, auth: dict[str, str]) -> None:
    port = urlparse(dev_server.vault_url).port
    for host in ("nosuch", "dev-but-not"):
        response = _via_localhost_sni(http, "GET", f"https://{host}.localhost:{port}/secrets/x/", params=API,
                                      headers=auth)
        envelope(response, 404, "VaultNotFound")
        response = _via_localhost_sni(http, "PUT", f"https://{host}.localhost:{port}/secrets/x", params=API,
                                      headers=auth, json={"value": "v"})
        envelope(response, 404, "VaultNotFound")
    # a host outside the server's DNS suffix
    response = http.get(f"{dev_server.authority}/secrets", params=API,
                        headers={**auth, "Host": f"example.com:{port}"})
    envelope(response, 404)


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/nope", 404), ("GET", "/secrets/a/b/c", 404), ("GET", "/storage/k/", 404),
    ("GET", "/certificates/a/b/c", 404), ("GET", "/deletedsecrets/a/b/c", 404), ("GET", "/", 404),
    ("GET", "/secrets/x/versions/extra", 404), ("PUT", "/secrets", 405), ("POST", "/secrets/x", 405),
])
def test_unknown_route_or_method_is_an_error_envelope(http: httpx.Client, dev_server: DevServer,
                                                      auth: dict[str, str], method: str, path: str,
                                                      status: int) -> None:
    response = http.request(method, dev_server.vault_url + path, params=API, headers={**auth, **JSON},
                            content=b"{}" if method in ("PUT", "POST") else None)
    envelope(response, status, "NotFound" if status == 404 else "MethodNotAllowed")


# --- malformed bodies ------------------------------------------------------------------------------

MALFORMED_SET_BODIES = [
    b"", b"{", b"not json", b"[]", b"[1, 2]", b"null", b'"string"', b"5", b"\xff\xfe\x00",
    b'{"value": "\\ud800"}',
    b"{}", b'{"value": 5}', b'{"value": null}', b'{"value": ["a"]}', b'{"value": {"a": 1}}', b'{"value": true}',
    b'{"value": "v", "tags": "x"}', b'{"value": "v", "tags": ["x"]}', b'{"value": "v", "tags": {"a": 1}}',
    b'{"value": "v", "tags": {"a": null}}', b'{"value": "v", "tags": {"": "empty-name"}}',
    b'{"value": "v", "contentType": 5}', b'{"value": "v", "contentType": {"a": 1}}',
    b'{"value": "v", "attributes": "x"}', b'{"value": "v", "attributes": []}',
    b'{"value": "v", "attributes": {"enabled": "yes"}}', b'{"value": "v", "attributes": {"enabled": 1}}',
    b'{"value": "v", "attributes": {"exp": "tomorrow"}}', b'{"value": "v", "attributes": {"exp": 1.5}}',
    b'{"value": "v", "attributes": {"exp": true}}', b'{"value": "v", "attributes": {"exp": -1}}',
    b'{"value": "v", "attributes": {"exp": 100000000000000000000000000}}',
    b'{"value": "v", "attributes": {"nbf": "2030-01-01T00:00:00Z"}}',
    b'{"value": "v", "attributes": {"nbf": 2000000000, "exp": 1000000000}}',
]


@pytest.mark.parametrize("body", MALFORMED_SET_BODIES, ids=[repr(b)[:60] for b in MALFORMED_SET_BODIES])
def test_malformed_set_bodies_are_bad_parameters(http: httpx.Client, dev_server: DevServer,
                                                 auth: dict[str, str], body: bytes) -> None:
    name = unique("mal")
    response = http.put(f"{dev_server.vault_url}/secrets/{name}", params=API, content=body,
                        headers={**auth, **JSON})
    envelope(response, 400, "BadParameter")
    assert http.get(f"{dev_server.vault_url}/secrets/{name}/", params=API, headers=auth).status_code == 404


MALFORMED_UPDATE_BODIES = [
    b"{", b"[]", b"null", b'{"tags": "x"}', b'{"tags": {"a": 1}}', b'{"contentType": 5}',
    b'{"attributes": {"enabled": "yes"}}', b'{"attributes": {"exp": "tomorrow"}}', b'{"attributes": []}',
    b'{"attributes": {"nbf": 1.25}}',
]


@pytest.mark.parametrize("body", MALFORMED_UPDATE_BODIES, ids=[repr(b)[:60] for b in MALFORMED_UPDATE_BODIES])
def test_malformed_update_bodies_are_bad_parameters(http: httpx.Client, dev_server: DevServer,
                                                    auth: dict[str, str], body: bytes) -> None:
    name = unique("malu")
    created = http.put(f"{dev_server.vault_url}/secrets/{name}", params=API, json={"value": "v", "tags": {"k": "v"}},
                       headers=auth)
    assert created.status_code == 200, created.text
    response = http.patch(f"{dev_server.vault_url}/secrets/{name}/", params=API, content=body,
                          headers={**auth, **JSON})
    envelope(response, 400, "BadParameter")
    after = http.get(f"{dev_server.vault_url}/secrets/{name}/", params=API, headers=auth).json()
    assert after["attributes"]["enabled"] is True and after["tags"] == {"k": "v"}
    assert after["attributes"]["updated"] == created.json()["attributes"]["updated"]


@pytest.mark.parametrize("body", [
    b"", b"{", b"[]", b"{}", b'{"value": 5}', b'{"value": null}', b'{"value": ""}', b'{"value": ["x"]}',
    b'{"value": "!!!!"}', b'{"value": "not-a-backup"}', b'{"value": "' + b"A" * 5000 + b'"}',
])
def test_malformed_restore_bodies_are_bad_parameters(http: httpx.Client, dev_server: DevServer,
                                                     auth: dict[str, str], body: bytes) -> None:
    response = http.post(f"{dev_server.vault_url}/secrets/restore", params=API, content=body,
                         headers={**auth, **JSON})
    envelope(response, 400, "BadParameter")


BAD_PAGING = [
    {"maxresults": "0"}, {"maxresults": "26"}, {"maxresults": "abc"}, {"maxresults": "-1"}, {"maxresults": "+5"},
    {"maxresults": "99999999999999999999999"},
    {"maxresults": "²"}, {"maxresults": "٣"},  # str.isdigit() is true for these; int() fails or is not ASCII
    {"$skiptoken": "%%%"}, {"$skiptoken": "////"}, {"$skiptoken": "!"},
]


@pytest.mark.parametrize("query", BAD_PAGING, ids=[repr(q) for q in BAD_PAGING])
def test_bad_paging_parameters_are_bad_parameters(http: httpx.Client, dev_server: DevServer,
                                                  auth: dict[str, str], query: dict[str, str]) -> None:
    name = unique("pg")
    assert http.put(f"{dev_server.vault_url}/secrets/{name}", params=API, json={"value": "v"},
                    headers=auth).status_code == 200
    for path in ("/secrets", "/deletedsecrets", f"/secrets/{name}/versions"):
        response = http.get(dev_server.vault_url + path, params={**API, **query}, headers=auth)
        envelope(response, 400, "BadParameter")


@pytest.mark.parametrize("decoded", ["\u00b2", "9" * 40, "-1", "1.5", "x", "\uff11"])
def test_bad_version_skiptokens_are_bad_parameters(http: httpx.Client, dev_server: DevServer,
                                                   auth: dict[str, str], decoded: str) -> None:
    """Well-formed base64url whose content is not a version position: 400, never 500."""
    name = unique("pgv")
    assert http.put(f"{dev_server.vault_url}/secrets/{name}", params=API, json={"value": "v"},
                    headers=auth).status_code == 200
    response = http.get(f"{dev_server.vault_url}/secrets/{name}/versions", headers=auth,
                        params={**API, "$skiptoken": b64url(decoded.encode())})
    envelope(response, 400, "BadParameter")


# --- body size -------------------------------------------------------------------------------------

LIMIT = 4 * 1024 * 1024


def test_body_over_4_mib_is_413(http: httpx.Client, dev_server: DevServer, auth: dict[str, str]) -> None:
    name = unique("big")
    url = f"{dev_server.vault_url}/secrets/{name}"
    with_length = http.put(url, params=API, content=b" " * (LIMIT + 1), headers={**auth, **JSON})
    envelope(with_length, 413)

    def chunks() -> Iterator[bytes]:
        for _ in range(5):
            yield b" " * (1024 * 1024)

    chunked = http.put(url, params=API, content=chunks(), headers={**auth, **JSON})
    assert chunked.request.headers.get("transfer-encoding") == "chunked"
    envelope(chunked, 413)
    # a body of exactly 4 MiB is within the limit
    padded = b'{"value": "x"}' + b" " * (LIMIT - 14)
    assert len(padded) == LIMIT
    ok = http.put(url, params=API, content=padded, headers={**auth, **JSON})
    assert ok.status_code == 200, ok.text
