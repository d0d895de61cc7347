"""Composition root: builds storage → barrier → identity → audit → pipeline → HTTP edge from a Config.
The only module that picks concrete implementations."""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from coffer.api.app import Api
from coffer.audit import AuditLog
from coffer.authz import Authorizer, roles
from coffer.barrier import Barrier, SealStatus, VaultView
from coffer.barrier.hsm_seal import HsmSeal
from coffer.clock import now
from coffer.config import Config
from coffer.core import Pipeline
from coffer.core.throttle import Limits, RequestThrottle
from coffer.crypto import pkcs11, signing, tls
from coffer.crypto.keys import KeyBackendUnavailable, KeyMaterial, KeyOperationError
from coffer.crypto.software import SoftwareBackend
from coffer.errors import CofferError
from coffer.identity import assertions, principals
from coffer.identity.external import JwksCache
from coffer.identity.index import IdentityIndex
from coffer.identity.tokens import LEEWAY, SigningKey, TokenService
from coffer.objects import certificate, key, vault
from coffer.storage import ObjectRow, RoleAssignmentRow, Storage, StorageError, Transaction
from coffer.storage.base import ACCESS, IDENTITY, META, VAULT
from coffer.storage.postgres import PostgresStorage
from coffer.storage.sqlite import SqliteStorage

log = logging.getLogger("coffer")


_SIGNING_KEYS = "token-signing-keys"
_LEGACY_SIGNING_KEY = "token-signing-key"
_BOOTSTRAP = "bootstrap"
_DEV = "dev-credentials"
DEV_VAULT = "dev"


@dataclass(frozen=True)
class DevIdentity:
    tenant_id: str
    client_id: str
    client_secret: str
    identity_header: str
    identity_client_id: str


