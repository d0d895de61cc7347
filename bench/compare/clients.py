"""The requests of every operation for each system (for wrk and for the sequential httpx client), and the Azure SDK
calls for Coffer."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import httpx
from bench.compare.coffer_side import CofferSide
from bench.compare.model import (
    DIGEST,
    EC_SIGN,
    GET_NAME,
    GET_VALUE,
    KEY_API,
    LIST,
    PLAINTEXT,
    RSA_ENCRYPT,
    RSA_SIGN,
    SECRET_API,
    SECRET_GET,
    SECRET_SET,
    Request,
    Workload,
    b64,
    b64url,
)
from bench.compare.openbao_side import OpenBaoSide

JSON = {"Content-Type": "application/json"}


def coffer_requests(side: CofferSide, workload: Workload, page_paths: list[str]) -> dict[str, Request]:
    auth = {"Authorization": f"Bearer {side.token}"}
    rsa, ec = side.key_versions["rsa"], side.key_versions["ec"]

    def post(path: str, body: dict[str, Any]) -> Request:
        return Request("POST", [path], json.dumps(body), {**auth, **JSON})

    return {
        # The SDK asks for the latest version with an empty version segment: /secrets/{name}/
        SECRET_GET: Request("GET", [f"/secrets/{GET_NAME}/?api-version={SECRET_API}"], None, auth),
        SECRET_SET: Request(
            "PUT",
            [f"/secrets/{workload.set_name}?api-version={SECRET_API}"],
            json.dumps({"value": GET_VALUE}),
            {**auth, **JSON},
        ),
        RSA_SIGN: post(f"/keys/rsa/{rsa}/sign?api-version={KEY_API}", {"alg": "RS256", "value": b64url(DIGEST)}),
        EC_SIGN: post(f"/keys/ec/{ec}/sign?api-version={KEY_API}", {"alg": "ES256", "value": b64url(DIGEST)}),
        RSA_ENCRYPT: post(
            f"/keys/rsa/{rsa}/encrypt?api-version={KEY_API}", {"alg": "RSA-OAEP-256", "value": b64url(PLAINTEXT)}
        ),
        LIST: Request("GET", page_paths, None, auth),
    }


def openbao_requests(side: OpenBaoSide, workload: Workload) -> dict[str, Request]:
    auth = {"X-Vault-Token": side.token}

    def post(path: str, body: dict[str, Any]) -> Request:
        return Request("POST", [path], json.dumps(body), {**auth, **JSON})

    digest = b64(DIGEST)
    return {
        SECRET_GET: Request("GET", [f"/v1/secret/data/{GET_NAME}"], None, auth),
        SECRET_SET: post(f"/v1/secret/data/{workload.set_name}", {"data": {"value": GET_VALUE}}),
        # Transit signs what it is given after hashing it, unless told it is a digest already: prehashed, like
        # Key Vault's sign, so both sign the same 32 bytes.
        RSA_SIGN: post(
            "/v1/transit/sign/rsa/sha2-256", {"input": digest, "prehashed": True, "signature_algorithm": "pkcs1v15"}
        ),
        EC_SIGN: post("/v1/transit/sign/ec/sha2-256", {"input": digest, "prehashed": True}),
        # Transit's RSA encryption is OAEP with SHA-256 (and MGF1-SHA-256): Key Vault's RSA-OAEP-256.
        RSA_ENCRYPT: post("/v1/transit/encrypt/rsa", {"plaintext": b64(PLAINTEXT)}),
        # LIST secret/metadata/ answers every key in one response.
        LIST: Request("GET", ["/v1/secret/metadata/?list=true"], None, auth),
    }


def one_connection(ctx: Any) -> httpx.Client:
    """An httpx client that keeps one keep-alive connection (HTTP/1.1)."""
    return httpx.Client(verify=ctx, timeout=60, limits=httpx.Limits(max_connections=1, max_keepalive_connections=1))


def httpx_call(
    client: httpx.Client,
    base: str,
    request: Request,
    *,
    follow_next_link: bool = False,
    check: Callable[[httpx.Response], None] | None = None,
) -> Callable[[], object]:
    """One operation as a sequence of httpx requests on `client` (for the Coffer list: the first page, then every
    nextLink, as the SDK walks it)."""
    content = request.body.encode() if request.body is not None else None

    def call() -> object:
        response = client.request(request.method, base + request.paths[0], content=content, headers=request.headers)
        if response.status_code >= 300:
            raise RuntimeError(f"{request.method} {request.paths[0]} -> {response.status_code}: {response.text[:200]}")
        if follow_next_link:
            while link := response.json().get("nextLink"):
                response = client.get(link, headers=request.headers)
                if response.status_code >= 300:
                    raise RuntimeError(f"GET nextLink -> {response.status_code}")
        if check:
            check(response)
        return response

    return call


def sdk_calls(side: CofferSide, workload: Workload) -> tuple[dict[str, Callable[[], object]], Callable[[], None]]:
    """The operations through azure-keyvault-secrets / azure-keyvault-keys with a ClientSecretCredential against
    Coffer's token endpoint. Returns the calls and a function that closes the clients."""
    from azure.identity import ClientSecretCredential
    from azure.keyvault.keys.crypto import CryptographyClient, EncryptionAlgorithm, SignatureAlgorithm
    from azure.keyvault.secrets import SecretClient

    logging.getLogger("azure").setLevel(logging.ERROR)
    ca = str(side.ca)
    credential = ClientSecretCredential(
        side.app["tenantId"],
        side.app["clientId"],
        side.app["clientSecret"],
        authority=side.authority,
        disable_instance_discovery=True,
        connection_verify=ca,
    )
    secrets = SecretClient(side.vault_url, credential, connection_verify=ca)
    crypto = {}
    for name in ("rsa", "ec"):
        client = CryptographyClient(
            f"{side.vault_url}/keys/{name}/{side.key_versions[name]}", credential, connection_verify=ca
        )
        # CryptographyClient would fetch the public key and encrypt locally; a Key Vault encrypt request is what is
        # measured, so it is told there is no local key (sign always goes to the service).
        client._initialized = True
        crypto[name] = client

    def list_all() -> int:
        return sum(1 for _ in secrets.list_properties_of_secrets())

    calls: dict[str, Callable[[], object]] = {
        SECRET_GET: lambda: secrets.get_secret(GET_NAME),
        SECRET_SET: lambda: secrets.set_secret(workload.set_name, GET_VALUE),
        RSA_SIGN: lambda: crypto["rsa"].sign(SignatureAlgorithm.rs256, DIGEST),
        EC_SIGN: lambda: crypto["ec"].sign(SignatureAlgorithm.es256, DIGEST),
        RSA_ENCRYPT: lambda: crypto["rsa"].encrypt(EncryptionAlgorithm.rsa_oaep_256, PLAINTEXT),
        LIST: list_all,
    }

    def close() -> None:
        secrets.close()
        for client in crypto.values():
            client.close()
        credential.close()

    return calls, close
