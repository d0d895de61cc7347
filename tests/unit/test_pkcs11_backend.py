"""The PKCS#11 KeyBackend against a real SoftHSM2 token: every HSM key type, size/curve and algorithm; results checked
with `cryptography` from the public JWK; the token's own view of the keys (sensitive, never extractable); sessions
from many threads; and what an unreachable token, module or wrong PIN looks like."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import padding as block_padding
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap, aes_key_wrap
from tests.support.softhsm import SoftHsmToken, missing_reason, shared_token

from coffer.config import from_environment
from coffer.crypto.keys import CURVE_OF_ALGORITHM, KeyBackendUnavailable, KeyMaterial, KeyOperationError
from coffer.crypto.pkcs11 import Pkcs11Backend, Pkcs11KeyNotFound

pytestmark = pytest.mark.skipif(missing_reason() is not None, reason=missing_reason() or "")

HASHES = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512(), "256K": hashes.SHA256()}
DIGEST = {"256": 32, "384": 48, "512": 64, "256K": 32}
CURVES = {"P-256": ec.SECP256R1(), "P-256K": ec.SECP256K1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}
ALG_OF_CURVE = {curve: alg for alg, curve in CURVE_OF_ALGORITHM.items()}
RSA_ENCRYPTION = ("RSA1_5", "RSA-OAEP", "RSA-OAEP-256")
RSA_SIGNING = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
REFERENCE = re.compile(rb"pkcs11:[0-9a-f]{32}")


def b64d(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def rsa_public(key: KeyMaterial) -> rsa.RSAPublicKey:
    n, e = (int.from_bytes(b64d(key.public[m]), "big") for m in ("n", "e"))
    return rsa.RSAPublicNumbers(e, n).public_key()


def ec_public(key: KeyMaterial) -> ec.EllipticCurvePublicKey:
    assert key.curve is not None
    x, y = (int.from_bytes(b64d(key.public[m]), "big") for m in ("x", "y"))
    return ec.EllipticCurvePublicNumbers(x, y, CURVES[key.curve]).public_key()  # raises if not on the curve


def rsa_padding(alg: str) -> padding.AsymmetricPadding:
    if alg == "RSA1_5":
        return padding.PKCS1v15()
    h = hashes.SHA256() if alg == "RSA-OAEP-256" else hashes.SHA1()
    return padding.OAEP(mgf=padding.MGF1(h), algorithm=h, label=None)


@pytest.fixture(scope="module")
def token() -> SoftHsmToken:
    return shared_token()


@pytest.fixture(scope="module")
def backend(token: SoftHsmToken) -> Iterator[Pkcs11Backend]:
    b = Pkcs11Backend(token.module, token.label, token.pin)
    yield b
    for key in _keys.values():
        b.destroy(key)
    _keys.clear()
    b.close()


_keys: dict[tuple[str, object], KeyMaterial] = {}


def key_for(backend: Pkcs11Backend, kty: str, param: object) -> KeyMaterial:
    """One key per type and size/curve for the whole module (RSA 4096 takes seconds in SoftHSM)."""
    if (kty, param) not in _keys:
        if kty == "EC-HSM":
            _keys[(kty, param)] = backend.generate(kty, curve=str(param))
        else:
            _keys[(kty, param)] = backend.generate(kty, size=int(str(param)))
    return _keys[(kty, param)]


ALL_KEYS = [("RSA-HSM", s) for s in (2048, 3072, 4096)] + [("EC-HSM", c) for c in CURVES] + [
    ("oct-HSM", s) for s in (128, 192, 256)
]


# --- generation and protection ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("kty", "param"), ALL_KEYS, ids=[f"{k}-{p}" for k, p in ALL_KEYS])
def test_generated_in_the_token_sensitive_and_never_extractable(backend: Pkcs11Backend, kty: str,
                                                               param: object) -> None:
    key = key_for(backend, kty, param)
    assert key.kty == kty
    # the "private" part is a reference into the token: no key material
    assert REFERENCE.fullmatch(key.private), key.private
    described = backend.describe(key)
    assert described["token"] is True and described["private"] is True
    assert described["sensitive"] is True and described["always_sensitive"] is True
    assert described["extractable"] is False and described["never_extractable"] is True
    assert described["local"] is True  # generated in the token, not imported
    assert described["label"] == "coffer-" + key.private.decode()[len("pkcs11:"):]
    assert described["objects"] == (1 if kty == "oct-HSM" else 2)
    if kty == "RSA-HSM":
        assert key.size == param
        assert rsa_public(key).key_size == param
        assert key.public["e"] == "AQAB" and set(key.public) == {"n", "e"}
    elif kty == "EC-HSM":
        assert key.curve == param and key.public["crv"] == param
        ec_public(key)
        length = (CURVES[str(param)].key_size + 7) // 8
        assert len(b64d(key.public["x"])) == len(b64d(key.public["y"])) == length
    else:
        assert key.size == param and key.public == {}


@pytest.mark.parametrize(("kty", "param"), [("RSA-HSM", 2048), ("EC-HSM", "P-256"), ("oct-HSM", 256)])
def test_the_token_refuses_to_reveal_the_key(backend: Pkcs11Backend, kty: str, param: object) -> None:
    import pkcs11
    from pkcs11 import Attribute, ObjectClass

    key = key_for(backend, kty, param)
    secret_attribute = {"RSA-HSM": Attribute.PRIVATE_EXPONENT, "EC-HSM": Attribute.VALUE, "oct-HSM": Attribute.VALUE}
    object_class = ObjectClass.SECRET_KEY if kty == "oct-HSM" else ObjectClass.PRIVATE_KEY
    with backend._session() as session:
        obj = session.get_key(object_class=object_class, id=bytes.fromhex(key.private.decode()[7:]))
        with pytest.raises(pkcs11.exceptions.AttributeSensitive):
            obj[secret_attribute[kty]]
        # not even wrapped out of the token, by another key of the token
        wrapping = session.generate_key(pkcs11.KeyType.AES, 256, store=False)
        with pytest.raises(pkcs11.exceptions.PKCS11Error):
            wrapping.wrap_key(obj)
        wrapping.destroy()


def test_public_exponent_3(backend: Pkcs11Backend) -> None:
    key = backend.generate("RSA-HSM", size=2048, public_exponent=3)
    try:
        assert key.public["e"] == "Aw"
        digest = os.urandom(32)
        signature = backend.sign(key, "PS256", digest)
        rsa_public(key).verify(signature, digest, padding.PSS(padding.MGF1(hashes.SHA256()), 32),
                               utils.Prehashed(hashes.SHA256()))
    finally:
        backend.destroy(key)


@pytest.mark.parametrize(("kty", "kwargs", "message"), [
    ("RSA-HSM", {"size": 1024}, "Invalid key size"),
    ("RSA-HSM", {"size": 2048, "public_exponent": 17}, "Invalid public exponent"),
    ("EC-HSM", {"curve": "P-192"}, "curve is not supported"),
    ("oct-HSM", {"size": 512}, "Invalid key size"),
    ("RSA", {"size": 2048}, "not an HSM key type"),
])
def test_generate_refuses_what_key_vault_does_not_offer(backend: Pkcs11Backend, kty: str, kwargs: dict[str, object],
                                                       message: str) -> None:
    with pytest.raises(KeyOperationError, match=message):
        backend.generate(kty, **kwargs)  # type: ignore[arg-type]


def test_import_is_not_supported(backend: Pkcs11Backend) -> None:
    with pytest.raises(KeyOperationError, match="Importing keys into the HSM is not supported"):
        backend.import_jwk({"kty": "oct-HSM", "k": "AAAAAAAAAAAAAAAAAAAAAA"})


def test_default_sizes(backend: Pkcs11Backend) -> None:
    ec_key = backend.generate("EC-HSM")
    oct_key = backend.generate("oct-HSM")
    try:
        assert ec_key.curve == "P-256" and oct_key.size == 256
    finally:
        backend.destroy(ec_key)
        backend.destroy(oct_key)


# --- RSA ----------------------------------------------------------------------------------------------------------


RSA_SIZES = [2048, 3072, 4096]


@pytest.mark.parametrize("size", RSA_SIZES)
@pytest.mark.parametrize("alg", RSA_ENCRYPTION)
def test_rsa_decrypts_in_the_token_what_the_public_key_encrypted(backend: Pkcs11Backend, size: int, alg: str) -> None:
    key = key_for(backend, "RSA-HSM", size)
    plaintext = os.urandom(32)
    ciphertext = rsa_public(key).encrypt(plaintext, rsa_padding(alg))
    assert backend.decrypt(key, alg, ciphertext) == plaintext
    # the backend's own encrypt (done with the public key) round-trips too
    assert backend.decrypt(key, alg, backend.encrypt(key, alg, b"hello").value) == b"hello"
    # wrapKey/unwrapKey: the same operations on key bytes
    wrapped = rsa_public(key).encrypt(plaintext, rsa_padding(alg))
    assert backend.unwrap(key, alg, wrapped) == plaintext
    assert backend.unwrap(key, alg, backend.wrap(key, alg, plaintext)) == plaintext


@pytest.mark.parametrize("alg", RSA_ENCRYPTION)
def test_rsa_bad_ciphertext_fails_alike(backend: Pkcs11Backend, alg: str) -> None:
    key = key_for(backend, "RSA-HSM", 2048)
    ciphertext = bytearray(rsa_public(key).encrypt(b"secret", rsa_padding(alg)))
    ciphertext[-1] ^= 1
    with pytest.raises(KeyOperationError, match=r"^Decryption failed\.$"):
        backend.decrypt(key, alg, bytes(ciphertext))
    with pytest.raises(KeyOperationError, match=r"^Unwrap failed\.$"):
        backend.unwrap(key, alg, bytes(ciphertext))
    with pytest.raises(KeyOperationError, match=r"^Decryption failed\.$"):
        backend.decrypt(key, alg, b"short")
    # a ciphertext made for another key
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    with pytest.raises(KeyOperationError):
        backend.decrypt(key, alg, other.encrypt(b"secret", rsa_padding(alg)))


def test_rsa_oaep_256_decoding_rejects_every_malformed_block(backend: Pkcs11Backend) -> None:
    """Where the token lacks OAEP-SHA-256 the padding is checked here: blocks that are valid RSA but not OAEP-SHA-256
    (PKCS#1 v1.5, OAEP-SHA-1, OAEP with a label) are refused."""
    key = key_for(backend, "RSA-HSM", 2048)
    public = rsa_public(key)
    for wrong in (padding.PKCS1v15(), rsa_padding("RSA-OAEP"),
                  padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=b"label")):
        with pytest.raises(KeyOperationError, match=r"^Decryption failed\.$"):
            backend.decrypt(key, "RSA-OAEP-256", public.encrypt(b"secret", wrong))
    for message in (b"", b"x", os.urandom(190)):  # 190 = the longest for 2048 bits
        ciphertext = public.encrypt(message, rsa_padding("RSA-OAEP-256"))
        assert backend.decrypt(key, "RSA-OAEP-256", ciphertext) == message


