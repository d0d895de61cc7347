"""Auto-unseal with an HSM: the root key, also sealed by an AES-256 key that lives in a PKCS#11 token.

    unseal key (Shamir shares)  ──seals──┐
                                         ├── root key
    HSM key (oct-HSM, in the token) ─────┘   meta "root-key-hsm" (A256GCM, sealed in the token)

`coffer operator init` (Coffer.initialize) generates the token key (sensitive, never extractable) and stores the
root key encrypted by it in meta "root-key-hsm". On start the server asks the token to decrypt it and unseals
without shares. The Shamir shares stay the recovery path: with the token missing, or its PIN wrong, the server
stays sealed, says why in /v1/sys/seal-status, and unseals with shares as always. After an unseal with shares, a
missing record (HSM configured after init) or a record whose token key is gone is made anew.
"""

from __future__ import annotations

import base64
import logging
from typing import Any

import orjson

from coffer.barrier.seal import Barrier
from coffer.crypto.keys import KeyBackendUnavailable, KeyMaterial, KeyOperationError
from coffer.crypto.pkcs11 import Pkcs11Backend, Pkcs11KeyNotFound
from coffer.errors import CofferError
from coffer.storage import Storage

__all__ = ["RECORD", "HsmSeal"]

log = logging.getLogger("coffer.hsm")

RECORD = "root-key-hsm"
_ALG = "A256GCM"
_AAD = b"coffer:root-key-hsm:v1"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


class HsmSeal:
    def __init__(self, storage: Storage, backend: Pkcs11Backend) -> None:
        self._storage = storage
        self.backend = backend
        self.error: str | None = None  # why the last auto-unseal (or protection of the root key) failed

    # --- the record -------------------------------------------------------------------------
    def _record(self) -> dict[str, Any] | None:
        with self._storage.read() as tx:
            raw = tx.meta_get(RECORD)
        return orjson.loads(raw) if raw else None

    @staticmethod
    def _key(record: dict[str, Any]) -> KeyMaterial:
        return KeyMaterial(kty="oct-HSM", private=record["key"].encode("ascii"), size=256)

    @property
    def enabled(self) -> bool:
        """Whether this installation's root key is sealed by the HSM too."""
        return self._record() is not None

    def protect(self, root: bytes) -> None:
        """Seal `root` with a new token key and store it (replacing any earlier record)."""
        key = self.backend.generate("oct-HSM", size=256)
        try:
            sealed = self.backend.encrypt(key, _ALG, root, aad=_AAD)
            assert sealed.iv is not None and sealed.tag is not None
            if self.backend.decrypt(key, _ALG, sealed.value, iv=sealed.iv, tag=sealed.tag, aad=_AAD) != root:
                raise KeyOperationError("The HSM did not give back the root key it sealed")
        except Exception:
            self._destroy_quietly(key)
            raise
        document = {
            "version": 1,
            "token": self.backend.token_label,
            "key": key.private.decode("ascii"),
            "alg": _ALG,
            "iv": _b64(sealed.iv),
            "tag": _b64(sealed.tag),
            "value": _b64(sealed.value),
        }
        with self._storage.write() as tx:
            old = tx.meta_get(RECORD)
            tx.meta_put(RECORD, orjson.dumps(document))
        if old:
            self._destroy_quietly(self._key(orjson.loads(old)))
        self.error = None
        log.info("root key sealed by the HSM (PKCS#11 token '%s'): the server unseals itself on start",
                 self.backend.token_label)

    def _destroy_quietly(self, key: KeyMaterial) -> None:
        try:
            self.backend.destroy(key)
        except (KeyBackendUnavailable, KeyOperationError) as exc:
            log.warning("could not delete an unused HSM key from the token: %s", exc)

    def ensure(self, root: bytes) -> bool:
        """Protect `root` unless a record whose token key exists is there already. Never raises: an HSM problem
        is logged and kept in `error` (the shares still unseal). True when a record was written."""
        try:
            record = self._record()
            if record is not None and self.backend.exists(self._key(record)):
                return False
            self.protect(root)
            return True
        except (KeyBackendUnavailable, KeyOperationError) as exc:
            self.error = f"Cannot seal the root key with the HSM: {exc}"
            log.warning("%s", self.error)
            return False

    def recover(self) -> bytes | None:
        """The root key, decrypted in the token; None without a record. Raises KeyBackendUnavailable (token,
        module, PIN or key object missing) or KeyOperationError (the record does not decrypt)."""
        record = self._record()
        if record is None:
            return None
        if record.get("version") != 1 or record.get("alg") != _ALG:
            raise KeyOperationError(f"Unknown {RECORD} record (version {record.get('version')})")
        return self.backend.decrypt(
            self._key(record), _ALG, _unb64(record["value"]), iv=_unb64(record["iv"]), tag=_unb64(record["tag"]),
            aad=_AAD,
        )

    def unseal(self, barrier: Barrier) -> bool:
        """Unseal `barrier` with the HSM. Never raises: False (and `error` says why) when it cannot."""
        try:
            root = self.recover()
            if root is None:
                return False
            barrier.unseal_with_root_key(root)
        except Pkcs11KeyNotFound as exc:
            self.error = f"HSM auto-unseal failed: {exc} (unseal with the shares to seal the root key anew)"
        except (KeyBackendUnavailable, KeyOperationError, CofferError) as exc:
            self.error = f"HSM auto-unseal failed: {exc}"
        else:
            self.error = None
            return True
        log.warning("%s; the server stays sealed until unsealed with the shares", self.error)
        return False

    def probe(self) -> None:
        """Connect to the token now, so that the status shows whether it is available."""
        try:
            self.backend.check()
        except KeyBackendUnavailable as exc:
            log.warning("HSM unavailable: %s", exc)

    def status(self) -> dict[str, object]:
        """For /v1/sys/seal-status. From what is known already: never talks to the token."""
        return {
            "configured": True,
            "token": self.backend.token_label,
            "available": self.backend.connected,
            "autoUnseal": self.enabled,
            "error": self.error or (None if self.backend.connected else self.backend.last_error),
        }
