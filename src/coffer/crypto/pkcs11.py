"""The PKCS#11 KeyBackend: kty RSA-HSM, EC-HSM and oct-HSM keys that live inside an HSM token.

Every key is generated inside the token as token objects (CKA_TOKEN) that are private, sensitive and not
extractable; the private/secret part never leaves the token. `KeyMaterial.private` is only a reference,
``b"pkcs11:" + hex(CKA_ID)``; `KeyMaterial.public` holds the public JWK members read from the public key object.

Where each operation runs:
  - in the token: RSA decrypt/unwrap (CKM_RSA_PKCS, CKM_RSA_PKCS_OAEP), RSA sign (CKM_RSA_PKCS over a DigestInfo
    for RS*, CKM_RSA_PKCS_PSS with salt = digest length for PS*), ECDSA sign (CKM_ECDSA over the digest), every
    AES operation (CKM_AES_GCM, CKM_AES_CBC, CKM_AES_CBC_PAD; CKM_AES_KEY_WRAP through C_WrapKey/C_UnwrapKey, the
    bytes to wrap or the unwrapped result passing through a short-lived session object of the token);
  - in software, with the public key only: RSA encrypt/wrap and every verify (see `coffer.crypto.software`).

Tokens without OAEP-SHA-256 (SoftHSM 2.6 accepts only SHA-1 in CKM_RSA_PKCS_OAEP): RSA-OAEP-256 decryption then
runs the raw RSA private operation in the token (CKM_RSA_X_509) and removes the OAEP padding here. The key stays in
the token either way.

Threads: python-pkcs11 initialises the module with C_Initialize(NULL), i.e. it promises the module that no two
threads call it at once (SoftHSM then works without its own locks), so every call into a module is serialised by
one process-wide lock per module; each backend uses one logged-in read/write session. A lost session or login
(token removed and back, HSM restarted, another backend of this process logged out) is reopened once per operation.
A PIN the token rejects is never retried (tokens lock after a few wrong PINs); a token or module that is missing is
tried again on the next use.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pkcs11
from pkcs11 import MGF, Attribute, GCMParams, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import exceptions as p11e
from pkcs11.util.ec import encode_named_curve_parameters

from coffer.crypto.keys import (
    AES_SIZES,
    CURVE_OF_ALGORITHM,
    CURVES,
    DIGEST_SIZES,
    ENCRYPT_ALGORITHMS,
    RSA_SIZES,
    SIGN_ALGORITHMS,
    WRAP_ALGORITHMS,
    EncryptResult,
    KeyBackendUnavailable,
    KeyMaterial,
    KeyMissing,
    KeyOperationError,
)
from coffer.crypto.software import SoftwareBackend

if TYPE_CHECKING:
    from coffer.config import Config

__all__ = ["Pkcs11Backend", "Pkcs11KeyNotFound", "from_config"]

log = logging.getLogger("coffer.hsm")
_T = TypeVar("_T")

REFERENCE_PREFIX = b"pkcs11:"
LABEL_PREFIX = "coffer-"
_ID_BYTES = 16
_CURVE_OIDS = {"P-256": "secp256r1", "P-256K": "secp256k1", "P-384": "secp384r1", "P-521": "secp521r1"}
_CURVE_ALIASES = {"SECP256K1": "P-256K"}
_COORDINATE_BYTES = {"P-256": 32, "P-256K": 32, "P-384": 48, "P-521": 66}
_HASH_MECHANISMS = {"256": (Mechanism.SHA256, MGF.SHA256), "384": (Mechanism.SHA384, MGF.SHA384),
                    "512": (Mechanism.SHA512, MGF.SHA512)}
_DIGEST_INFO = {  # DER DigestInfo prefixes (RFC 8017 §9.2, note 1)
    "256": bytes.fromhex("3031300d060960864801650304020105000420"),
    "384": bytes.fromhex("3041300d060960864801650304020205000430"),
    "512": bytes.fromhex("3051300d060960864801650304020305000440"),
}
_AES_BLOCK = 16
_GCM_IV, _GCM_TAG = 12, 16
_DECRYPTION_FAILED = "Decryption failed."
_UNWRAP_FAILED = "Unwrap failed."

# The token, its login or the session is gone: the backend is unavailable (not the caller's fault).
_UNAVAILABLE = (
    p11e.DeviceError,
    p11e.DeviceMemory,
    p11e.DeviceRemoved,
    p11e.SessionClosed,
    p11e.SessionCount,
    p11e.SessionHandleInvalid,
    p11e.SlotIDInvalid,
    p11e.TokenNotPresent,
    p11e.TokenNotRecognised,
    p11e.UserNotLoggedIn,
)
_PIN_REJECTED = (p11e.PinIncorrect, p11e.PinInvalid, p11e.PinLenRange, p11e.PinExpired, p11e.PinLocked)
# The mechanism parameters are not supported by this token (as opposed to bad input data).
_UNSUPPORTED = (p11e.ArgumentsBad, p11e.MechanismInvalid, p11e.MechanismParamInvalid, p11e.FunctionNotSupported)

_RSA_CAPABILITIES = (
    MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT | MechanismFlag.SIGN | MechanismFlag.VERIFY
    | MechanismFlag.WRAP | MechanismFlag.UNWRAP
)
_EC_CAPABILITIES = MechanismFlag.SIGN | MechanismFlag.VERIFY
_AES_CAPABILITIES = MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT | MechanismFlag.WRAP | MechanismFlag.UNWRAP
# The private or secret part: in the token for good, never readable, not even wrapped.
_PROTECTED = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    Attribute.DERIVE: False,
}


class Pkcs11KeyNotFound(KeyMissing):
    """The token is reachable but holds no object for the key (deleted from the token, or another token)."""


class _SessionLost(KeyBackendUnavailable):
    """A session or the login went away during an operation (token removed, HSM restarted, logged out)."""


_module_locks: dict[str, threading.RLock] = {}
_module_locks_guard = threading.Lock()


def _module_lock(module: str) -> threading.RLock:
    """One lock per PKCS#11 module for every call into it. python-pkcs11 initialises modules with
    C_Initialize(NULL), which tells the module that the application does not call it from several threads at
    once (SoftHSM then runs without its own mutexes): so the calls are serialised here."""
    with _module_locks_guard:
        return _module_locks.setdefault(module, threading.RLock())


def _name(exc: BaseException) -> str:
    return type(exc).__name__


def _b64_int(value: bytes) -> str:
    number = int.from_bytes(value, "big")
    raw = number.to_bytes(max(1, (number.bit_length() + 7) // 8), "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64(value: bytes) -> str:
    return base64.urlsafe_b64encode(value).rstrip(b"=").decode("ascii")


def _ec_point(data: bytes, length: int) -> tuple[bytes, bytes]:
    """CKA_EC_POINT is a DER OCTET STRING holding the uncompressed point (some tokens give the bare point)."""
    point = data
    if len(data) != 1 + 2 * length:
        if len(data) < 2 or data[0] != 0x04:
            raise KeyBackendUnavailable("The token returned an EC point in an unknown encoding")
        size, offset = data[1], 2
        if size & 0x80:
            count = size & 0x7F
            size, offset = int.from_bytes(data[2 : 2 + count], "big"), 2 + count
        point = data[offset : offset + size]
    if len(point) != 1 + 2 * length or point[0] != 0x04:
        raise KeyBackendUnavailable("The token returned an EC point that is not an uncompressed point")
    return point[1 : 1 + length], point[1 + length :]


def _mgf1_sha256(seed: bytes, length: int) -> bytes:
    out = b""
    counter = 0
    while len(out) < length:
        out += hashlib.sha256(seed + counter.to_bytes(4, "big")).digest()
        counter += 1
    return out[:length]


def _oaep_sha256_decode(block: bytes, k: int) -> bytes | None:
    """EME-OAEP decoding (RFC 8017 §7.1.2) with SHA-256 and MGF1-SHA-256, empty label. None when invalid;
    every failure looks the same to the caller."""
    h = 32
    if len(block) != k or k < 2 * h + 2:
        return None
    masked_seed, masked_db = block[1 : 1 + h], block[1 + h :]
    seed = bytes(a ^ b for a, b in zip(masked_seed, _mgf1_sha256(masked_db, h), strict=True))
    db = bytes(a ^ b for a, b in zip(masked_db, _mgf1_sha256(seed, k - h - 1), strict=True))
    good = hmac.compare_digest(db[:h], hashlib.sha256(b"").digest()) & (block[0] == 0)
    rest = db[h:]
    separator = -1
    for index, byte in enumerate(rest):  # zeros, then 0x01, then the message
        if separator < 0 and byte == 1:
            separator = index
        elif separator < 0 and byte != 0:
            good = False
    if not good or separator < 0:
        return None
    return rest[separator + 1 :]


class Pkcs11Backend:
    """KeyBackend for HSM-protected keys (kty RSA-HSM, EC-HSM, oct-HSM) in one PKCS#11 token."""

    def __init__(self, module: str | Path, token_label: str, pin: str | None = None, *,
                 pin_file: Path | None = None) -> None:
        if pin is None and pin_file is None:
            raise ValueError("a PIN or a PIN file is required")
        self.module = str(module)
        self.token_label = token_label
        self._pin = pin
        self._pin_file = pin_file
        self._lock = _module_lock(self.module)
        self._session_handle: Any = None  # the logged-in session (closing it logs the process out)
        self._pin_rejected: str | None = None  # never retried: tokens lock a PIN after a few failures
        self.last_error: str | None = None
        self.raw_rsa_oaep256 = False  # set when the token lacks OAEP-SHA-256 (see module docstring)
        self._software = SoftwareBackend()

    # --- connection and sessions ----------------------------------------------------------------
    def _read_pin(self) -> str:
        if self._pin_file is None:
            return self._pin or ""
        try:
            lines = self._pin_file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise KeyBackendUnavailable(f"Cannot read the PKCS#11 PIN file {self._pin_file}: {exc.strerror}") from None
        return lines[0].strip() if lines else ""

    def _fail(self, message: str) -> KeyBackendUnavailable:
        self.last_error = message
        return KeyBackendUnavailable(message)

    def _connect_locked(self) -> None:
        if self._pin_rejected is not None:
            raise KeyBackendUnavailable(self._pin_rejected)
        try:
            lib = pkcs11.lib(self.module)
        except p11e.PKCS11Error as exc:
            raise self._fail(f"Cannot load the PKCS#11 module {self.module}: {exc}") from None
        try:
            token = lib.get_token(token_label=self.token_label)
        except p11e.NoSuchToken:
            raise self._fail(f"No PKCS#11 token labelled '{self.token_label}' in {self.module}") from None
        except p11e.MultipleTokensReturned:
            raise self._fail(f"More than one PKCS#11 token is labelled '{self.token_label}'") from None
        except p11e.PKCS11Error as exc:
            raise self._fail(f"Cannot list the tokens of {self.module}: {_name(exc)}") from None
        pin = self._read_pin()
        try:
            session = token.open(rw=True, user_pin=pin)
        except p11e.UserAlreadyLoggedIn:  # this process is logged in already (another backend on the same token)
            session = token.open(rw=True)
        except _PIN_REJECTED as exc:
            self._pin_rejected = (
                f"The PKCS#11 token '{self.token_label}' rejected the PIN ({_name(exc)}); it is not tried again: "
                "fix COFFER_PKCS11_PIN_FILE or COFFER_PKCS11_PIN and restart"
            )
            raise self._fail(self._pin_rejected) from None
        except p11e.PKCS11Error as exc:
            raise self._fail(f"Cannot log in to the PKCS#11 token '{self.token_label}': {_name(exc)}") from None
        finally:
            del pin
        self._session_handle = session
        self.last_error = None

    def _drop_locked(self) -> None:
        if self._session_handle is not None:
            with suppress(p11e.PKCS11Error):
                self._session_handle.close()
        self._session_handle = None

    def check(self) -> None:
        """Connect (log in) if not connected; raise KeyBackendUnavailable with the reason if that fails."""
        with self._lock:
            if self._session_handle is None:
                self._connect_locked()

    @property
    def connected(self) -> bool:
        return self._session_handle is not None

    @contextmanager
    def _session(self) -> Iterator[Any]:
        """The logged-in session, with the module's lock held (see `_module_lock`)."""
        with self._lock:
            if self._session_handle is None:
                self._connect_locked()
            try:
                yield self._session_handle
            except _UNAVAILABLE as exc:
                self._drop_locked()
                message = f"The PKCS#11 token '{self.token_label}' is unavailable: {_name(exc)}"
                self.last_error = message
                raise _SessionLost(message) from None

    def _run(self, operation: Callable[[Any], _T]) -> _T:
        """Run `operation(session)`; once more, on a new session, if the session or the login was lost (an HSM that
        restarted or timed sessions out, another backend of this process that logged out). Operations fail at
        their start in that case, so running them again is safe."""
        try:
            with self._session() as session:
                return operation(session)
        except _SessionLost as exc:
            log.info("PKCS#11 session lost (%s); opening a new one", exc)
        with self._session() as session:
            return operation(session)

    def close(self) -> None:
        """Close the session. PKCS#11 logs the whole process out of the token: other backends on the same token
        in this process log in again on their next operation."""
        with self._lock:
            self._drop_locked()

    # --- objects ----------------------------------------------------------------------------
    @staticmethod
    def _key_id(key: KeyMaterial) -> bytes:
        ref = key.private
        if not ref.startswith(REFERENCE_PREFIX):
            raise KeyOperationError("The key is not an HSM key")
        try:
            return bytes.fromhex(ref[len(REFERENCE_PREFIX) :].decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise KeyOperationError("The key is not an HSM key") from None

    def _object(self, session: Any, key: KeyMaterial, object_class: ObjectClass) -> Any:
        try:
            return session.get_key(object_class=object_class, id=self._key_id(key))
        except p11e.NoSuchKey:
            raise Pkcs11KeyNotFound(
                f"The PKCS#11 token '{self.token_label}' holds no object for this key"
            ) from None

    @staticmethod
    def _family(key: KeyMaterial) -> str:
        if key.kty not in ("RSA-HSM", "EC-HSM", "oct-HSM"):
            raise KeyOperationError(f"Key type {key.kty[:16]} is not an HSM key type")
        return key.family

    def _check_alg(self, key: KeyMaterial, alg: str, table: Mapping[str, tuple[str, ...]]) -> str:
        family = self._family(key)
        if alg not in table.get(family, ()):
            raise KeyOperationError(f"Algorithm {alg[:32]} is not supported for key type {key.kty}")
        return family

    def exists(self, key: KeyMaterial) -> bool:
        """Whether the token holds the key's objects (raises KeyBackendUnavailable if the token is unreachable)."""
        key_id = self._key_id(key)
        return self._run(lambda session: bool(list(session.get_objects({Attribute.ID: key_id}))))

    def describe(self, key: KeyMaterial) -> dict[str, Any]:
        """The token's protection attributes of the key's private or secret object (for tests and diagnostics)."""
        object_class = ObjectClass.SECRET_KEY if self._family(key) == "oct" else ObjectClass.PRIVATE_KEY
        names = {
            "token": Attribute.TOKEN,
            "private": Attribute.PRIVATE,
            "sensitive": Attribute.SENSITIVE,
            "extractable": Attribute.EXTRACTABLE,
            "always_sensitive": Attribute.ALWAYS_SENSITIVE,
            "never_extractable": Attribute.NEVER_EXTRACTABLE,
            "local": Attribute.LOCAL,
            "label": Attribute.LABEL,
        }

        def run(session: Any) -> dict[str, Any]:
            obj = self._object(session, key, object_class)
            described: dict[str, Any] = {name: obj[attribute] for name, attribute in names.items()}
            described["objects"] = len(list(session.get_objects({Attribute.ID: self._key_id(key)})))
            return described

        return self._run(run)

    # --- KeyBackend -----------------------------------------------------------------------------
    def generate(
        self, kty: str, *, size: int | None = None, curve: str | None = None, public_exponent: int | None = None
    ) -> KeyMaterial:
        if kty not in ("RSA-HSM", "EC-HSM", "oct-HSM"):
            raise KeyOperationError(f"Key type {kty[:16]} is not an HSM key type")
        key_id = os.urandom(_ID_BYTES)
        label = LABEL_PREFIX + key_id.hex()
        reference = REFERENCE_PREFIX + key_id.hex().encode("ascii")
        if kty == "RSA-HSM":
            bits = size or 2048
            if bits not in RSA_SIZES:
                raise KeyOperationError(f"Invalid key size: {bits}")
            exponent = public_exponent or 65537
            if exponent not in (3, 65537):
                raise KeyOperationError(f"Invalid public exponent: {exponent}")

            def make_rsa(session: Any) -> tuple[bytes, bytes]:
                public, _private = session.generate_keypair(
                    KeyType.RSA, bits, id=key_id, label=label, store=True, capabilities=_RSA_CAPABILITIES,
                    public_template={Attribute.PUBLIC_EXPONENT: exponent.to_bytes(3, "big").lstrip(b"\0")},
                    private_template=dict(_PROTECTED),
                )
                return public[Attribute.MODULUS], public[Attribute.PUBLIC_EXPONENT]

            modulus, exponent_bytes = self._run(self._generating(f"{kty} {bits}", make_rsa))
            jwk = {"n": _b64_int(modulus), "e": _b64_int(exponent_bytes)}
            return KeyMaterial(kty=kty, public=jwk, private=reference, size=bits)
        if kty == "EC-HSM":
            name = _CURVE_ALIASES.get(curve or "", curve or "P-256")
            if name not in CURVES:
                raise KeyOperationError("The specified curve is not supported")

            def make_ec(session: Any) -> bytes:
                parameters = session.create_domain_parameters(
                    KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters(_CURVE_OIDS[name])}, local=True
                )
                public, _private = parameters.generate_keypair(
                    id=key_id, label=label, store=True, capabilities=_EC_CAPABILITIES,
                    private_template=dict(_PROTECTED),
                )
                return public[Attribute.EC_POINT]  # type: ignore[no-any-return]

            x, y = _ec_point(self._run(self._generating(f"{kty} {name}", make_ec)), _COORDINATE_BYTES[name])
            return KeyMaterial(kty=kty, public={"crv": name, "x": _b64(x), "y": _b64(y)}, private=reference,
                               curve=name)
        bits = size or 256
        if bits not in AES_SIZES:
            raise KeyOperationError(f"Invalid key size: {bits}")

        def make_aes(session: Any) -> None:
            session.generate_key(
                KeyType.AES, bits, id=key_id, label=label, store=True, capabilities=_AES_CAPABILITIES,
                template=dict(_PROTECTED),
            )

        self._run(self._generating(f"{kty} {bits}", make_aes))
        return KeyMaterial(kty=kty, public={}, private=reference, size=bits)

    @staticmethod
    def _generating(what: str, make: Callable[[Any], _T]) -> Callable[[Any], _T]:
        def run(session: Any) -> _T:
            try:
                return make(session)
            except _UNAVAILABLE:
                raise
            except p11e.PKCS11Error as exc:
                raise KeyOperationError(f"The HSM cannot generate a {what} key: {_name(exc)}") from None

        return run

    def import_jwk(self, jwk: dict[str, str]) -> KeyMaterial:
        raise KeyOperationError("Importing keys into the HSM is not supported")

    def encrypt(
        self, key: KeyMaterial, alg: str, plaintext: bytes, *, iv: bytes | None = None, aad: bytes | None = None
    ) -> EncryptResult:
        if self._check_alg(key, alg, ENCRYPT_ALGORITHMS) == "RSA":
            return self._software.encrypt(self._public_only(key), alg, plaintext, iv=iv, aad=aad)
        self._aes_size(key, alg)
        if alg.endswith("GCM"):
            iv = iv or os.urandom(_GCM_IV)
            if len(iv) != _GCM_IV:
                raise KeyOperationError(f"{alg} requires a {_GCM_IV}-byte iv")
            sealed = self._aes(key, Mechanism.AES_GCM, GCMParams(iv, aad or None, _GCM_TAG * 8), plaintext, True)
            return EncryptResult(value=sealed[:-_GCM_TAG], iv=iv, tag=sealed[-_GCM_TAG:], aad=aad or None)
        if aad:
            raise KeyOperationError(f"Parameter 'aad' is not supported by algorithm {alg}")
        iv = iv or os.urandom(_AES_BLOCK)
        if len(iv) != _AES_BLOCK:
            raise KeyOperationError(f"{alg} requires a {_AES_BLOCK}-byte iv")
        pad = alg.endswith("PAD")
        if not pad and len(plaintext) % _AES_BLOCK:
            raise KeyOperationError(f"{alg} requires a plaintext whose length is a multiple of {_AES_BLOCK} bytes")
        mechanism = Mechanism.AES_CBC_PAD if pad else Mechanism.AES_CBC
        return EncryptResult(value=self._aes(key, mechanism, iv, plaintext, True), iv=iv)

    def decrypt(
        self,
        key: KeyMaterial,
        alg: str,
        ciphertext: bytes,
        *,
        iv: bytes | None = None,
        aad: bytes | None = None,
        tag: bytes | None = None,
    ) -> bytes:
        if self._check_alg(key, alg, ENCRYPT_ALGORITHMS) == "RSA":
            for name, value in (("iv", iv), ("aad", aad), ("tag", tag)):
                if value:
                    raise KeyOperationError(f"Parameter '{name}' is not supported by algorithm {alg}")
            return self._rsa_decrypt(key, alg, ciphertext, _DECRYPTION_FAILED)
        self._aes_size(key, alg)
        if alg.endswith("GCM"):
            if not iv or not tag:
                raise KeyOperationError(f"{alg} decryption requires iv and tag")
            if len(iv) > _GCM_IV or len(tag) != _GCM_TAG:
                raise KeyOperationError(_DECRYPTION_FAILED)
            return self._aes(key, Mechanism.AES_GCM, GCMParams(iv, aad or None, _GCM_TAG * 8), ciphertext + tag, False)
        for name, value in (("aad", aad), ("tag", tag)):
            if value:
                raise KeyOperationError(f"Parameter '{name}' is not supported by algorithm {alg}")
        if not iv:
            raise KeyOperationError(f"{alg} decryption requires an iv")
        if len(iv) != _AES_BLOCK or not ciphertext or len(ciphertext) % _AES_BLOCK:
            raise KeyOperationError(_DECRYPTION_FAILED)
        mechanism = Mechanism.AES_CBC_PAD if alg.endswith("PAD") else Mechanism.AES_CBC
        return self._aes(key, mechanism, iv, ciphertext, False)

    def wrap(self, key: KeyMaterial, alg: str, key_to_wrap: bytes) -> bytes:
        if self._check_alg(key, alg, WRAP_ALGORITHMS) == "RSA":
            return self._software.wrap(self._public_only(key), alg, key_to_wrap)
        self._aes_size(key, alg)
        if len(key_to_wrap) < 16 or len(key_to_wrap) % 8:
            raise KeyOperationError(f"{alg} wraps keys of at least 16 bytes, in multiples of 8")

        # CKM_AES_KEY_WRAP works on key objects (C_WrapKey), not on data (SoftHSM refuses it for C_Encrypt): the
        # bytes become a short-lived, extractable session object in the token, wrapped, then destroyed.
        def run(session: Any) -> bytes:
            wrapping = self._object(session, key, ObjectClass.SECRET_KEY)
            transient = None
            try:
                transient = session.create_object({
                    Attribute.CLASS: ObjectClass.SECRET_KEY,
                    Attribute.KEY_TYPE: KeyType.GENERIC_SECRET,
                    Attribute.TOKEN: False,
                    Attribute.PRIVATE: True,
                    Attribute.SENSITIVE: False,
                    Attribute.EXTRACTABLE: True,
                    Attribute.VALUE: key_to_wrap,
                })
                return wrapping.wrap_key(transient, mechanism=Mechanism.AES_KEY_WRAP)  # type: ignore[no-any-return]
            except _UNAVAILABLE:
                raise
            except p11e.PKCS11Error as exc:
                raise KeyOperationError(f"Wrap failed ({_name(exc)}).") from None
            finally:
                if transient is not None:
                    with suppress(p11e.PKCS11Error):
                        transient.destroy()

        return self._run(run)

    def unwrap(self, key: KeyMaterial, alg: str, wrapped: bytes) -> bytes:
        if self._check_alg(key, alg, WRAP_ALGORITHMS) == "RSA":
            return self._rsa_decrypt(key, alg, wrapped, _UNWRAP_FAILED)
        self._aes_size(key, alg)
        if len(wrapped) < 24 or len(wrapped) % 8:
            raise KeyOperationError(_UNWRAP_FAILED)

        def run(session: Any) -> bytes:
            wrapping = self._object(session, key, ObjectClass.SECRET_KEY)
            unwrapped = None
            try:
                unwrapped = wrapping.unwrap_key(
                    ObjectClass.SECRET_KEY, KeyType.GENERIC_SECRET, wrapped, mechanism=Mechanism.AES_KEY_WRAP,
                    store=False, capabilities=0,
                    template={Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True, Attribute.PRIVATE: True},
                )
                return bytes(unwrapped[Attribute.VALUE])
            except _UNAVAILABLE:
                raise
            except p11e.PKCS11Error:
                raise KeyOperationError(_UNWRAP_FAILED) from None
            finally:
                if unwrapped is not None:
                    with suppress(p11e.PKCS11Error):
                        unwrapped.destroy()

        return self._run(run)

    def sign(self, key: KeyMaterial, alg: str, digest: bytes) -> bytes:
        family = self._check_alg(key, alg, SIGN_ALGORITHMS)
        bits = alg[2:]
        if len(digest) != DIGEST_SIZES[bits]:
            raise KeyOperationError(f"Invalid digest length for {alg}: expected {DIGEST_SIZES[bits]} bytes")
        parameter: tuple[Mechanism, MGF, int] | None = None
        if family == "RSA":
            if alg.startswith("RS"):
                mechanism, data = Mechanism.RSA_PKCS, _DIGEST_INFO[bits] + digest
            else:
                hash_mechanism, mgf = _HASH_MECHANISMS[bits]
                mechanism, parameter, data = Mechanism.RSA_PKCS_PSS, (hash_mechanism, mgf, len(digest)), digest
        else:
            if key.curve != CURVE_OF_ALGORITHM[alg]:
                raise KeyOperationError(f"Algorithm {alg} requires curve {CURVE_OF_ALGORITHM[alg]}")
            mechanism, data = Mechanism.ECDSA, digest

        def run(session: Any) -> bytes:
            private = self._object(session, key, ObjectClass.PRIVATE_KEY)
            try:
                return private.sign(data, mechanism=mechanism, mechanism_param=parameter)  # type: ignore[no-any-return]
            except _UNAVAILABLE:
                raise
            except p11e.PKCS11Error as exc:
                raise KeyOperationError(f"The HSM cannot sign with {alg}: {_name(exc)}") from None

        signature = self._run(run)
        if family == "EC" and key.curve is not None:
            length = _COORDINATE_BYTES[key.curve]
            if len(signature) != 2 * length:  # CKM_ECDSA gives r || s, each as long as the order
                half = len(signature) // 2
                signature = signature[:half].rjust(length, b"\0") + signature[half:].rjust(length, b"\0")
        return signature

    def verify(self, key: KeyMaterial, alg: str, digest: bytes, signature: bytes) -> bool:
        self._check_alg(key, alg, SIGN_ALGORITHMS)
        return self._software.verify(self._public_only(key), alg, digest, signature)

    def destroy(self, key: KeyMaterial) -> None:
        """Delete the key's objects from the token (nothing to do if they are gone already, also when another
        process destroys them at the same moment)."""
        key_id = self._key_id(key)

        def run(session: Any) -> None:
            for obj in list(session.get_objects({Attribute.ID: key_id})):
                with suppress(p11e.ObjectHandleInvalid):  # destroyed meanwhile by another session
                    obj.destroy()

        self._run(run)

    def duplicate(self, key: KeyMaterial) -> KeyMaterial:
        """The key's token objects copied under a new id, for a key restored from a backup: the restored key must not
        share its objects with the original, or purging either would break the other. The copies keep the
        originals' protection (private, sensitive, never extractable); nothing leaves the token."""
        key_id, new_id = self._key_id(key), os.urandom(_ID_BYTES)

        def run(session: Any) -> None:
            for leftover in list(session.get_objects({Attribute.ID: new_id})):  # of a try cut short by a lost session
                leftover.destroy()
            originals = list(session.get_objects({Attribute.ID: key_id}))
            if not originals:
                raise Pkcs11KeyNotFound(f"The PKCS#11 token '{self.token_label}' holds no object for this key")
            copies = []
            try:
                for obj in originals:
                    copies.append(obj.copy({Attribute.ID: new_id, Attribute.LABEL: LABEL_PREFIX + new_id.hex()}))
            except _UNAVAILABLE:  # the session is lost: `_run` tries again on a new one (which removes these copies)
                raise
            except p11e.PKCS11Error as exc:  # CKA_COPYABLE false, C_CopyObject not supported, a policy
                for copy in copies:
                    with suppress(p11e.PKCS11Error):
                        copy.destroy()
                raise KeyOperationError(
                    f"The PKCS#11 token '{self.token_label}' does not allow copying this key ({_name(exc)}), so HSM "
                    "key backups cannot be restored on it"
                ) from None

        self._run(run)
        return replace(key, private=REFERENCE_PREFIX + new_id.hex().encode("ascii"))

    # --- helpers ----------------------------------------------------------------------------
    @staticmethod
    def _public_only(key: KeyMaterial) -> KeyMaterial:
        """The key as a software key without private part: for public operations done with `cryptography`."""
        return replace(key, kty=key.family, private=b"")

    @staticmethod
    def _aes_size(key: KeyMaterial, alg: str) -> None:
        if key.size != int(alg[1:4]):
            raise KeyOperationError(f"Algorithm {alg} requires a {alg[1:4]}-bit key")

    def _aes(self, key: KeyMaterial, mechanism: Mechanism, parameter: Any, data: bytes, encrypt: bool) -> bytes:
        def run(session: Any) -> bytes:
            secret = self._object(session, key, ObjectClass.SECRET_KEY)
            try:
                if encrypt:
                    return secret.encrypt(data, mechanism=mechanism, mechanism_param=parameter)  # type: ignore[no-any-return]
                return secret.decrypt(data, mechanism=mechanism, mechanism_param=parameter)  # type: ignore[no-any-return]
            except _UNAVAILABLE:
                raise
            except p11e.PKCS11Error as exc:
                if encrypt:
                    raise KeyOperationError(f"Encryption failed ({_name(exc)}).") from None
                raise KeyOperationError(_DECRYPTION_FAILED) from None

        return self._run(run)

    def _rsa_decrypt(self, key: KeyMaterial, alg: str, ciphertext: bytes, failed: str) -> bytes:
        k = (key.size or 0) // 8
        if not ciphertext or (k and len(ciphertext) != k):
            raise KeyOperationError(failed)

        def run(session: Any) -> tuple[bytes, bool]:
            """(result, raw): raw when `result` is the raw RSA block, still OAEP-padded."""
            private = self._object(session, key, ObjectClass.PRIVATE_KEY)
            try:
                if alg == "RSA1_5":
                    return private.decrypt(ciphertext, mechanism=Mechanism.RSA_PKCS), False
                if alg == "RSA-OAEP":
                    oaep_sha1 = (Mechanism.SHA_1, MGF.SHA1, None)
                    return private.decrypt(ciphertext, mechanism=Mechanism.RSA_PKCS_OAEP,
                                           mechanism_param=oaep_sha1), False
                if not self.raw_rsa_oaep256:
                    oaep_sha256 = (Mechanism.SHA256, MGF.SHA256, None)
                    try:
                        return private.decrypt(ciphertext, mechanism=Mechanism.RSA_PKCS_OAEP,
                                               mechanism_param=oaep_sha256), False
                    except _UNSUPPORTED:
                        log.info("the token has no RSA-OAEP with SHA-256; using CKM_RSA_X_509 and OAEP decoding")
                        self.raw_rsa_oaep256 = True
                return private.decrypt(ciphertext, mechanism=Mechanism.RSA_X_509), True
            except _UNAVAILABLE:
                raise
            except p11e.PKCS11Error:
                raise KeyOperationError(failed) from None

        result, raw = self._run(run)
        if not raw:
            return bytes(result)
        plain = _oaep_sha256_decode(bytes(result).rjust(k, b"\0"), k)
        if plain is None:
            raise KeyOperationError(failed)
        return plain


def from_config(config: Config) -> Pkcs11Backend | None:
    """The HSM backend of the configuration (None without COFFER_PKCS11_MODULE). Does not connect yet."""
    if config.pkcs11_module is None or config.pkcs11_token is None:
        return None
    if config.pkcs11_pin_file is not None:
        try:
            mode = config.pkcs11_pin_file.stat().st_mode
            if mode & 0o077:
                log.warning("the PKCS#11 PIN file %s is readable by group or others (chmod 600 it)",
                            config.pkcs11_pin_file)
        except OSError:
            pass  # reported when it is read
    return Pkcs11Backend(config.pkcs11_module, config.pkcs11_token, config.pkcs11_pin,
                         pin_file=config.pkcs11_pin_file)


if TYPE_CHECKING:
    from coffer.crypto.keys import KeyBackend

    _conforms: KeyBackend = Pkcs11Backend("", "", "")
