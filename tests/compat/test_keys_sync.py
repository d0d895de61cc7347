"""The unmodified synchronous `azure.keyvault.keys.KeyClient` and `crypto.CryptographyClient` against a real Coffer
dev server.

Every software key type (RSA, EC, oct), size and curve, every JWA algorithm Azure defines for it, checked against
an independent implementation (`cryptography`, fed only the public JWK that `get_key` returns, or a private key the
test generated and imported); the key lifecycle (versions, paging, update, soft delete, recover, purge, backup,
restore, rotation); enforcement of key_ops, enabled, nbf and exp; HSM key types refused on a standard vault and on a
premium vault of a server without an HSM (HSM round trips: test_hsm_keys.py); Azure's error codes; and that no
response and no file of the data directory ever holds private key material.

Two kinds of `CryptographyClient` are used. The dev identity's (Key Vault Administrator) downloads the public key
and does RSA encrypt/wrap/verify and EC verify locally, as the SDK always does. The `crypto_only` principal may use
keys but not read them: its `get_key` answers 403, so its client sends *every* operation to Coffer.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.core.rest import HttpRequest
from azure.identity import ClientSecretCredential, ManagedIdentityCredential
from azure.keyvault.keys import (
    DeletedKey,
    JsonWebKey,
    KeyClient,
    KeyRotationLifetimeAction,
    KeyRotationPolicy,
    KeyRotationPolicyAction,
    KeyType,
    KeyVaultKey,
)
from azure.keyvault.keys.crypto import CryptographyClient, EncryptionAlgorithm, KeyWrapAlgorithm, SignatureAlgorithm
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import keywrap, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tests.compat.conftest import CryptoOnlyApp, client_secret_credential, create_vault
from tests.compat.helpers import check_error, unique, whole_seconds
from tests.compat.key_helpers import (
    COORDINATE_BYTES,
    CURVES,
    DEFAULT_OPS,
    EC_CURVES,
    EC_SIGNATURE,
    HSM_REFUSED,
    OCT_MODES,
    OCT_SIZES,
    RSA_ENCRYPTION,
    RSA_SIGNATURE,
    RSA_SIZES,
    assert_no_private_attributes,
    assert_public_only,
    digest_for,
    ec_jwk,
    encrypt_locally,
    private_values,
    rsa_jwk,
    rsa_padding,
    sign_with,
    verify_locally,
)
from tests.e2e.helpers import identity_env as server_identity_env
from tests.e2e.helpers import release_connections
from tests.support.server import DevServer

NINETY_DAYS = dt.timedelta(days=90)
API_VERSION = "2025-07-01"


# --- fixtures and helpers --------------------------------------------------------------------------

def expect_error(call: Callable[[], Any], status: int, code: str, *, inner: str | None = None,
                 exc_type: type[HttpResponseError] = HttpResponseError) -> HttpResponseError:
    with pytest.raises(HttpResponseError) as info:
        call()
    return check_error(info.value, status, code, inner=inner, exc_type=exc_type)


def not_found(call: Callable[[], Any]) -> HttpResponseError:
    return expect_error(call, 404, "KeyNotFound", exc_type=ResourceNotFoundError)


def bad(call: Callable[[], Any]) -> HttpResponseError:
    return expect_error(call, 400, "BadParameter")


def forbidden(call: Callable[[], Any]) -> HttpResponseError:
    return expect_error(call, 403, "Forbidden")


@pytest.fixture(scope="module")
def credential(dev_server: DevServer, identity_env: None) -> Iterator[ManagedIdentityCredential]:
    cred = ManagedIdentityCredential(connection_verify=dev_server.ca)
    yield cred
    cred.close()


@pytest.fixture(scope="module")
def key_client(dev_server: DevServer, credential: ManagedIdentityCredential) -> Iterator[KeyClient]:
    """KeyClient + ManagedIdentityCredential (App Service protocol) of the dev identity."""
    with KeyClient(dev_server.vault_url, credential, connection_verify=dev_server.ca) as client:
        yield client
    release_connections()


@pytest.fixture(scope="module")
def crypto_only(dev_server: DevServer, crypto_only_app: CryptoOnlyApp) -> Iterator[ClientSecretCredential]:
    cred = ClientSecretCredential(crypto_only_app.tenant_id, crypto_only_app.client_id, crypto_only_app.secret,
                                  authority=dev_server.authority, disable_instance_discovery=True,
                                  connection_verify=dev_server.ca)
    yield cred
    cred.close()


@pytest.fixture(scope="module")
def remote(dev_server: DevServer, crypto_only: ClientSecretCredential) -> Iterator[Callable[[Any], CryptographyClient]]:
    """CryptographyClient(key id) of the crypto_only principal: every operation runs in Coffer."""
    opened: list[CryptographyClient] = []

    def make(key: KeyVaultKey | str) -> CryptographyClient:
        client = CryptographyClient(key if isinstance(key, str) else key.id, crypto_only,
                                    connection_verify=dev_server.ca)
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.close()


@pytest.fixture(scope="module")
def local(dev_server: DevServer,
          credential: ManagedIdentityCredential) -> Iterator[Callable[[Any], CryptographyClient]]:
    """CryptographyClient of the dev identity: public-key operations local (SDK behaviour), the rest in Coffer."""
    opened: list[CryptographyClient] = []

    def make(key: KeyVaultKey | str) -> CryptographyClient:
        client = CryptographyClient(key, credential, connection_verify=dev_server.ca)
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.close()


@pytest.fixture(scope="module")
def keys(key_client: KeyClient) -> dict[str, KeyVaultKey]:
    """One key of every type, size and curve (RSA 4096 only here: its generation is slow)."""
    made = {}
    for size in RSA_SIZES:
        made[f"RSA-{size}"] = key_client.create_rsa_key(unique(f"rsa{size}"), size=size)
    for crv in EC_CURVES:
        made[f"EC-{crv}"] = key_client.create_ec_key(unique("ec"), curve=crv)
    for size in OCT_SIZES:
        made[f"oct-{size}"] = key_client.create_oct_key(unique(f"oct{size}"), size=size)
    return made


@pytest.fixture(scope="module")
def raw(dev_server: DevServer, credential: ManagedIdentityCredential) -> Iterator[httpx.Client]:
    """Plain HTTPS with the dev identity's bearer token, to see the JSON exactly as sent."""
    token = credential.get_token(f"{dev_server.authority}/.default").token
    context = ssl.create_default_context(cafile=dev_server.ca)
    with httpx.Client(base_url=dev_server.vault_url, verify=context, params={"api-version": API_VERSION},
                      headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        yield client


def rsa2048(key_client: KeyClient, prefix: str = "k", **kwargs: Any) -> KeyVaultKey:
    return key_client.create_rsa_key(unique(prefix), size=2048, **kwargs)


def delete_and_wait(key_client: KeyClient, name: str) -> DeletedKey:
    poller = key_client.begin_delete_key(name)
    deleted = poller.result()
    poller.wait()
    assert poller.done()
    return deleted


def pages_of(paged: Any) -> list[tuple[list[Any], str | None]]:
    pages = []
    iterator = paged.by_page()
    for page in iterator:
        pages.append((list(page), iterator.continuation_token))
    return pages


def check_pages(pages: list[tuple[list[Any], str | None]], size: int) -> list[Any]:
    for index, (items, link) in enumerate(pages):
        if index < len(pages) - 1:
            assert len(items) == size
            assert link and "$skiptoken=" in link and f"maxresults={size}" in link, link
        else:
            assert 1 <= len(items) <= size and link is None
    return [item for items, _ in pages for item in items]


def version_of(key: KeyVaultKey) -> str:
    version = key.properties.version
    assert version and re.fullmatch(r"[0-9a-f]{32}", version), version
    return version


# --- create: types, sizes, curves ------------------------------------------------------------------

def test_created_keys_have_azure_shapes(keys: dict[str, KeyVaultKey], dev_server: DevServer) -> None:
    for label, key in keys.items():
        family, _, detail = label.partition("-")
        version = version_of(key)
        assert key.id == f"{dev_server.vault_url}/keys/{key.name}/{version}"
        assert key.key.kid == key.id  # the JWK kid is the full versioned id (contract §3)
        assert key.key_type == family
        assert key.key_operations == DEFAULT_OPS[family]
        props = key.properties
        assert props.enabled is True and props.managed is None
        assert props.created_on is not None and props.updated_on is not None
        assert props.recoverable_days == 90 and props.recovery_level == "Recoverable+Purgeable"
        assert props.not_before is None and props.expires_on is None and props.tags is None
        assert_no_private_attributes(key)
        if family == "RSA":
            assert len(key.key.n) * 8 == int(detail) and key.key.n[0] & 0x80
            assert key.key.e == b"\x01\x00\x01"
            assert key.key.crv is None and key.key.x is None
        elif family == "EC":
            assert key.key.crv == detail
            assert len(key.key.x) == len(key.key.y) == COORDINATE_BYTES[detail]
            # the point is on the named curve
            ec.EllipticCurvePublicNumbers(int.from_bytes(key.key.x, "big"), int.from_bytes(key.key.y, "big"),
                                          CURVES[detail]).public_key()
            assert key.key.n is None and key.key.e is None
        else:
            assert key.key.n is None and key.key.x is None and key.key.crv is None


def test_create_key_with_every_property(key_client: KeyClient) -> None:
    name = unique("props")
    nbf, exp = whole_seconds(-dt.timedelta(hours=1)), whole_seconds(dt.timedelta(days=30))
    tags = {"env": "test", "empty": ""}
    key = key_client.create_key(name, KeyType.ec, curve="P-384", key_operations=["sign"], enabled=True, tags=tags,
                                not_before=nbf, expires_on=exp)
    for got in (key, key_client.get_key(name)):
        assert got.key.crv == "P-384" and got.key_operations == ["sign"]
        assert got.properties.tags == tags
        assert got.properties.not_before == nbf and got.properties.expires_on == exp
        assert got.properties.enabled is True
    # defaults: RSA is 2048 bits with e = 65537, EC is P-256, oct is 256 bits
    assert len(key_client.create_key(unique("dflt"), KeyType.rsa).key.n) == 256
    assert key_client.create_key(unique("dflt"), KeyType.ec).key.crv == "P-256"
    assert key_client.create_rsa_key(unique("e3"), size=2048, public_exponent=3).key.e == b"\x03"
    assert key_client.create_ec_key(unique("dflt")).key.crv == "P-256"
    octet = key_client.create_oct_key(unique("dflt"))
    assert octet.key_type == "oct" and octet.key.k is None


@pytest.fixture(scope="module")
def standard_client(standard_vault: str, dev_server: DevServer,
                    credential: ManagedIdentityCredential) -> Iterator[KeyClient]:
    """KeyClient on a standard-SKU vault (`dev` is premium when the server has an HSM)."""
    with KeyClient(standard_vault, credential, connection_verify=dev_server.ca) as client:
        yield client
    release_connections()


def test_oct_keys_are_created_on_a_standard_vault(standard_client: KeyClient,
                                                  remote: Callable[[Any], CryptographyClient]) -> None:
    """The SDK does not stop create_oct_key on a vault; Coffer offers software kty "oct" on every vault (oct-HSM is
    MHSM-only in Azure)."""
    for size in OCT_SIZES:
        key = standard_client.create_oct_key(unique(f"stdoct{size}"), size=size)
        assert key.key_type == KeyType.oct and key.key.k is None
        assert standard_client.get_key(key.name).key_type == KeyType.oct
        wrap, cek = KeyWrapAlgorithm(f"A{size}KW"), os.urandom(32)
        crypto = remote(key)
        assert crypto.unwrap_key(wrap, crypto.wrap_key(wrap, cek).encrypted_key).key == cek
    # a disabled key can be created, and re-enabled
    name = unique("octoff")
    assert standard_client.create_oct_key(name, size=128, enabled=False).properties.enabled is False
    assert standard_client.update_key_properties(name, enabled=True).properties.enabled is True


def test_hsm_key_types_are_refused_on_a_standard_vault(standard_client: KeyClient) -> None:
    client = standard_client
    calls = [
        lambda: client.create_rsa_key(unique("hsm"), size=2048, hardware_protected=True),
        lambda: client.create_ec_key(unique("hsm"), curve="P-256", hardware_protected=True),
        lambda: client.create_oct_key(unique("hsm"), size=256, hardware_protected=True),
        lambda: client.create_key(unique("hsm"), KeyType.rsa_hsm, size=2048),
        lambda: client.create_key(unique("hsm"), "EC-HSM", curve="P-384"),
        lambda: client.import_key(unique("hsm"), rsa_jwk(rsa.generate_private_key(65537, 2048)),
                                  hardware_protected=True),
        lambda: client.import_key(unique("hsm"), JsonWebKey(kty=KeyType.oct_hsm, k=os.urandom(32))),
    ]
    for call in calls:
        exc = bad(call)
        assert HSM_REFUSED in exc.error.message, exc.error.message
    assert not [p for p in client.list_properties_of_keys() if p.name.startswith("hsm-")]


@pytest.fixture(scope="module")
def server_without_hsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    """A dev server that has no HSM whatever this machine has installed: without softhsm2-util to create its token,
    `coffer server --dev` runs without one (coffer.devhsm). HSM round trips are test_hsm_keys.py's."""
    path = os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep)
                           if d and not (Path(d) / "softhsm2-util").exists())
    server = DevServer(tmp_path_factory.mktemp("nohsm") / "data", server_env={"PATH": path}).start()
    yield server
    release_connections()
    server.stop()


