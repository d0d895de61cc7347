"""The unmodified asynchronous `azure.keyvault.keys.aio.KeyClient` and `crypto.aio.CryptographyClient` (aiohttp
transport) with `azure.identity.aio` credentials against a real Coffer dev server: the main flows of
test_keys_sync.py.

Plain test functions that run their coroutine with `asyncio.run` (no pytest plugin); the dev CA is passed as
`connection_verify` (aiohttp ignores REQUESTS_CA_BUNDLE; SSL_CERT_FILE is exercised by the published async samples).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.identity.aio import ClientSecretCredential, ManagedIdentityCredential
from azure.keyvault.keys import (
    DeletedKey,
    JsonWebKey,
    KeyRotationLifetimeAction,
    KeyRotationPolicy,
    KeyRotationPolicyAction,
    KeyType,
    KeyVaultKey,
)
from azure.keyvault.keys.aio import KeyClient
from azure.keyvault.keys.crypto import EncryptionAlgorithm, KeyWrapAlgorithm, SignatureAlgorithm
from azure.keyvault.keys.crypto.aio import CryptographyClient
from cryptography.hazmat.primitives import keywrap
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tests.compat.conftest import CryptoOnlyApp
from tests.compat.helpers import check_error, unique, whole_seconds
from tests.compat.key_helpers import (
    CURVES,
    DEFAULT_OPS,
    EC_CURVES,
    EC_SIGNATURE,
    HSM_REFUSED,
    OCT_SIZES,
    RSA_ENCRYPTION,
    RSA_SIGNATURE,
    assert_no_private_attributes,
    digest_for,
    ec_jwk,
    encrypt_locally,
    rsa_jwk,
    rsa_padding,
    sign_with,
    verify_locally,
)
from tests.support.server import DevServer

pytestmark = pytest.mark.usefixtures("identity_env")
NINETY_DAYS = dt.timedelta(days=90)


@contextlib.asynccontextmanager
async def mi_client(server: DevServer) -> AsyncIterator[KeyClient]:
    credential = ManagedIdentityCredential(connection_verify=server.ca)
    async with credential, KeyClient(server.vault_url, credential, connection_verify=server.ca) as client:
        yield client


@contextlib.asynccontextmanager
async def crypto_clients(server: DevServer, app: CryptoOnlyApp) -> AsyncIterator[
        tuple[Callable[[Any], CryptographyClient], Callable[[Any], CryptographyClient]]]:
    """(remote, local) factories of aio CryptographyClients: `remote` for the crypto_only principal (it cannot read
    keys, so every operation runs in Coffer), `local` for the dev identity (public-key operations stay local)."""
    admin = ManagedIdentityCredential(connection_verify=server.ca)
    crypto_only = ClientSecretCredential(app.tenant_id, app.client_id, app.secret, authority=server.authority,
                                         disable_instance_discovery=True, connection_verify=server.ca)
    opened: list[CryptographyClient] = []

    def factory(credential: Any) -> Callable[[Any], CryptographyClient]:
        def make(key: KeyVaultKey | str) -> CryptographyClient:
            target = key.id if credential is crypto_only and isinstance(key, KeyVaultKey) else key
            client = CryptographyClient(target, credential, connection_verify=server.ca)
            opened.append(client)
            return client
        return make

    async with admin, crypto_only:
        try:
            yield factory(crypto_only), factory(admin)
        finally:
            for client in opened:
                await client.close()


async def expect_error(call: Callable[[], Awaitable[Any]], status: int, code: str, *, inner: str | None = None,
                       exc_type: type[HttpResponseError] = HttpResponseError) -> HttpResponseError:
    with pytest.raises(HttpResponseError) as info:
        await call()
    return check_error(info.value, status, code, inner=inner, exc_type=exc_type)


async def not_found(call: Callable[[], Awaitable[Any]]) -> HttpResponseError:
    return await expect_error(call, 404, "KeyNotFound", exc_type=ResourceNotFoundError)


async def bad(call: Callable[[], Awaitable[Any]]) -> HttpResponseError:
    return await expect_error(call, 400, "BadParameter")


async def pages_of(paged: Any) -> list[tuple[list[Any], str | None]]:
    pages = []
    iterator = paged.by_page()
    async for page in iterator:
        pages.append(([item async for item in page], iterator.continuation_token))
    return pages


async def collect(paged: Any) -> list[Any]:
    return [item async for item in paged]


# --- lifecycle -----------------------------------------------------------------------------------------

def test_create_get_list_update(dev_server: DevServer) -> None:
    async def main() -> None:
        async with mi_client(dev_server) as client:
            rsa_key = await client.create_rsa_key(unique("arsa"), size=3072, tags={"a": "1"})
            assert rsa_key.key_type == KeyType.rsa and len(rsa_key.key.n) == 384
            assert rsa_key.key.kid == rsa_key.id and rsa_key.key_operations == DEFAULT_OPS["RSA"]
            for crv in EC_CURVES:
                ec_key = await client.create_ec_key(unique("aec"), curve=crv)
                assert ec_key.key.crv == crv and ec_key.key_operations == DEFAULT_OPS["EC"]
            for size in OCT_SIZES:
                oct_key = await client.create_oct_key(unique("aoct"), size=size)
                assert oct_key.key_type == KeyType.oct and oct_key.key.k is None
            for key in (rsa_key, ec_key, oct_key):
                assert_no_private_attributes(key)
                assert_no_private_attributes(await client.get_key(key.name))

            name = rsa_key.name
            second = await client.create_rsa_key(name, size=2048)
            assert (await client.get_key(name)).id == second.id
            assert (await client.get_key(name, "")).id == second.id  # trailing slash = latest (C4)
            older = await client.get_key(name, rsa_key.properties.version)
            assert older.key.n == rsa_key.key.n and older.properties.tags == {"a": "1"}

            prefix = unique("apg")
            names = {f"{prefix}-{i}" for i in range(5)}
            for each in names:
                await client.create_ec_key(each)
            pages = await pages_of(client.list_properties_of_keys(max_page_size=3))
            assert all(len(items) == 3 for items, _ in pages[:-1]) and pages[-1][1] is None
            assert all(link and "maxresults=3" in link for _, link in pages[:-1])
            listed = [p.name for items, _ in pages for p in items]
            assert names <= set(listed) and len(listed) == len(set(listed))
            versions = await pages_of(client.list_properties_of_key_versions(name, max_page_size=1))
            assert [len(items) for items, _ in versions] == [1, 1]
            assert {p.version for items, _ in versions for p in items} == {rsa_key.properties.version,
                                                                           second.properties.version}

            exp = whole_seconds(dt.timedelta(days=30))
            updated = await client.update_key_properties(name, enabled=False, expires_on=exp, tags={"b": "2"},
                                                         key_operations=["sign", "verify"])
            assert updated.id == second.id and updated.properties.enabled is False
            assert updated.properties.expires_on == exp and updated.properties.tags == {"b": "2"}
            assert updated.key_operations == ["sign", "verify"]
            assert (await client.get_key(name)).properties.enabled is False
            await bad(lambda: client.update_key_properties(name, key_operations=["fly"]))

    asyncio.run(main())


def test_delete_recover_purge(dev_server: DevServer) -> None:
    async def main() -> None:
        async with mi_client(dev_server) as client:
            key = await client.create_ec_key(unique("adel"), tags={"t": "1"})
            name = key.name
            deleted = await client.delete_key(name)  # the aio client waits for the deletion itself
            assert isinstance(deleted, DeletedKey) and deleted.id == key.id
            assert deleted.recovery_id == f"{dev_server.vault_url}/deletedkeys/{name}"
            assert deleted.scheduled_purge_date - deleted.deleted_date == NINETY_DAYS
            assert (await client.get_deleted_key(name)).recovery_id == deleted.recovery_id
            assert name in {d.name for d in await collect(client.list_deleted_keys(max_page_size=5))}
            await not_found(lambda: client.get_key(name))
            await expect_error(lambda: client.create_ec_key(name), 409, "Conflict",
                               inner="ObjectIsDeletedButRecoverable", exc_type=ResourceExistsError)
            recovered = await client.recover_deleted_key(name)
            assert recovered.id == key.id and recovered.properties.tags == {"t": "1"}
            assert (await client.get_key(name)).key.x == key.key.x
            await client.delete_key(name)
            assert await client.purge_deleted_key(name) is None
            await not_found(lambda: client.get_deleted_key(name))
            await not_found(lambda: client.purge_deleted_key(name))
            await not_found(lambda: client.recover_deleted_key(name))

    asyncio.run(main())


def test_backup_restore(dev_server: DevServer, crypto_only_app: CryptoOnlyApp) -> None:
    async def main() -> None:
        async with mi_client(dev_server) as client, crypto_clients(dev_server, crypto_only_app) as (remote, _):
            key = await client.create_rsa_key(unique("abak"), size=2048)
            ciphertext = encrypt_locally(key.key, "RSA-OAEP-256", b"kept")
            blob = await client.backup_key(key.name)
            await expect_error(lambda: client.restore_key_backup(blob), 409, "Conflict",
                               exc_type=ResourceExistsError)
            await client.delete_key(key.name)
            await client.purge_deleted_key(key.name)
            restored = await client.restore_key_backup(blob)
            assert restored.id == key.id and restored.key.n == key.key.n
            assert (await remote(restored).decrypt(EncryptionAlgorithm.rsa_oaep_256, ciphertext)).plaintext == b"kept"
            for garbage in (b"garbage", blob[:-3]):
                await bad(lambda g=garbage: client.restore_key_backup(g))

    asyncio.run(main())


def test_rotate_and_rotation_policy(dev_server: DevServer) -> None:
    async def main() -> None:
        async with mi_client(dev_server) as client:
            key = await client.create_ec_key(unique("arot"), curve="P-384", tags={"r": "1"})
            rotated = await client.rotate_key(key.name)
            assert rotated.properties.version != key.properties.version
            assert rotated.key.crv == "P-384" and rotated.key.x != key.key.x and rotated.properties.tags == {"r": "1"}
            actions = [KeyRotationLifetimeAction(KeyRotationPolicyAction.rotate, time_after_create="P2M")]
            policy = await client.update_key_rotation_policy(key.name, KeyRotationPolicy(), expires_in="P90D",
                                                             lifetime_actions=actions)
            assert policy.expires_in == "P90D"
            fetched = await client.get_key_rotation_policy(key.name)
            assert fetched.id == f"{dev_server.vault_url}/keys/{key.name}/rotationpolicy"
            assert [(a.action, a.time_after_create) for a in fetched.lifetime_actions] == [
                (KeyRotationPolicyAction.rotate, "P2M")]
            third = await client.rotate_key(key.name)
            assert third.properties.expires_on - third.properties.created_on == NINETY_DAYS
            await not_found(lambda: client.rotate_key(unique("anorot")))

    asyncio.run(main())


def test_random_bytes(dev_server: DevServer) -> None:
    async def main() -> None:
        async with mi_client(dev_server) as client:
            for count in (1, 128):
                assert len(await client.get_random_bytes(count)) == count
            await bad(lambda: client.get_random_bytes(129))

    asyncio.run(main())


# --- cryptography ----------------------------------------------------------------------------------------

def test_rsa_operations(dev_server: DevServer, crypto_only_app: CryptoOnlyApp) -> None:
    async def main() -> None:
        async with mi_client(dev_server) as client, crypto_clients(dev_server, crypto_only_app) as (remote, local):
            key = await client.create_rsa_key(unique("arsaop"), size=2048)
            crypto, sdk = remote(key), local(key)
            for alg in RSA_ENCRYPTION:
                algorithm, plaintext = EncryptionAlgorithm(alg), os.urandom(24)
                encrypted = await crypto.encrypt(algorithm, plaintext)
                assert encrypted.key_id == key.id and len(encrypted.ciphertext) == 256
                assert (await crypto.decrypt(algorithm, encrypted.ciphertext)).plaintext == plaintext
                local_ct = encrypt_locally(key.key, alg, plaintext)
                assert (await crypto.decrypt(algorithm, local_ct)).plaintext == plaintext
                sdk_ct = (await sdk.encrypt(algorithm, plaintext)).ciphertext
                assert (await sdk.decrypt(algorithm, sdk_ct)).plaintext == plaintext
                wrap = KeyWrapAlgorithm(alg)
                wrapped = (await crypto.wrap_key(wrap, plaintext)).encrypted_key
                assert (await crypto.unwrap_key(wrap, wrapped)).key == plaintext
            for alg in RSA_SIGNATURE:
                algorithm, digest = SignatureAlgorithm(alg), digest_for(alg)
                signature = (await crypto.sign(algorithm, digest)).signature
                verify_locally(key.key, alg, digest, signature)
                assert (await crypto.verify(algorithm, digest, signature)).is_valid is True
                assert (await crypto.verify(algorithm, digest_for(alg), signature)).is_valid is False
                assert (await sdk.verify(algorithm, digest, (await sdk.sign(algorithm, digest)).signature)).is_valid
            await bad(lambda: crypto.sign(SignatureAlgorithm.rs256, os.urandom(48)))
            await bad(lambda: crypto.sign(SignatureAlgorithm.es256, digest_for("ES256")))

    asyncio.run(main())


def test_ec_operations(dev_server: DevServer, crypto_only_app: CryptoOnlyApp) -> None:
    async def main() -> None:
        async with mi_client(dev_server) as client, crypto_clients(dev_server, crypto_only_app) as (remote, local):
            for crv, alg in EC_SIGNATURE.items():
                key = await client.create_ec_key(unique("aecop"), curve=crv)
                algorithm, digest = SignatureAlgorithm(alg), digest_for(alg)
                signature = (await remote(key).sign(algorithm, digest)).signature
                verify_locally(key.key, alg, digest, signature)
                assert (await remote(key).verify(algorithm, digest, signature)).is_valid is True
                assert (await local(key).verify(algorithm, digest, signature)).is_valid is True

    asyncio.run(main())


def test_oct_operations(dev_server: DevServer, crypto_only_app: CryptoOnlyApp) -> None:
    async def main() -> None:
        async with mi_client(dev_server) as client, crypto_clients(dev_server, crypto_only_app) as (remote, local):
            for size in OCT_SIZES:
                key = await client.create_oct_key(unique("aoctop"), size=size)
                crypto = remote(key)
                gcm = EncryptionAlgorithm(f"A{size}GCM")
                sealed = await crypto.encrypt(gcm, b"async gcm", additional_authenticated_data=b"aad")
                assert len(sealed.iv) == 12 and len(sealed.tag) == 16
                opened = await local(key).decrypt(gcm, sealed.ciphertext, iv=sealed.iv,
                                                  authentication_tag=sealed.tag, additional_authenticated_data=b"aad")
                assert opened.plaintext == b"async gcm"
                for mode, plaintext in (("CBC", os.urandom(32)), ("CBCPAD", b"odd length")):
                    algorithm, iv = EncryptionAlgorithm(f"A{size}{mode}"), os.urandom(16)
                    ciphertext = (await crypto.encrypt(algorithm, plaintext, iv=iv)).ciphertext
                    assert (await crypto.decrypt(algorithm, ciphertext, iv=iv)).plaintext == plaintext
                wrap, cek = KeyWrapAlgorithm(f"A{size}KW"), os.urandom(32)
                assert (await crypto.unwrap_key(wrap, (await crypto.wrap_key(wrap, cek)).encrypted_key)).key == cek
                await bad(lambda c=crypto: c.encrypt(EncryptionAlgorithm.rsa_oaep, b"x"))
            # an imported oct key interoperates with local AES
            k = os.urandom(32)
            imported = await client.import_key(unique("aimpoct"), JsonWebKey(kty=KeyType.oct, k=k))
            crypto = remote(imported)
            sealed = await crypto.encrypt(EncryptionAlgorithm.a256_gcm, b"interop")
            assert AESGCM(k).decrypt(sealed.iv, sealed.ciphertext + sealed.tag, None) == b"interop"
            cek = os.urandom(32)
            assert (await crypto.wrap_key(KeyWrapAlgorithm.aes_256, cek)).encrypted_key == keywrap.aes_key_wrap(k, cek)

    asyncio.run(main())


def test_import_and_use(dev_server: DevServer, crypto_only_app: CryptoOnlyApp) -> None:
    async def main() -> None:
        async with mi_client(dev_server) as client, crypto_clients(dev_server, crypto_only_app) as (remote, _):
            private = rsa.generate_private_key(65537, 2048)
            imported = await client.import_key(unique("aimprsa"), rsa_jwk(private))
            assert int.from_bytes(imported.key.n, "big") == private.public_key().public_numbers().n
            assert_no_private_attributes(imported)
            crypto = remote(imported)
            ciphertext = (await crypto.encrypt(EncryptionAlgorithm.rsa_oaep_256, b"to us")).ciphertext
            assert private.decrypt(ciphertext, rsa_padding("RSA-OAEP-256")) == b"to us"
            digest = digest_for("PS384")
            assert (await crypto.verify(SignatureAlgorithm.ps384, digest,
                                        sign_with(private, "PS384", digest))).is_valid is True
            ec_private = ec.generate_private_key(CURVES["P-521"])
            ec_key = await client.import_key(unique("aimpec"), ec_jwk(ec_private, "P-521"))
            assert ec_key.key.crv == "P-521"
            signature = (await remote(ec_key).sign(SignatureAlgorithm.es512, digest_for("ES512", b"m"))).signature
            verify_locally(ec_key.key, "ES512", digest_for("ES512", b"m"), signature)
            await bad(lambda: client.import_key(unique("aimp"), rsa_jwk(private, members=("n", "e"))))

    asyncio.run(main())


# --- enforcement and errors ------------------------------------------------------------------------------

def test_enforcement(dev_server: DevServer, crypto_only_app: CryptoOnlyApp) -> None:
    async def main() -> None:
        async with mi_client(dev_server) as client, crypto_clients(dev_server, crypto_only_app) as (remote, _):
            key = await client.create_rsa_key(unique("aenf"), size=2048)
            crypto = remote(key)
            digest = digest_for("RS512")
            signature = (await crypto.sign(SignatureAlgorithm.rs512, digest)).signature
            ciphertext = encrypt_locally(key.key, "RSA1_5", b"old data")
            await client.update_key_properties(key.name, expires_on=whole_seconds(-dt.timedelta(hours=1)))
            await expect_error(lambda: crypto.sign(SignatureAlgorithm.rs512, digest), 403, "Forbidden")
            await expect_error(lambda: crypto.encrypt(EncryptionAlgorithm.rsa1_5, b"x"), 403, "Forbidden")
            assert (await crypto.decrypt(EncryptionAlgorithm.rsa1_5, ciphertext)).plaintext == b"old data"
            assert (await crypto.verify(SignatureAlgorithm.rs512, digest, signature)).is_valid is True
            await client.update_key_properties(key.name, expires_on=whole_seconds(dt.timedelta(days=1)),
                                               enabled=False)
            await expect_error(lambda: crypto.sign(SignatureAlgorithm.rs512, digest), 403, "Forbidden")
            await client.update_key_properties(key.name, enabled=True, key_operations=["verify"])
            await bad(lambda: crypto.sign(SignatureAlgorithm.rs512, digest))
            assert (await crypto.verify(SignatureAlgorithm.rs512, digest, signature)).is_valid is True

    asyncio.run(main())


def test_errors(dev_server: DevServer) -> None:
    async def main() -> None:
        async with mi_client(dev_server) as client:
            missing = unique("anope")
            for call in (lambda: client.get_key(missing), lambda: client.delete_key(missing),
                         lambda: client.backup_key(missing), lambda: client.get_deleted_key(missing),
                         lambda: client.update_key_properties(missing, enabled=True),
                         lambda: client.get_key_rotation_policy(missing)):
                await not_found(call)
            for call in (lambda: client.create_ec_key("bad_name"), lambda: client.create_key(unique("a"), "XYZ"),
                         lambda: client.create_rsa_key(unique("a"), size=1024),
                         lambda: client.create_ec_key(unique("a"), curve="P-224"),
                         lambda: client.create_oct_key(unique("a"), size=512)):
                await bad(call)

    asyncio.run(main())


def test_hsm_key_types_are_refused_on_a_standard_vault(dev_server: DevServer, standard_vault: str) -> None:
    async def main() -> None:
        credential = ManagedIdentityCredential(connection_verify=dev_server.ca)
        async with credential, KeyClient(standard_vault, credential, connection_verify=dev_server.ca) as client:
            for call in (lambda: client.create_rsa_key(unique("ahsm"), hardware_protected=True),
                         lambda: client.create_ec_key(unique("ahsm"), hardware_protected=True),
                         lambda: client.create_oct_key(unique("ahsm"), hardware_protected=True)):
                assert HSM_REFUSED in (await bad(call)).error.message
            assert (await client.create_oct_key(unique("aoct"), size=128)).key_type == KeyType.oct

    asyncio.run(main())
