"""What the sync and async Keys tests share: Azure's algorithm tables (transcribed from azure-key-vault.md §2.4/§2.5,
not imported from coffer), and local cryptography with `cryptography` from nothing but a key's *public* JWK."""

from __future__ import annotations

import hashlib
import os
from typing import Any

from azure.keyvault.keys import JsonWebKey, KeyType
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

RSA_SIZES = (2048, 3072, 4096)
EC_CURVES = ("P-256", "P-256K", "P-384", "P-521")
OCT_SIZES = (128, 192, 256)
RSA_ENCRYPTION = ("RSA1_5", "RSA-OAEP", "RSA-OAEP-256")  # encrypt/decrypt and wrapKey/unwrapKey
RSA_SIGNATURE = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EC_SIGNATURE = {"P-256": "ES256", "P-256K": "ES256K", "P-384": "ES384", "P-521": "ES512"}
OCT_MODES = ("GCM", "CBC", "CBCPAD")  # A{size}{mode}; A{size}KW for wrap/unwrap
COORDINATE_BYTES = {"P-256": 32, "P-256K": 32, "P-384": 48, "P-521": 66}
CURVES = {"P-256": ec.SECP256R1(), "P-256K": ec.SECP256K1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}
HASHES: dict[str, type[hashes.HashAlgorithm]] = {"256": hashes.SHA256, "256K": hashes.SHA256,
                                                 "384": hashes.SHA384, "512": hashes.SHA512}
DEFAULT_OPS = {"RSA": ["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"], "EC": ["sign", "verify"],
               "oct": ["encrypt", "decrypt", "wrapKey", "unwrapKey"]}
# JWK members that are private or symmetric key material: never in a response
PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "k")
HSM_REFUSED = "Hardware key operation not allowed on standard vault"


def hash_of(alg: str) -> hashes.HashAlgorithm:
    return HASHES[alg[2:]]()


def digest_for(alg: str, message: bytes = b"") -> bytes:
    """The digest a caller signs with `alg` (sign/verify take a digest, never data)."""
    message = message or os.urandom(64)
    return {"SHA256": hashlib.sha256, "SHA384": hashlib.sha384,
            "SHA512": hashlib.sha512}[hash_of(alg).name.upper()](message).digest()


def _int(value: bytes) -> int:
    return int.from_bytes(value, "big")


