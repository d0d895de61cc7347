"""Tenants, applications and managed identities, and the credentials they prove themselves with.

Credential kinds:
- clientSecret: random, shown once, stored only as a scrypt hash; several at once (rotation), optional expiry.
- certificate: a registered public certificate; the client signs a JWT assertion with its private key.
  Looked up by the SHA-1 thumbprint (`x5t`) MSAL puts in the assertion header.
- federated: trust of an external issuer's token for (issuer, subject, audiences): workload identity federation.
- identityEndpoint: a managed-identity endpoint secret (`IDENTITY_HEADER`), of the form `<credential id>.<secret>`
  so the server finds the one hash to check. An endpoint serves its owner and any identities assigned to it
  (`data["identities"]`), selected by `client_id`, `object_id` or `mi_res_id` as Azure does.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from coffer.clock import now
from coffer.crypto import passwords, x509
from coffer.errors import BadParameter, Conflict, NotFound
from coffer.storage import CredentialRow, PrincipalRow, TenantRow, Transaction

APPLICATION = "application"
MANAGED_IDENTITY = "managedIdentity"
KINDS = (APPLICATION, MANAGED_IDENTITY)
CLIENT_SECRET = "clientSecret"  # noqa: S105 (a credential kind, not a secret)
IDENTITY_ENDPOINT = "identityEndpoint"
CERTIFICATE = "certificate"
FEDERATED = "federated"
DEFAULT_FEDERATED_AUDIENCE = "api://AzureADTokenExchange"
_DUMMY_HASH = passwords.hash_secret("coffer-dummy-secret")


@dataclass(frozen=True)
class IssuedSecret:
    credential_id: str
    secret: str
    expires: int | None


def create_tenant(tx: Transaction, display_name: str, tenant_id: str | None = None) -> str:
    tenant_id = tenant_id or str(uuid.uuid4())
    tx.tenant_put(TenantRow(id=tenant_id, display_name=display_name, created=now()))
    return tenant_id


def tenant_exists(tx: Transaction, tenant_id: str) -> bool:
    return tx.tenant_get(tenant_id) is not None


def create_principal(tx: Transaction, tenant_id: str, display_name: str, kind: str) -> PrincipalRow:
    if not tenant_exists(tx, tenant_id):
        raise NotFound(f"Tenant {tenant_id} was not found.", code="TenantNotFound")
    if kind not in KINDS:
        raise BadParameter(f"kind must be one of {', '.join(KINDS)}.")
    if not display_name or len(display_name) > 256:
        raise BadParameter("displayName must be 1-256 characters long.")
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


def get_principal(tx: Transaction, tenant_id: str, id_or_client_id: str) -> PrincipalRow:
    """A principal of `tenant_id` by object id or client id."""
    row = tx.principal_get(id_or_client_id) or tx.principal_by_client_id(tenant_id, id_or_client_id)
    if row is None or row.tenant_id != tenant_id:
        raise NotFound(f"Principal {id_or_client_id[:64]} was not found.", code="PrincipalNotFound")
    return row


def delete_principal(tx: Transaction, principal: PrincipalRow) -> None:
    for credential in tx.credential_all():  # drop it from endpoints it was assigned to
        identities = credential.data.get("identities")
        if credential.kind == IDENTITY_ENDPOINT and identities and principal.object_id in identities:
            credential.data["identities"] = [i for i in identities if i != principal.object_id]
            tx.credential_put(credential)
    tx.principal_delete(principal.object_id)


def resource_id(principal: PrincipalRow) -> str:
    """The managed identity's resource id (Azure's `mi_res_id` selector)."""
    return (
        f"/subscriptions/{principal.tenant_id}/resourceGroups/coffer/providers/"
        f"Microsoft.ManagedIdentity/userAssignedIdentities/{principal.display_name}"
    )


def _new(
    principal: PrincipalRow,
    kind: str,
    *,
    secret_hash: str = "",
    lifetime: int | None = None,
    lookup: str | None = None,
    data: dict[str, object] | None = None,
) -> CredentialRow:
    created = now()
    return CredentialRow(
        id=uuid.uuid4().hex,
        object_id=principal.object_id,
        kind=kind,
        secret_hash=secret_hash,
        created=created,
        expires=created + lifetime if lifetime else None,
        lookup=lookup,
        data=dict(data or {}),
    )


def add_secret(
    tx: Transaction, principal: PrincipalRow, kind: str, lifetime: int | None = None, description: str = ""
) -> IssuedSecret:
    """A new client secret or managed-identity endpoint secret; the value is returned once, never stored."""
    if kind == CLIENT_SECRET and principal.kind != APPLICATION:
        raise BadParameter("Client secrets belong to applications; managed identities use endpoint secrets.")
    if kind == IDENTITY_ENDPOINT and principal.kind != MANAGED_IDENTITY:
        raise BadParameter("Endpoint secrets belong to managed identities.")
    if lifetime is not None and lifetime <= 0:
        raise BadParameter("The lifetime of a secret must be positive.")
    secret = passwords.random_secret()
    row = _new(
        principal,
        kind,
        secret_hash=passwords.hash_secret(secret),
        lifetime=lifetime,
        data={"description": description} if description else None,
    )
    tx.credential_put(row)
    if kind == IDENTITY_ENDPOINT:
        secret = f"{row.id}.{secret}"
    return IssuedSecret(row.id, secret, row.expires)


def add_certificate(
    tx: Transaction, principal: PrincipalRow, certificate: bytes, description: str = ""
) -> CredentialRow:
    if principal.kind != APPLICATION:
        raise BadParameter("Certificate credentials belong to applications.")
    try:
        cert = x509.load_client_certificate(certificate)
    except x509.InvalidCertificate:
        raise BadParameter("The certificate is not a valid PEM or DER X.509 certificate.") from None
    if any(c.object_id == principal.object_id for c in tx.credential_by_lookup(cert.x5t)):
        raise Conflict("This certificate is already registered for the principal.")
    row = _new(
        principal,
        CERTIFICATE,
        lookup=cert.x5t,
        data={
            "pem": cert.pem,
            "publicKey": cert.public_key_pem,
            "x5t": cert.x5t,
            "x5t#S256": cert.x5t_s256,
            "subject": cert.subject,
            "description": description,
        },
    )
    row.expires = cert.not_after
    tx.credential_put(row)
    return row


def federated_lookup(issuer: str, subject: str) -> str:
    return f"{issuer.rstrip('/')} {subject}"


def add_federated(
    tx: Transaction,
    principal: PrincipalRow,
    *,
    name: str,
    issuer: str,
    subject: str,
    audiences: list[str] | None = None,
) -> CredentialRow:
    if not issuer.startswith("https://") or len(issuer) > 600:
        raise BadParameter("issuer must be an https URL.")
    if not subject or len(subject) > 600:
        raise BadParameter("subject must be 1-600 characters long.")
    audiences = audiences or [DEFAULT_FEDERATED_AUDIENCE]
    if not all(isinstance(a, str) and a for a in audiences):
        raise BadParameter("audiences must be non-empty strings.")
    lookup = federated_lookup(issuer, subject)
    if any(c.object_id == principal.object_id for c in tx.credential_by_lookup(lookup)):
        raise Conflict("A federated credential for this issuer and subject already exists on the principal.")
    row = _new(
        principal,
        FEDERATED,
        lookup=lookup,
        data={"name": name, "issuer": issuer.rstrip("/"), "subject": subject, "audiences": audiences},
    )
    tx.credential_put(row)
    return row


def assign_identity(tx: Transaction, endpoint: CredentialRow, identity: PrincipalRow) -> None:
    """Make `identity` selectable (by client_id, object_id or mi_res_id) through `endpoint`."""
    if endpoint.kind != IDENTITY_ENDPOINT or identity.kind != MANAGED_IDENTITY:
        raise BadParameter("Only managed identities can be assigned to an identity endpoint.")
    identities = list(endpoint.data.get("identities", []))
    if identity.object_id not in identities and identity.object_id != endpoint.object_id:
        identities.append(identity.object_id)
    endpoint.data["identities"] = identities
    tx.credential_put(endpoint)


def remove_credential(tx: Transaction, principal: PrincipalRow, credential_id: str) -> None:
    credential = tx.credential_get(credential_id)
    if credential is None or credential.object_id != principal.object_id:
        raise NotFound(f"Credential {credential_id[:64]} was not found on this principal.", code="CredentialNotFound")
    tx.credential_delete(credential_id)


def describe_credential(row: CredentialRow) -> dict[str, object]:
    """What may be shown about a credential: never a secret or its hash."""
    shown: dict[str, object] = {"id": row.id, "kind": row.kind, "created": row.created, "expires": row.expires}
    for key in ("description", "name", "issuer", "subject", "audiences", "x5t", "x5t#S256", "subject", "identities"):
        if key in row.data:
            shown[key] = row.data[key]
    return shown


def valid(credential: CredentialRow, kind: str) -> bool:
    return credential.kind == kind and (credential.expires is None or credential.expires > now())


def authenticate_client_secret(
    tx: Transaction, tenant_id: str, client_id: str, secret: str
) -> tuple[PrincipalRow, CredentialRow] | None:
    """Constant-time check of a client secret against every valid secret of the client."""
    principal = tx.principal_by_client_id(tenant_id, client_id)
    credentials = [c for c in tx.credential_list(principal.object_id)] if principal else []
    matched = None
    checked = 0
    for credential in credentials:
        if credential.kind == CLIENT_SECRET:
            checked += 1
            if passwords.verify_secret(secret, credential.secret_hash) and valid(credential, CLIENT_SECRET):
                matched = credential
    if checked == 0:
        passwords.verify_secret(secret, _DUMMY_HASH)  # the same cost whether or not the client exists
    if principal is None or matched is None:
        return None
    return principal, matched


def authenticate_identity_endpoint(tx: Transaction, header: str) -> CredentialRow | None:
    """The endpoint credential an `IDENTITY_HEADER` value proves, or None."""
    credential_id, _, secret = header.partition(".")
    credential = tx.credential_get(credential_id) if credential_id and secret else None
    if credential is None:
        passwords.verify_secret(secret, _DUMMY_HASH)
        return None
    if not passwords.verify_secret(secret, credential.secret_hash) or not valid(credential, IDENTITY_ENDPOINT):
        return None
    return credential


def select_identity(tx: Transaction, endpoint: CredentialRow, selector: dict[str, str]) -> PrincipalRow | None:
    """The identity an endpoint serves for a request: its owner by default, or the one assigned identity
    that `client_id`, `object_id`/`principal_id` or `mi_res_id` names (Azure's user-assigned selection)."""
    candidates = [endpoint.object_id, *endpoint.data.get("identities", [])]
    rows = [r for r in (tx.principal_get(oid) for oid in candidates) if r is not None]
    if not selector:
        return rows[0] if rows and rows[0].object_id == endpoint.object_id else None
    for row in rows:
        if (
            selector.get("client_id", row.client_id).lower() == row.client_id
            and selector.get("object_id", selector.get("principal_id", row.object_id)).lower() == row.object_id
            and selector.get("mi_res_id", resource_id(row)).lower() == resource_id(row).lower()
        ):
            return row
    return None