@pytest.mark.parametrize("size", RSA_SIZES)
@pytest.mark.parametrize("alg", RSA_SIGNING)
def test_rsa_signatures_verify_with_the_public_jwk(backend: Pkcs11Backend, size: int, alg: str) -> None:
    key = key_for(backend, "RSA-HSM", size)
    h = HASHES[alg[2:]]
    digest = os.urandom(DIGEST[alg[2:]])
    signature = backend.sign(key, alg, digest)
    assert len(signature) == size // 8
    pad = padding.PKCS1v15() if alg.startswith("RS") else padding.PSS(padding.MGF1(h), h.digest_size)
    rsa_public(key).verify(signature, digest, pad, utils.Prehashed(h))
    assert backend.verify(key, alg, digest, signature) is True
    assert backend.verify(key, alg, bytes(len(digest)), signature) is False
    if alg.startswith("RS"):  # deterministic: the same as a software signature of the same digest would be
        assert backend.sign(key, alg, digest) == signature


def test_rsa_refusals(backend: Pkcs11Backend) -> None:
    key = key_for(backend, "RSA-HSM", 2048)
    with pytest.raises(KeyOperationError, match="digest length"):
        backend.sign(key, "RS256", os.urandom(48))
    with pytest.raises(KeyOperationError, match="not supported for key type RSA-HSM"):
        backend.sign(key, "ES256", os.urandom(32))
    with pytest.raises(KeyOperationError, match="not supported for key type RSA-HSM"):
        backend.encrypt(key, "A256GCM", b"x")
    with pytest.raises(KeyOperationError, match="iv"):
        backend.decrypt(key, "RSA-OAEP", b"x" * 256, iv=b"1" * 16)
    with pytest.raises(KeyOperationError, match="too long"):
        backend.encrypt(key, "RSA-OAEP-256", b"x" * 300)