def test_premium_vault_of_a_server_without_an_hsm(server_without_hsm: DevServer,
                                                  tmp_path_factory: pytest.TempPathFactory) -> None:
    """HSM key types on a premium vault (`coffer vault create NAME --sku premium`) of a server without an HSM: a
    clear 400, not the standard-vault one; software keys work there. Such a server's dev vault is standard."""
    server = server_without_hsm
    assert "HSM: none" in "".join(server.output), "".join(server.output)
    premium = create_vault(server, tmp_path_factory.mktemp("premium"), "premium", "prem")
    credential = client_secret_credential(server)
    with KeyClient(server.vault_url, credential, connection_verify=server.ca) as dev_vault:
        exc = bad(lambda: dev_vault.create_rsa_key(unique("hsm"), hardware_protected=True))
        assert HSM_REFUSED in exc.error.message
    with KeyClient(premium, credential, connection_verify=server.ca) as client:
        for call in (lambda: client.create_rsa_key(unique("hsm"), size=2048, hardware_protected=True),
                     lambda: client.create_ec_key(unique("hsm"), curve="P-256", hardware_protected=True),
                     lambda: client.create_key(unique("hsm"), "oct-HSM", size=256),
                     lambda: client.import_key(unique("hsm"), rsa_jwk(rsa.generate_private_key(65537, 2048)),
                                               hardware_protected=True)):
            message = bad(call).error.message
            assert HSM_REFUSED not in message, "a premium vault must not answer like a standard one"
            assert "No HSM is configured" in message, message
        soft = client.create_rsa_key(unique("soft"), size=2048)
        assert soft.id.startswith(f"{premium}/keys/") and soft.key_type == KeyType.rsa
        with CryptographyClient(soft, credential, connection_verify=server.ca) as crypto:
            digest = digest_for("RS256")
            verify_locally(soft.key, "RS256", digest, crypto.sign(SignatureAlgorithm.rs256, digest).signature)
            ciphertext = crypto.encrypt(EncryptionAlgorithm.rsa_oaep_256, b"premium").ciphertext
            assert crypto.decrypt(EncryptionAlgorithm.rsa_oaep_256, ciphertext).plaintext == b"premium"
    credential.close()
    release_connections()


# --- get -------------------------------------------------------------------------------------------

def test_get_latest_specific_and_trailing_slash(key_client: KeyClient) -> None:
    name = unique("get")
    first = key_client.create_ec_key(name, curve="P-256", tags={"n": "1"})
    second = key_client.create_ec_key(name, curve="P-384", tags={"n": "2"})
    assert version_of(first) != version_of(second)
    latest = key_client.get_key(name)
    assert latest.id == second.id and latest.key.x == second.key.x and latest.properties.tags == {"n": "2"}
    slash = key_client.get_key(name, "")  # GET /keys/{name}/ = latest (C4)
    assert slash.id == second.id and slash.key.crv == "P-384"
    older = key_client.get_key(name, first.properties.version)
    assert older.id == first.id and older.key.crv == "P-256" and older.key.x == first.key.x
    assert older.properties.tags == {"n": "1"}
    # names and versions compare case-insensitively
    assert key_client.get_key(name.upper()).id == second.id
    assert key_client.get_key(name, version_of(first).upper()).key.x == first.key.x


# --- list and paging -------------------------------------------------------------------------------

def test_list_keys_pages(key_client: KeyClient) -> None:
    prefix = unique("lst")
    names = {f"{prefix}-{i:02d}" for i in range(9)}
    for name in sorted(names):
        key_client.create_ec_key(name, tags={"prefix": prefix})
    listed = check_pages(pages_of(key_client.list_properties_of_keys(max_page_size=4)), 4)
    seen = [p.name for p in listed]
    assert len(seen) == len(set(seen)), "an item appeared on two pages"
    assert names <= set(seen)
    for props in listed:
        if props.name in names:
            assert props.version is None  # list items carry unversioned kids
            assert props.id.endswith(f"/keys/{props.name}")
            assert props.tags == {"prefix": prefix} and props.enabled is True
    everything = [p.name for p in key_client.list_properties_of_keys()]
    assert names <= set(everything) and len(everything) == len(set(everything))
    for size in (0, 26):
        bad(lambda s=size: list(key_client.list_properties_of_keys(max_page_size=s)))


def test_list_key_versions_pages(key_client: KeyClient) -> None:
    name = unique("vers")
    created = [key_client.create_ec_key(name).properties.version for _ in range(5)]
    key_client.update_key_properties(name, created[1], enabled=False)
    pages = pages_of(key_client.list_properties_of_key_versions(name, max_page_size=2))
    assert [len(items) for items, _ in pages] == [2, 2, 1]
    listed = check_pages(pages, 2)
    assert sorted(p.version for p in listed) == sorted(created)
    for props in listed:
        assert props.name == name and props.id.endswith(f"/keys/{name}/{props.version}")
        assert props.enabled is (props.version != created[1])
    assert sorted(p.version for p in key_client.list_properties_of_key_versions(name)) == sorted(created)
    not_found(lambda: list(key_client.list_properties_of_key_versions(unique("none"))))


# --- update ----------------------------------------------------------------------------------------