class Coffer:
    def __init__(self, config: Config, storage: Storage | None = None) -> None:
        self.config = config
        config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.storage = storage or (
            PostgresStorage(config.database_url) if config.database_url else SqliteStorage(config.database_path)
        )
        self.storage.migrate()
        # Where this process starts following the change feed: before it loads anything it caches.
        self._change_seq, _ = self.storage.changes_since(None)
        self.job_leader = False  # this process runs the background jobs (see run_jobs_if_leader)
        self.barrier = Barrier(self.storage)
        self.tokens = TokenService(
            self.authority, self.resource, config.token_lifetime_seconds, JwksCache(ca_files=config.trusted_ca_files)
        )
        self.tokens.reload_keys = self._load_signing_keys
        self.identity_index = IdentityIndex()
        self.authorizer = Authorizer()
        self.audit = AuditLog(config.audit_path)
        self.pipeline = Pipeline(
            self.storage,
            self.barrier,
            self.tokens,
            self.identity_index,
            self.authorizer,
            self.audit,
            RequestThrottle(Limits(config.throttle_vault, config.throttle_vault_creates, config.throttle_principal)),
        )
        # The PKCS#11 token (COFFER_PKCS11_*): HSM keys and auto-unseal; None when no HSM is configured.
        self.hsm_backend = pkcs11.from_config(config)
        self.hsm_seal = HsmSeal(self.storage, self.hsm_backend) if self.hsm_backend is not None else None
        self.software_keys = SoftwareBackend()
        self.key_backends = key.Backends(
            software=self.software_keys, hsm=self.hsm_backend, destroy_queued=self.destroy_queued_hsm_objects
        )
        self.api = Api(self)
        self._tenants: dict[str, str] = {}
        self._hosts: dict[str, tuple[str | None, str | None]] = {}  # host_kind, by Host header
        self._lock = threading.Lock()
        self.tls_reloader: Any = None  # set by the server: a callable that reloads certificate files
        # Set by a worker process: tells its siblings (through the supervisor) that this one unsealed or sealed.
        self.on_unsealed: Callable[[bytes], None] | None = None
        self.on_sealed: Callable[[], None] | None = None
        self.on_share: Callable[[str], None] | None = None

    # --- addressing ---------------------------------------------------------------------------
    @property
    def port_suffix(self) -> str:
        port = self.config.public_port or self.config.port
        return "" if port == 443 else f":{port}"

    @property
    def authority(self) -> str:
        return f"https://{self.config.dns_suffix}{self.port_suffix}"

    @property
    def resource(self) -> str:
        """The challenge resource: a strict parent domain of every vault host, port included (C7)."""
        return self.authority

    def vault_url(self, name: str) -> str:
        return f"https://{name}.{self.config.dns_suffix}{self.port_suffix}"

    def host_kind(self, host: str) -> tuple[str | None, str | None]:
        """("server", None), ("vault", name) or (None, None) for a Host header (remembered: a few hosts recur)."""
        known = self._hosts.get(host)
        if known is None:
            if len(self._hosts) >= 1024:  # the header is the client's to choose: keep the memory bounded
                self._hosts.clear()
            known = self._hosts[host] = self._host_kind(host)
        return known

    def _host_kind(self, host: str) -> tuple[str | None, str | None]:
        host = host.strip().lower()
        if host.startswith("["):
            hostname = host[1:].split("]", 1)[0]
        else:
            hostname = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        suffix = self.config.dns_suffix.lower()
        if hostname in (suffix, "localhost", "127.0.0.1", "::1", *self.config.extra_hostnames):
            return "server", None
        if hostname.endswith("." + suffix):
            name = hostname[: -len(suffix) - 1]
            if name and "." not in name:
                return "vault", name
        return None, None

    def tenant_of(self, vault_name: str | None) -> str:
        if not vault_name or self.barrier.sealed:
            return ""
        cached = self._tenants.get(vault_name)
        if cached is None:
            with self.storage.read() as tx:
                row = tx.vault_get(vault_name)
            cached = row.tenant_id if row else ""
            if row:
                self._tenants[vault_name] = cached
        return cached

    # --- TLS ----------------------------------------------------------------------------------
    def tls_files(self) -> tls.TlsFiles:
        """Operator-given certificate files, or the local CA's (reissued to cover every vault host)."""
        if self.config.tls_cert and self.config.tls_key:
            return tls.TlsFiles(ca_cert=self.config.tls_cert, cert=self.config.tls_cert, key=self.config.tls_key)
        suffix = self.config.dns_suffix
        names = [suffix, f"*.{suffix}", "localhost", "*.localhost", *self.config.extra_hostnames]
        if "." not in suffix:  # TLS clients ignore a wildcard right under a one-label name
            with self.storage.read() as tx:
                names += [f"{v.name}.{suffix}" for v in tx.vault_list()]
            names.append(f"{DEV_VAULT}.{suffix}")
        ips = ["127.0.0.1", "::1"]
        try:
            ipaddress.ip_address(self.config.bind)
            if self.config.bind not in ("0.0.0.0", "::"):  # noqa: S104
                ips.append(self.config.bind)
        except ValueError:
            pass
        return tls.ensure_local_tls(self.config.tls_dir, list(dict.fromkeys(names)), list(dict.fromkeys(ips)))

    def vault_removed(self, name: str) -> None:
        self._tenants.pop(name.lower(), None)

    @property
    def _tls_lists_vaults(self) -> bool:
        """The local CA's certificate names every vault host (a one-label DNS suffix, where wildcards fail)."""
        return not self.config.tls_cert and "." not in self.config.dns_suffix

    async def vault_added(self, name: str) -> None:
        """A new vault host may need a new certificate name (dev CA with a one-label suffix)."""
        self._tenants.pop(name.lower(), None)
        if not self._tls_lists_vaults:
            return
        import anyio.to_thread

        await anyio.to_thread.run_sync(self._reload_tls)

    def _reload_tls(self) -> None:
        """Reissue the local certificate if a vault host is missing from it, and serve the current one. Called by a
        request thread (this process added a vault) and by the change-feed follower (another one did)."""
        files = self.tls_files()
        if self.tls_reloader is not None:
            self.tls_reloader(files)

    # --- seal lifecycle -----------------------------------------------------------------------
    def _after_unseal(self) -> None:
        with self.storage.write() as tx:
            if self.barrier.system_get(tx, _SIGNING_KEYS) is None:
                legacy = self.barrier.system_get(tx, _LEGACY_SIGNING_KEY)
                pem = legacy or signing.generate_rsa_private_pem()
                self._store_signing_keys(tx, [SigningKey(signing.key_id(pem), pem, now())])
            if not tx.role_assignment_list():  # an installation from before RBAC: keep its administrators
                self._grant_existing_administrators(tx)
        self._load_signing_keys()
        self.identity_changed()
        self.access_changed()
        if self.on_unsealed is not None:
            self.on_unsealed(self.barrier.root_key())

    def _store_signing_keys(self, tx: Transaction, keys: list[SigningKey]) -> None:
        document = [{"kid": k.kid, "pem": k.pem.decode("ascii"), "created": k.created} for k in keys]
        self.barrier.system_put(tx, _SIGNING_KEYS, orjson.dumps(document))

    def _load_signing_keys(self) -> None:
        with self.storage.read() as tx:
            raw = self.barrier.system_get(tx, _SIGNING_KEYS)
        if raw is not None:
            keys = [SigningKey(k["kid"], k["pem"].encode("ascii"), k["created"]) for k in orjson.loads(raw)]
            self.tokens.load_keys(keys)

    def rotate_signing_key_if_due(self, at: int, *, force: bool = False) -> bool:
        """A new signing key when the newest is older than the rotation period. Older keys stay (JWKS, verify)
        until every token they signed has expired, plus the allowed clock skew."""
        if self.barrier.sealed:
            return False
        period = int(self.config.token_key_rotation_days * 86400)
        with self.storage.write() as tx:
            raw = self.barrier.system_get(tx, _SIGNING_KEYS)
            keys = [SigningKey(k["kid"], k["pem"].encode("ascii"), k["created"]) for k in orjson.loads(raw or b"[]")]
            if keys and not force and at - keys[-1].created < period:
                return False
            pem = signing.generate_rsa_private_pem()
            retired_before = at - self.tokens.lifetime - 2 * LEEWAY
            kept = [k for i, k in enumerate(keys) if i == len(keys) - 1 or keys[i + 1].created > retired_before]
            self._store_signing_keys(tx, [*kept, SigningKey(signing.key_id(pem), pem, at)])
        self._load_signing_keys()
        return True

    def access_changed(self) -> None:
        """Role definitions, role assignments or access policies changed: rebuild the decision index."""
        with self.storage.read() as tx:
            self.authorizer.reload(tx)

    def _grant_administrator(self, tx: Transaction, object_id: str) -> None:
        """Key Vault Administrator at the server scope (the bootstrap administrator; dev identities)."""
        tx.role_assignment_put(
            RoleAssignmentRow(
                id=str(uuid.uuid4()),
                scope="/",
                role_definition_id=roles.ADMINISTRATOR,
                principal_id=object_id,
                created=now(),
            )
        )

    def _grant_existing_administrators(self, tx: Transaction) -> None:
        bootstrap = self.barrier.system_get(tx, _BOOTSTRAP)
        if bootstrap is not None:
            self._grant_administrator(tx, orjson.loads(bootstrap)["objectId"])
        dev = self.barrier.system_get(tx, _DEV)
        if dev is not None:
            identity = DevIdentity(**orjson.loads(dev))
            row = tx.principal_by_client_id(identity.tenant_id, identity.identity_client_id)
            if row is not None:
                self._grant_administrator(tx, row.object_id)

    def identity_changed(self) -> None:
        """Principals, credentials or trusted issuers changed: refresh what requests are checked against."""
        with self.storage.read() as tx:
            self.identity_index.reload(tx)
            issuers = tx.issuer_list()
        self.tokens.trust_issuers(issuers)

    def initialize(self, shares: int, threshold: int) -> dict[str, Any]:
        """First start: root key, Shamir shares, a tenant and a bootstrap administrator (shown once)."""
        unseal_key, mnemonics = self.barrier.initialize(shares, threshold)
        hsm_sealed = self.hsm_seal.ensure(self.barrier.root_key()) if self.hsm_seal is not None else None
        with self.storage.write() as tx:
            tenant = principals.create_tenant(tx, "Default")
            admin = principals.create_principal(tx, tenant, "bootstrap-admin", principals.APPLICATION)
            issued = principals.add_secret(tx, admin, principals.CLIENT_SECRET)
            self._grant_administrator(tx, admin.object_id)
            self.barrier.system_put(tx, _BOOTSTRAP, orjson.dumps({"tenant": tenant, "objectId": admin.object_id}))
        self._after_unseal()
        del unseal_key
        return {
            "shares": mnemonics,
            "threshold": threshold,
            "tenantId": tenant,
            "clientId": admin.client_id,
            "clientSecret": issued.secret,
            "authority": self.authority,
            **({} if hsm_sealed is None else {"hsmAutoUnseal": hsm_sealed}),
        }

    def submit_share(self, share: str, *, from_sibling: bool = False) -> SealStatus:
        status = self.barrier.submit_share(share)
        if status.sealed and not from_sibling and self.on_share is not None:
            self.on_share(share)  # the next share may reach another worker process
        if not status.sealed and not self.tokens.kid:
            self._after_unseal()
            if self.hsm_seal is not None:  # HSM configured after init, or its key lost: seal the root key anew
                self.hsm_seal.ensure(self.barrier.root_key())
        return status

    def auto_unseal(self) -> bool:
        """On start: unseal with the HSM if the root key is sealed by it. False when still sealed (the seal status
        says why); the shares unseal as always."""
        if self.hsm_seal is None or not self.barrier.sealed or not self.barrier.status().initialized:
            return False
        if not self.hsm_seal.unseal(self.barrier):
            return False
        self._after_unseal()
        return True

    def seal_status(self) -> dict[str, object]:
        """/v1/sys/seal-status: the barrier's state, plus the HSM's when one is configured."""
        status: dict[str, object] = self.barrier.status().as_dict()
        if self.hsm_seal is not None:
            status["hsm"] = self.hsm_seal.status()
        return status

    def unseal_with_key(self, key: bytes) -> None:
        self.barrier.unseal_with_key(key)
        self._after_unseal()

    def seal(self) -> None:
        self.seal_as_sibling()
        if self.on_sealed is not None:
            self.on_sealed()

    def unseal_as_sibling(self, root: bytes) -> None:
        """Another worker process of this node unsealed: unseal with its root key (checked against the stored
        verifier), without telling the siblings again."""
        if not self.barrier.sealed:
            return
        self.barrier.unseal_with_root_key(root)
        announce, self.on_unsealed = self.on_unsealed, None
        try:
            self._after_unseal()
        finally:
            self.on_unsealed = announce

    def seal_as_sibling(self) -> None:
        """Forget the root key and everything derived from it (another worker process sealed, or this one)."""
        self.barrier.seal()
        self.tokens.unload()
        self.software_keys.forget()

    # --- development mode ---------------------------------------------------------------------
    def start_dev(self) -> DevIdentity:
        """Initialise (1 share, kept in a file) or unseal from that file; ensure the dev tenant,
        `dev` vault, dev service principal and managed identity exist."""
        key_path = self.config.unseal_key_path
        if not self.barrier.status().initialized:
            unseal_key, _ = self.barrier.initialize(1, 1)
            _write_private(key_path, unseal_key.hex().encode())
        else:
            if not key_path.exists():
                raise SystemExit(
                    f"{self.config.data_dir} holds a production installation (no dev unseal key); "
                    "start it without --dev and unseal it with `coffer operator unseal`."
                )
            self.barrier.unseal_with_key(bytes.fromhex(key_path.read_text().strip()))
        self._after_unseal()
        with self.storage.write() as tx:
            raw = self.barrier.system_get(tx, _DEV)
            if raw is not None:
                return DevIdentity(**orjson.loads(raw))
            dev = self._create_dev(tx)
        self.identity_changed()
        self.access_changed()
        return dev

    def _create_dev(self, tx: Transaction) -> DevIdentity:
        """The dev tenant, service principal, managed identity (also served by the node's IMDS endpoint)
        and the `dev` vault."""
        tenant = principals.create_tenant(tx, "Development")
        app_principal = principals.create_principal(tx, tenant, "coffer-dev", principals.APPLICATION)
        client_secret = principals.add_secret(tx, app_principal, principals.CLIENT_SECRET)
        identity = principals.create_principal(tx, tenant, "dev-identity", principals.MANAGED_IDENTITY)
        header = principals.add_secret(tx, identity, principals.IDENTITY_ENDPOINT)
        self._grant_administrator(tx, app_principal.object_id)
        self._grant_administrator(tx, identity.object_id)
        endpoint = tx.credential_get(header.credential_id)
        if endpoint is not None:  # the dev identity is also this node's IMDS identity
            endpoint.data["imds"] = True
            tx.credential_put(endpoint)
        if tx.vault_get(DEV_VAULT) is None:  # premium when there is an HSM (dev's SoftHSM2 token): *-HSM keys work
            sku = "premium" if self.hsm_backend is not None else "standard"
            vault.create(tx, self.barrier, DEV_VAULT, tenant, {"sku": sku})
        dev = DevIdentity(
            tenant_id=tenant,
            client_id=app_principal.client_id,
            client_secret=client_secret.secret,
            identity_header=header.secret,
            identity_client_id=identity.client_id,
        )
        self.barrier.system_put(tx, _DEV, orjson.dumps(dev.__dict__))
        self.barrier.system_put(tx, _BOOTSTRAP, orjson.dumps({"tenant": tenant, "objectId": app_principal.object_id}))
        return dev

    def write_dev_env(self, dev: DevIdentity, ca_file: Path) -> Path:
        lines = {
            "VAULT_URL": self.vault_url(DEV_VAULT),
            "IDENTITY_ENDPOINT": f"{self.authority}/msi/token",
            "IDENTITY_HEADER": dev.identity_header,
            "REQUESTS_CA_BUNDLE": str(ca_file.resolve()),
            "SSL_CERT_FILE": str(ca_file.resolve()),
            "AZURE_AUTHORITY_HOST": self.authority,
            "COFFER_ADDR": self.authority,
            "COFFER_TENANT_ID": dev.tenant_id,
            "COFFER_CLIENT_ID": dev.client_id,
            "COFFER_CLIENT_SECRET": dev.client_secret,
        }
        path = self.config.data_dir / "dev.env"
        text = "# Coffer development environment: `source` this file. Development only.\n" + "".join(
            f"export {k}='{v}'\n" for k, v in lines.items()
        )
        _write_private(path, text.encode())
        return path

    # --- several processes and nodes ---------------------------------------------------------
    def follow_changes(self, stop: threading.Event, poll_seconds: float = 0.25) -> None:
        """Run in a thread of its own: apply to this process's caches what other processes and nodes commit
        (PostgreSQL wakes it with NOTIFY; the change feed is polled either way), within a second."""
        while not stop.is_set():
            try:
                self.storage.wait_for_changes(poll_seconds)
                self._change_seq, topics = self.storage.changes_since(self._change_seq)
                if topics:
                    self.apply_changes(topics)
            except Exception as error:  # the database is away: keep trying; requests fail closed meanwhile
                log.warning("following the change feed failed (%s); retrying", type(error).__name__)
                stop.wait(1.0)

    def apply_changes(self, topics: set[str]) -> None:
        """Drop or reload what this process caches about what changed."""
        if VAULT in topics:
            self._tenants.clear()
            if self._tls_lists_vaults:  # another process added a vault host
                self._reload_tls()
        if self.barrier.sealed:  # nothing else is loaded; unsealing loads it fresh
            return
        if META in topics:
            self._load_signing_keys()
        if IDENTITY in topics:
            self.identity_changed()
        if ACCESS in topics:
            self.access_changed()

    def run_jobs_if_leader(self, at: int, *, due: bool) -> list[str]:
        """One maintenance tick: background jobs run in exactly one process of the installation (the leader, chosen
        by the storage: an advisory lock in PostgreSQL, a file lock with SQLite). A process that just became leader
        runs them at once. Returns what was done, for the log."""
        leader = self.storage.hold_leadership()
        became, self.job_leader = leader and not self.job_leader, leader
        if not leader or not (due or became):
            return []
        done = []
        if purged := self.purge_due(at):
            done.append(f"purged {purged} soft-deleted objects past their retention")
        if destroyed := self.destroy_queued_hsm_objects():
            done.append(f"destroyed {destroyed} HSM objects left over from earlier purges")
        if forgotten := assertions.forget_used_assertions(self.storage, at):
            done.append(f"forgot {forgotten} used client assertions past their expiry")
        if self.rotate_signing_key_if_due(at):
            done.append("rotated the token signing key")
        if actions := self.run_key_policies(at):
            done.append(f"carried out {actions} key rotation-policy actions")
        if actions := self.run_certificate_policies(at):
            done.append(f"carried out {actions} certificate lifetime actions")
        return done

    # --- background jobs ----------------------------------------------------------------------
    def destroy_queued_hsm_objects(self, entries: list[str] | None = None, limit: int = 500) -> int:
        """Destroy HSM objects that committed transactions dropped (key.HSM_DESTROY_QUEUE) and take them off the
        queue: `entries` right after the commit that queued them, else (the maintenance job) whatever is queued,
        left by a crash or an unreachable token. Destroying is idempotent, so two processes at once do no harm; an
        object that cannot be destroyed stays queued for the next run. Returns how many went."""
        if self.hsm_backend is None:
            return 0
        with self.storage.read() as tx:
            if entries is None:
                queued = tx.meta_list(key.HSM_DESTROY_QUEUE, limit)
            else:
                queued = [(entry, kty) for entry in entries if (kty := tx.meta_get(entry)) is not None]
        destroyed = []
        for entry, kty in queued:
            reference = entry.removeprefix(key.HSM_DESTROY_QUEUE).encode("ascii")
            try:
                self.hsm_backend.destroy(KeyMaterial(kty=kty.decode("ascii"), private=reference))
            except KeyBackendUnavailable as error:  # the token is away: the rest waits for the next run
                log.warning("could not destroy an HSM object of a dropped key (%s); will retry", type(error).__name__)
                break
            except KeyOperationError:  # not a reference this token takes: no retry would do better
                log.warning("dropped an HSM destroy entry that names no token object")
            except Exception as error:  # this object only; it stays queued
                log.warning("could not destroy an HSM object of a dropped key (%s); will retry", type(error).__name__)
                continue
            destroyed.append(entry)
        if destroyed:
            with self.storage.write() as tx:
                for entry in destroyed:
                    tx.meta_delete(entry)
        return len(destroyed)

    def purge_due(self, now: int, limit: int = 500) -> int:
        """Purge soft-deleted objects past their scheduledPurgeDate. Returns how many were purged."""
        if self.barrier.sealed:
            return 0
        with self.storage.write() as tx:
            due = tx.objects_due_for_purge(now, limit)
            for obj in due:
                vault_row = tx.vault_get(obj.vault)
                if vault_row is not None and obj.kind == key.KIND:  # HSM keys leave the token too
                    key.destroy_versions(VaultView(tx, self.barrier, vault_row), self.key_backends, obj)
                elif vault_row is not None and obj.kind == certificate.KIND:  # an unmerged pending operation's key
                    certificate.release_hsm_objects(VaultView(tx, self.barrier, vault_row), self.key_backends, obj)
                tx.object_purge(obj.vault, obj.kind, obj.name)
                self._audit_job(
                    f"{obj.kind.capitalize()}Purge",
                    obj.vault,
                    f"{self.vault_url(obj.vault)}/deleted{obj.kind}s/{obj.name}",
                    "retention ended",
                    signature="NoContent",
                )
        return len(due)

    def run_key_policies(self, at: int) -> int:
        """Carry out due rotation-policy lifetime actions: Rotate makes a new version; Notify is recorded once per
        version (the events issue delivers it). Each key in a savepoint: one that fails (the HSM away, ...) leaves
        nothing half-written and the others go on. Returns how many actions ran."""
        if self.barrier.sealed:
            return 0
        done = 0
        with self.storage.write() as tx:
            for vault_row in tx.vault_list():
                view = VaultView(tx, self.barrier, vault_row)
                after = None
                while page := view.object_list(key.KIND, deleted=False, after=after, limit=200):
                    after = page[-1].name.lower()
                    for obj in page:
                        if not obj.data.get("rotationPolicy") or obj.latest is None:
                            continue
                        where = f"{self.vault_url(vault_row.name)}/keys/{obj.name}"
                        with _one_object_of_a_job(tx, "rotation policy of key", where):
                            done += self._key_policy_action(view, obj, where, at)
        return done

    def _key_policy_action(self, view: VaultView, obj: ObjectRow, key_url: str, at: int) -> int:
        current = key.get(view, obj.name, None)
        action = key.due_action(current, at)
        kid = f"{key_url}/{current.row.version}"
        if action == "Rotate":
            key.rotate(view, self.key_backends, obj.name)
            self._audit_job("KeyRotateIfDue", view.name, kid, "rotation policy")
            return 1
        if action == "Notify" and obj.data.get("notified") != current.row.version:
            obj.data = {**obj.data, "notified": current.row.version}
            view.object_put(obj)
            self._audit_job("KeyNearExpiryEventGridNotification", view.name, kid, "rotation policy")
            return 1
        return 0

    def run_certificate_policies(self, at: int) -> int:
        """Carry out due certificate-policy lifetime actions: AutoRenew issues a new version with the same policy
        (Self and internal-CA issuers; issuer Unknown gets a new pending operation with a new CSR); EmailContacts is
        recorded once per version (the events issue delivers it). Idempotent per version. Returns how many ran."""
        if self.barrier.sealed:
            return 0
        done = 0
        with self.storage.write() as tx:
            for vault_row in tx.vault_list():
                view = VaultView(tx, self.barrier, vault_row)
                vault_url = self.vault_url(vault_row.name)
                after = None
                while page := view.object_list(certificate.KIND, deleted=False, after=after, limit=200):
                    after = page[-1].name.lower()
                    for obj in page:
                        if obj.latest is None or not obj.data.get("policy"):
                            continue
                        current = certificate.get(view, obj.name, None)
                        if not current.row.enabled:
                            continue
                        version = current.row.version
                        cid = f"{vault_url}/certificates/{obj.name}/{version}"
                        actions = certificate.due_actions(current, at)
                        if "EmailContacts" in actions and obj.data.get("notified") != version:
                            obj.data = {**obj.data, "notified": version}
                            view.object_put(obj)
                            self._audit_job(
                                "CertificateNearExpiryEventGridNotification", vault_row.name, cid, "lifetime action"
                            )
                            done += 1
                        pending = obj.data.get("pending") or {}
                        if (
                            "AutoRenew" in actions
                            and (obj.data.get("renewal") or {}).get("from") != version
                            and pending.get("status") != "inProgress"
                        ):
                            # e.g. the internal CA was removed, the HSM is away: retry next run, the others go on
                            with _one_object_of_a_job(tx, "auto-renew of certificate", cid):
                                issued = certificate.renew(view, self.key_backends, obj.name, vault_url=vault_url)
                                renewed = view.object_get(certificate.KIND, obj.name) or obj  # create rewrote it
                                renewal = {"from": version, "version": issued.row.version if issued else None, "at": at}
                                renewed.data = {**renewed.data, "renewal": renewal}
                                view.object_put(renewed)
                                self._audit_job("CertificateAutoRenew", vault_row.name, cid, "lifetime action")
                                done += 1
        return done

    def _audit_job(
        self, operation: str, vault_name: str, object_id: str, reason: str, *, signature: str = "OK"
    ) -> None:
        self.audit.write(
            {
                "operationName": operation,
                "resultType": "Success",
                "resultSignature": signature,
                "identity": {"claim": {"oid": "coffer-scheduler"}},
                "properties": {"vault": vault_name, "id": object_id, "reason": reason},
            }
        )

    def close(self) -> None:
        self.pipeline.close()
        self.audit.close()
        self.storage.close()
        if self.hsm_backend is not None:
            self.hsm_backend.close()


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


__all__ = ["Coffer", "DevIdentity"]


@contextmanager
def _one_object_of_a_job(tx: Transaction, what: str, where: str) -> Iterator[None]:
    """One object's part of a background job's transaction, in a savepoint: if it fails, its writes are undone and
    logged, and the job goes on with the next object. A storage error ends the whole job (the transaction may be
    broken)."""
    try:
        with tx.savepoint():
            yield
    except StorageError:
        raise
    except CofferError as error:  # messages of Coffer's errors name no secret
        log.warning("%s %s failed: %s", what, where, error)
    except Exception as error:
        log.warning("%s %s failed (%s)", what, where, type(error).__name__)