# --- EC -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("curve", list(CURVES))
def test_ecdsa_signatures_verify_with_the_public_jwk(backend: Pkcs11Backend, curve: str) -> None:
    key = key_for(backend, "EC-HSM", curve)
    alg = ALG_OF_CURVE[curve]
    h = HASHES[alg[2:]]
    length = (CURVES[curve].key_size + 7) // 8
    for _ in range(3):
        digest = os.urandom(DIGEST[alg[2:]])
        signature = backend.sign(key, alg, digest)
        assert len(signature) == 2 * length  # raw r || s, as JWS wants
        r, s = int.from_bytes(signature[:length], "big"), int.from_bytes(signature[length:], "big")
        ec_public(key).verify(utils.encode_dss_signature(r, s), digest, ec.ECDSA(utils.Prehashed(h)))
        assert backend.verify(key, alg, digest, signature) is True
        assert backend.verify(key, alg, os.urandom(len(digest)), signature) is False
    # and a signature made elsewhere with another key does not verify
    other = ec.generate_private_key(CURVES[curve])
    der = other.sign(digest, ec.ECDSA(utils.Prehashed(h)))
    r, s = utils.decode_dss_signature(der)
    assert backend.verify(key, alg, digest, r.to_bytes(length, "big") + s.to_bytes(length, "big")) is False