def test_update_properties(key_client: KeyClient) -> None:
    original = rsa2048(key_client, "upd", tags={"a": "1"})
    name = original.name
    nbf, exp = whole_seconds(-dt.timedelta(days=1)), whole_seconds(dt.timedelta(days=365))
    updated = key_client.update_key_properties(name, enabled=False, expires_on=exp, not_before=nbf,
                                               tags={"b": "2"}, key_operations=["sign", "verify"])
    assert isinstance(updated, KeyVaultKey)
    assert updated.id == original.id and updated.key.n == original.key.n
    assert updated.properties.enabled is False
    assert updated.properties.not_before == nbf and updated.properties.expires_on == exp
    assert updated.properties.tags == {"b": "2"} and updated.key_operations == ["sign", "verify"]
    assert updated.properties.created_on == original.properties.created_on
    assert updated.properties.updated_on >= original.properties.updated_on
    fetched = key_client.get_key(name)
    assert fetched.properties.enabled is False and fetched.key_operations == ["sign", "verify"]
    assert fetched.properties.not_before == nbf and fetched.properties.expires_on == exp
    assert len(list(key_client.list_properties_of_key_versions(name))) == 1
    # a partial update touches only what it sends
    partial = key_client.update_key_properties(name, tags={"only": "tags"})
    assert partial.properties.tags == {"only": "tags"} and partial.properties.enabled is False
    assert partial.key_operations == ["sign", "verify"] and partial.properties.expires_on == exp
    assert key_client.update_key_properties(name, enabled=True).properties.enabled is True
    # nbf later than exp, an unknown key operation: BadParameter, nothing changes
    bad(lambda: key_client.update_key_properties(name, not_before=exp + dt.timedelta(days=1)))
    bad(lambda: key_client.update_key_properties(name, key_operations=["fly"]))
    assert key_client.get_key(name).properties.not_before == nbf


def test_update_a_specific_version(key_client: KeyClient) -> None:
    name = unique("updv")
    old = key_client.create_ec_key(name)
    new = key_client.create_ec_key(name)
    changed = key_client.update_key_properties(name, old.properties.version, tags={"v": "old"})
    assert changed.id == old.id and changed.properties.tags == {"v": "old"}
    assert key_client.get_key(name).id == new.id and key_client.get_key(name).properties.tags is None
    assert key_client.get_key(name, old.properties.version).properties.tags == {"v": "old"}


# --- delete, recover, purge ------------------------------------------------------------------------

def test_delete_get_deleted_list_recover_purge(key_client: KeyClient, dev_server: DevServer) -> None:
    name = unique("del")
    first = key_client.create_ec_key(name, tags={"k": "v"})
    second = key_client.create_ec_key(name, tags={"k": "v2"})
    poller = key_client.begin_delete_key(name)
    deleted = poller.result()
    poller.wait()
    assert poller.done() and poller.status() == "finished"
    assert isinstance(deleted, DeletedKey)
    assert deleted.name == name and deleted.id == second.id
    assert deleted.recovery_id == f"{dev_server.vault_url}/deletedkeys/{name}"
    assert deleted.scheduled_purge_date - deleted.deleted_date == NINETY_DAYS
    assert deleted.key.x == second.key.x and deleted.properties.tags == {"k": "v2"}
    assert_no_private_attributes(deleted)
    fetched = key_client.get_deleted_key(name)
    assert fetched.recovery_id == deleted.recovery_id and fetched.deleted_date == deleted.deleted_date
    assert fetched.id == second.id
    not_found(lambda: key_client.get_key(name))
    not_found(lambda: key_client.get_key(name, first.properties.version))
    not_found(lambda: key_client.update_key_properties(name, enabled=False))
    not_found(lambda: key_client.begin_delete_key(name))
    assert name not in {p.name for p in key_client.list_properties_of_keys()}
    listed = {d.name: d for d in key_client.list_deleted_keys()}
    assert listed[name].recovery_id == deleted.recovery_id
    assert listed[name].scheduled_purge_date == deleted.scheduled_purge_date

    # creating or importing over a soft-deleted name is a conflict
    for call in (lambda: key_client.create_ec_key(name), lambda: key_client.create_rsa_key(name.upper()),
                 lambda: key_client.import_key(name, JsonWebKey(kty=KeyType.oct, k=os.urandom(16)))):
        exc = expect_error(call, 409, "Conflict", inner="ObjectIsDeletedButRecoverable", exc_type=ResourceExistsError)
        assert exc.response.json()["error"]["innererror"] == {"code": "ObjectIsDeletedButRecoverable"}

    recover = key_client.begin_recover_deleted_key(name)
    recovered = recover.result()
    recover.wait()
    assert isinstance(recovered, KeyVaultKey) and recovered.id == second.id and recovered.key.x == second.key.x
    assert key_client.get_key(name, first.properties.version).key.x == first.key.x
    not_found(lambda: key_client.get_deleted_key(name))
    assert name not in {d.name for d in key_client.list_deleted_keys()}

    delete_and_wait(key_client, name)
    assert key_client.purge_deleted_key(name) is None  # 204
    not_found(lambda: key_client.get_deleted_key(name))
    not_found(lambda: key_client.get_key(name))
    fresh = key_client.create_ec_key(name)  # the name is free again: one new version
    assert [p.version for p in key_client.list_properties_of_key_versions(name)] == [fresh.properties.version]


def test_list_deleted_keys_pages(key_client: KeyClient) -> None:
    names = {unique("dl") for _ in range(5)}
    for name in names:
        key_client.create_ec_key(name)
        delete_and_wait(key_client, name)
    listed = check_pages(pages_of(key_client.list_deleted_keys(max_page_size=2)), 2)
    seen = [d.name for d in listed]
    assert len(seen) == len(set(seen)) and names <= set(seen)
    for item in listed:
        if item.name in names:
            assert item.recovery_id.endswith(f"/deletedkeys/{item.name}") and item.deleted_date is not None


def test_purge_and_recover_need_a_deleted_key(key_client: KeyClient) -> None:
    live = key_client.create_ec_key(unique("live")).name
    for name in (live, unique("missing")):
        not_found(lambda n=name: key_client.purge_deleted_key(n))
        not_found(lambda n=name: key_client.begin_recover_deleted_key(n))
        not_found(lambda n=name: key_client.get_deleted_key(n))


# --- backup and restore ----------------------------------------------------------------------------

def test_backup_restore_keeps_material_and_versions(key_client: KeyClient,
                                                    remote: Callable[[Any], CryptographyClient]) -> None:
    first = rsa2048(key_client, "bak", tags={"v": "1"})
    name = first.name
    second = key_client.rotate_key(name)
    key_client.update_key_properties(name, first.properties.version, enabled=False)
    ciphertext = encrypt_locally(second.key, "RSA-OAEP", b"before backup")
    backup = key_client.backup_key(name)
    assert isinstance(backup, bytes) and len(backup) > 0

    delete_and_wait(key_client, name)
    expect_error(lambda: key_client.restore_key_backup(backup), 409, "Conflict", exc_type=ResourceExistsError)
    key_client.purge_deleted_key(name)
    not_found(lambda: key_client.get_key(name))

    restored = key_client.restore_key_backup(backup)
    assert isinstance(restored, KeyVaultKey)
    assert restored.id == second.id and restored.key.n == second.key.n
    assert_no_private_attributes(restored)
    versions = {p.version: p for p in key_client.list_properties_of_key_versions(name)}
    assert set(versions) == {first.properties.version, second.properties.version}
    assert versions[first.properties.version].enabled is False
    assert versions[first.properties.version].tags == {"v": "1"}
    # the same private key: it decrypts what was encrypted before the backup
    assert remote(restored).decrypt(EncryptionAlgorithm.rsa_oaep, ciphertext).plaintext == b"before backup"
    # restoring onto an existing name is a conflict
    expect_error(lambda: key_client.restore_key_backup(backup), 409, "Conflict", exc_type=ResourceExistsError)


