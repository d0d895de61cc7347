"""The key backend seam: every cryptographic operation on a Key Vault key goes through a KeyBackend.

Callers hold a `KeyMaterial`: the public JWK parts (safe to show) and an opaque `private` blob. For software keys
`private` is the key itself (PKCS#8 DER for RSA/EC, raw bytes for oct) and the caller seals it with the barrier
before storing it; for HSM keys it is a reference to an object inside the PKCS#11 token (no material).
Binary inputs and outputs are raw bytes; callers do base64url on the wire.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

SOFTWARE_TYPES = ("RSA", "EC", "oct")
HSM_TYPES = ("RSA-HSM", "EC-HSM", "oct-HSM")
RSA_SIZES = (2048, 3072, 4096)
AES_SIZES = (128, 192, 256)
CURVES = ("P-256", "P-256K", "P-384", "P-521")

ENCRYPT_ALGORITHMS = {
    "RSA": ("RSA1_5", "RSA-OAEP", "RSA-OAEP-256"),
    "oct": ("A128GCM", "A192GCM", "A256GCM", "A128CBC", "A192CBC", "A256CBC", "A128CBCPAD", "A192CBCPAD", "A256CBCPAD"),
}
WRAP_ALGORITHMS = {"RSA": ("RSA1_5", "RSA-OAEP", "RSA-OAEP-256"), "oct": ("A128KW", "A192KW", "A256KW")}
SIGN_ALGORITHMS = {
    "RSA": ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"),
    "EC": ("ES256", "ES256K", "ES384", "ES512"),
}
DIGEST_SIZES = {"256": 32, "384": 48, "512": 64, "256K": 32}
CURVE_OF_ALGORITHM = {"ES256": "P-256", "ES256K": "P-256K", "ES384": "P-384", "ES512": "P-521"}


class KeyOperationError(ValueError):
    """Bad input to a key operation (unknown algorithm for the key type, wrong digest size, bad ciphertext,
    failed authentication of a GCM tag...). The message is safe to return to the client."""


class KeyBackendUnavailable(RuntimeError):
    """The backend (e.g. the HSM token) cannot be reached."""


class KeyMissing(KeyBackendUnavailable):
    """The backend is reachable but holds no object for the key (an HSM token: deleted, or another token)."""


@dataclass
class KeyMaterial:
    kty: str  # "RSA", "EC", "oct", "RSA-HSM", "EC-HSM", "oct-HSM"
    public: dict[str, str] = field(default_factory=dict)  # JWK public members: n, e | crv, x, y | {} for oct
    private: bytes = field(default=b"", repr=False)  # software: the key; HSM: a reference into the token
    size: int | None = None  # bits, for RSA and oct
    curve: str | None = None  # for EC

    @property
    def family(self) -> str:
        """ "RSA", "EC" or "oct" whatever the protection."""
        return self.kty.removesuffix("-HSM")


@dataclass
class EncryptResult:
    value: bytes
    iv: bytes | None = None
    tag: bytes | None = None
    aad: bytes | None = None


class KeyBackend(Protocol):
    """One implementation per protection level: `software` (cryptography) and `pkcs11` (an HSM)."""

    def generate(
        self, kty: str, *, size: int | None = None, curve: str | None = None, public_exponent: int | None = None
    ) -> KeyMaterial: ...

    def import_jwk(self, jwk: dict[str, str]) -> KeyMaterial:
        """A key given as a JWK with private members (base64url strings, as on the wire)."""
        ...

    def encrypt(
        self, key: KeyMaterial, alg: str, plaintext: bytes, *, iv: bytes | None = None, aad: bytes | None = None
    ) -> EncryptResult: ...

    def decrypt(
        self,
        key: KeyMaterial,
        alg: str,
        ciphertext: bytes,
        *,
        iv: bytes | None = None,
        aad: bytes | None = None,
        tag: bytes | None = None,
    ) -> bytes: ...

    def wrap(self, key: KeyMaterial, alg: str, key_to_wrap: bytes) -> bytes: ...

    def unwrap(self, key: KeyMaterial, alg: str, wrapped: bytes) -> bytes: ...

    def sign(self, key: KeyMaterial, alg: str, digest: bytes) -> bytes: ...

    def verify(self, key: KeyMaterial, alg: str, digest: bytes, signature: bytes) -> bool: ...

    def destroy(self, key: KeyMaterial) -> None:
        """Remove the key for good (HSM: delete the token object; software: nothing to do)."""
        ...

    def duplicate(self, key: KeyMaterial) -> KeyMaterial:
        """The key as an independent copy, for a restored backup (HSM: new token objects; software: the key itself,
        whose material is the caller's). KeyMissing if the backend does not hold the key; KeyOperationError if it
        will not copy it."""
        ...