def test_ec_refusals(backend: Pkcs11Backend) -> None:
    key = key_for(backend, "EC-HSM", "P-256")
    with pytest.raises(KeyOperationError, match="requires curve P-384"):
        backend.sign(key, "ES384", os.urandom(48))
    with pytest.raises(KeyOperationError, match="digest length"):
        backend.sign(key, "ES256", os.urandom(20))
    with pytest.raises(KeyOperationError, match="not supported for key type EC-HSM"):
        backend.encrypt(key, "RSA-OAEP", b"x")
    with pytest.raises(KeyOperationError, match="not supported for key type EC-HSM"):
        backend.wrap(key, "A256KW", b"x" * 16)


# --- AES ----------------------------------------------------------------------------------------------------------


AES_SIZES = [128, 192, 256]


@pytest.mark.parametrize("size", AES_SIZES)
def test_aes_round_trips(backend: Pkcs11Backend, size: int) -> None:
    key = key_for(backend, "oct-HSM", size)
    for mode in ("GCM", "CBC", "CBCPAD"):
        alg = f"A{size}{mode}"
        plaintext = os.urandom(64) if mode == "CBC" else b"not a multiple of sixteen"
        aad = b"header" if mode == "GCM" else None
        result = backend.encrypt(key, alg, plaintext, aad=aad)
        assert result.iv is not None and len(result.iv) == (12 if mode == "GCM" else 16)
        assert (result.tag is not None) == (mode == "GCM")
        assert result.value != plaintext
        assert backend.decrypt(key, alg, result.value, iv=result.iv, tag=result.tag, aad=aad) == plaintext
    wrapped = backend.wrap(key, f"A{size}KW", b"k" * 32)
    assert len(wrapped) == 40
    assert backend.unwrap(key, f"A{size}KW", wrapped) == b"k" * 32


