"""The software KeyBackend: kty RSA, EC and oct keys held as bytes and used with ``cryptography``.

`KeyMaterial.private` is PKCS#8 DER (unencrypted) for RSA/EC and the raw AES key for oct; the caller seals it with the
barrier. Public operations (encrypt, wrap, verify with RSA/EC) use only the public JWK members. Sign/verify take a
digest, never the data. Error messages never contain key material, and decryption failures are all alike.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives import padding as block_padding
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from coffer.crypto.keys import (
    AES_SIZES,
    CURVE_OF_ALGORITHM,
    CURVES,
    DIGEST_SIZES,
    ENCRYPT_ALGORITHMS,
    HSM_TYPES,
    RSA_SIZES,
    SIGN_ALGORITHMS,
    WRAP_ALGORITHMS,
    EncryptResult,
    KeyMaterial,
    KeyOperationError,
)

__all__ = ["SoftwareBackend"]

_EC_CURVES: dict[str, ec.EllipticCurve] = {
    "P-256": ec.SECP256R1(),
    "P-256K": ec.SECP256K1(),
    "P-384": ec.SECP384R1(),
    "P-521": ec.SECP521R1(),
}
_CURVE_ALIASES = {"SECP256K1": "P-256K"}  # the name used by Key Vault 2016-10-01
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "256": hashes.SHA256,
    "256K": hashes.SHA256,
    "384": hashes.SHA384,
    "512": hashes.SHA512,
}
_B64URL = re.compile(r"[A-Za-z0-9_-]*={0,2}")
_AES_BLOCK = 16
_GCM_IV, _GCM_TAG = 12, 16
_DECRYPTION_FAILED = "Decryption failed."
_UNWRAP_FAILED = "Unwrap failed."


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _int_b64(value: int, length: int | None = None) -> str:
    return _b64e(value.to_bytes(length or max(1, (value.bit_length() + 7) // 8), "big"))


def _member(jwk: dict[str, str], name: str) -> bytes | None:
    value = jwk.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _B64URL.fullmatch(value) or len(value.rstrip("=")) % 4 == 1:
        raise KeyOperationError(f"JWK member '{name}' is not base64url.")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except binascii.Error:
        raise KeyOperationError(f"JWK member '{name}' is not base64url.") from None


def _int_member(jwk: dict[str, str], name: str) -> int | None:
    value = _member(jwk, name)
    return None if value is None else int.from_bytes(value, "big")


def _rsa_material(private: rsa.RSAPrivateKey) -> KeyMaterial:
    if private.key_size not in RSA_SIZES:
        raise KeyOperationError(f"Invalid key size: {private.key_size}")
    numbers = private.public_key().public_numbers()
    return KeyMaterial(
        kty="RSA",
        public={"n": _int_b64(numbers.n), "e": _int_b64(numbers.e)},
        private=private.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        size=private.key_size,
    )


def _ec_material(private: ec.EllipticCurvePrivateKey, curve: str) -> KeyMaterial:
    numbers = private.public_key().public_numbers()
    length = (private.curve.key_size + 7) // 8
    return KeyMaterial(
        kty="EC",
        public={"crv": curve, "x": _int_b64(numbers.x, length), "y": _int_b64(numbers.y, length)},
        private=private.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        curve=curve,
    )


def _oct_material(key: bytes) -> KeyMaterial:
    if len(key) * 8 not in AES_SIZES:
        raise KeyOperationError(f"Invalid key size: {len(key) * 8}")
    return KeyMaterial(kty="oct", public={}, private=key, size=len(key) * 8)


def _curve(name: object) -> str:
    name = _CURVE_ALIASES.get(name, name) if isinstance(name, str) else None
    if name not in CURVES:
        raise KeyOperationError("The specified curve is not supported")
    return name


def _software_kty(kty: str) -> str:
    if kty in HSM_TYPES:
        raise KeyOperationError(f"Key type {kty} requires an HSM")
    if kty not in ("RSA", "EC", "oct"):
        raise KeyOperationError("The specified key type is not supported")
    return kty


def _check_alg(key: KeyMaterial, alg: str, table: Mapping[str, tuple[str, ...]]) -> str:
    kty = _software_kty(key.kty)
    if alg not in table.get(kty, ()):
        raise KeyOperationError(f"Algorithm {alg[:32]} is not supported for key type {kty}")
    return kty


class _ParsedKeys:
    """Private keys parsed from their DER, kept while the server is unsealed (least recently used dropped first):
    parsing costs more than the operation (RSA-2048 sign: about as much again; P-256 sign: twice as much). Keyed by
    the DER itself, so a key is never mistaken for another; cleared when the server seals (SoftwareBackend.forget)."""

    def __init__(self, limit: int = 4096) -> None:
        self._limit = limit
        self._keys: OrderedDict[bytes, PrivateKeyTypes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, der: bytes) -> PrivateKeyTypes:
        with self._lock:
            found = self._keys.get(der)
            if found is not None:
                self._keys.move_to_end(der)
                return found
        # The blob was validated when generated or imported and is authenticated by the barrier; re-validating an
        # RSA key on every load costs up to half a second (4096 bits).
        parsed = serialization.load_der_private_key(der, None, unsafe_skip_rsa_key_validation=True)
        with self._lock:
            self._keys[der] = parsed
            while len(self._keys) > self._limit:
                self._keys.popitem(last=False)
        return parsed

    def clear(self) -> None:
        with self._lock:
            self._keys.clear()


_PARSED = _ParsedKeys()


@functools.lru_cache(maxsize=4096)
def _rsa_public_key(n: str, e: str) -> rsa.RSAPublicKey:
    """An RSA public key from its JWK members, kept: OpenSSL prepares a key on its first use (an RSA-OAEP-256
    encryption with a fresh key object cost 68 µs, with a kept one 44 µs)."""
    n_int, e_int = _int_member({"n": n}, "n"), _int_member({"e": e}, "e")
    if n_int is None or e_int is None:
        raise KeyOperationError("The RSA key has no public members n and e")
    return rsa.RSAPublicNumbers(e_int, n_int).public_key()


def _rsa_private(key: KeyMaterial) -> rsa.RSAPrivateKey:
    private = _PARSED.get(key.private)
    if not isinstance(private, rsa.RSAPrivateKey):
        raise TypeError("key material is not an RSA private key")
    return private


def _ec_private(key: KeyMaterial) -> ec.EllipticCurvePrivateKey:
    private = _PARSED.get(key.private)
    if not isinstance(private, ec.EllipticCurvePrivateKey):
        raise TypeError("key material is not an EC private key")
    return private


def _aes_key(key: KeyMaterial, alg: str) -> bytes:
    if len(key.private) * 8 != int(alg[1:4]):
        raise KeyOperationError(f"Algorithm {alg} requires a {alg[1:4]}-bit key")
    return key.private


def _hash_for(alg: str, digest: bytes) -> hashes.HashAlgorithm:
    if len(digest) != DIGEST_SIZES[alg[2:]]:
        raise KeyOperationError(f"Invalid digest length for {alg}: expected {DIGEST_SIZES[alg[2:]]} bytes")
    return _HASHES[alg[2:]]()


def _ec_check(key: KeyMaterial, alg: str) -> int:
    """The curve's coordinate length in bytes, once the key's curve is checked against the algorithm."""
    if key.curve != CURVE_OF_ALGORITHM[alg]:
        raise KeyOperationError(f"Algorithm {alg} requires curve {CURVE_OF_ALGORITHM[alg]}")
    return (_EC_CURVES[key.curve].key_size + 7) // 8


@functools.cache  # ES256, ES384, ES512, ES256K; the objects are immutable
def _ecdsa_prehashed(alg: str) -> ec.ECDSA:
    return ec.ECDSA(utils.Prehashed(_HASHES[alg[2:]]()))


@functools.cache  # a handful of algorithms; the padding objects are immutable
def _rsa_padding(alg: str) -> padding.AsymmetricPadding:
    if alg == "RSA1_5":
        return padding.PKCS1v15()
    hash_algorithm = hashes.SHA256() if alg == "RSA-OAEP-256" else hashes.SHA1()  # noqa: S303 (RSA-OAEP is SHA-1)
    return padding.OAEP(mgf=padding.MGF1(hash_algorithm), algorithm=hash_algorithm, label=None)


def _pss(hash_algorithm: hashes.HashAlgorithm) -> padding.AsymmetricPadding:
    return padding.PSS(mgf=padding.MGF1(hash_algorithm), salt_length=hash_algorithm.digest_size)


def _refuse_unused(alg: str, **parameters: bytes | None) -> None:
    for name, value in parameters.items():
        if value:
            raise KeyOperationError(f"Parameter '{name}' is not supported by algorithm {alg}")


def _cbc(key: bytes, iv: bytes, pad: bool, data: bytes, encrypt: bool) -> bytes:
    cipher = Cipher(algorithms.AES(key), modes.CBC(iv))
    if encrypt:
        if pad:
            padder = block_padding.PKCS7(128).padder()
            data = padder.update(data) + padder.finalize()
        encryptor = cipher.encryptor()
        return encryptor.update(data) + encryptor.finalize()
    decryptor = cipher.decryptor()
    plain = decryptor.update(data) + decryptor.finalize()
    if pad:
        unpadder = block_padding.PKCS7(128).unpadder()
        plain = unpadder.update(plain) + unpadder.finalize()
    return plain


class SoftwareBackend:
    """KeyBackend for software-protected keys (kty RSA, EC, oct). Holds nothing but a cache of parsed private keys."""

    def forget(self) -> None:
        """The server sealed: drop every parsed private key."""
        _PARSED.clear()

    def generate(
        self, kty: str, *, size: int | None = None, curve: str | None = None, public_exponent: int | None = None
    ) -> KeyMaterial:
        kty = _software_kty(kty)
        if kty == "RSA":
            size = size or 2048
            if size not in RSA_SIZES:
                raise KeyOperationError(f"Invalid key size: {size}")
            exponent = public_exponent or 65537
            if exponent not in (3, 65537):
                raise KeyOperationError(f"Invalid public exponent: {exponent}")
            return _rsa_material(rsa.generate_private_key(public_exponent=exponent, key_size=size))
        if kty == "EC":
            name = _curve(curve or "P-256")
            return _ec_material(ec.generate_private_key(_EC_CURVES[name]), name)
        size = size or 256
        if size not in AES_SIZES:
            raise KeyOperationError(f"Invalid key size: {size}")
        return _oct_material(os.urandom(size // 8))

    def import_jwk(self, jwk: dict[str, str]) -> KeyMaterial:
        kty = _software_kty(str(jwk.get("kty", "")))
        if kty == "oct":
            k = _member(jwk, "k")
            if k is None:
                raise KeyOperationError("The key is missing private material")
            return _oct_material(k)
        if kty == "EC":
            name = _curve(jwk.get("crv"))
            x, y, d = (_int_member(jwk, m) for m in ("x", "y", "d"))
            if d is None:
                raise KeyOperationError("The key is missing private material")
            if x is None or y is None:
                raise KeyOperationError("The EC key needs members crv, x and y")
            try:
                public = ec.EllipticCurvePublicNumbers(x, y, _EC_CURVES[name])
                return _ec_material(ec.EllipticCurvePrivateNumbers(d, public).private_key(), name)
            except ValueError:
                raise KeyOperationError("Invalid EC key") from None
        n, e, d, p, q = (_int_member(jwk, m) for m in ("n", "e", "d", "p", "q"))
        if d is None:
            raise KeyOperationError("The key is missing private material")
        if n is None or e is None:
            raise KeyOperationError("The RSA key needs members n and e")
        try:
            if p is None or q is None:
                p, q = rsa.rsa_recover_prime_factors(n, e, d)
            dp, dq, qi = (_int_member(jwk, m) for m in ("dp", "dq", "qi"))
            numbers = rsa.RSAPrivateNumbers(
                p=p,
                q=q,
                d=d,
                dmp1=rsa.rsa_crt_dmp1(d, p) if dp is None else dp,
                dmq1=rsa.rsa_crt_dmq1(d, q) if dq is None else dq,
                iqmp=rsa.rsa_crt_iqmp(p, q) if qi is None else qi,
                public_numbers=rsa.RSAPublicNumbers(e, n),
            )
            private = numbers.private_key()
        except ValueError:
            raise KeyOperationError("Invalid RSA key") from None
        return _rsa_material(private)

    def encrypt(
        self, key: KeyMaterial, alg: str, plaintext: bytes, *, iv: bytes | None = None, aad: bytes | None = None
    ) -> EncryptResult:
        if _check_alg(key, alg, ENCRYPT_ALGORITHMS) == "RSA":
            _refuse_unused(alg, iv=iv, aad=aad)
            try:
                return EncryptResult(value=self._rsa_public(key).encrypt(plaintext, _rsa_padding(alg)))
            except ValueError:
                raise KeyOperationError(f"The plaintext is too long for {alg} with this key") from None
        secret = _aes_key(key, alg)
        if alg.endswith("GCM"):
            iv = iv or os.urandom(_GCM_IV)
            if len(iv) != _GCM_IV:
                raise KeyOperationError(f"{alg} requires a {_GCM_IV}-byte iv")
            sealed = AESGCM(secret).encrypt(iv, plaintext, aad or None)
            return EncryptResult(value=sealed[:-_GCM_TAG], iv=iv, tag=sealed[-_GCM_TAG:], aad=aad or None)
        _refuse_unused(alg, aad=aad)
        iv = iv or os.urandom(_AES_BLOCK)
        if len(iv) != _AES_BLOCK:
            raise KeyOperationError(f"{alg} requires a {_AES_BLOCK}-byte iv")
        pad = alg.endswith("PAD")
        if not pad and len(plaintext) % _AES_BLOCK:
            raise KeyOperationError(f"{alg} requires a plaintext whose length is a multiple of {_AES_BLOCK} bytes")
        return EncryptResult(value=_cbc(secret, iv, pad, plaintext, encrypt=True), iv=iv)

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
        if _check_alg(key, alg, ENCRYPT_ALGORITHMS) == "RSA":
            _refuse_unused(alg, iv=iv, aad=aad, tag=tag)
            private = _rsa_private(key)  # outside the try: a damaged blob is a server fault, not a bad ciphertext
            try:
                return private.decrypt(ciphertext, _rsa_padding(alg))
            except ValueError:
                raise KeyOperationError(_DECRYPTION_FAILED) from None
        secret = _aes_key(key, alg)
        if alg.endswith("GCM"):
            if not iv or not tag:
                raise KeyOperationError(f"{alg} decryption requires iv and tag")
            try:
                return AESGCM(secret).decrypt(iv, ciphertext + tag, aad or None)
            except (InvalidTag, ValueError):
                raise KeyOperationError(_DECRYPTION_FAILED) from None
        _refuse_unused(alg, aad=aad, tag=tag)
        if not iv:
            raise KeyOperationError(f"{alg} decryption requires an iv")
        if len(iv) != _AES_BLOCK or len(ciphertext) % _AES_BLOCK:
            raise KeyOperationError(_DECRYPTION_FAILED)
        try:
            return _cbc(secret, iv, alg.endswith("PAD"), ciphertext, encrypt=False)
        except ValueError:
            raise KeyOperationError(_DECRYPTION_FAILED) from None

    def wrap(self, key: KeyMaterial, alg: str, key_to_wrap: bytes) -> bytes:
        if _check_alg(key, alg, WRAP_ALGORITHMS) == "RSA":
            try:
                return self._rsa_public(key).encrypt(key_to_wrap, _rsa_padding(alg))
            except ValueError:
                raise KeyOperationError(f"The key to wrap is too long for {alg} with this key") from None
        secret = _aes_key(key, alg)
        if len(key_to_wrap) < 16 or len(key_to_wrap) % 8:
            raise KeyOperationError(f"{alg} wraps keys of at least 16 bytes, in multiples of 8")
        return aes_key_wrap(secret, key_to_wrap)

    def unwrap(self, key: KeyMaterial, alg: str, wrapped: bytes) -> bytes:
        private = _rsa_private(key) if _check_alg(key, alg, WRAP_ALGORITHMS) == "RSA" else None
        secret = b"" if private is not None else _aes_key(key, alg)
        try:
            if private is not None:
                return private.decrypt(wrapped, _rsa_padding(alg))
            return aes_key_unwrap(secret, wrapped)
        except (InvalidUnwrap, ValueError):
            raise KeyOperationError(_UNWRAP_FAILED) from None

    def sign(self, key: KeyMaterial, alg: str, digest: bytes) -> bytes:
        if _check_alg(key, alg, SIGN_ALGORITHMS) == "RSA":
            hash_algorithm = _hash_for(alg, digest)
            pad = padding.PKCS1v15() if alg.startswith("RS") else _pss(hash_algorithm)
            return _rsa_private(key).sign(digest, pad, utils.Prehashed(hash_algorithm))
        length = _ec_check(key, alg)
        _hash_for(alg, digest)  # checks the digest's length
        der = _ec_private(key).sign(digest, _ecdsa_prehashed(alg))
        r, s = utils.decode_dss_signature(der)
        return r.to_bytes(length, "big") + s.to_bytes(length, "big")

    def verify(self, key: KeyMaterial, alg: str, digest: bytes, signature: bytes) -> bool:
        try:
            if _check_alg(key, alg, SIGN_ALGORITHMS) == "RSA":
                hash_algorithm = _hash_for(alg, digest)
                pad = padding.PKCS1v15() if alg.startswith("RS") else _pss(hash_algorithm)
                self._rsa_public(key).verify(signature, digest, pad, utils.Prehashed(hash_algorithm))
                return True
            length = _ec_check(key, alg)
            hash_algorithm = _hash_for(alg, digest)
            if len(signature) != 2 * length:
                return False
            r, s = int.from_bytes(signature[:length], "big"), int.from_bytes(signature[length:], "big")
            self._ec_public(key).verify(
                utils.encode_dss_signature(r, s), digest, ec.ECDSA(utils.Prehashed(hash_algorithm))
            )
            return True
        except InvalidSignature:
            return False

    def destroy(self, key: KeyMaterial) -> None:
        """Nothing to do: a software key lives only in the caller's (sealed) storage."""

    def duplicate(self, key: KeyMaterial) -> KeyMaterial:
        """The key itself: its material lives in the caller's storage, so a restored copy is independent already."""
        return key

    @staticmethod
    def _rsa_public(key: KeyMaterial) -> rsa.RSAPublicKey:
        n, e = key.public.get("n"), key.public.get("e")
        if not isinstance(n, str) or not isinstance(e, str):
            raise KeyOperationError("The RSA key has no public members n and e")
        return _rsa_public_key(n, e)

    @staticmethod
    def _ec_public(key: KeyMaterial) -> ec.EllipticCurvePublicKey:
        x, y = _int_member(key.public, "x"), _int_member(key.public, "y")
        if x is None or y is None or key.curve not in _EC_CURVES:
            raise KeyOperationError("The EC key has no public members crv, x and y")
        return ec.EllipticCurvePublicNumbers(x, y, _EC_CURVES[key.curve]).public_key()


if TYPE_CHECKING:
    from coffer.crypto.keys import KeyBackend

    _conforms: KeyBackend = SoftwareBackend()