def _bytes(value: int, length: int | None = None) -> bytes:
    return value.to_bytes(length or max(1, (value.bit_length() + 7) // 8), "big")


def curve_of(jwk: Any) -> str:
    """The JWK's crv as Azure's name ("P-256"...), whether the SDK gave a KeyCurveName or a str."""
    return str(getattr(jwk.crv, "value", jwk.crv))


def rsa_public(jwk: Any) -> rsa.RSAPublicKey:
    return rsa.RSAPublicNumbers(_int(jwk.e), _int(jwk.n)).public_key()


def ec_public(jwk: Any) -> ec.EllipticCurvePublicKey:
    return ec.EllipticCurvePublicNumbers(_int(jwk.x), _int(jwk.y), CURVES[curve_of(jwk)]).public_key()


def rsa_padding(alg: str) -> padding.AsymmetricPadding:
    if alg == "RSA1_5":
        return padding.PKCS1v15()
    algorithm = hashes.SHA256() if alg == "RSA-OAEP-256" else hashes.SHA1()
    return padding.OAEP(mgf=padding.MGF1(algorithm), algorithm=algorithm, label=None)


def signature_padding(alg: str) -> padding.AsymmetricPadding:
    if alg.startswith("RS"):
        return padding.PKCS1v15()
    # JWA (RFC 7518 §3.5): PSS with MGF1 of the same hash, salt as long as the hash output
    return padding.PSS(mgf=padding.MGF1(hash_of(alg)), salt_length=hash_of(alg).digest_size)


def verify_locally(jwk: Any, alg: str, digest: bytes, signature: bytes) -> None:
    """Raises cryptography's InvalidSignature unless `signature` is valid for the public JWK."""
    prehashed = utils.Prehashed(hash_of(alg))
    if alg.startswith("ES"):
        size = COORDINATE_BYTES[curve_of(jwk)]
        assert len(signature) == 2 * size, f"{alg} signature must be r||s of {2 * size} bytes, got {len(signature)}"
        der = utils.encode_dss_signature(_int(signature[:size]), _int(signature[size:]))
        ec_public(jwk).verify(der, digest, ec.ECDSA(prehashed))
    else:
        rsa_public(jwk).verify(signature, digest, signature_padding(alg), prehashed)


def encrypt_locally(jwk: Any, alg: str, plaintext: bytes) -> bytes:
    return rsa_public(jwk).encrypt(plaintext, rsa_padding(alg))


def sign_with(private: Any, alg: str, digest: bytes) -> bytes:
    """A signature in Key Vault's format (EC: raw r||s) made locally with a private key we hold."""
    prehashed = utils.Prehashed(hash_of(alg))
    if isinstance(private, ec.EllipticCurvePrivateKey):
        r, s = utils.decode_dss_signature(private.sign(digest, ec.ECDSA(prehashed)))
        size = (private.curve.key_size + 7) // 8
        return _bytes(r, size) + _bytes(s, size)
    return private.sign(digest, signature_padding(alg), prehashed)


def rsa_jwk(private: rsa.RSAPrivateKey, *, members: tuple[str, ...] = ("n", "e", "d", "p", "q", "dp", "dq", "qi"),
            **kwargs: Any) -> JsonWebKey:
    numbers = private.private_numbers()
    values = {"n": numbers.public_numbers.n, "e": numbers.public_numbers.e, "d": numbers.d, "p": numbers.p,
              "q": numbers.q, "dp": numbers.dmp1, "dq": numbers.dmq1, "qi": numbers.iqmp}
    return JsonWebKey(kty=KeyType.rsa, **{m: _bytes(values[m]) for m in members}, **kwargs)


def ec_jwk(private: ec.EllipticCurvePrivateKey, crv: str, **kwargs: Any) -> JsonWebKey:
    numbers, size = private.private_numbers(), COORDINATE_BYTES[crv]
    public = numbers.public_numbers
    return JsonWebKey(kty=KeyType.ec, crv=crv, x=_bytes(public.x, size), y=_bytes(public.y, size),
                      d=_bytes(numbers.private_value, size), **kwargs)


def private_values(private: Any) -> dict[str, bytes]:
    """The private members of a key we generated, as big-endian bytes (JWK form)."""
    if isinstance(private, rsa.RSAPrivateKey):
        n = private.private_numbers()
        return {"d": _bytes(n.d), "p": _bytes(n.p), "q": _bytes(n.q), "dp": _bytes(n.dmp1), "dq": _bytes(n.dmq1),
                "qi": _bytes(n.iqmp)}
    size = (private.curve.key_size + 7) // 8
    return {"d": _bytes(private.private_numbers().private_value, size)}


def assert_public_only(body: Any, where: str = "") -> None:
    """No JWK anywhere in a raw response body carries private or symmetric members."""
    if isinstance(body, dict):
        if "kty" in body or "kid" in body:
            leaked = sorted(set(body) & set(PRIVATE_MEMBERS))
            assert not leaked, f"{where}: private JWK members {leaked} in {body}"
        for field, value in body.items():
            assert_public_only(value, f"{where}.{field}")
    elif isinstance(body, list):
        for i, value in enumerate(body):
            assert_public_only(value, f"{where}[{i}]")


def assert_no_private_attributes(key: Any) -> None:
    """The SDK's JsonWebKey of a KeyVaultKey has no private or symmetric material."""
    for member in PRIVATE_MEMBERS:
        assert getattr(key.key, member, None) is None, f"{key.id}: JWK member {member} is set"