@pytest.mark.parametrize("size", AES_SIZES)
def test_aes_failures(backend: Pkcs11Backend, size: int) -> None:
    key = key_for(backend, "oct-HSM", size)
    sealed = backend.encrypt(key, f"A{size}GCM", b"payload", aad=b"aad")
    assert sealed.tag is not None and sealed.iv is not None
    bad_tag = bytes([sealed.tag[0] ^ 1]) + sealed.tag[1:]
    for kwargs in ({"tag": bad_tag, "aad": b"aad"}, {"tag": sealed.tag, "aad": b"other"}, {"tag": sealed.tag}):
        with pytest.raises(KeyOperationError, match=r"^Decryption failed\.$"):
            backend.decrypt(key, f"A{size}GCM", sealed.value, iv=sealed.iv, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(KeyOperationError, match="requires iv and tag"):
        backend.decrypt(key, f"A{size}GCM", sealed.value)
    with pytest.raises(KeyOperationError, match="multiple of 16"):
        backend.encrypt(key, f"A{size}CBC", b"abc")
    cbcpad = backend.encrypt(key, f"A{size}CBCPAD", b"abc")
    with pytest.raises(KeyOperationError, match=r"^Decryption failed\.$"):
        backend.decrypt(key, f"A{size}CBCPAD", cbcpad.value[:-1], iv=cbcpad.iv)
    with pytest.raises(KeyOperationError, match="at least 16 bytes, in multiples of 8"):
        backend.wrap(key, f"A{size}KW", b"k" * 20)
    wrapped = bytearray(backend.wrap(key, f"A{size}KW", b"k" * 16))
    wrapped[3] ^= 1
    with pytest.raises(KeyOperationError, match=r"^Unwrap failed\.$"):
        backend.unwrap(key, f"A{size}KW", bytes(wrapped))
    other = 256 if size != 256 else 128
    with pytest.raises(KeyOperationError, match=f"requires a {other}-bit key"):
        backend.encrypt(key, f"A{other}GCM", b"x")
    with pytest.raises(KeyOperationError, match="not supported for key type oct-HSM"):
        backend.sign(key, "RS256", os.urandom(32))


@pytest.fixture()
def known_aes_key(backend: Pkcs11Backend) -> Iterator[tuple[KeyMaterial, bytes]]:
    """An AES key of known value put into the token (as the backend never does): to compare with `cryptography`."""
    from pkcs11 import Attribute, KeyType, ObjectClass

    value = os.urandom(32)
    key_id = os.urandom(16)
    with backend._session() as session:
        session.create_object({
            Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.AES, Attribute.TOKEN: True,
            Attribute.PRIVATE: True, Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False, Attribute.VALUE: value,
            Attribute.ID: key_id, Attribute.LABEL: "coffer-test-known", Attribute.ENCRYPT: True,
            Attribute.DECRYPT: True, Attribute.WRAP: True, Attribute.UNWRAP: True,
        })
    key = KeyMaterial(kty="oct-HSM", private=b"pkcs11:" + key_id.hex().encode(), size=256)
    yield key, value
    backend.destroy(key)


def test_aes_matches_the_standard_algorithms(backend: Pkcs11Backend, known_aes_key: tuple[KeyMaterial, bytes]) -> None:
    """The token's GCM, CBC, CBC-PAD and key wrap (RFC 3394) give exactly what `cryptography` gives."""
    key, value = known_aes_key
    iv12, iv16 = os.urandom(12), os.urandom(16)
    plaintext = os.urandom(40)

    gcm = backend.encrypt(key, "A256GCM", plaintext, iv=iv12, aad=b"aad")
    assert gcm.value + (gcm.tag or b"") == AESGCM(value).encrypt(iv12, plaintext, b"aad")
    local = AESGCM(value).encrypt(iv12, b"from software", None)
    assert backend.decrypt(key, "A256GCM", local[:-16], iv=iv12, tag=local[-16:]) == b"from software"

    cbc = backend.encrypt(key, "A256CBC", plaintext[:32], iv=iv16)
    encryptor = Cipher(algorithms.AES(value), modes.CBC(iv16)).encryptor()
    assert cbc.value == encryptor.update(plaintext[:32]) + encryptor.finalize()

    padder = block_padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(value), modes.CBC(iv16)).encryptor()
    expected = encryptor.update(padded) + encryptor.finalize()
    assert backend.encrypt(key, "A256CBCPAD", plaintext, iv=iv16).value == expected
    assert backend.decrypt(key, "A256CBCPAD", expected, iv=iv16) == plaintext

    for length in (16, 24, 32, 64):
        material = os.urandom(length)
        assert backend.wrap(key, "A256KW", material) == aes_key_wrap(value, material)
        assert backend.unwrap(key, "A256KW", aes_key_wrap(value, material)) == material
        assert aes_key_unwrap(value, backend.wrap(key, "A256KW", material)) == material


