"""SoftwareBackend: round trips, interop with independent `cryptography` code from the public JWK, refusals."""

from __future__ import annotations

import base64
import hashlib
import os

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap, aes_key_wrap

from coffer.crypto.keys import AES_SIZES, CURVES, RSA_SIZES, KeyMaterial, KeyOperationError
from coffer.crypto.software import SoftwareBackend

BACKEND = SoftwareBackend()
RSA_ENC = ("RSA1_5", "RSA-OAEP", "RSA-OAEP-256")
RSA_SIGN = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EC_ALG = {"P-256": "ES256", "P-256K": "ES256K", "P-384": "ES384", "P-521": "ES512"}
EC_CLS = {"P-256": ec.SECP256R1, "P-256K": ec.SECP256K1, "P-384": ec.SECP384R1, "P-521": ec.SECP521R1}
COORD = {"P-256": 32, "P-256K": 32, "P-384": 48, "P-521": 66}
HASH = {"256": hashes.SHA256, "256K": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
AES_MODES = ("GCM", "CBC", "CBCPAD")


def b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64i(value: int) -> str:
    return b64e(value.to_bytes((value.bit_length() + 7) // 8, "big"))


def num(jwk: dict[str, str], name: str) -> int:
    return int.from_bytes(b64d(jwk[name]), "big")


def digest_for(alg: str, data: bytes = b"coffer") -> bytes:
    h = hashes.Hash(HASH[alg[2:]]())
    h.update(data)
    return h.finalize()


def rsa_public(key: KeyMaterial) -> rsa.RSAPublicKey:
    """Rebuilt from the public JWK members only."""
    return rsa.RSAPublicNumbers(num(key.public, "e"), num(key.public, "n")).public_key()


def ec_public(key: KeyMaterial) -> ec.EllipticCurvePublicKey:
    crv = key.public["crv"]
    return ec.EllipticCurvePublicNumbers(num(key.public, "x"), num(key.public, "y"), EC_CLS[crv]()).public_key()


def oaep(alg: str) -> padding.AsymmetricPadding:
    if alg == "RSA1_5":
        return padding.PKCS1v15()
    h = hashes.SHA256() if alg == "RSA-OAEP-256" else hashes.SHA1()
    return padding.OAEP(mgf=padding.MGF1(h), algorithm=h, label=None)


def rsa_sig_padding(alg: str) -> padding.AsymmetricPadding:
    if alg.startswith("RS"):
        return padding.PKCS1v15()
    return padding.PSS(mgf=padding.MGF1(HASH[alg[2:]]()), salt_length=HASH[alg[2:]]().digest_size)


@pytest.fixture(scope="module")
def keys() -> dict[object, KeyMaterial]:
    """Every size and curve generated once (RSA 4096 is slow)."""
    out: dict[object, KeyMaterial] = {}
    for size in RSA_SIZES:
        out["RSA", size] = BACKEND.generate("RSA", size=size)
    for curve in CURVES:
        out["EC", curve] = BACKEND.generate("EC", curve=curve)
    for size in AES_SIZES:
        out["oct", size] = BACKEND.generate("oct", size=size)
    return out


# --- generate ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", RSA_SIZES)
def test_generate_rsa(keys: dict[object, KeyMaterial], size: int) -> None:
    key = keys["RSA", size]
    assert (key.kty, key.size, key.curve, set(key.public)) == ("RSA", size, None, {"n", "e"})
    n = b64d(key.public["n"])
    assert len(n) == size // 8 and n[0] != 0
    assert key.public["e"] == "AQAB"
    private = serialization.load_der_private_key(key.private, None)
    assert isinstance(private, rsa.RSAPrivateKey)
    assert private.public_key().public_numbers().n == int.from_bytes(n, "big")


@pytest.mark.parametrize("curve", CURVES)
def test_generate_ec(keys: dict[object, KeyMaterial], curve: str) -> None:
    key = keys["EC", curve]
    assert (key.kty, key.curve, key.size, key.public["crv"]) == ("EC", curve, None, curve)
    assert len(b64d(key.public["x"])) == len(b64d(key.public["y"])) == COORD[curve]
    private = serialization.load_der_private_key(key.private, None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert private.public_key().public_numbers() == ec_public(key).public_numbers()


@pytest.mark.parametrize("size", AES_SIZES)
def test_generate_oct(keys: dict[object, KeyMaterial], size: int) -> None:
    key = keys["oct", size]
    assert (key.kty, key.size, key.public, len(key.private)) == ("oct", size, {}, size // 8)
    assert BACKEND.generate("oct", size=size).private != key.private


def test_generate_defaults_and_exponent() -> None:
    assert BACKEND.generate("EC").curve == "P-256"
    assert BACKEND.generate("oct").size == 256
    key = BACKEND.generate("RSA", public_exponent=3)
    assert (key.size, key.public["e"]) == (2048, "Aw")


@pytest.mark.parametrize(
    ("kty", "kwargs", "message"),
    [
        ("RSA", {"size": 1024}, "Invalid key size: 1024"),
        ("RSA", {"public_exponent": 5}, "Invalid public exponent"),
        ("EC", {"curve": "P-192"}, "The specified curve is not supported"),
        ("oct", {"size": 512}, "Invalid key size: 512"),
        ("RSA-HSM", {}, "requires an HSM"),
        ("EC-HSM", {}, "requires an HSM"),
        ("oct-HSM", {}, "requires an HSM"),
        ("DSA", {}, "not supported"),
    ],
)
def test_generate_refusals(kty: str, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(KeyOperationError, match=message):
        BACKEND.generate(kty, **kwargs)  # type: ignore[arg-type]


# --- RSA encrypt / wrap -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", RSA_ENC)
@pytest.mark.parametrize("size", RSA_SIZES)
def test_rsa_encrypt_round_trip_and_interop(keys: dict[object, KeyMaterial], size: int, alg: str) -> None:
    key = keys["RSA", size]
    result = BACKEND.encrypt(key, alg, b"attack at dawn")
    assert (len(result.value), result.iv, result.tag) == (size // 8, None, None)
    assert BACKEND.decrypt(key, alg, result.value) == b"attack at dawn"
    # made by independent code from the public JWK only
    foreign = rsa_public(key).encrypt(b"from outside", oaep(alg))
    assert BACKEND.decrypt(key, alg, foreign) == b"from outside"


@pytest.mark.parametrize("alg", RSA_ENC)
@pytest.mark.parametrize("size", RSA_SIZES)
def test_rsa_wrap_round_trip_and_interop(keys: dict[object, KeyMaterial], size: int, alg: str) -> None:
    key, cek = keys["RSA", size], os.urandom(32)
    assert BACKEND.unwrap(key, alg, BACKEND.wrap(key, alg, cek)) == cek
    assert BACKEND.unwrap(key, alg, rsa_public(key).encrypt(cek, oaep(alg))) == cek


@pytest.mark.parametrize("alg", ["RSA-OAEP", "RSA-OAEP-256"])
def test_rsa_decrypt_failures_are_generic(keys: dict[object, KeyMaterial], alg: str) -> None:
    key = keys["RSA", 2048]
    good = BACKEND.encrypt(key, alg, b"x").value
    tampered = bytes([good[0] ^ 1]) + good[1:]
    messages = set()
    for bad in (tampered, good[:-1], b"", os.urandom(256)):
        with pytest.raises(KeyOperationError) as info:
            BACKEND.decrypt(key, alg, bad)
        messages.add(str(info.value))
        with pytest.raises(KeyOperationError):
            BACKEND.unwrap(key, alg, bad)
    assert messages == {"Decryption failed."}


def test_rsa_plaintext_too_long(keys: dict[object, KeyMaterial]) -> None:
    with pytest.raises(KeyOperationError, match="too long"):
        BACKEND.encrypt(keys["RSA", 2048], "RSA-OAEP", b"x" * 256)
    with pytest.raises(KeyOperationError, match="too long"):
        BACKEND.wrap(keys["RSA", 2048], "RSA1_5", b"x" * 256)


# --- RSA sign / verify ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", RSA_SIGN)
@pytest.mark.parametrize("size", RSA_SIZES)
def test_rsa_sign_verify_and_interop(keys: dict[object, KeyMaterial], size: int, alg: str) -> None:
    key, digest = keys["RSA", size], digest_for(alg)
    h = HASH[alg[2:]]()
    signature = BACKEND.sign(key, alg, digest)
    assert len(signature) == size // 8
    assert BACKEND.verify(key, alg, digest, signature)
    # the backend signed the digest (no second hash): independent verification over the data
    rsa_public(key).verify(signature, b"coffer", rsa_sig_padding(alg), h)
    # a signature by independent code verifies in the backend
    private = serialization.load_der_private_key(key.private, None)
    assert isinstance(private, rsa.RSAPrivateKey)
    assert BACKEND.verify(key, alg, digest, private.sign(b"other data", rsa_sig_padding(alg), h)) is False
    assert BACKEND.verify(
        key, alg, digest_for(alg, b"other data"), private.sign(b"other data", rsa_sig_padding(alg), h)
    )
    # tampering
    assert BACKEND.verify(key, alg, digest, bytes([signature[0] ^ 1]) + signature[1:]) is False
    assert BACKEND.verify(key, alg, digest_for(alg, b"not coffer"), signature) is False
    assert BACKEND.verify(key, alg, digest, signature[:-1]) is False


@pytest.mark.parametrize("alg", RSA_SIGN)
def test_rsa_wrong_digest_size(keys: dict[object, KeyMaterial], alg: str) -> None:
    key, digest = keys["RSA", 2048], digest_for(alg)
    for bad in (digest[:-1], digest + b"\0", hashlib.sha1(b"x").digest()):
        with pytest.raises(KeyOperationError, match="digest"):
            BACKEND.sign(key, alg, bad)
        with pytest.raises(KeyOperationError, match="digest"):
            BACKEND.verify(key, alg, bad, b"\0" * 256)


def test_ps256_uses_digest_length_salt(keys: dict[object, KeyMaterial]) -> None:
    key, digest = keys["RSA", 2048], digest_for("PS256")
    signature = BACKEND.sign(key, "PS256", digest)
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    rsa_public(key).verify(signature, digest, pss, utils.Prehashed(hashes.SHA256()))
    other_salt = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=20)
    with pytest.raises(InvalidSignature):
        rsa_public(key).verify(signature, digest, other_salt, utils.Prehashed(hashes.SHA256()))


# --- EC sign / verify -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("curve", CURVES)
def test_ec_sign_verify_and_interop(keys: dict[object, KeyMaterial], curve: str) -> None:
    key, alg, length = keys["EC", curve], EC_ALG[curve], COORD[curve]
    digest, h = digest_for(alg), HASH[alg[2:]]()
    signature = BACKEND.sign(key, alg, digest)
    assert len(signature) == 2 * length  # JOSE raw R || S
    assert BACKEND.verify(key, alg, digest, signature)
    r, s = int.from_bytes(signature[:length], "big"), int.from_bytes(signature[length:], "big")
    ec_public(key).verify(utils.encode_dss_signature(r, s), b"coffer", ec.ECDSA(h))
    # an independent signature, converted to the raw form
    private = serialization.load_der_private_key(key.private, None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    r, s = utils.decode_dss_signature(private.sign(b"coffer", ec.ECDSA(h)))
    assert BACKEND.verify(key, alg, digest, r.to_bytes(length, "big") + s.to_bytes(length, "big"))
    # tampering and malformed signatures are a mere False
    assert BACKEND.verify(key, alg, digest, signature[:-1] + bytes([signature[-1] ^ 1])) is False
    assert BACKEND.verify(key, alg, digest_for(alg, b"else"), signature) is False
    assert BACKEND.verify(key, alg, digest, signature[:-1]) is False
    assert BACKEND.verify(key, alg, digest, b"\0" * (2 * length)) is False
    assert BACKEND.verify(key, alg, digest, b"") is False


@pytest.mark.parametrize("curve", CURVES)
def test_ec_wrong_digest_size_and_curve(keys: dict[object, KeyMaterial], curve: str) -> None:
    key, alg = keys["EC", curve], EC_ALG[curve]
    with pytest.raises(KeyOperationError, match="digest"):
        BACKEND.sign(key, alg, digest_for(alg)[:-1])
    with pytest.raises(KeyOperationError, match="digest"):
        BACKEND.verify(key, alg, digest_for(alg) + b"\0", b"\0" * 2 * COORD[curve])
    for other in set(EC_ALG.values()) - {alg}:
        with pytest.raises(KeyOperationError, match="requires curve"):
            BACKEND.sign(key, other, digest_for(other))
        with pytest.raises(KeyOperationError, match="requires curve"):
            BACKEND.verify(key, other, digest_for(other), b"\0" * 64)


# --- oct encrypt / wrap -----------------------------------------------------------------------------------------------


def independent_aes(mode: str, secret: bytes, iv: bytes, data: bytes, aad: bytes | None = None) -> bytes:
    """Encrypt with cryptography directly; GCM returns ciphertext || tag."""
    if mode == "GCM":
        return AESGCM(secret).encrypt(iv, data, aad)
    if mode == "CBCPAD":
        pad = 16 - len(data) % 16
        data += bytes([pad]) * pad
    encryptor = Cipher(algorithms.AES(secret), modes.CBC(iv)).encryptor()
    return encryptor.update(data) + encryptor.finalize()


@pytest.mark.parametrize("mode", AES_MODES)
@pytest.mark.parametrize("size", AES_SIZES)
def test_aes_round_trip_and_interop(keys: dict[object, KeyMaterial], size: int, mode: str) -> None:
    key, alg = keys["oct", size], f"A{size}{mode}"
    plaintext = b"sixteen byte blk" * 3 if mode == "CBC" else b"any length at all"
    aad = b"header" if mode == "GCM" else None
    result = BACKEND.encrypt(key, alg, plaintext, aad=aad)
    assert result.iv is not None and len(result.iv) == (12 if mode == "GCM" else 16)
    assert (result.tag is not None, result.aad) == (mode == "GCM", aad)
    if mode == "GCM":
        assert result.tag is not None and len(result.tag) == 16
    assert BACKEND.decrypt(key, alg, result.value, iv=result.iv, aad=aad, tag=result.tag) == plaintext
    # same result as independent code (the iv is the only randomness)
    expected = independent_aes(mode, key.private, result.iv, plaintext, aad)
    assert result.value + (result.tag or b"") == expected
    # a caller-chosen iv is used, and a ciphertext made elsewhere decrypts
    iv = os.urandom(len(result.iv))
    assert BACKEND.encrypt(key, alg, plaintext, iv=iv, aad=aad).iv == iv
    foreign = independent_aes(mode, key.private, iv, plaintext, aad)
    if mode == "GCM":
        assert BACKEND.decrypt(key, alg, foreign[:-16], iv=iv, aad=aad, tag=foreign[-16:]) == plaintext
    else:
        assert BACKEND.decrypt(key, alg, foreign, iv=iv) == plaintext


@pytest.mark.parametrize("size", AES_SIZES)
def test_gcm_tampering(keys: dict[object, KeyMaterial], size: int) -> None:
    key, alg = keys["oct", size], f"A{size}GCM"
    r = BACKEND.encrypt(key, alg, b"secret payload", aad=b"bound")
    assert r.iv is not None and r.tag is not None
    flipped_tag = bytes([r.tag[0] ^ 1]) + r.tag[1:]
    flipped_ct = bytes([r.value[0] ^ 1]) + r.value[1:]
    for value, tag, aad in ((r.value, flipped_tag, b"bound"), (flipped_ct, r.tag, b"bound"), (r.value, r.tag, None)):
        with pytest.raises(KeyOperationError, match=r"^Decryption failed\.$"):
            BACKEND.decrypt(key, alg, value, iv=r.iv, aad=aad, tag=tag)
    with pytest.raises(KeyOperationError, match=r"^Decryption failed\.$"):
        BACKEND.decrypt(key, alg, r.value, iv=os.urandom(12), aad=b"bound", tag=r.tag)
    with pytest.raises(KeyOperationError, match="iv and tag"):
        BACKEND.decrypt(key, alg, r.value, iv=r.iv, aad=b"bound")
    with pytest.raises(KeyOperationError, match="iv"):
        BACKEND.encrypt(key, alg, b"x", iv=b"short")


def test_gcm_ivs_are_random(keys: dict[object, KeyMaterial]) -> None:
    key = keys["oct", 256]
    assert BACKEND.encrypt(key, "A256GCM", b"x").iv != BACKEND.encrypt(key, "A256GCM", b"x").iv


@pytest.mark.parametrize("size", AES_SIZES)
def test_cbc_refusals(keys: dict[object, KeyMaterial], size: int) -> None:
    key = keys["oct", size]
    with pytest.raises(KeyOperationError, match="multiple of 16"):
        BACKEND.encrypt(key, f"A{size}CBC", b"not a block")
    with pytest.raises(KeyOperationError, match="iv"):
        BACKEND.encrypt(key, f"A{size}CBC", b"x" * 16, iv=b"short")
    with pytest.raises(KeyOperationError, match="aad"):
        BACKEND.encrypt(key, f"A{size}CBCPAD", b"x", aad=b"nope")
    with pytest.raises(KeyOperationError, match="requires an iv"):
        BACKEND.decrypt(key, f"A{size}CBCPAD", b"x" * 16)
    # a block whose plaintext ends with 0x00 has invalid PKCS#7 padding
    iv = os.urandom(16)
    bad_padding = independent_aes("CBC", key.private, iv, b"\0" * 16)
    for ciphertext in (bad_padding, bad_padding[:-1], b""):
        with pytest.raises(KeyOperationError, match=r"^Decryption failed\.$"):
            BACKEND.decrypt(key, f"A{size}CBCPAD", ciphertext, iv=iv)


@pytest.mark.parametrize("size", AES_SIZES)
def test_aes_key_wrap_round_trip_and_interop(keys: dict[object, KeyMaterial], size: int) -> None:
    key, alg = keys["oct", size], f"A{size}KW"
    for cek in (os.urandom(16), os.urandom(32), os.urandom(24)):
        wrapped = BACKEND.wrap(key, alg, cek)
        assert len(wrapped) == len(cek) + 8
        assert aes_key_unwrap(key.private, wrapped) == cek
        assert BACKEND.unwrap(key, alg, aes_key_wrap(key.private, cek)) == cek
    with pytest.raises(KeyOperationError, match=r"^Unwrap failed\.$"):
        BACKEND.unwrap(key, alg, bytes([wrapped[0] ^ 1]) + wrapped[1:])
    with pytest.raises(KeyOperationError, match=r"^Unwrap failed\.$"):
        BACKEND.unwrap(key, alg, wrapped[:-1])
    with pytest.raises(KeyOperationError, match="multiples of 8"):
        BACKEND.wrap(key, alg, b"x" * 20)


@pytest.mark.parametrize(
    ("kek", "data", "wrapped"),
    [  # RFC 3394 §4.1 and §4.3
        (
            "000102030405060708090A0B0C0D0E0F",
            "00112233445566778899AABBCCDDEEFF",
            "1FA68B0A8112B447AEF34BD8FB5A7B829D3E862371D2CFE5",
        ),
        (
            "000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F",
            "00112233445566778899AABBCCDDEEFF",
            "64E8C3F9CE0F5BA263E9777905818A2A93C8191E7D6E8AE7",
        ),
    ],
)
def test_aes_key_wrap_known_answer(kek: str, data: str, wrapped: str) -> None:
    key = BACKEND.import_jwk({"kty": "oct", "k": b64e(bytes.fromhex(kek))})
    alg = f"A{key.size}KW"
    assert BACKEND.wrap(key, alg, bytes.fromhex(data)) == bytes.fromhex(wrapped)
    assert BACKEND.unwrap(key, alg, bytes.fromhex(wrapped)) == bytes.fromhex(data)


@pytest.mark.parametrize("size", AES_SIZES)
def test_aes_key_size_must_match_algorithm(keys: dict[object, KeyMaterial], size: int) -> None:
    key = keys["oct", size]
    for other in set(AES_SIZES) - {size}:
        for mode in AES_MODES:
            with pytest.raises(KeyOperationError, match=f"requires a {other}-bit key"):
                BACKEND.encrypt(key, f"A{other}{mode}", b"x" * 16)
            with pytest.raises(KeyOperationError, match=f"requires a {other}-bit key"):
                BACKEND.decrypt(key, f"A{other}{mode}", b"x" * 16, iv=b"i" * 16, tag=b"t" * 16)
        with pytest.raises(KeyOperationError, match=f"requires a {other}-bit key"):
            BACKEND.wrap(key, f"A{other}KW", b"x" * 16)
        with pytest.raises(KeyOperationError, match=f"requires a {other}-bit key"):
            BACKEND.unwrap(key, f"A{other}KW", b"x" * 24)


# --- algorithm / key type refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "op", "alg"),
    [
        (("RSA", 2048), "sign", "ES256"),
        (("RSA", 2048), "encrypt", "A128GCM"),
        (("RSA", 2048), "wrap", "A128KW"),
        (("RSA", 2048), "sign", "HS256"),
        (("EC", "P-256"), "encrypt", "RSA-OAEP"),
        (("EC", "P-256"), "wrap", "RSA-OAEP"),
        (("EC", "P-256"), "sign", "RS256"),
        (("oct", 128), "sign", "RS256"),
        (("oct", 128), "encrypt", "RSA-OAEP"),
        (("oct", 128), "wrap", "A128GCM"),
        (("oct", 128), "encrypt", "A128KW"),
        (("RSA", 2048), "encrypt", "bogus"),
    ],
)
def test_algorithm_not_for_key_type(
    keys: dict[object, KeyMaterial], family: tuple[str, object], op: str, alg: str
) -> None:
    key = keys[family]
    calls = {
        "sign": [lambda: BACKEND.sign(key, alg, b"\0" * 32), lambda: BACKEND.verify(key, alg, b"\0" * 32, b"s")],
        "encrypt": [lambda: BACKEND.encrypt(key, alg, b"x" * 16), lambda: BACKEND.decrypt(key, alg, b"x" * 16)],
        "wrap": [lambda: BACKEND.wrap(key, alg, b"x" * 16), lambda: BACKEND.unwrap(key, alg, b"x" * 24)],
    }[op]
    for call in calls:
        with pytest.raises(KeyOperationError, match=f"Algorithm {alg} is not supported for key type {family[0]}"):
            call()


def test_unused_parameters_refused(keys: dict[object, KeyMaterial]) -> None:
    with pytest.raises(KeyOperationError, match="'iv'"):
        BACKEND.encrypt(keys["RSA", 2048], "RSA-OAEP", b"x", iv=b"i" * 16)
    with pytest.raises(KeyOperationError, match="'tag'"):
        BACKEND.decrypt(keys["RSA", 2048], "RSA-OAEP", b"x", tag=b"t" * 16)


@pytest.mark.parametrize("kty", ["RSA-HSM", "EC-HSM", "oct-HSM"])
def test_hsm_keys_refused(kty: str) -> None:
    key = KeyMaterial(kty=kty, private=b"token-object-ref")
    with pytest.raises(KeyOperationError, match="requires an HSM"):
        BACKEND.sign(key, "RS256", b"\0" * 32)
    with pytest.raises(KeyOperationError, match="requires an HSM"):
        BACKEND.import_jwk({"kty": kty, "k": b64e(b"k" * 16)})


def test_destroy_is_a_no_op(keys: dict[object, KeyMaterial]) -> None:
    key = keys["oct", 128]
    assert BACKEND.destroy(key) is None
    result = BACKEND.encrypt(key, "A128CBCPAD", b"still usable")
    assert BACKEND.decrypt(key, "A128CBCPAD", result.value, iv=result.iv) == b"still usable"


# --- import_jwk -------------------------------------------------------------------------------------------------------


def rsa_jwk(private: rsa.RSAPrivateKey, members: str = "n e d p q dp dq qi") -> dict[str, str]:
    nums = private.private_numbers()
    values = {
        "n": nums.public_numbers.n,
        "e": nums.public_numbers.e,
        "d": nums.d,
        "p": nums.p,
        "q": nums.q,
        "dp": nums.dmp1,
        "dq": nums.dmq1,
        "qi": nums.iqmp,
    }
    return {"kty": "RSA", **{m: b64i(values[m]) for m in members.split()}}


@pytest.fixture(scope="module")
def foreign_rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.mark.parametrize("members", ["n e d p q dp dq qi", "n e d p q", "n e d p q qi", "n e d"])
def test_import_rsa(foreign_rsa: rsa.RSAPrivateKey, members: str) -> None:
    key = BACKEND.import_jwk(rsa_jwk(foreign_rsa, members) | {"kid": "ignored", "key_ops": "ignored"})
    assert (key.kty, key.size) == ("RSA", 2048)
    assert num(key.public, "n") == foreign_rsa.public_key().public_numbers().n
    imported = serialization.load_der_private_key(key.private, None)
    assert isinstance(imported, rsa.RSAPrivateKey)
    assert imported.private_numbers() == foreign_rsa.private_numbers()
    digest = digest_for("PS384")
    signature = BACKEND.sign(key, "PS384", digest)
    foreign_rsa.public_key().verify(signature, b"coffer", rsa_sig_padding("PS384"), hashes.SHA384())
    assert BACKEND.verify(key, "PS384", digest, signature)


def test_import_rsa_refusals(foreign_rsa: rsa.RSAPrivateKey) -> None:
    jwk = rsa_jwk(foreign_rsa)
    secret_parts = {jwk[m] for m in ("d", "p", "q", "dp", "dq", "qi")}
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cases = [
        (jwk | {"d": rsa_jwk(other)["d"]}, "Invalid RSA key"),
        (jwk | {"q": rsa_jwk(other)["q"]}, "Invalid RSA key"),
        (jwk | {"qi": b64i(12345)}, "Invalid RSA key"),
        ({"kty": "RSA", "n": jwk["n"], "e": jwk["e"]}, "missing private material"),
        ({"kty": "RSA", "d": jwk["d"], "p": jwk["p"], "q": jwk["q"]}, "needs members n and e"),
        (jwk | {"d": "not*base64"}, "'d' is not base64url"),
        (rsa_jwk(rsa.generate_private_key(public_exponent=65537, key_size=1024)), "Invalid key size: 1024"),
    ]
    for bad, message in cases:
        with pytest.raises(KeyOperationError, match=message) as info:
            BACKEND.import_jwk(bad)
        assert not any(part in str(info.value) for part in secret_parts)


@pytest.mark.parametrize("curve", CURVES)
def test_import_ec(curve: str) -> None:
    private = ec.generate_private_key(EC_CLS[curve]())
    nums, length = private.private_numbers(), COORD[curve]
    jwk = {
        "kty": "EC",
        "crv": curve,
        "x": b64e(nums.public_numbers.x.to_bytes(length, "big")),
        "y": b64e(nums.public_numbers.y.to_bytes(length, "big")),
        "d": b64e(nums.private_value.to_bytes(length, "big")),
    }
    key = BACKEND.import_jwk(jwk)
    assert (key.kty, key.curve, key.public) == ("EC", curve, {m: jwk[m] for m in ("crv", "x", "y")})
    alg = EC_ALG[curve]
    signature = BACKEND.sign(key, alg, digest_for(alg))
    r, s = int.from_bytes(signature[:length], "big"), int.from_bytes(signature[length:], "big")
    private.public_key().verify(utils.encode_dss_signature(r, s), b"coffer", ec.ECDSA(HASH[alg[2:]]()))
    # a different private value for the same public point is refused; so is a point off the curve
    with pytest.raises(KeyOperationError, match="Invalid EC key"):
        BACKEND.import_jwk(jwk | {"d": b64i(nums.private_value ^ 2)})
    with pytest.raises(KeyOperationError, match="Invalid EC key"):
        BACKEND.import_jwk(jwk | {"y": b64i(nums.public_numbers.y ^ 1)})
    with pytest.raises(KeyOperationError, match="missing private material"):
        BACKEND.import_jwk({m: jwk[m] for m in ("kty", "crv", "x", "y")})


def test_import_ec_curve_names() -> None:
    nums = ec.generate_private_key(ec.SECP256K1()).private_numbers()
    jwk = {
        "kty": "EC",
        "x": b64i(nums.public_numbers.x),
        "y": b64i(nums.public_numbers.y),
        "d": b64i(nums.private_value),
    }
    assert BACKEND.import_jwk(jwk | {"crv": "SECP256K1"}).curve == "P-256K"
    for crv in ("P-192", "secp256k1", None):
        with pytest.raises(KeyOperationError, match="The specified curve is not supported"):
            BACKEND.import_jwk(jwk if crv is None else jwk | {"crv": crv})


@pytest.mark.parametrize("size", AES_SIZES)
def test_import_oct(size: int) -> None:
    secret = os.urandom(size // 8)
    key = BACKEND.import_jwk({"kty": "oct", "k": b64e(secret)})
    assert (key.kty, key.size, key.public, key.private) == ("oct", size, {}, secret)
    wrapped = BACKEND.wrap(key, f"A{size}KW", b"k" * 16)
    assert aes_key_unwrap(secret, wrapped) == b"k" * 16


@pytest.mark.parametrize(
    ("jwk", "message"),
    [
        ({"kty": "oct", "k": b64e(b"x" * 20)}, "Invalid key size: 160"),
        ({"kty": "oct"}, "missing private material"),
        ({"kty": "oct", "k": "a"}, "not base64url"),
        ({"kty": "oct", "k": "abc+/"}, "not base64url"),
        ({"kty": "XYZ", "k": "abcd"}, "key type is not supported"),
        ({"k": "abcd"}, "key type is not supported"),
        ({"kty": ["oct"], "k": "abcd"}, "key type is not supported"),
        ({"kty": "EC", "crv": ["P-256"], "x": "AQ", "y": "AQ", "d": "AQ"}, "curve is not supported"),
        ({"kty": "oct", "k": 1234}, "not base64url"),
        ({"kty": "oct", "k": "Q==="}, "not base64url"),
    ],
)
def test_import_refusals(jwk: dict[str, str], message: str) -> None:
    with pytest.raises(KeyOperationError, match=message):
        BACKEND.import_jwk(jwk)


def test_parsed_private_keys_are_cached_until_the_server_seals() -> None:
    from unittest import mock

    from coffer.crypto import software

    backend = software.SoftwareBackend()
    key = backend.generate("EC", curve="P-256")
    digest = bytes(32)
    real = software.serialization.load_der_private_key
    with mock.patch.object(software.serialization, "load_der_private_key", side_effect=real) as parse:
        backend.forget()
        backend.sign(key, "ES256", digest)
        backend.sign(key, "ES256", digest)
        assert parse.call_count == 1
        backend.forget()  # sealed: parsed keys are dropped
        backend.sign(key, "ES256", digest)
        assert parse.call_count == 2