def test_restore_rejects_garbage(key_client: KeyClient) -> None:
    name = key_client.create_ec_key(unique("tamper")).name
    backup = key_client.backup_key(name)
    delete_and_wait(key_client, name)
    key_client.purge_deleted_key(name)
    flipped = bytearray(backup)
    flipped[len(flipped) // 2] ^= 1
    for blob in (b"garbage", b"\x00", backup[:-1], backup[:16], bytes(flipped), base64.b64encode(backup)):
        bad(lambda b=blob: key_client.restore_key_backup(b))
    not_found(lambda: key_client.get_key(name))
    assert key_client.restore_key_backup(backup).name == name
    not_found(lambda: key_client.backup_key(unique("nobak")))


# --- rotation ----------------------------------------------------------------------------------------

def test_rotate_key_makes_a_new_version_of_the_same_shape(key_client: KeyClient,
                                                          remote: Callable[[Any], CryptographyClient]) -> None:
    rsa_key = key_client.create_rsa_key(unique("rot"), size=3072, key_operations=["sign", "verify", "decrypt"],
                                        tags={"t": "1"})
    ec_key = key_client.create_ec_key(unique("rot"), curve="P-521")
    for key in (rsa_key, ec_key):
        rotated = key_client.rotate_key(key.name)
        assert version_of(rotated) != version_of(key) and rotated.name == key.name
        assert rotated.key_type == key.key_type and rotated.key_operations == key.key_operations
        assert rotated.properties.tags == key.properties.tags
        assert key_client.get_key(key.name).id == rotated.id
        assert {p.version for p in key_client.list_properties_of_key_versions(key.name)} == {
            key.properties.version, rotated.properties.version}
        if key.key_type == KeyType.rsa:
            assert len(rotated.key.n) == 384 and rotated.key.n != key.key.n and rotated.key.e == key.key.e
        else:
            assert rotated.key.crv == "P-521" and rotated.key.x != key.key.x
        # both versions stay usable
        alg = "RS256" if key.key_type == KeyType.rsa else "ES512"
        for version in (key, rotated):
            digest = digest_for(alg)
            verify_locally(version.key, alg, digest, remote(version).sign(SignatureAlgorithm(alg), digest).signature)
    not_found(lambda: key_client.rotate_key(unique("norot")))


def test_rotation_policy(key_client: KeyClient, dev_server: DevServer) -> None:
    name = key_client.create_ec_key(unique("pol")).name
    default = key_client.get_key_rotation_policy(name)
    assert default.id == f"{dev_server.vault_url}/keys/{name}/rotationpolicy"
    assert [(a.action, a.time_before_expiry) for a in default.lifetime_actions] == [
        (KeyRotationPolicyAction.notify, "P30D")]

    actions = [KeyRotationLifetimeAction(KeyRotationPolicyAction.rotate, time_after_create="P90D"),
               KeyRotationLifetimeAction(KeyRotationPolicyAction.notify, time_before_expiry="P30D")]
    updated = key_client.update_key_rotation_policy(name, KeyRotationPolicy(), lifetime_actions=actions,
                                                    expires_in="P180D")
    fetched = key_client.get_key_rotation_policy(name)
    for policy in (updated, fetched):
        assert policy.id == f"{dev_server.vault_url}/keys/{name}/rotationpolicy"
        assert policy.expires_in == "P180D"
        assert sorted((a.action, a.time_after_create, a.time_before_expiry) for a in policy.lifetime_actions) == [
            (KeyRotationPolicyAction.notify, None, "P30D"), (KeyRotationPolicyAction.rotate, "P90D", None)]
        assert policy.created_on is not None and policy.updated_on is not None
    # a rotated version expires expiryTime after its creation
    rotated = key_client.rotate_key(name)
    assert rotated.properties.expires_on - rotated.properties.created_on == dt.timedelta(days=180)
    # updating with only new actions keeps expires_in (what the key_rotation sample relies on)
    kept = key_client.update_key_rotation_policy(name, fetched, lifetime_actions=[
        KeyRotationLifetimeAction(KeyRotationPolicyAction.notify, time_before_expiry="P10D")])
    assert kept.expires_in == "P180D"
    bad(lambda: key_client.update_key_rotation_policy(name, KeyRotationPolicy(), lifetime_actions=[
        KeyRotationLifetimeAction("Explode", time_after_create="P90D")]))
    bad(lambda: key_client.update_key_rotation_policy(name, KeyRotationPolicy(), lifetime_actions=[
        KeyRotationLifetimeAction(KeyRotationPolicyAction.rotate, time_after_create="90 days")]))
    not_found(lambda: key_client.get_key_rotation_policy(unique("nopol")))


def test_rotation_policy_takes_iso_8601_times_and_keeps_key_vaults_limits(key_client: KeyClient) -> None:
    """Durations as Key Vault's docs write them (P3M, P2W, PT48H, P1DT12H); a rotation no sooner than 7 days after
    creation nor later than 7 days before expiry, expiryTime at least 28 days, timeAfterCreate for Rotate only, one
    action of each type."""
    name = key_client.create_ec_key(unique("poltime")).name
    rotate, notify = KeyRotationPolicyAction.rotate, KeyRotationPolicyAction.notify
    policy = key_client.update_key_rotation_policy(name, KeyRotationPolicy(), expires_in="PT720H", lifetime_actions=[
        KeyRotationLifetimeAction(rotate, time_after_create="P2W"),
        KeyRotationLifetimeAction(notify, time_before_expiry="P7DT12H")])
    assert policy.expires_in == "PT720H"
    assert sorted((a.action, a.time_after_create, a.time_before_expiry) for a in policy.lifetime_actions) == [
        (notify, None, "P7DT12H"), (rotate, "P2W", None)]
    rotated = key_client.rotate_key(name)
    assert rotated.properties.expires_on - rotated.properties.created_on == dt.timedelta(hours=720)

    def refused(expires_in: str | None, *actions: KeyRotationLifetimeAction) -> None:
        bad(lambda: key_client.update_key_rotation_policy(
            name, KeyRotationPolicy(), expires_in=expires_in, lifetime_actions=list(actions)))

    refused(None, KeyRotationLifetimeAction(rotate, time_after_create="PT48H"))  # under 7 days
    refused("P27D")  # expiryTime under 28 days
    refused("P30D", KeyRotationLifetimeAction(rotate, time_after_create="P25D"))  # 5 days before expiry
    refused("P90D", KeyRotationLifetimeAction(rotate, time_before_expiry="P85D"))  # 5 days after creation
    refused(None, KeyRotationLifetimeAction(rotate, time_before_expiry="P30D"))  # before expiry of no expiryTime
    refused(None, KeyRotationLifetimeAction(notify, time_after_create="P30D"))  # timeAfterCreate is Rotate's
    refused(None, KeyRotationLifetimeAction(rotate, time_after_create="P30D"),
            KeyRotationLifetimeAction(rotate, time_after_create="P60D"))  # two Rotate actions
    for malformed in ("PT", "P1H", "PT1D", "P-1D", "48H"):
        refused(None, KeyRotationLifetimeAction(rotate, time_after_create=malformed))
    # what was refused changed nothing
    assert key_client.get_key_rotation_policy(name).expires_in == "PT720H"


# --- random bytes ------------------------------------------------------------------------------------

def test_get_random_bytes(key_client: KeyClient) -> None:
    for count in (1, 16, 64, 128):
        value = key_client.get_random_bytes(count)
        assert isinstance(value, bytes) and len(value) == count
    assert key_client.get_random_bytes(128) != key_client.get_random_bytes(128)
    exc = bad(lambda: key_client.get_random_bytes(129))
    assert "128" in exc.error.message
    with pytest.raises(ValueError, match="At least one random byte"):
        key_client.get_random_bytes(0)  # the SDK refuses 0 itself; the server must too:
    for count in (0, 129, -1, "8", 1.5, None):
        response = key_client.send_request(HttpRequest("POST", "rng", json={"count": count},
                                                       params={"api-version": API_VERSION}))
        assert response.status_code == 400, (count, response.text())
        assert response.json()["error"]["code"] == "BadParameter"


# --- every algorithm of every key type ---------------------------------------------------------------

def _ids(*parts: Any) -> str:
    return "-".join(str(p) for p in parts)


@pytest.mark.parametrize(("size", "alg"), [(s, a) for s in RSA_SIZES for a in RSA_ENCRYPTION],
                         ids=[_ids(s, a) for s in RSA_SIZES for a in RSA_ENCRYPTION])
def test_rsa_encrypt_decrypt(keys: dict[str, KeyVaultKey], key_client: KeyClient, size: int, alg: str,
                             remote: Callable[[Any], CryptographyClient],
                             local: Callable[[Any], CryptographyClient]) -> None:
    key = keys[f"RSA-{size}"]
    algorithm = EncryptionAlgorithm(alg)
    plaintext = os.urandom(32)
    # Coffer encrypts and decrypts
    crypto = remote(key)
    encrypted = crypto.encrypt(algorithm, plaintext)
    assert encrypted.key_id == key.id and encrypted.algorithm == algorithm
    assert len(encrypted.ciphertext) == size // 8
    assert crypto.decrypt(algorithm, encrypted.ciphertext).plaintext == plaintext
    # a ciphertext made with `cryptography` from the public JWK of get_key decrypts in Coffer
    public = key_client.get_key(key.name).key
    assert crypto.decrypt(algorithm, encrypt_locally(public, alg, plaintext)).plaintext == plaintext
    # the dev identity's client encrypts locally (SDK behaviour) and decrypts in Coffer
    sdk = local(key)
    assert sdk.decrypt(algorithm, sdk.encrypt(algorithm, plaintext).ciphertext).plaintext == plaintext
    # the largest plaintext fits; one byte more is a 400
    limit = size // 8 - (11 if alg == "RSA1_5" else 2 + 2 * (20 if alg == "RSA-OAEP" else 32))
    big = os.urandom(limit)
    assert crypto.decrypt(algorithm, crypto.encrypt(algorithm, big).ciphertext).plaintext == big
    bad(lambda: crypto.encrypt(algorithm, big + b"x"))
    if alg != "RSA1_5":  # PKCS#1 v1.5 decryption may use implicit rejection (random output, no error)
        tampered = bytearray(encrypted.ciphertext)
        tampered[-1] ^= 1
        exc = bad(lambda: crypto.decrypt(algorithm, bytes(tampered)))
        assert plaintext.hex() not in exc.error.message


@pytest.mark.parametrize(("size", "alg"), [(s, a) for s in RSA_SIZES for a in RSA_ENCRYPTION],
                         ids=[_ids(s, a) for s in RSA_SIZES for a in RSA_ENCRYPTION])
def test_rsa_wrap_unwrap(keys: dict[str, KeyVaultKey], size: int, alg: str,
                         remote: Callable[[Any], CryptographyClient],
                         local: Callable[[Any], CryptographyClient]) -> None:
    key = keys[f"RSA-{size}"]
    algorithm = KeyWrapAlgorithm(alg)
    cek = os.urandom(32)
    crypto = remote(key)
    wrapped = crypto.wrap_key(algorithm, cek)
    assert wrapped.key_id == key.id and wrapped.algorithm == algorithm and len(wrapped.encrypted_key) == size // 8
    assert crypto.unwrap_key(algorithm, wrapped.encrypted_key).key == cek
    assert crypto.unwrap_key(algorithm, encrypt_locally(key.key, alg, cek)).key == cek
    sdk = local(key)
    assert sdk.unwrap_key(algorithm, sdk.wrap_key(algorithm, cek).encrypted_key).key == cek


@pytest.mark.parametrize(("size", "alg"), [(s, a) for s in RSA_SIZES for a in RSA_SIGNATURE],
                         ids=[_ids(s, a) for s in RSA_SIZES for a in RSA_SIGNATURE])
def test_rsa_sign_verify(keys: dict[str, KeyVaultKey], key_client: KeyClient, size: int, alg: str,
                         remote: Callable[[Any], CryptographyClient],
                         local: Callable[[Any], CryptographyClient]) -> None:
    key = keys[f"RSA-{size}"]
    algorithm = SignatureAlgorithm(alg)
    digest = digest_for(alg)
    crypto = remote(key)
    signed = crypto.sign(algorithm, digest)
    assert signed.key_id == key.id and signed.algorithm == algorithm and len(signed.signature) == size // 8
    # verified by `cryptography` with nothing but the public JWK from get_key
    public = key_client.get_key(key.name, key.properties.version).key
    verify_locally(public, alg, digest, signed.signature)
    with pytest.raises(InvalidSignature):
        verify_locally(public, alg, digest_for(alg), signed.signature)
    # PKCS#1 v1.5 is deterministic, PSS is randomised
    again = crypto.sign(algorithm, digest).signature
    assert (again == signed.signature) is alg.startswith("RS")
    # Coffer's verify, and the SDK's local one
    assert crypto.verify(algorithm, digest, signed.signature).is_valid is True
    tampered = bytearray(signed.signature)
    tampered[0] ^= 1
    assert crypto.verify(algorithm, digest, bytes(tampered)).is_valid is False
    assert crypto.verify(algorithm, digest_for(alg), signed.signature).is_valid is False
    sdk = local(key)
    assert sdk.verify(algorithm, digest, sdk.sign(algorithm, digest).signature).is_valid is True


@pytest.mark.parametrize("crv", EC_CURVES)
def test_ec_sign_verify(keys: dict[str, KeyVaultKey], key_client: KeyClient, crv: str,
                        remote: Callable[[Any], CryptographyClient],
                        local: Callable[[Any], CryptographyClient]) -> None:
    key, alg = keys[f"EC-{crv}"], EC_SIGNATURE[crv]
    algorithm = SignatureAlgorithm(alg)
    digest = digest_for(alg)
    crypto = remote(key)
    signed = crypto.sign(algorithm, digest)
    assert signed.key_id == key.id and len(signed.signature) == 2 * COORDINATE_BYTES[crv]
    public = key_client.get_key(key.name).key
    verify_locally(public, alg, digest, signed.signature)
    with pytest.raises(InvalidSignature):
        verify_locally(public, alg, digest_for(alg), signed.signature)
    assert crypto.verify(algorithm, digest, signed.signature).is_valid is True
    tampered = bytearray(signed.signature)
    tampered[-1] ^= 1
    assert crypto.verify(algorithm, digest, bytes(tampered)).is_valid is False
    sdk = local(key)
    assert sdk.verify(algorithm, digest, sdk.sign(algorithm, digest).signature).is_valid is True
    # every other curve's algorithm is refused for this key
    for other in set(EC_SIGNATURE.values()) - {alg}:
        bad(lambda o=other: crypto.sign(SignatureAlgorithm(o), digest_for(o)))


@pytest.mark.parametrize(("size", "mode"), [(s, m) for s in OCT_SIZES for m in OCT_MODES],
                         ids=[_ids(s, m) for s in OCT_SIZES for m in OCT_MODES])
def test_oct_encrypt_decrypt(keys: dict[str, KeyVaultKey], size: int, mode: str,
                             remote: Callable[[Any], CryptographyClient]) -> None:
    key = keys[f"oct-{size}"]
    algorithm = EncryptionAlgorithm(f"A{size}{mode}")
    crypto = remote(key)
    if mode == "GCM":
        plaintext, aad = os.urandom(45), b"header"
        encrypted = crypto.encrypt(algorithm, plaintext, additional_authenticated_data=aad)
        assert len(encrypted.iv) == 12 and len(encrypted.tag) == 16 and len(encrypted.ciphertext) == 45
        assert encrypted.key_id == key.id and encrypted.aad == aad

        def decrypt(**changes: Any) -> bytes:
            args = {"iv": encrypted.iv, "authentication_tag": encrypted.tag, "additional_authenticated_data": aad,
                    **changes}
            return crypto.decrypt(algorithm, encrypted.ciphertext, **args).plaintext

        assert decrypt() == plaintext
        bad(lambda: decrypt(additional_authenticated_data=b"other"))
        bad(lambda: decrypt(authentication_tag=bytes(16)))
        bad(lambda: decrypt(iv=os.urandom(12)))
        # without aad
        plain = crypto.encrypt(algorithm, b"no aad")
        assert crypto.decrypt(algorithm, plain.ciphertext, iv=plain.iv, authentication_tag=plain.tag).plaintext == (
            b"no aad")
    else:
        plaintext = os.urandom(48 if mode == "CBC" else 37)
        iv = os.urandom(16)
        encrypted = crypto.encrypt(algorithm, plaintext, iv=iv)
        assert encrypted.iv == iv and encrypted.key_id == key.id
        assert len(encrypted.ciphertext) == 48
        assert crypto.decrypt(algorithm, encrypted.ciphertext, iv=iv).plaintext == plaintext
        if mode == "CBC":
            bad(lambda: crypto.encrypt(algorithm, b"not a multiple of 16", iv=iv))
        else:
            # a whole block gains a whole block of padding
            block = os.urandom(16)
            whole = crypto.encrypt(algorithm, block, iv=iv).ciphertext
            assert len(whole) == 32 and crypto.decrypt(algorithm, whole, iv=iv).plaintext == block
    # an algorithm for another key size is refused
    for other in set(OCT_SIZES) - {size}:
        if mode == "GCM":
            bad(lambda o=other: crypto.encrypt(EncryptionAlgorithm(f"A{o}GCM"), b"x"))
        else:
            bad(lambda o=other: crypto.encrypt(EncryptionAlgorithm(f"A{o}{mode}"), bytes(16), iv=bytes(16)))


@pytest.mark.parametrize("size", OCT_SIZES)
def test_sdk_client_of_a_readable_oct_key(keys: dict[str, KeyVaultKey], size: int,
                                          local: Callable[[Any], CryptographyClient]) -> None:
    """The dev identity's client with an oct KeyVaultKey sends GCM and CBC to Coffer. (Not CBCPAD or KW: for those
    azure-keyvault-keys 4.11.3 builds a local SymmetricKey from the JWK, and with no `k` in it, which Key Vault never
    returns, that is a random key of the SDK's own; hence the `remote` client above.)"""
    crypto = local(keys[f"oct-{size}"])
    gcm = EncryptionAlgorithm(f"A{size}GCM")
    sealed = crypto.encrypt(gcm, b"via the SDK", additional_authenticated_data=b"a")
    assert crypto.decrypt(gcm, sealed.ciphertext, iv=sealed.iv, authentication_tag=sealed.tag,
                          additional_authenticated_data=b"a").plaintext == b"via the SDK"
    cbc, iv, block = EncryptionAlgorithm(f"A{size}CBC"), os.urandom(16), os.urandom(64)
    assert crypto.decrypt(cbc, crypto.encrypt(cbc, block, iv=iv).ciphertext, iv=iv).plaintext == block


@pytest.mark.parametrize("size", OCT_SIZES)
def test_oct_wrap_unwrap(keys: dict[str, KeyVaultKey], size: int,
                         remote: Callable[[Any], CryptographyClient]) -> None:
    key = keys[f"oct-{size}"]
    algorithm = KeyWrapAlgorithm(f"A{size}KW")
    crypto = remote(key)
    for cek in (os.urandom(16), os.urandom(32), os.urandom(64)):
        wrapped = crypto.wrap_key(algorithm, cek)
        assert len(wrapped.encrypted_key) == len(cek) + 8 and wrapped.key_id == key.id
        assert crypto.unwrap_key(algorithm, wrapped.encrypted_key).key == cek
    tampered = bytearray(crypto.wrap_key(algorithm, os.urandom(32)).encrypted_key)
    tampered[3] ^= 1
    bad(lambda: crypto.unwrap_key(algorithm, bytes(tampered)))
    bad(lambda: crypto.wrap_key(algorithm, os.urandom(12)))  # AES-KW wraps at least 16 bytes, in 8-byte steps
    for other in set(OCT_SIZES) - {size}:
        bad(lambda o=other: crypto.wrap_key(KeyWrapAlgorithm(f"A{o}KW"), os.urandom(32)))


def test_versionless_key_id_uses_the_latest_version(key_client: KeyClient, dev_server: DevServer,
                                                    remote: Callable[[Any], CryptographyClient]) -> None:
    """CryptographyClient(versionless id) of a principal that cannot read keys posts to /keys/{name}//sign (C4)."""
    first = key_client.create_ec_key(unique("vless"), curve="P-256")
    crypto = remote(f"{dev_server.vault_url}/keys/{first.name}")
    digest = digest_for("ES256")
    verify_locally(first.key, "ES256", digest, crypto.sign(SignatureAlgorithm.es256, digest).signature)
    second = key_client.rotate_key(first.name)
    signature = crypto.sign(SignatureAlgorithm.es256, digest).signature
    verify_locally(second.key, "ES256", digest, signature)
    with pytest.raises(InvalidSignature):
        verify_locally(first.key, "ES256", digest, signature)


def test_crypto_only_principal_runs_every_operation_in_coffer(
        keys: dict[str, KeyVaultKey], dev_server: DevServer, crypto_only: ClientSecretCredential,
        remote: Callable[[Any], CryptographyClient]) -> None:
    """The premise of `remote`: the principal cannot read keys, and the operations the SDK would do locally reach
    Coffer (its audit log says so)."""
    rsa_key, oct_key = keys["RSA-2048"], keys["oct-256"]
    with KeyClient(dev_server.vault_url, crypto_only, connection_verify=dev_server.ca) as reader:
        forbidden(lambda: reader.get_key(rsa_key.name))
    crypto = remote(rsa_key)
    digest = digest_for("RS256")
    crypto.verify(SignatureAlgorithm.rs256, digest, crypto.sign(SignatureAlgorithm.rs256, digest).signature)
    crypto.encrypt(EncryptionAlgorithm.rsa_oaep, b"x")
    crypto.wrap_key(KeyWrapAlgorithm.rsa_oaep, os.urandom(32))
    oct_crypto = remote(oct_key)
    oct_crypto.encrypt(EncryptionAlgorithm.a256_cbcpad, b"x", iv=bytes(16))
    oct_crypto.wrap_key(KeyWrapAlgorithm.aes_256, os.urandom(32))
    records = [json.loads(line) for line in (dev_server.data_dir / "audit.log").read_text().splitlines() if line]

    def seen(operation: str, kid: str) -> bool:
        return any(r["operationName"] == operation and r["resultSignature"] == "OK"
                   and kid in json.dumps(r["properties"]) for r in records)

    for operation in ("KeySign", "KeyVerify", "KeyEncrypt", "KeyWrap"):
        assert seen(operation, rsa_key.id), operation
    for operation in ("KeyEncrypt", "KeyWrap"):
        assert seen(operation, oct_key.id), operation


# --- enforcement ---------------------------------------------------------------------------------------

def test_key_ops_are_enforced(key_client: KeyClient, remote: Callable[[Any], CryptographyClient]) -> None:
    ec_key = key_client.create_ec_key(unique("ops"), key_operations=["verify"])
    crypto = remote(ec_key)
    digest = digest_for("ES256")
    bad(lambda: crypto.sign(SignatureAlgorithm.es256, digest))
    assert crypto.verify(SignatureAlgorithm.es256, digest, bytes(64)).is_valid is False
    key_client.update_key_properties(ec_key.name, key_operations=["sign", "verify"])
    verify_locally(ec_key.key, "ES256", digest, crypto.sign(SignatureAlgorithm.es256, digest).signature)

    rsa_key = rsa2048(key_client, "ops", key_operations=["encrypt", "decrypt"])
    crypto = remote(rsa_key)
    ciphertext = crypto.encrypt(EncryptionAlgorithm.rsa_oaep, b"ok").ciphertext
    assert crypto.decrypt(EncryptionAlgorithm.rsa_oaep, ciphertext).plaintext == b"ok"
    bad(lambda: crypto.wrap_key(KeyWrapAlgorithm.rsa_oaep, os.urandom(32)))
    bad(lambda: crypto.unwrap_key(KeyWrapAlgorithm.rsa_oaep, ciphertext))
    bad(lambda: crypto.sign(SignatureAlgorithm.rs256, digest_for("RS256")))
    bad(lambda: key_client.create_ec_key(unique("ops"), key_operations=["sign", "explode"]))


def test_disabled_key_is_forbidden(key_client: KeyClient, remote: Callable[[Any], CryptographyClient]) -> None:
    key = rsa2048(key_client, "off")
    crypto = remote(key)
    digest = digest_for("RS256")
    signature = crypto.sign(SignatureAlgorithm.rs256, digest).signature
    ciphertext = encrypt_locally(key.key, "RSA-OAEP", b"secret")
    key_client.update_key_properties(key.name, enabled=False)
    exc = forbidden(lambda: crypto.sign(SignatureAlgorithm.rs256, digest))
    assert "disabled" in exc.error.message
    forbidden(lambda: crypto.decrypt(EncryptionAlgorithm.rsa_oaep, ciphertext))
    forbidden(lambda: crypto.encrypt(EncryptionAlgorithm.rsa_oaep, b"x"))
    forbidden(lambda: crypto.verify(SignatureAlgorithm.rs256, digest, signature))
    key_client.update_key_properties(key.name, enabled=True)
    assert crypto.decrypt(EncryptionAlgorithm.rsa_oaep, ciphertext).plaintext == b"secret"
    # created disabled
    off = key_client.create_ec_key(unique("off"), enabled=False)
    forbidden(lambda: remote(off).sign(SignatureAlgorithm.es256, digest_for("ES256")))


@pytest.mark.parametrize("window", ["expired", "not-yet-valid"])
def test_outside_the_validity_window_only_decrypt_unwrap_verify_work(
        key_client: KeyClient, remote: Callable[[Any], CryptographyClient], window: str) -> None:
    key = rsa2048(key_client, "win")
    crypto = remote(key)
    digest = digest_for("PS256")
    signature = crypto.sign(SignatureAlgorithm.ps256, digest).signature
    ciphertext = encrypt_locally(key.key, "RSA-OAEP-256", b"still readable")
    wrapped = encrypt_locally(key.key, "RSA-OAEP", b"k" * 32)
    if window == "expired":
        key_client.update_key_properties(key.name, expires_on=whole_seconds(-dt.timedelta(minutes=5)))
    else:
        key_client.update_key_properties(key.name, not_before=whole_seconds(dt.timedelta(days=1)))
    forbidden(lambda: crypto.sign(SignatureAlgorithm.ps256, digest))
    forbidden(lambda: crypto.encrypt(EncryptionAlgorithm.rsa_oaep_256, b"x"))
    forbidden(lambda: crypto.wrap_key(KeyWrapAlgorithm.rsa_oaep, os.urandom(32)))
    assert crypto.decrypt(EncryptionAlgorithm.rsa_oaep_256, ciphertext).plaintext == b"still readable"
    assert crypto.unwrap_key(KeyWrapAlgorithm.rsa_oaep, wrapped).key == b"k" * 32
    assert crypto.verify(SignatureAlgorithm.ps256, digest, signature).is_valid is True
    # back inside the window, everything works again
    if window == "expired":
        key_client.update_key_properties(key.name, expires_on=whole_seconds(dt.timedelta(days=1)))
    else:
        key_client.update_key_properties(key.name, not_before=whole_seconds(-dt.timedelta(days=1)))
    verify_locally(key.key, "PS256", digest, crypto.sign(SignatureAlgorithm.ps256, digest).signature)
    # a key created already expired (EC: sign refused, verify allowed)
    ec_key = key_client.create_ec_key(unique("win"), expires_on=whole_seconds(-dt.timedelta(days=1)))
    assert ec_key.properties.expires_on < dt.datetime.now(dt.UTC)
    forbidden(lambda: remote(ec_key).sign(SignatureAlgorithm.es256, digest_for("ES256")))
    assert remote(ec_key).verify(SignatureAlgorithm.es256, digest_for("ES256"), bytes(64)).is_valid is False


def test_wrong_digest_size_is_a_bad_parameter(keys: dict[str, KeyVaultKey],
                                              remote: Callable[[Any], CryptographyClient]) -> None:
    rsa_crypto = remote(keys["RSA-2048"])
    for alg, size in (("RS256", 48), ("RS384", 32), ("RS512", 48), ("PS256", 20), ("PS512", 32), ("RS256", 1)):
        bad(lambda a=alg, s=size: rsa_crypto.sign(SignatureAlgorithm(a), os.urandom(s)))
        digest = os.urandom(size)
        bad(lambda a=alg, d=digest: rsa_crypto.verify(SignatureAlgorithm(a), d, bytes(256)))
    for label, alg, size in (("EC-P-256", "ES256", 48), ("EC-P-384", "ES384", 32), ("EC-P-521", "ES512", 32),
                             ("EC-P-256K", "ES256K", 64)):
        bad(lambda k=label, a=alg, s=size: remote(keys[k]).sign(SignatureAlgorithm(a), os.urandom(s)))


def test_wrong_algorithm_for_the_key_type_is_a_bad_parameter(keys: dict[str, KeyVaultKey],
                                                             remote: Callable[[Any], CryptographyClient]) -> None:
    rsa_crypto, ec_crypto, oct_crypto = remote(keys["RSA-2048"]), remote(keys["EC-P-256"]), remote(keys["oct-256"])
    calls = [
        lambda: rsa_crypto.sign(SignatureAlgorithm.es256, digest_for("ES256")),
        lambda: rsa_crypto.encrypt(EncryptionAlgorithm.a256_gcm, b"x"),
        lambda: rsa_crypto.wrap_key(KeyWrapAlgorithm.aes_256, os.urandom(32)),
        lambda: rsa_crypto.encrypt("RSA-OAEP-512", b"x"),
        lambda: ec_crypto.sign(SignatureAlgorithm.rs256, digest_for("RS256")),
        lambda: ec_crypto.sign(SignatureAlgorithm.ps256, digest_for("PS256")),
        lambda: oct_crypto.encrypt(EncryptionAlgorithm.rsa_oaep, b"x"),
        lambda: oct_crypto.wrap_key(KeyWrapAlgorithm.rsa_oaep_256, os.urandom(32)),
        lambda: oct_crypto.sign(SignatureAlgorithm.rs256, digest_for("RS256")),
        lambda: oct_crypto.encrypt("A256CBC-HS512", bytes(16), iv=bytes(16)),
        lambda: ec_crypto.sign("EXPLODE", bytes(32)),
    ]
    for call in calls:
        bad(call)
    # EC keys neither encrypt nor wrap (sign/verify only); the SDK sends these as-is for a remote-only client
    ec_ops = remote(keys["EC-P-384"])
    for call in (lambda: ec_ops.encrypt(EncryptionAlgorithm.rsa_oaep, b"x"),
                 lambda: ec_ops.wrap_key(KeyWrapAlgorithm.rsa_oaep, os.urandom(32))):
        with pytest.raises(HttpResponseError) as info:
            call()
        assert info.value.status_code == 400, info.value


def test_key_operation_on_a_missing_key_or_version(dev_server: DevServer, keys: dict[str, KeyVaultKey],
                                                   remote: Callable[[Any], CryptographyClient]) -> None:
    missing = remote(f"{dev_server.vault_url}/keys/{unique('gone')}/{'0' * 32}")
    not_found(lambda: missing.sign(SignatureAlgorithm.es256, digest_for("ES256")))
    wrong_version = remote(f"{dev_server.vault_url}/keys/{keys['EC-P-256'].name}/{'0' * 32}")
    not_found(lambda: wrong_version.sign(SignatureAlgorithm.es256, digest_for("ES256")))


def test_binary_fields_must_be_base64url(raw: httpx.Client, keys: dict[str, KeyVaultKey]) -> None:
    """Characters outside the alphabet are a 400, never silently dropped ("!!!" once decoded to b"" and was
    encrypted); padded base64url and the standard alphabet are accepted (contract C24)."""
    name = keys["oct-256"].name
    for value in ("!!!", "AAAA!!!!", "QUJD REVG", "QUJD\nREVG", "QUJDR", "A===", "=AAA"):
        for op, body in (("encrypt", {"alg": "A256GCM", "value": value}),
                         ("decrypt", {"alg": "A256GCM", "value": "QUJD", "iv": value, "tag": "QUJD"}),
                         ("wrapkey", {"alg": "A256KW", "value": value})):
            response = raw.post(f"/keys/{name}//{op}", json=body)
            assert response.status_code == 400, (op, value, response.text)
            assert response.json()["error"]["code"] == "BadParameter"
    response = raw.post("/keys/restore", json={"value": "!!!"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "BadParameter"
    plain = base64.urlsafe_b64encode(b"\xfb\xff" * 8).decode()  # padded, with - and _
    for value in (plain, plain.rstrip("="), plain.replace("-", "+").replace("_", "/")):
        response = raw.post(f"/keys/{name}//encrypt", json={"alg": "A256GCM", "value": value})
        assert response.status_code == 200, (value, response.text)


# --- import --------------------------------------------------------------------------------------------

def test_import_rsa_key_and_use_it(key_client: KeyClient, remote: Callable[[Any], CryptographyClient]) -> None:
    private = rsa.generate_private_key(65537, 2048)
    name = unique("imprsa")
    imported = key_client.import_key(name, rsa_jwk(private, key_ops=["sign", "verify", "encrypt", "decrypt",
                                                                       "wrapKey", "unwrapKey"]), tags={"i": "1"})
    numbers = private.public_key().public_numbers()
    assert imported.key_type == KeyType.rsa and imported.properties.tags == {"i": "1"}
    assert int.from_bytes(imported.key.n, "big") == numbers.n and int.from_bytes(imported.key.e, "big") == numbers.e
    assert imported.key.kid == imported.id
    assert_no_private_attributes(imported)
    assert_no_private_attributes(key_client.get_key(name))
    crypto = remote(imported)
    for alg in RSA_SIGNATURE:
        digest = digest_for(alg)
        # Coffer's signature verifies with our public key, ours verifies in Coffer
        verify_locally(imported.key, alg, digest, crypto.sign(SignatureAlgorithm(alg), digest).signature)
        assert crypto.verify(SignatureAlgorithm(alg), digest, sign_with(private, alg, digest)).is_valid is True
    for alg in RSA_ENCRYPTION:
        # Coffer encrypts with the public half, we decrypt with the private key, and the other way round
        ciphertext = crypto.encrypt(EncryptionAlgorithm(alg), b"imported").ciphertext
        assert private.decrypt(ciphertext, rsa_padding(alg)) == b"imported"
        assert crypto.decrypt(EncryptionAlgorithm(alg), encrypt_locally(imported.key, alg, b"in")).plaintext == b"in"
        wrapped = crypto.wrap_key(KeyWrapAlgorithm(alg), b"w" * 32).encrypted_key
        assert private.decrypt(wrapped, rsa_padding(alg)) == b"w" * 32
    # importing again makes a new version
    again = key_client.import_key(name, rsa_jwk(rsa.generate_private_key(65537, 2048)))
    assert again.properties.version != imported.properties.version
    assert len(list(key_client.list_properties_of_key_versions(name))) == 2
    assert again.key_operations == DEFAULT_OPS["RSA"]


def test_import_rsa_key_from_n_e_d_only(key_client: KeyClient, remote: Callable[[Any], CryptographyClient]) -> None:
    private = rsa.generate_private_key(65537, 3072)
    imported = key_client.import_key(unique("ned"), rsa_jwk(private, members=("n", "e", "d")))
    assert len(imported.key.n) == 384
    digest = digest_for("RS384")
    verify_locally(imported.key, "RS384", digest,
                   remote(imported).sign(SignatureAlgorithm.rs384, digest).signature)


@pytest.mark.parametrize("crv", EC_CURVES)
def test_import_ec_key_and_use_it(key_client: KeyClient, remote: Callable[[Any], CryptographyClient],
                                  crv: str) -> None:
    private = ec.generate_private_key(CURVES[crv])
    imported = key_client.import_key(unique("impec"), ec_jwk(private, crv, key_ops=["sign", "verify"]))
    jwk = ec_jwk(private, crv)
    assert imported.key.crv == crv and imported.key.x == jwk.x and imported.key.y == jwk.y
    assert_no_private_attributes(imported)
    alg = EC_SIGNATURE[crv]
    digest = digest_for(alg)
    crypto = remote(imported)
    verify_locally(imported.key, alg, digest, crypto.sign(SignatureAlgorithm(alg), digest).signature)
    # and a signature made with our own private key verifies in Coffer
    assert crypto.verify(SignatureAlgorithm(alg), digest, sign_with(private, alg, digest)).is_valid is True


@pytest.mark.parametrize("size", OCT_SIZES)
def test_import_oct_key_interoperates_with_local_aes(key_client: KeyClient, size: int,
                                                     remote: Callable[[Any], CryptographyClient]) -> None:
    k = os.urandom(size // 8)
    imported = key_client.import_key(unique("impoct"), JsonWebKey(kty=KeyType.oct, k=k))
    assert imported.key_type == KeyType.oct and imported.key.k is None
    assert imported.key_operations == DEFAULT_OPS["oct"]
    crypto = remote(imported)
    # GCM: Coffer's ciphertext opens with AESGCM(k), ours (with Coffer's iv) in Coffer
    gcm = EncryptionAlgorithm(f"A{size}GCM")
    sealed = crypto.encrypt(gcm, b"gcm plaintext", additional_authenticated_data=b"aad")
    assert AESGCM(k).decrypt(sealed.iv, sealed.ciphertext + sealed.tag, b"aad") == b"gcm plaintext"
    iv = os.urandom(12)
    ours = AESGCM(k).encrypt(iv, b"from us", None)
    assert crypto.decrypt(gcm, ours[:-16], iv=iv, authentication_tag=ours[-16:]).plaintext == b"from us"
    # CBC with a given iv is deterministic: byte-for-byte what `cryptography` computes
    iv16, block = os.urandom(16), os.urandom(32)
    encryptor = Cipher(algorithms.AES(k), modes.CBC(iv16)).encryptor()
    expected = encryptor.update(block) + encryptor.finalize()
    assert crypto.encrypt(EncryptionAlgorithm(f"A{size}CBC"), block, iv=iv16).ciphertext == expected
    assert crypto.decrypt(EncryptionAlgorithm(f"A{size}CBC"), expected, iv=iv16).plaintext == block
    padded = crypto.encrypt(EncryptionAlgorithm(f"A{size}CBCPAD"), b"twenty byte message!", iv=iv16).ciphertext
    decryptor = Cipher(algorithms.AES(k), modes.CBC(iv16)).decryptor()
    assert (decryptor.update(padded) + decryptor.finalize()) == b"twenty byte message!" + bytes([12]) * 12
    # AES key wrap (RFC 3394) is deterministic too
    cek = os.urandom(32)
    wrapped = crypto.wrap_key(KeyWrapAlgorithm(f"A{size}KW"), cek).encrypted_key
    assert wrapped == keywrap.aes_key_wrap(k, cek)
    assert crypto.unwrap_key(KeyWrapAlgorithm(f"A{size}KW"), keywrap.aes_key_wrap(k, b"x" * 24)).key == b"x" * 24


def test_import_errors(key_client: KeyClient) -> None:
    private = rsa.generate_private_key(65537, 2048)
    calls = [
        lambda: key_client.import_key(unique("imp"), rsa_jwk(private, members=("n", "e"))),  # no private part
        lambda: key_client.import_key(unique("imp"), JsonWebKey(kty=KeyType.oct)),
        lambda: key_client.import_key(unique("imp"), JsonWebKey(kty=KeyType.oct, k=os.urandom(20))),
        lambda: key_client.import_key(unique("imp"), JsonWebKey(kty="XYZ", k=os.urandom(16))),
        lambda: key_client.import_key(unique("imp"), rsa_jwk(rsa.generate_private_key(65537, 1024))),
        lambda: key_client.import_key(unique("imp"), JsonWebKey(kty=KeyType.ec, crv="P-256", x=bytes(32),
                                                                y=bytes(32), d=os.urandom(32))),
        lambda: key_client.import_key("bad_name", rsa_jwk(private)),
    ]
    for call in calls:
        bad(call)


# --- errors --------------------------------------------------------------------------------------------

def test_missing_keys_are_key_not_found(key_client: KeyClient) -> None:
    missing = unique("nope")
    exc = not_found(lambda: key_client.get_key(missing))
    assert missing in exc.error.message
    name = key_client.create_ec_key(unique("has")).name
    not_found(lambda: key_client.get_key(name, "0" * 32))
    not_found(lambda: key_client.update_key_properties(name, "0" * 32, enabled=False))
    for call in (lambda: key_client.update_key_properties(missing, enabled=False),
                 lambda: key_client.begin_delete_key(missing),
                 lambda: key_client.backup_key(missing),
                 lambda: key_client.rotate_key(missing),
                 lambda: key_client.get_deleted_key(missing),
                 lambda: key_client.update_key_rotation_policy(missing, KeyRotationPolicy(), expires_in="P90D")):
        not_found(call)


@pytest.mark.parametrize("bad_name", ["bad_name", "a" * 128, "bad.name", "bad name", "ünïcode"])
def test_invalid_names_are_bad_parameters(key_client: KeyClient, bad_name: str) -> None:
    bad(lambda: key_client.create_ec_key(bad_name))
    bad(lambda: key_client.get_key(bad_name))
    longest = (unique("n").replace("-", "") * 20)[:127]
    assert key_client.create_ec_key(longest).name == longest


def test_invalid_types_sizes_and_curves_are_bad_parameters(key_client: KeyClient) -> None:
    calls = [
        lambda: key_client.create_key(unique("kty"), "XYZ"),
        lambda: key_client.create_key(unique("kty"), "AKP"),
        lambda: key_client.create_rsa_key(unique("size"), size=1024),
        lambda: key_client.create_rsa_key(unique("size"), size=2047),
        lambda: key_client.create_rsa_key(unique("size"), size=8192),
        lambda: key_client.create_rsa_key(unique("exp"), size=2048, public_exponent=4),
        lambda: key_client.create_oct_key(unique("size"), size=64),
        lambda: key_client.create_oct_key(unique("size"), size=512),
        lambda: key_client.create_ec_key(unique("crv"), curve="P-224"),
        lambda: key_client.create_ec_key(unique("crv"), curve="P-999"),
        lambda: key_client.create_ec_key(unique("crv"), curve="Ed25519"),
    ]
    for call in calls:
        bad(call)


# --- no private material in any response ---------------------------------------------------------------

def _no_secret_text(text: str, values: dict[str, bytes], where: str) -> None:
    for member, value in values.items():
        for form in (base64.urlsafe_b64encode(value).rstrip(b"="), base64.b64encode(value).rstrip(b"="),
                     value.hex().encode()):
            assert form.decode() not in text, f"{where}: private member {member} in the response"


def test_raw_responses_never_carry_private_members(raw: httpx.Client, keys: dict[str, KeyVaultKey]) -> None:
    for label, key in keys.items():
        name, version = key.name, key.properties.version
        for path in (f"/keys/{name}", f"/keys/{name}/", f"/keys/{name}/{version}"):
            response = raw.get(path)
            assert response.status_code == 200, response.text
            body = response.json()
            assert_public_only(body, f"GET {path}")
            jwk = body["key"]
            assert jwk["kid"] == key.id and jwk["kty"] == label.split("-", 1)[0]
            expected = {"RSA": {"kid", "kty", "key_ops", "n", "e"}, "EC": {"kid", "kty", "key_ops", "crv", "x", "y"},
                        "oct": {"kid", "kty", "key_ops"}}[jwk["kty"]]
            assert set(jwk) == expected, jwk
            for member in ("n", "e", "x", "y"):
                if member in jwk:
                    assert re.fullmatch(r"[A-Za-z0-9_-]+", jwk[member]), "unpadded base64url (C24)"
        for path in ("/keys", f"/keys/{name}/versions", "/deletedkeys"):
            response = raw.get(path, params={"maxresults": 25})
            assert response.status_code == 200
            assert_public_only(response.json(), f"GET {path}")
            assert all("key" not in item for item in response.json()["value"])


def test_raw_lifecycle_of_an_imported_key_never_echoes_its_private_key(raw: httpx.Client) -> None:
    """Every response about a key whose private members we know, from import to restore, as raw JSON."""
    private = rsa.generate_private_key(65537, 2048)
    secret_parts = private_values(private)
    jwk = {"kty": "RSA", **{m: base64.urlsafe_b64encode(v).rstrip(b"=").decode()
                            for m, v in {**secret_parts, **{
                                "n": private.public_key().public_numbers().n.to_bytes(256, "big"),
                                "e": b"\x01\x00\x01"}}.items()}}
    name = unique("rawimp")
    responses: list[tuple[str, httpx.Response]] = []

    def call(method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = raw.request(method, path, **kwargs)
        responses.append((f"{method} {path}", response))
        return response

    assert call("PUT", f"/keys/{name}", json={"key": jwk, "tags": {"raw": "1"}}).status_code == 200
    assert call("GET", f"/keys/{name}").status_code == 200
    assert call("PATCH", f"/keys/{name}", json={"tags": {"raw": "2"}}).status_code == 200
    blob = call("POST", f"/keys/{name}/backup").json()["value"]
    assert call("POST", f"/keys/{name}//sign", json={"alg": "RS256", "value": base64.urlsafe_b64encode(
        bytes(32)).rstrip(b"=").decode()}).status_code == 200
    assert call("DELETE", f"/keys/{name}").status_code == 200
    assert call("GET", f"/deletedkeys/{name}").status_code == 200
    assert call("GET", "/deletedkeys").status_code == 200
    assert call("POST", f"/deletedkeys/{name}/recover").status_code == 200
    assert call("GET", f"/keys/{name}/versions").status_code == 200
    assert call("DELETE", f"/keys/{name}").status_code == 200
    assert call("DELETE", f"/deletedkeys/{name}").status_code == 204
    assert call("POST", "/keys/restore", json={"value": blob}).status_code == 200
    assert call("PUT", f"/keys/{name}", json={"key": jwk}).status_code == 200  # a second version
    for where, response in responses:
        if response.content:
            assert_public_only(response.json(), where)
        _no_secret_text(response.text, secret_parts, where)
    # the backup blob is opaque: no private member in any encoding either
    _no_secret_text(blob, secret_parts, "backup blob")
    decoded = base64.urlsafe_b64decode(blob + "=" * (-len(blob) % 4))
    for member, value in secret_parts.items():
        assert value not in decoded, f"backup blob holds {member} in the clear"


# --- confidentiality of the data directory -------------------------------------------------------------

def _encodings(value: bytes) -> dict[str, bytes]:
    forms = {"raw": value, "hex": value.hex().encode(), "HEX": value.hex().upper().encode()}
    for name, encoded in (("base64", base64.b64encode(value)), ("base64url", base64.urlsafe_b64encode(value))):
        forms[name] = encoded
        forms[name + "-unpadded"] = encoded.rstrip(b"=")
    return forms


def _leaks(files: dict[str, bytes], needles: dict[str, bytes]) -> list[str]:
    return [f"{label} as {form} in {path}" for label, needle in needles.items()
            for form, encoded in _encodings(needle).items() for path, data in files.items() if encoded in data]


def test_private_key_material_never_reaches_the_data_directory(fresh_server: DevServer) -> None:
    server = fresh_server
    rsa_private = rsa.generate_private_key(65537, 2048)
    ec_private = ec.generate_private_key(ec.SECP384R1())
    oct_k = os.urandom(32)
    needles: dict[str, bytes] = {}
    for label, private in (("rsa", rsa_private), ("ec", ec_private)):
        for member, value in private_values(private).items():
            needles[f"{label}-{member}"] = value
        needles[f"{label}-pkcs8"] = private.private_bytes(serialization.Encoding.DER,
                                                          serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption())
        needles[f"{label}-traditional"] = private.private_bytes(serialization.Encoding.DER,
                                                                serialization.PrivateFormat.TraditionalOpenSSL,
                                                                serialization.NoEncryption())
    needles["oct-k"] = oct_k
    with server_identity_env(server):
        cred = ManagedIdentityCredential(connection_verify=server.ca)
        with KeyClient(server.vault_url, cred, connection_verify=server.ca) as client:
            rsa_key = client.import_key("conf-rsa", rsa_jwk(rsa_private))
            ec_key = client.import_key("conf-ec", ec_jwk(ec_private, "P-384"))
            oct_key = client.import_key("conf-oct", JsonWebKey(kty=KeyType.oct, k=oct_k))
            generated = [client.create_rsa_key("conf-gen-rsa", size=2048), client.create_ec_key("conf-gen-ec"),
                         client.create_oct_key("conf-gen-oct", size=128)]
            # use them, and make the server rewrite their rows: update, rotate, delete/recover, backup/purge/restore
            with CryptographyClient(rsa_key, cred, connection_verify=server.ca) as crypto:
                ciphertext = crypto.encrypt(EncryptionAlgorithm.rsa_oaep, b"x").ciphertext
                assert crypto.decrypt(EncryptionAlgorithm.rsa_oaep, ciphertext).plaintext == b"x"
                crypto.sign(SignatureAlgorithm.rs256, digest_for("RS256"))
            with CryptographyClient(ec_key, cred, connection_verify=server.ca) as crypto:
                crypto.sign(SignatureAlgorithm.es384, digest_for("ES384"))
            with CryptographyClient(oct_key, cred, connection_verify=server.ca) as crypto:
                sealed = crypto.encrypt(EncryptionAlgorithm.a256_gcm, b"y")
                assert AESGCM(oct_k).decrypt(sealed.iv, sealed.ciphertext + sealed.tag, None) == b"y"
            client.update_key_properties("conf-rsa", tags={"touched": "yes"})
            client.rotate_key("conf-gen-rsa")
            client.begin_delete_key("conf-ec").wait()
            client.begin_recover_deleted_key("conf-ec").wait()
            blob = client.backup_key("conf-oct")
            client.begin_delete_key("conf-oct").wait()
            client.purge_deleted_key("conf-oct")
            client.restore_key_backup(blob)
            client.backup_key("conf-rsa")
            assert all(k.key.n or k.key.x or k.key_type == KeyType.oct for k in generated)
        cred.close()
    release_connections()

    server.kill()  # as a crash leaves them, WAL included (on PostgreSQL: the cluster's files of the server's database)
    crashed = {str(p): p.read_bytes() for p in server.stored_files()}
    assert any(p.endswith("-wal") or "/pg_wal/" in p for p in crashed), sorted(crashed)
    assert _leaks(crashed, needles) == []
    server.restart()
    assert server.stop() == 0
    stopped = {str(p): p.read_bytes() for p in server.stored_files()}
    stopped["<server output>"] = "".join(server.output).encode()
    assert _leaks(stopped, needles) == []
    # positive control: the scan does see what is stored in the clear on purpose (the public modulus)
    public_n = rsa_private.public_key().public_numbers().n.to_bytes(256, "big")
    assert _leaks(stopped, {"rsa-n": public_n}), "the scan found no public key either: is it reading the database?"