# --- destroy, references, availability ------------------------------------------------------------------------------


@pytest.mark.parametrize("kty", ["RSA-HSM", "EC-HSM", "oct-HSM"])
def test_destroy_removes_the_token_objects(backend: Pkcs11Backend, kty: str) -> None:
    key = backend.generate(kty)
    assert backend.exists(key)
    backend.destroy(key)
    assert not backend.exists(key)
    with pytest.raises(Pkcs11KeyNotFound, match="holds no object for this key"):
        backend.describe(key)
    with pytest.raises(KeyBackendUnavailable):
        if kty == "oct-HSM":
            backend.encrypt(key, "A256GCM", b"x")
        else:
            backend.sign(key, "RS256" if kty == "RSA-HSM" else "ES256", os.urandom(32))
    backend.destroy(key)  # again: nothing left to do


def test_a_software_key_is_not_an_hsm_key(backend: Pkcs11Backend) -> None:
    with pytest.raises(KeyOperationError, match="not an HSM key"):
        backend.sign(KeyMaterial(kty="RSA", private=b"0\x82..."), "RS256", os.urandom(32))
    with pytest.raises(KeyOperationError, match="not an HSM key"):
        backend.destroy(KeyMaterial(kty="oct-HSM", private=b"raw key bytes", size=256))


def test_many_threads_and_two_backends_on_one_token(token: SoftHsmToken, backend: Pkcs11Backend) -> None:
    """Worker threads call the backend at once (the calls into the module are serialised; SoftHSM crashes
    otherwise); a second backend in the process shares the token's login."""
    small = Pkcs11Backend(token.module, token.label, token.pin)
    rsa_key = key_for(backend, "RSA-HSM", 2048)
    ec_key = key_for(backend, "EC-HSM", "P-256")
    aes_key = key_for(backend, "oct-HSM", 256)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(15):
                digest = os.urandom(32)
                assert small.verify(ec_key, "ES256", digest, small.sign(ec_key, "ES256", digest))
                assert small.verify(rsa_key, "PS256", digest, small.sign(rsa_key, "PS256", digest))
                sealed = small.encrypt(aes_key, "A256GCM", digest)
                assert small.decrypt(aes_key, "A256GCM", sealed.value, iv=sealed.iv, tag=sealed.tag) == digest
                assert small.decrypt(rsa_key, "RSA-OAEP", small.encrypt(rsa_key, "RSA-OAEP", digest).value) == digest
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    small.close()
    # closing one backend (it logs out) does not break another on the same token: it logs in again
    digest = os.urandom(32)
    assert backend.verify(ec_key, "ES256", digest, backend.sign(ec_key, "ES256", digest))


