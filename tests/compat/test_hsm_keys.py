"""HSM keys through the real Azure SDK: `coffer server --dev` brings its own SoftHSM2 token ("coffer-dev", in
DATA/softhsm) and makes its `dev` vault premium, so RSA-HSM, EC-HSM and oct-HSM keys work out of the box.

Every size and curve, every algorithm Azure defines for the type, through `KeyClient` and `CryptographyClient`
(ManagedIdentityCredential): signatures verified with `cryptography` from the public JWK, ciphertexts made locally
from the public JWK decrypted by Coffer. A second CryptographyClient, of a principal that may use keys but not read
them, makes the SDK send *every* operation to Coffer (with the key in hand it does RSA encrypt/wrap and verify
locally, and oct CBCPAD/KW with a random key of its own, since Key Vault never returns `k`).

Then, with the server stopped: the token itself reports each key's private or secret object as always sensitive and
never extractable, and refuses to give its value (so no process, Coffer included, ever had those bytes); the database
holds only `pkcs11:<id>` references for HSM keys (the sealed payloads, opened with the dev unseal key, are just that;
the clear columns hold only public JWK members); and no RSA prime (which any encoding of an RSA private key contains)
is found in any file of the data directory outside DATA/softhsm, raw or in base64/hex runs. (The token directory is
not scanned: SoftHSM keeps its objects there, encrypted under the PIN that sits beside them, dev only.) A standard
vault refuses HSM key types; purging an HSM key removes its objects from the token.

CI installs softhsm2; elsewhere the module skips with the reason.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError
from azure.identity import ClientSecretCredential
from azure.keyvault.keys import KeyClient, KeyVaultKey
from azure.keyvault.keys.crypto import (
    CryptographyClient,
    EncryptionAlgorithm,
    KeyWrapAlgorithm,
    SignatureAlgorithm,
)
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from coffer.barrier import Barrier, VaultView
from coffer.devhsm import TOKEN_LABEL, find_module
from tests.e2e.helpers import credential, identity_env, release_connections, run_cli
from tests.support.server import DevServer
from tests.support.softhsm import missing_reason

pytestmark = pytest.mark.skipif(missing_reason() is not None, reason=missing_reason() or "")

RSA_SIZES = (2048, 3072, 4096)
EC_CURVES = {"P-256": ("ES256", ec.SECP256R1()), "P-256K": ("ES256K", ec.SECP256K1()),
             "P-384": ("ES384", ec.SECP384R1()), "P-521": ("ES512", ec.SECP521R1())}
OCT_SIZES = (128, 192, 256)
RSA_ENCRYPTION = ("RSA1_5", "RSA-OAEP", "RSA-OAEP-256")  # also the RSA key-wrap algorithms
RSA_SIGNATURE = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
HASHES = {"256": hashes.SHA256, "256K": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
REFERENCE_PREFIX = b"pkcs11:"
CRYPTO_DATA_ACTIONS = tuple(f"Microsoft.KeyVault/vaults/keys/{op}/action"
                            for op in ("encrypt", "decrypt", "wrap", "unwrap", "sign", "verify"))
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
PUBLIC_MEMBERS = {"RSA": {"n", "e"}, "EC": {"crv", "x", "y"}, "oct": set()}

KEYS = [("RSA-HSM", size) for size in RSA_SIZES] + [("EC-HSM", curve) for curve in EC_CURVES] + [
    ("oct-HSM", size) for size in OCT_SIZES]


def label(kty: str, param: object) -> str:
    return f"{kty.lower()}-{str(param).lower()}"


# --- the server, its clients and keys ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    """A dev server of its own (the last test stops and restarts it to look at its data directory)."""
    running = DevServer(tmp_path_factory.mktemp("hsm") / "data").start()
    yield running
    release_connections()
    running.stop()


@pytest.fixture(scope="module")
def mi(server: DevServer) -> Iterator[Any]:
    with identity_env(server):
        managed = credential(server)
        yield managed
        managed.close()


@pytest.fixture(scope="module")
def key_client(server: DevServer, mi: Any) -> Iterator[KeyClient]:
    with KeyClient(server.vault_url, mi, connection_verify=server.ca) as client:
        yield client


@pytest.fixture(scope="module")
def crypto_only(server: DevServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClientSecretCredential]:
    """A principal holding only the six key-operation data actions: its `get_key` is refused, so its
    CryptographyClient(key_id) does every operation in Coffer."""
    cwd = tmp_path_factory.mktemp("crypto-only")
    env = server.client_env()
    created = run_cli("identity", "principal", "create", "hsm-crypto-only", env=env, cwd=cwd).stdout
    row = next(line for line in created.splitlines() if "hsm-crypto-only" in line and "│" in line)
    client_id = re.findall(UUID, row)[1]
    added = run_cli("identity", "secret", "add", client_id, env=env, cwd=cwd).stdout
    secret = re.search(r"^Client secret: (\S+)$", added, re.M)
    assert secret, added
    actions = [arg for action in CRYPTO_DATA_ACTIONS for arg in ("--data-action", action)]
    run_cli("role", "definition", "create", "--name", "HSM key operations only", *actions, env=env, cwd=cwd)
    run_cli("role", "assignment", "create", "--role", "HSM key operations only", "--assignee", client_id, "--scope",
            "/", env=env, cwd=cwd)
    cred = ClientSecretCredential(env["COFFER_TENANT_ID"], client_id, secret.group(1), authority=server.authority,
                                  disable_instance_discovery=True, connection_verify=server.ca)
    yield cred
    cred.close()


@pytest.fixture(scope="module")
def keys(key_client: KeyClient) -> dict[str, KeyVaultKey]:
    """One key of every HSM type and size/curve (RSA 4096 takes a few seconds in SoftHSM)."""
    made: dict[str, KeyVaultKey] = {}
    for kty, param in KEYS:
        name = label(kty, param)
        if kty == "RSA-HSM":
            made[name] = key_client.create_rsa_key(name, size=int(str(param)), hardware_protected=True)
        elif kty == "EC-HSM":
            made[name] = key_client.create_ec_key(name, curve=str(param), hardware_protected=True)
        else:
            made[name] = key_client.create_oct_key(name, size=int(str(param)), hardware_protected=True)
    return made


def clients(server: DevServer, key: KeyVaultKey, mi: Any,
            crypto_only: ClientSecretCredential) -> tuple[CryptographyClient, CryptographyClient]:
    """(the SDK's usual client, with the key in hand; a client that sends every operation to Coffer)."""
    return (CryptographyClient(key, mi, connection_verify=server.ca),
            CryptographyClient(key.id, crypto_only, connection_verify=server.ca))


# --- local cryptography from the public JWK ----------------------------------------------------------------------


def _int(value: bytes) -> int:
    return int.from_bytes(value, "big")


def rsa_public(key: KeyVaultKey) -> rsa.RSAPublicKey:
    return rsa.RSAPublicNumbers(_int(key.key.e), _int(key.key.n)).public_key()


def ec_public(key: KeyVaultKey) -> ec.EllipticCurvePublicKey:
    curve = EC_CURVES[str(getattr(key.key.crv, "value", key.key.crv))][1]
    return ec.EllipticCurvePublicNumbers(_int(key.key.x), _int(key.key.y), curve).public_key()


def rsa_padding(alg: str) -> padding.AsymmetricPadding:
    if alg == "RSA1_5":
        return padding.PKCS1v15()
    h = hashes.SHA256() if alg == "RSA-OAEP-256" else hashes.SHA1()
    return padding.OAEP(mgf=padding.MGF1(h), algorithm=h, label=None)


def digest_for(alg: str) -> tuple[hashes.HashAlgorithm, bytes]:
    algorithm = HASHES[alg[2:]]()
    h = hashes.Hash(algorithm)
    h.update(os.urandom(100))
    return algorithm, h.finalize()


def verify_locally(key: KeyVaultKey, alg: str, digest: bytes, signature: bytes) -> None:
    """Raises InvalidSignature unless `signature` verifies with the public JWK."""
    algorithm = HASHES[alg[2:]]()
    if alg.startswith("ES"):
        half = len(signature) // 2  # JWS: r || s
        der = utils.encode_dss_signature(_int(signature[:half]), _int(signature[half:]))
        ec_public(key).verify(der, digest, ec.ECDSA(utils.Prehashed(algorithm)))
        return
    pad = padding.PKCS1v15() if alg.startswith("RS") else padding.PSS(
        mgf=padding.MGF1(algorithm), salt_length=algorithm.digest_size)
    rsa_public(key).verify(signature, digest, pad, utils.Prehashed(algorithm))


def tampered(data: bytes) -> bytes:
    return bytes([data[0] ^ 1]) + data[1:]


def refused(call: Callable[[], object]) -> HttpResponseError:
    with pytest.raises(HttpResponseError) as info:
        call()
    assert info.value.status_code == 400, str(info.value)
    return info.value


# --- the dev server's HSM ----------------------------------------------------------------------------------------


def test_dev_server_brings_a_softhsm_token_and_a_premium_vault(server: DevServer, tmp_path: Path) -> None:
    output = "".join(server.output)
    assert "HSM: SoftHSM2 token coffer-dev (development only)" in output, output
    softhsm = server.data_dir / "softhsm"
    assert f"directories.tokendir = {(softhsm / 'tokens').resolve()}" in (softhsm / "softhsm2.conf").read_text()
    assert (softhsm / "pin").stat().st_mode & 0o777 == 0o600
    assert len((softhsm / "pin").read_text().strip()) >= 16
    assert any((softhsm / "tokens").iterdir()), "the token directory is empty"
    shown = run_cli("vault", "show", "dev", env=server.client_env(), cwd=tmp_path).stdout
    assert "premium" in shown, shown


# --- RSA-HSM -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", RSA_SIZES)
def test_rsa_hsm(server: DevServer, keys: dict[str, KeyVaultKey], mi: Any, crypto_only: ClientSecretCredential,
                 size: int) -> None:
    key = keys[label("RSA-HSM", size)]
    assert key.key_type == "RSA-HSM" and len(key.key.n) * 8 == size and key.key.e == b"\x01\x00\x01"
    assert key.key.d is None and key.key.p is None and key.key.q is None
    assert sorted(key.key_operations) == sorted(["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"])
    public = rsa_public(key)
    sdk, remote = clients(server, key, mi, crypto_only)
    with sdk, remote:
        for alg in RSA_ENCRYPTION:
            plaintext = os.urandom(32)
            # made locally from the public JWK, decrypted (and unwrapped) in the token
            local = public.encrypt(plaintext, rsa_padding(alg))
            for client in (sdk, remote):
                assert client.decrypt(EncryptionAlgorithm(alg), local).plaintext == plaintext
                assert client.unwrap_key(KeyWrapAlgorithm(alg), local).key == plaintext
            # Coffer encrypts and wraps (with the public key), the token decrypts and unwraps
            encrypted = remote.encrypt(EncryptionAlgorithm(alg), plaintext)
            assert encrypted.key_id == key.id and len(encrypted.ciphertext) == size // 8
            assert sdk.decrypt(EncryptionAlgorithm(alg), encrypted.ciphertext).plaintext == plaintext
            wrapped = remote.wrap_key(KeyWrapAlgorithm(alg), plaintext)
            assert remote.unwrap_key(KeyWrapAlgorithm(alg), wrapped.encrypted_key).key == plaintext
            # and the SDK's own local encryption of the public key
            assert remote.decrypt(EncryptionAlgorithm(alg), sdk.encrypt(EncryptionAlgorithm(alg),
                                                                        plaintext).ciphertext).plaintext == plaintext
            refused(lambda alg=alg: remote.decrypt(EncryptionAlgorithm(alg), tampered(local)))
        for alg in RSA_SIGNATURE:
            _, digest = digest_for(alg)
            signature = sdk.sign(SignatureAlgorithm(alg), digest).signature  # in the token
            assert len(signature) == size // 8
            verify_locally(key, alg, digest, signature)
            assert remote.verify(SignatureAlgorithm(alg), digest, signature).is_valid is True
            assert sdk.verify(SignatureAlgorithm(alg), digest, signature).is_valid is True
            assert remote.verify(SignatureAlgorithm(alg), digest, tampered(signature)).is_valid is False
            signature = remote.sign(SignatureAlgorithm(alg), digest).signature
            verify_locally(key, alg, digest, signature)
            with pytest.raises(InvalidSignature):
                verify_locally(key, alg, tampered(digest), signature)
    release_connections()


# --- EC-HSM --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("curve", list(EC_CURVES))
def test_ec_hsm(server: DevServer, keys: dict[str, KeyVaultKey], mi: Any, crypto_only: ClientSecretCredential,
                curve: str) -> None:
    key = keys[label("EC-HSM", curve)]
    alg, _ = EC_CURVES[curve]
    assert key.key_type == "EC-HSM" and str(getattr(key.key.crv, "value", key.key.crv)) == curve
    assert key.key.d is None and sorted(key.key_operations) == ["sign", "verify"]
    ec_public(key)  # on the curve
    sdk, remote = clients(server, key, mi, crypto_only)
    with sdk, remote:
        for client in (sdk, remote):
            _, digest = digest_for(alg)
            signature = client.sign(SignatureAlgorithm(alg), digest).signature
            assert len(signature) == 2 * len(key.key.x)
            verify_locally(key, alg, digest, signature)
            assert remote.verify(SignatureAlgorithm(alg), digest, signature).is_valid is True
            assert sdk.verify(SignatureAlgorithm(alg), digest, signature).is_valid is True
            assert remote.verify(SignatureAlgorithm(alg), tampered(digest), signature).is_valid is False
        # a signature made locally by another key does not verify; the other curves' algorithms are refused
        other = ec.generate_private_key(EC_CURVES[curve][1])
        _, digest = digest_for(alg)
        r, s = utils.decode_dss_signature(other.sign(digest, ec.ECDSA(utils.Prehashed(HASHES[alg[2:]]()))))
        length = len(key.key.x)
        assert remote.verify(SignatureAlgorithm(alg), digest,
                             r.to_bytes(length, "big") + s.to_bytes(length, "big")).is_valid is False
        wrong = next(a for c, (a, _) in EC_CURVES.items() if c != curve and a != alg)
        refused(lambda: remote.sign(SignatureAlgorithm(wrong), digest_for(wrong)[1]))
    release_connections()


# --- oct-HSM -------------------------------------------------------------------------------------------------------


def ecb_block(remote: CryptographyClient, size: int, block: bytes) -> bytes:
    """AES_k(block) with the token's key: A*CBC of one block with a zero IV."""
    return bytes(remote.encrypt(EncryptionAlgorithm(f"A{size}CBC"), block, iv=bytes(16)).ciphertext)


@pytest.mark.parametrize("size", OCT_SIZES)
def test_oct_hsm(server: DevServer, keys: dict[str, KeyVaultKey], mi: Any, crypto_only: ClientSecretCredential,
                 size: int) -> None:
    key = keys[label("oct-HSM", size)]
    assert key.key_type == "oct-HSM" and key.key.k is None
    assert sorted(key.key_operations) == sorted(["encrypt", "decrypt", "wrapKey", "unwrapKey"])
    sdk, remote = clients(server, key, mi, crypto_only)
    with sdk, remote:
        gcm, cbc, cbcpad = (EncryptionAlgorithm(f"A{size}{mode}") for mode in ("GCM", "CBC", "CBCPAD"))
        # GCM, with and without additional data; the SDK sends GCM to Key Vault either way
        for aad in (None, b"header"):
            plaintext = os.urandom(45)
            sealed = remote.encrypt(gcm, plaintext, additional_authenticated_data=aad)
            assert len(sealed.iv) == 12 and len(sealed.tag) == 16
            assert len(sealed.ciphertext) == len(plaintext)
            for client in (sdk, remote):
                assert client.decrypt(gcm, sealed.ciphertext, iv=sealed.iv, authentication_tag=sealed.tag,
                                      additional_authenticated_data=aad).plaintext == plaintext
            refused(lambda s=sealed, a=aad: remote.decrypt(gcm, s.ciphertext, iv=s.iv,
                                                           authentication_tag=tampered(s.tag),
                                                           additional_authenticated_data=a))
            # really AES-GCM: the first block is the plaintext XOR AES_k(iv || 00000002)
            keystream = ecb_block(remote, size, sealed.iv + (2).to_bytes(4, "big"))
            assert bytes(a ^ b for a, b in zip(sealed.ciphertext[:16], keystream, strict=True)) == plaintext[:16]
        # CBC (whole blocks) and CBCPAD
        iv = os.urandom(16)
        blocks = os.urandom(48)
        plain_cbc = remote.encrypt(cbc, blocks, iv=iv)
        padded = remote.encrypt(cbcpad, blocks, iv=iv)
        assert plain_cbc.iv == iv and len(plain_cbc.ciphertext) == 48 and len(padded.ciphertext) == 64
        assert padded.ciphertext[:48] == plain_cbc.ciphertext  # PKCS#7 adds one block of padding
        # really AES-CBC: the first block is AES_k(P1 XOR iv)
        assert plain_cbc.ciphertext[:16] == ecb_block(remote, size, bytes(a ^ b for a, b in zip(blocks, iv)))
        assert sdk.decrypt(cbc, plain_cbc.ciphertext, iv=iv).plaintext == blocks  # the SDK sends CBC to Coffer
        assert remote.decrypt(cbcpad, padded.ciphertext, iv=iv).plaintext == blocks
        odd = os.urandom(21)
        assert remote.decrypt(cbcpad, remote.encrypt(cbcpad, odd, iv=iv).ciphertext, iv=iv).plaintext == odd
        refused(lambda: remote.encrypt(cbc, odd, iv=iv))  # CBC without padding takes whole blocks only
        # KW (RFC 3394): 8 bytes longer, unwraps to the key, a changed byte fails the integrity check
        kw = KeyWrapAlgorithm(f"A{size}KW")
        for length in (16, 24, 32, 64):
            secret = os.urandom(length)
            wrapped = remote.wrap_key(kw, secret).encrypted_key
            assert len(wrapped) == length + 8
            assert remote.unwrap_key(kw, wrapped).key == secret
            refused(lambda w=wrapped: remote.unwrap_key(kw, tampered(w)))
        # another size's algorithms are refused
        other = next(s for s in OCT_SIZES if s != size)
        refused(lambda: remote.encrypt(EncryptionAlgorithm(f"A{other}GCM"), b"x"))
    release_connections()


# --- a standard vault ----------------------------------------------------------------------------------------------


def test_a_standard_vault_refuses_hsm_keys(server: DevServer, mi: Any, tmp_path: Path) -> None:
    run_cli("vault", "create", "std", "--sku", "standard", env=server.client_env(), cwd=tmp_path)
    with KeyClient(f"https://std.localhost:{server.port}", mi, connection_verify=server.ca) as client:
        for call in (lambda: client.create_rsa_key("refused", size=2048, hardware_protected=True),
                     lambda: client.create_ec_key("refused", curve="P-256", hardware_protected=True),
                     lambda: client.create_key("refused", "RSA-HSM")):
            assert "Hardware key operation not allowed on standard vault" in refused(call).message
        assert client.create_rsa_key("software", size=2048).key_type == "RSA"  # software keys are fine
    release_connections()


# --- where the keys are: the token, not the database ---------------------------------------------------------------

INSPECT_TOKEN = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import pkcs11
    from pkcs11 import Attribute, ObjectClass
    from coffer.crypto.keys import KeyMaterial
    from coffer.crypto.pkcs11 import Pkcs11Backend

    module, label, pin_file = sys.argv[1:4]
    backend = Pkcs11Backend(module, label, pin_file=Path(pin_file))
    report = {}
    for name, (kty, reference) in json.load(sys.stdin).items():
        key = KeyMaterial(kty=kty, private=reference.encode())
        found = backend.exists(key)
        report[name] = {"exists": found, **(backend.describe(key) if found else {})}
        if found:  # ask for the secret itself: the token must refuse
            secret = Attribute.VALUE if kty != "RSA-HSM" else Attribute.PRIVATE_EXPONENT
            object_class = ObjectClass.SECRET_KEY if kty == "oct-HSM" else ObjectClass.PRIVATE_KEY
            with backend._session() as session:
                obj = session.get_key(object_class=object_class, id=bytes.fromhex(reference[7:]))
                try:
                    obj[secret]
                    report[name]["revealed"] = True
                except pkcs11.exceptions.AttributeSensitive:
                    report[name]["revealed"] = False
    backend.close()
    print(json.dumps(report))
""")


def inspect_token(server: DevServer, references: dict[str, tuple[str, str]]) -> dict[str, dict[str, Any]]:
    """The token's view of the keys, from a process of its own: SoftHSM reads SOFTHSM2_CONF once per process, and
    this test process may use another SoftHSM configuration already (tests/support/softhsm.py)."""
    module = find_module()
    assert module is not None
    softhsm = server.data_dir / "softhsm"
    result = subprocess.run(
        [sys.executable, "-c", INSPECT_TOKEN, module, TOKEN_LABEL, str(softhsm / "pin")],
        input=json.dumps(references), env={**os.environ, "SOFTHSM2_CONF": str((softhsm / "softhsm2.conf").resolve())},
        capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def stored_key_versions(server: DevServer) -> dict[str, list[tuple[str, bytes, dict[str, Any]]]]:
    """Every key version of every vault (deleted keys too), opened with the dev unseal key as Coffer would:
    {key name: [(kty, the sealed payload opened, the clear columns)]}. The server must be stopped."""
    storage = server.open_storage()  # SQLite or PostgreSQL, as the server
    try:
        barrier = Barrier(storage)
        barrier.unseal_with_key(bytes.fromhex((server.data_dir / "dev-unseal.key").read_text().strip()))
        found: dict[str, list[tuple[str, bytes, dict[str, Any]]]] = {}
        with storage.read() as tx:
            for vault_row in tx.vault_list():
                view = VaultView(tx, barrier, vault_row)
                for deleted in (False, True):
                    for obj in view.object_list("key", deleted=deleted, after=None, limit=1000):
                        for row in view.version_list("key", obj.name, after_seq=None, limit=1000):
                            opened = view.open("key", row.name, row.version, "key", row.payload)
                            found.setdefault(f"{vault_row.name}/{obj.name}", []).append(
                                (str(row.extra["kty"]), opened, dict(row.extra)))
        return found
    finally:
        storage.close()


def windows_dividing(data: bytes, moduli: dict[int, list[int]]) -> list[int]:
    """Offsets of byte windows that are a prime factor of one of `moduli` ({window length: [n, ...]}). RSA primes
    have their top bit set and are odd: other windows are skipped without arithmetic."""
    hits = []
    for length, values in moduli.items():
        for offset in range(len(data) - length + 1):
            if data[offset] < 0x80 or not data[offset + length - 1] & 1:
                continue
            candidate = int.from_bytes(data[offset : offset + length], "big")
            if any(n % candidate == 0 for n in values):
                hits.append(offset)
    return hits


_BASE64_RUN = re.compile(rb"[A-Za-z0-9+/_-]{40,}")
_HEX_RUN = re.compile(rb"(?:[0-9a-fA-F]{2}){32,}")


def decoded_runs(data: bytes) -> Iterator[bytes]:
    """Long base64/base64url and hex runs of `data`, decoded: the text forms a key could take (JWK, PEM, logs)."""
    for match in _BASE64_RUN.finditer(data):
        run = match.group().replace(b"-", b"+").replace(b"_", b"/")
        for start in range(4):  # the encoded value may begin anywhere in the run
            part = run[start:]
            part = part[: len(part) - 1] if len(part) % 4 == 1 else part
            yield base64.b64decode(part + b"=" * (-len(part) % 4))
    for match in _HEX_RUN.finditer(data):
        yield bytes.fromhex(match.group().decode())


def test_key_material_stays_in_the_token(server: DevServer, key_client: KeyClient, keys: dict[str, KeyVaultKey],
                                         mi: Any) -> None:
    # keys to purge later; deleted now, so that the stopped server's database holds them too
    doomed = {"purge-rsa": key_client.create_rsa_key("purge-rsa", size=2048, hardware_protected=True),
              "purge-ec": key_client.create_ec_key("purge-ec", curve="P-384", hardware_protected=True),
              "purge-oct": key_client.create_oct_key("purge-oct", size=256, hardware_protected=True)}
    for name in doomed:
        key_client.begin_delete_key(name).wait()
    release_connections()
    assert server.stop() == 0

    # the database: for HSM keys nothing but the reference, even inside the sealed payload
    stored = stored_key_versions(server)
    references: dict[str, tuple[str, str]] = {}
    for name in [*keys, *doomed]:
        (kty, opened, extra), = stored[f"dev/{name}"]
        assert opened.startswith(REFERENCE_PREFIX) and len(opened) == len(REFERENCE_PREFIX) + 32, opened
        bytes.fromhex(opened[len(REFERENCE_PREFIX):].decode())
        assert extra["hsm"] is True and kty.endswith("-HSM")
        assert set(extra["public"]) == PUBLIC_MEMBERS[kty.removesuffix("-HSM")], extra
        references[name] = (kty, opened.decode())
    assert len({ref for _, ref in references.values()}) == len(references)

    # the token: every private or secret object sensitive, never extractable, generated there; it will not tell
    report = inspect_token(server, references)
    for name, (kty, reference) in references.items():
        described = report[name]
        assert described["exists"] is True, name
        assert described["token"] is True and described["private"] is True, described
        assert described["sensitive"] is True and described["always_sensitive"] is True, described
        assert described["extractable"] is False and described["never_extractable"] is True, described
        assert described["local"] is True, described
        assert described["label"] == "coffer-" + reference[len("pkcs11:"):]
        assert described["objects"] == (1 if kty == "oct-HSM" else 2)
        assert described["revealed"] is False

    # the data directory outside the token directory (and on PostgreSQL the database's files): no RSA prime (so no
    # private key in any binary encoding)
    token_dir = server.data_dir / "softhsm"
    scanned = [path for path in server.stored_files() if token_dir not in path.parents]
    assert scanned and all("softhsm" not in path.parts for path in scanned)
    moduli: dict[int, list[int]] = {}
    for key in [*keys.values(), *doomed.values()]:
        if key.key_type == "RSA-HSM":
            moduli.setdefault(len(key.key.n) // 2, []).append(_int(key.key.n))
    for path in scanned:
        data = path.read_bytes()
        for form in (data, *decoded_runs(data)):
            assert not windows_dividing(form, moduli), f"an RSA prime in {path}"

    # a restart uses the same token (the keys still work); purge takes the token objects along
    server.restart()
    assert "HSM: SoftHSM2 token coffer-dev (development only)" in "".join(server.output)
    kept = keys[label("EC-HSM", "P-256")]
    with CryptographyClient(kept, mi, connection_verify=server.ca) as crypto:
        _, digest = digest_for("ES256")
        verify_locally(kept, "ES256", digest, crypto.sign(SignatureAlgorithm.es256, digest).signature)
    with KeyClient(server.vault_url, mi, connection_verify=server.ca) as client:
        for name in doomed:
            client.purge_deleted_key(name)
    release_connections()
    assert server.stop() == 0
    report = inspect_token(server, references)
    for name in references:
        assert report[name]["exists"] is (name not in doomed), name
