"""Sealed/unsealed state and the key hierarchy.

    unseal key (Shamir shares, or the dev key file)
      └── root key            sealed in meta "root-key"
            ├── vault data keys   one per vault, sealed in vaults.wrapped_key
            ├── backup key        seals backup blobs (restorable where the root key is the same)
            └── token signing key sealed in meta "token-signing-key"

The root key exists only in memory, only while unsealed. Storage holds sealed blobs only.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import orjson

from coffer.crypto import envelope, shamir
from coffer.errors import BadParameter, Conflict, Sealed
from coffer.storage import Storage, Transaction, VaultRow

_SEAL_CONFIG = "seal-config"
_ROOT_KEY = "root-key"
_BACKUP_KEY = "backup-key"


@dataclass(frozen=True)
class SealStatus:
    initialized: bool
    sealed: bool
    shares: int
    threshold: int
    progress: int

    def as_dict(self) -> dict[str, object]:
        return {
            "initialized": self.initialized,
            "sealed": self.sealed,
            "shares": self.shares,
            "threshold": self.threshold,
            "progress": self.progress,
        }


class Barrier:
    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._lock = threading.Lock()
        self._root: bytes | None = None
        self._backup: bytes | None = None
        self._pending_shares: list[str] = []
        self._vault_keys: dict[tuple[str, int, bytes], envelope.Key] = {}
        self._seal_config: dict[str, int] | None = None  # once initialized (it never changes after that)

    # --- seal state -------------------------------------------------------------------------
    def _config(self) -> dict[str, int] | None:
        """The seal configuration; read from storage until it exists (another process may initialize), then kept,
        so that health and seal status answer without a storage round trip (and at once while storage is down)."""
        if self._seal_config is None:
            with self._storage.read() as tx:
                self._remember_config(tx.meta_get(_SEAL_CONFIG))
        return self._seal_config

    def _remember_config(self, raw: bytes | None) -> None:
        if raw:
            self._seal_config = orjson.loads(raw)

    def status(self) -> SealStatus:
        config = self._config()
        if config is None:
            return SealStatus(False, True, 0, 0, 0)
        return SealStatus(True, self._root is None, config["shares"], config["threshold"], len(self._pending_shares))

    @property
    def sealed(self) -> bool:
        return self._root is None

    def initialize(self, shares: int, threshold: int) -> tuple[bytes, list[str]]:
        """Create the root key; return the unseal key and its Shamir shares. Leaves the barrier unsealed."""
        unseal_key = envelope.new_key()
        mnemonics = shamir.split(unseal_key, shares, threshold)
        root = envelope.new_key()
        backup = envelope.new_key()
        with self._lock, self._storage.write() as tx:
            if tx.meta_get(_SEAL_CONFIG) is not None:
                raise Conflict("Coffer is already initialized.", code="AlreadyInitialized")
            config = orjson.dumps({"shares": shares, "threshold": threshold})
            tx.meta_put(_SEAL_CONFIG, config)
            tx.meta_put(_ROOT_KEY, envelope.seal(unseal_key, root, envelope.aad("root-key")))
            tx.meta_put(_BACKUP_KEY, envelope.seal(root, backup, envelope.aad("backup-key")))
        self._root, self._backup = root, backup
        self._remember_config(config)
        return unseal_key, mnemonics

    def unseal_with_key(self, unseal_key: bytes) -> None:
        with self._storage.read() as tx:
            sealed_root = tx.meta_get(_ROOT_KEY)
            sealed_backup = tx.meta_get(_BACKUP_KEY)
            self._remember_config(tx.meta_get(_SEAL_CONFIG))
        if sealed_root is None or sealed_backup is None:
            raise Sealed("Coffer is not initialized: run `coffer operator init`.")
        try:
            root = envelope.open(unseal_key, sealed_root, envelope.aad("root-key"))
        except envelope.DecryptionFailed:
            raise BadParameter("The unseal key is not valid for this installation.", code="InvalidUnsealKey") from None
        backup = envelope.open(root, sealed_backup, envelope.aad("backup-key"))
        with self._lock:
            self._root, self._backup = root, backup
            self._pending_shares.clear()

    def unseal_with_root_key(self, root: bytes) -> None:
        """Unseal with the root key itself, as recovered by an auto-unseal mechanism (barrier.hsm_seal)."""
        with self._storage.read() as tx:
            sealed_backup = tx.meta_get(_BACKUP_KEY)
            self._remember_config(tx.meta_get(_SEAL_CONFIG))
        if sealed_backup is None:
            raise Sealed("Coffer is not initialized: run `coffer operator init`.")
        try:
            backup = envelope.open(root, sealed_backup, envelope.aad("backup-key"))
        except envelope.DecryptionFailed:
            raise BadParameter("The root key is not valid for this installation.", code="InvalidUnsealKey") from None
        with self._lock:
            self._root, self._backup = root, backup
            self._pending_shares.clear()

    def root_key(self) -> bytes:
        """The root key, while unsealed (raises Sealed): for an auto-unseal mechanism to protect it."""
        return self._root_key()

    def submit_share(self, share: str) -> SealStatus:
        config = self._config()
        if config is None:
            raise Sealed("Coffer is not initialized: run `coffer operator init`.")
        if self._root is not None:
            return self.status()
        with self._lock:
            if share not in self._pending_shares:
                self._pending_shares.append(share)
            pending = list(self._pending_shares)
        if len(pending) >= config["threshold"]:
            try:
                unseal_key = shamir.combine(pending)
            except shamir.InvalidShares as exc:
                with self._lock:
                    self._pending_shares.clear()
                raise BadParameter(
                    f"The unseal shares do not combine: {exc}. Progress was reset.", code="InvalidUnsealKey"
                ) from None
            try:
                self.unseal_with_key(unseal_key)
            finally:
                with self._lock:
                    self._pending_shares.clear()
        return self.status()

    def seal(self) -> None:
        with self._lock:
            self._root = self._backup = None
            self._vault_keys.clear()
            self._pending_shares.clear()

    def _root_key(self) -> bytes:
        root = self._root
        if root is None:
            raise Sealed()
        return root

    # --- installation-wide secrets ----------------------------------------------------------
    def seal_system(self, purpose: str, plaintext: bytes) -> bytes:
        return envelope.seal(self._root_key(), plaintext, envelope.aad("system", purpose))

    def open_system(self, purpose: str, sealed: bytes) -> bytes:
        return envelope.open(self._root_key(), sealed, envelope.aad("system", purpose))

    def system_get(self, tx: Transaction, purpose: str) -> bytes | None:
        raw = tx.meta_get("sealed:" + purpose)
        return self.open_system(purpose, raw) if raw is not None else None

    def system_put(self, tx: Transaction, purpose: str, plaintext: bytes) -> None:
        tx.meta_put("sealed:" + purpose, self.seal_system(purpose, plaintext))

    # --- vault data keys --------------------------------------------------------------------
    def new_vault_key(self, vault: str, term: int = 1) -> bytes:
        """A fresh data key for `vault`, returned sealed by the root key (for VaultRow.wrapped_key)."""
        return envelope.seal(self._root_key(), envelope.new_key(), envelope.aad("vault-key", vault.lower()), term=term)

    def vault_key(self, vault: VaultRow) -> envelope.Key:
        """The vault's data key, unwrapped once and kept prepared until the server seals."""
        cache_key = (vault.name.lower(), vault.key_term, vault.wrapped_key)
        key = self._vault_keys.get(cache_key)
        if key is None:
            raw = envelope.open(self._root_key(), vault.wrapped_key, envelope.aad("vault-key", vault.name.lower()))
            key = self._vault_keys[cache_key] = envelope.prepare(raw)
        return key

    # --- backups ----------------------------------------------------------------------------
    def seal_backup(self, kind: str, plaintext: bytes) -> bytes:
        if self._backup is None:
            raise Sealed()
        return envelope.seal(self._backup, plaintext, envelope.aad("backup", kind))

    def open_backup(self, kind: str, sealed: bytes) -> bytes:
        """Raises envelope.DecryptionFailed for a blob from another root of trust or a tampered one."""
        if self._backup is None:
            raise Sealed()
        return envelope.open(self._backup, sealed, envelope.aad("backup", kind))