def test_unknown_token_and_module_are_unavailable(token: SoftHsmToken) -> None:
    missing = Pkcs11Backend(token.module, "no-such-token", token.pin)
    with pytest.raises(KeyBackendUnavailable, match="No PKCS#11 token labelled 'no-such-token'") as caught:
        missing.generate("oct-HSM")
    assert token.pin not in str(caught.value)
    assert missing.last_error is not None and not missing.connected
    bad_module = Pkcs11Backend("/nonexistent/libpkcs11.so", token.label, token.pin)
    with pytest.raises(KeyBackendUnavailable, match=re.escape("Cannot load the PKCS#11 module /nonexistent/lib")):
        bad_module.check()
    unreadable = Pkcs11Backend(token.module, token.label, pin_file=Path("/nonexistent/pin"))
    with pytest.raises(KeyBackendUnavailable, match="Cannot read the PKCS#11 PIN file"):
        unreadable.check()


def test_wrong_pin_is_reported_without_the_pin_and_never_retried(tmp_path: Path) -> None:
    """In a process of its own: this process is logged in to the shared token already."""
    other = SoftHsmToken.create(tmp_path / "hsm")
    script = textwrap.dedent(f"""
        from coffer.crypto.keys import KeyBackendUnavailable
        from coffer.crypto.pkcs11 import Pkcs11Backend
        backend = Pkcs11Backend({other.module!r}, {other.label!r}, "wrong-pin-7301")
        for attempt in range(2):
            try:
                backend.generate("oct-HSM")
            except KeyBackendUnavailable as exc:
                print(attempt, exc)
        good = Pkcs11Backend({other.module!r}, {other.label!r}, {other.pin!r})
        print("good", good.generate("oct-HSM").kty)
    """)
    result = subprocess.run([sys.executable, "-c", script], env={**os.environ, **other.env}, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"0 The PKCS#11 token '{other.label}' rejected the PIN (PinIncorrect)"), lines
    assert lines[1].startswith("1 The PKCS#11 token") and "not tried again" in lines[1], lines
    assert "wrong-pin-7301" not in result.stdout + result.stderr
    assert lines[2] == "good oct-HSM"


# --- configuration --------------------------------------------------------------------------------------------------


def test_configuration_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("COFFER_PKCS11_MODULE", "COFFER_PKCS11_TOKEN", "COFFER_PKCS11_PIN", "COFFER_PKCS11_PIN_FILE"):
        monkeypatch.delenv(name, raising=False)
    assert from_environment().pkcs11_module is None
    monkeypatch.setenv("COFFER_PKCS11_MODULE", "/usr/lib/softhsm/libsofthsm2.so")
    with pytest.raises(ValueError, match="COFFER_PKCS11_TOKEN"):
        from_environment()
    monkeypatch.setenv("COFFER_PKCS11_TOKEN", "coffer")
    with pytest.raises(ValueError, match="exactly one of COFFER_PKCS11_PIN_FILE and COFFER_PKCS11_PIN"):
        from_environment()
    monkeypatch.setenv("COFFER_PKCS11_PIN", "s3cret-pin")
    config = from_environment()
    assert (config.pkcs11_module, config.pkcs11_token, config.pkcs11_pin) == (
        Path("/usr/lib/softhsm/libsofthsm2.so"), "coffer", "s3cret-pin")
    assert "s3cret-pin" not in repr(config)
    monkeypatch.setenv("COFFER_PKCS11_PIN_FILE", str(tmp_path / "pin"))
    with pytest.raises(ValueError, match="exactly one"):
        from_environment()
    monkeypatch.delenv("COFFER_PKCS11_PIN")
    config = from_environment()
    assert config.pkcs11_pin_file == tmp_path / "pin" and config.pkcs11_pin is None


def test_pin_from_a_file(token: SoftHsmToken, tmp_path: Path) -> None:
    pin_file = tmp_path / "pin"
    pin_file.write_text(token.pin + "\n")
    pin_file.chmod(0o600)
    backend = Pkcs11Backend(token.module, token.label, pin_file=pin_file)
    key = backend.generate("oct-HSM", size=128)
    assert backend.exists(key)
    backend.destroy(key)
