"""The storage interface every backend implements (SQLite now, PostgreSQL later).

Storage sees clear columns (names, versions, dates, flags) and opaque sealed blobs; it never
holds a key that could open them. Object names compare case-insensitively, as in Key Vault:
backends look them up by `name.lower()` and keep the spelling of the first write.
One conformance suite (tests/conformance/test_storage.py) checks every backend.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("coffer.storage")


class StorageError(Exception):
    """The backend failed (I/O, corruption, lock timeout). Requests fail closed on it."""


@dataclass
class VaultRow:
    name: str
    tenant_id: str
    created: int
    updated: int
    retention_days: int = 90
    purge_protection: bool = False
    sku: str = "standard"
    rbac_authorization: bool = True
    wrapped_key: bytes = b""  # the vault's data key, sealed by the root key
    key_term: int = 1
    # legacy access policies: [{"tenantId", "objectId", "applicationId"?, "permissions": {"keys": [...], ...}}]
    access_policies: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class PrincipalRow:
    object_id: str
    tenant_id: str
    client_id: str
    kind: str  # "application" | "managedIdentity"
    display_name: str
    created: int


@dataclass
class TenantRow:
    id: str
    display_name: str
    created: int


@dataclass
class CredentialRow:
    id: str
    object_id: str
    kind: str  # "clientSecret" | "identityEndpoint" | "certificate" | "federated"
    secret_hash: str  # "" for kinds that hold no secret
    created: int
    expires: int | None = None
    lookup: str | None = None  # certificate thumbprint, or "issuer subject" of a federated credential
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class IssuerRow:
    """An external OIDC issuer a tenant trusts: for federated credentials and for data-plane tokens."""

    id: str
    tenant_id: str
    issuer: str
    jwks: str  # a file path, an https URL, or an inline JWKS document
    audience: str | None
    created: int


@dataclass
class RoleDefinitionRow:
    """A custom role. `scope` is where it was defined ("/" = the server, "/vaults/{v}" = one vault)."""

    id: str
    scope: str
    role_name: str
    description: str
    permissions: list[dict[str, list[str]]]  # [{"actions","notActions","dataActions","notDataActions"}]
    assignable_scopes: list[str]
    created: int
    updated: int


@dataclass
class RoleAssignmentRow:
    """A role granted to a principal at a scope.

    Scopes: "/" (the server), "/vaults/{v}", "/vaults/{v}/{kind}s", "/vaults/{v}/{kind}s/{name}"."""

    id: str
    scope: str
    role_definition_id: str
    principal_id: str
    created: int


@dataclass
class ObjectRow:
    """A named secret, key or certificate; `deleted` is set while it is soft-deleted."""

    vault: str
    kind: str
    name: str
    latest: str | None = None
    deleted: int | None = None
    purge_at: int | None = None
    data: dict[str, Any] = field(default_factory=dict)  # clear per-object settings (a key's rotation policy)


@dataclass
class VersionRow:
    vault: str
    kind: str
    name: str
    version: str
    created: int
    updated: int
    enabled: bool = True
    nbf: int | None = None
    exp: int | None = None
    content_type: str | None = None
    tags: dict[str, str] | None = None
    managed: bool = False
    kid: str | None = None
    payload: bytes = b""  # sealed by the barrier
    seq: int = 0  # creation order within the object, assigned by the backend
    extra: dict[str, Any] = field(default_factory=dict)


# Change topics: what a committed write transaction changed, for every process and node that caches it
# (Storage.changes_since). "identity": tenants, principals, credentials, issuers; "access": role definitions,
# role assignments, access policies; "vault": a vault's settings; "meta": installation values (signing keys).
IDENTITY, ACCESS, VAULT, META = "identity", "access", "vault", "meta"


class Transaction(ABC):
    """Reads and writes inside one atomic, durable transaction.

    Every write method that changes something another process may cache calls `touch(topic)`; the backend
    records the topics in its change feed in the same transaction."""

    def __init__(self) -> None:
        self.touched: set[str] = set()
        self.committed_callbacks: list[Callable[[], object]] = []

    def touch(self, topic: str) -> None:
        self.touched.add(topic)

    def after_commit(self, callback: Callable[[], object]) -> None:
        """Call `callback` once this write transaction has committed, after it (and outside its lock), in the thread
        that committed it; not at all if it rolls back or if the savepoint it was registered in is undone. A
        callback registered twice runs once. The backends run them through `run_committed_callbacks`."""
        if callback not in self.committed_callbacks:
            self.committed_callbacks.append(callback)

    def run_committed_callbacks(self) -> None:
        """For the backends, once the transaction has committed. The commit stands whatever a callback does: one
        that fails is logged and the others still run."""
        for callback in self.committed_callbacks:
            try:
                callback()
            except Exception as error:
                log.warning("an after-commit step failed (%s)", type(error).__name__)

    @abstractmethod
    def savepoint(self) -> AbstractContextManager[None]:
        """A nested part of a write transaction: undone alone if the block raises (the transaction goes on)."""

    # meta: installation-wide values (seal configuration, sealed signing key, ...)
    @abstractmethod
    def meta_get(self, key: str) -> bytes | None: ...
    @abstractmethod
    def meta_put(self, key: str, value: bytes, *, touch: bool = True) -> None:
        """touch=False for entries no process caches (a work queue): other processes are not told of them."""

    @abstractmethod
    def meta_list(self, prefix: str, limit: int) -> list[tuple[str, bytes]]:
        """The entries whose key starts with `prefix`, by key."""

    @abstractmethod
    def meta_delete(self, key: str) -> None: ...

    # vaults
    @abstractmethod
    def vault_get(self, name: str) -> VaultRow | None: ...
    @abstractmethod
    def vault_list(self) -> list[VaultRow]: ...
    @abstractmethod
    def vault_put(self, row: VaultRow) -> None: ...
    @abstractmethod
    def vault_delete(self, name: str) -> None:
        """Remove the vault and every object and version in it."""

    # tenants and trusted external issuers
    @abstractmethod
    def tenant_get(self, tenant_id: str) -> TenantRow | None: ...
    @abstractmethod
    def tenant_list(self) -> list[TenantRow]: ...
    @abstractmethod
    def tenant_put(self, row: TenantRow) -> None: ...
    @abstractmethod
    def issuer_list(self, tenant_id: str | None = None) -> list[IssuerRow]: ...
    @abstractmethod
    def issuer_put(self, row: IssuerRow) -> None: ...
    @abstractmethod
    def issuer_delete(self, issuer_id: str) -> None: ...

    # principals and their credentials
    @abstractmethod
    def principal_get(self, object_id: str) -> PrincipalRow | None: ...
    @abstractmethod
    def principal_by_client_id(self, tenant_id: str, client_id: str) -> PrincipalRow | None: ...
    @abstractmethod
    def principal_list(self, tenant_id: str | None = None) -> list[PrincipalRow]: ...
    @abstractmethod
    def principal_put(self, row: PrincipalRow) -> None: ...
    @abstractmethod
    def principal_delete(self, object_id: str) -> None: ...
    @abstractmethod
    def credential_get(self, credential_id: str) -> CredentialRow | None: ...
    @abstractmethod
    def credential_list(self, object_id: str) -> list[CredentialRow]: ...
    @abstractmethod
    def credential_by_lookup(self, lookup: str) -> list[CredentialRow]: ...
    @abstractmethod
    def credential_all(self) -> list[CredentialRow]:
        """Every credential (for the in-memory revocation index)."""

    @abstractmethod
    def credential_put(self, row: CredentialRow) -> None: ...
    @abstractmethod
    def credential_delete(self, credential_id: str) -> None: ...

    # authorization
    @abstractmethod
    def role_definition_get(self, role_id: str) -> RoleDefinitionRow | None: ...
    @abstractmethod
    def role_definition_list(self) -> list[RoleDefinitionRow]: ...
    @abstractmethod
    def role_definition_put(self, row: RoleDefinitionRow) -> None: ...
    @abstractmethod
    def role_definition_delete(self, role_id: str) -> None: ...
    @abstractmethod
    def role_assignment_get(self, assignment_id: str) -> RoleAssignmentRow | None: ...
    @abstractmethod
    def role_assignment_list(self) -> list[RoleAssignmentRow]: ...
    @abstractmethod
    def role_assignment_put(self, row: RoleAssignmentRow) -> None: ...
    @abstractmethod
    def role_assignment_delete(self, assignment_id: str) -> None: ...

    # objects and versions
    @abstractmethod
    def object_get(self, vault: str, kind: str, name: str) -> ObjectRow | None: ...
    @abstractmethod
    def object_put(self, row: ObjectRow) -> None: ...
    @abstractmethod
    def object_purge(self, vault: str, kind: str, name: str) -> None:
        """Remove the object and all its versions for good."""

    @abstractmethod
    def object_list(self, vault: str, kind: str, *, deleted: bool, after: str | None, limit: int) -> list[ObjectRow]:
        """Objects ordered by lower-cased name, strictly after `after` (a lower-cased name)."""

    @abstractmethod
    def objects_due_for_purge(self, now: int, limit: int) -> list[ObjectRow]: ...

    @abstractmethod
    def version_get(self, vault: str, kind: str, name: str, version: str) -> VersionRow | None: ...
    @abstractmethod
    def object_with_version(
        self, vault: str, kind: str, name: str, version: str | None
    ) -> tuple[ObjectRow | None, VersionRow | None]:
        """An object and one of its versions (`version`, or the object's latest when None) in one lookup."""
    @abstractmethod
    def version_put(self, row: VersionRow) -> None:
        """Insert or update a version; a new version gets the next `seq` of its object."""

    @abstractmethod
    def version_list(self, vault: str, kind: str, name: str, *, after_seq: int | None, limit: int) -> list[VersionRow]:
        """Versions in creation order (by `seq`), strictly after `after_seq`."""

    @abstractmethod
    def latest_versions(self, vault: str, kind: str, objects: list[ObjectRow]) -> dict[str, VersionRow]:
        """The latest version of each object, keyed by lower-cased name (one round trip)."""


# Every table an installation holds, in an order that satisfies foreign keys (`coffer operator migrate` copies them
# as they are: sealed blobs stay sealed). The change feed is not data and is not copied.
TABLES = (
    "meta",
    "tenants",
    "vaults",
    "principals",
    "credentials",
    "issuers",
    "role_definitions",
    "role_assignments",
    "objects",
    "versions",
)


class Storage(ABC):
    # Reads are lookups in a local file taking microseconds (SQLite): the pipeline runs them on the event loop rather
    # than hand them to a worker thread. False where a read waits on the network (PostgreSQL).
    fast_reads = False

    @abstractmethod
    def migrate(self) -> int:
        """Apply pending schema migrations; return the schema version."""

    @abstractmethod
    def read(self) -> AbstractContextManager[Transaction]:
        """A read-only snapshot."""

    @abstractmethod
    def write(self) -> AbstractContextManager[Transaction]:
        """A write transaction: committed durably when the block exits cleanly, else rolled back."""

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def integrity_check(self) -> list[str]:
        """Problems the backend finds in its own files (empty when healthy)."""

    def files(self) -> Iterator[str]:
        """Paths of files the backend writes (for confidentiality scans)."""
        return iter(())

    # --- whole-installation copy (`coffer operator migrate`) ---------------------------------------
    @abstractmethod
    def export_table(self, table: str) -> Iterator[dict[str, Any]]:
        """Every row of one of TABLES, ordered by primary key, as backend-neutral values: int, str, bytes or None
        (booleans as 0/1, JSON columns as their text)."""

    @abstractmethod
    def import_table(self, table: str, rows: Iterable[dict[str, Any]]) -> int:
        """Insert rows (as export_table gives them) into one of TABLES in one transaction; returns how many."""

    # --- coordination between processes and nodes ------------------------------------------------
    @abstractmethod
    def changes_since(self, seq: int | None) -> tuple[int, set[str]]:
        """The change feed: (newest sequence number, topics committed after `seq`). With `seq=None`, only the newest
        sequence number (where a watcher starts)."""

    def wait_for_changes(self, timeout: float) -> None:
        """Block until a change may have been committed (by any process or node), or `timeout` seconds pass."""
        time.sleep(timeout)

    @abstractmethod
    def hold_leadership(self) -> bool:
        """Try to become (or stay) the one process of the installation that runs background jobs. True while this
        process leads; the lead passes to another process when this one stops or dies."""
