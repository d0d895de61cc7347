"""Tenants, applications and managed identities, and the credentials they prove themselves with.

Client secrets and managed-identity endpoint secrets are random, shown once, and stored only as
slow (scrypt) hashes. A managed identity's endpoint secret has the form `<credential id>.<secret>`
so the server finds the one hash to check.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import orjson

from coffer.clock import now
from coffer.crypto import passwords
from coffer.errors import NotFound
from coffer.storage import CredentialRow, PrincipalRow, Transaction

APPLICATION = "application"
MANAGED_IDENTITY = "managedIdentity"
CLIENT_SECRET = "clientSecret"  # noqa: S105 (a credential kind, not a secret)
IDENTITY_ENDPOINT = "identityEndpoint"
_DUMMY_HASH = passwords.hash_secret("coffer-dummy-secret")


@dataclass(frozen=True)
class IssuedSecret:
    credential_id: str
    secret: str
    expires: int | None


def create_tenant(tx: Transaction, display_name: str, tenant_id: str | None = None) -> str:
    tenant_id = tenant_id or str(uuid.uuid4())
    tx.meta_put("tenant:" + tenant_id, orjson.dumps({"displayName": display_name, "created": now()}))
    return tenant_id


def tenant_exists(tx: Transaction, tenant_id: str) -> bool:
    return tx.meta_get("tenant:" + tenant_id) is not None


def create_principal(tx: Transaction, tenant_id: str, display_name: str, kind: str) -> PrincipalRow:
    if not tenant_exists(tx, tenant_id):
        raise NotFound(f"Tenant {tenant_id} was not found.", code="TenantNotFound")
    row = PrincipalRow(
        object_id=str(uuid.uuid4()),
        tenant_id=tenant_id,
        client_id=str(uuid.uuid4()),
        kind=kind,
        display_name=display_name,
        created=now(),
    )
    tx.principal_put(row)
    return row


def add_secret(tx: Transaction, principal: PrincipalRow, kind: str, lifetime: int | None = None) -> IssuedSecret:
    credential_id = uuid.uuid4().hex
    secret = passwords.random_secret()
    created = now()
    expires = created + lifetime if lifetime else None
    tx.credential_put(
        CredentialRow(
            id=credential_id,
            object_id=principal.object_id,
            kind=kind,
            secret_hash=passwords.hash_secret(secret),
            created=created,
            expires=expires,
        )
    )
    if kind == IDENTITY_ENDPOINT:
        secret = f"{credential_id}.{secret}"
    return IssuedSecret(credential_id, secret, expires)


def _valid(credential: CredentialRow, kind: str, secret: str) -> bool:
    if credential.kind != kind or (credential.expires is not None and credential.expires <= now()):
        return False
    return passwords.verify_secret(secret, credential.secret_hash)


def authenticate_client_secret(tx: Transaction, tenant_id: str, client_id: str, secret: str) -> PrincipalRow | None:
    principal = tx.principal_by_client_id(tenant_id, client_id)
    if principal is None:
        passwords.verify_secret(secret, _DUMMY_HASH)  # same cost whether or not the client exists
        return None
    credentials = [c for c in tx.credential_list(principal.object_id) if c.kind == CLIENT_SECRET]
    if not credentials:
        passwords.verify_secret(secret, _DUMMY_HASH)
    return principal if any(_valid(c, CLIENT_SECRET, secret) for c in credentials) else None


def authenticate_identity_endpoint(tx: Transaction, header: str) -> PrincipalRow | None:
    credential_id, _, secret = header.partition(".")
    credential = tx.credential_get(credential_id) if credential_id and secret else None
    if credential is None:
        passwords.verify_secret(secret, _DUMMY_HASH)
        return None
    if not _valid(credential, IDENTITY_ENDPOINT, secret):
        return None
    return tx.principal_get(credential.object_id)
