"""The unmodified synchronous `azure.keyvault.secrets.SecretClient` against a real Coffer dev server.

Every operation of the Secrets API, with managed identity (App Service protocol) and with a service
principal through MSAL (`ClientSecretCredential`), every api-version the SDK offers, and the error cases
with Azure's exact status, `error.code` and `innererror.code`.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.keyvault.secrets import ApiVersion, DeletedSecret, SecretClient, SecretProperties

from tests.compat.conftest import client_secret_credential
from tests.compat.helpers import check_error, unique, whole_seconds
from tests.support.server import DevServer

NINETY_DAYS = dt.timedelta(days=90)


# --- helpers ---------------------------------------------------------------------------------------

def expect_error(call: Callable[[], Any], status: int, code: str, *, inner: str | None = None,
                 exc_type: type[HttpResponseError] = HttpResponseError) -> HttpResponseError:
    with pytest.raises(HttpResponseError) as info:
        call()
    return check_error(info.value, status, code, inner=inner, exc_type=exc_type)


def names_of(items: Any) -> list[str]:
    return [item.name for item in items]


def make_client(server: DevServer, credential: Any, **kwargs: Any) -> SecretClient:
    return SecretClient(server.vault_url, credential, connection_verify=server.ca, **kwargs)


def delete_and_wait(client: SecretClient, name: str) -> DeletedSecret:
    poller = client.begin_delete_secret(name)
    deleted = poller.result()
    poller.wait()
    assert poller.done()
    return deleted


# --- set / get -------------------------------------------------------------------------------------

def test_set_creates_a_new_version_each_time(client: SecretClient, dev_server: DevServer) -> None:
    name = unique("set")
    secrets = [client.set_secret(name, f"value-{i}") for i in range(3)]
    versions = [s.properties.version for s in secrets]
    assert len(set(versions)) == 3
    for i, (secret, version) in enumerate(zip(secrets, versions, strict=True)):
        assert secret.name == name
        assert secret.value == f"value-{i}"
        assert version and len(version) == 32 and all(c in "0123456789abcdef" for c in version)
        assert secret.id == f"{dev_server.vault_url}/secrets/{name}/{version}"
        props = secret.properties
        assert props.vault_url == dev_server.vault_url
        assert props.enabled is True
        assert props.created_on is not None and props.updated_on is not None
        assert props.recoverable_days == 90
        assert props.recovery_level == "Recoverable+Purgeable"
        assert props.content_type is None and props.tags is None
        assert props.not_before is None and props.expires_on is None
    # previousVersion (api-version >= 2025-06-01) links each new version to the one it replaced
    assert secrets[0].properties.previous_version is None
    assert secrets[1].properties.previous_version == versions[0]
    assert secrets[2].properties.previous_version == versions[1]
    assert client.get_secret(name).value == "value-2"


def test_set_with_all_properties(client: SecretClient) -> None:
    name = unique("props")
    nbf, exp = whole_seconds(-dt.timedelta(hours=1)), whole_seconds(dt.timedelta(days=30))
    tags = {"env": "test", "owner": "compat", "empty": ""}
    secret = client.set_secret(name, "v", content_type="text/plain", tags=tags, not_before=nbf, expires_on=exp,
                               enabled=True)
    for props in (secret.properties, client.get_secret(name).properties):
        assert props.content_type == "text/plain"
        assert props.tags == tags
        assert props.not_before == nbf
        assert props.expires_on == exp
        assert props.enabled is True


def test_get_latest_specific_and_empty_version(client: SecretClient) -> None:
    name = unique("get")
    first = client.set_secret(name, "one")
    second = client.set_secret(name, "two")
    assert client.get_secret(name).value == "two"
    assert client.get_secret(name, None).value == "two"
    latest = client.get_secret(name, "")  # GET /secrets/{name}/ (trailing slash) = latest (C4)
    assert latest.value == "two" and latest.properties.version == second.properties.version
    older = client.get_secret(name, first.properties.version)
    assert older.value == "one"
    assert older.id == first.id
    assert client.get_secret(name, second.properties.version).value == "two"
    # versions compare case-insensitively, names too
    assert client.get_secret(name, first.properties.version.upper()).value == "one"
    assert client.get_secret(name.upper()).value == "two"


def test_empty_and_unicode_values_round_trip(client: SecretClient) -> None:
    name = unique("uni")
    value = "pässwörd ✓ \u0000 \n\t \"quoted\" 🔑"
    assert client.set_secret(name, value).value == value
    assert client.get_secret(name).value == value
    assert client.set_secret(name, "").value == ""
    assert client.get_secret(name).value == ""


def test_names_are_case_insensitive(client: SecretClient) -> None:
    base = unique("Case")
    first = client.set_secret(base, "a")
    second = client.set_secret(base.upper(), "b")  # same secret, new version
    assert client.get_secret(base.lower()).value == "b"
    versions = {p.version for p in client.list_properties_of_secret_versions(base)}
    assert versions == {first.properties.version, second.properties.version}


# --- update ----------------------------------------------------------------------------------------

def test_update_properties_leaves_value_and_version_unchanged(client: SecretClient) -> None:
    name = unique("upd")
    original = client.set_secret(name, "keep-me", content_type="text/plain", tags={"a": "1"})
    nbf, exp = whole_seconds(-dt.timedelta(days=1)), whole_seconds(dt.timedelta(days=365))
    updated = client.update_secret_properties(name, content_type="application/json", tags={"b": "2", "c": "3"},
                                              not_before=nbf, expires_on=exp, enabled=True)
    assert isinstance(updated, SecretProperties)
    assert updated.version == original.properties.version
    assert updated.content_type == "application/json"
    assert updated.tags == {"b": "2", "c": "3"}
    assert updated.not_before == nbf and updated.expires_on == exp
    assert updated.enabled is True
    assert updated.created_on == original.properties.created_on
    assert updated.updated_on is not None and updated.updated_on >= original.properties.updated_on
    fetched = client.get_secret(name)
    assert fetched.value == "keep-me"
    assert fetched.properties.version == original.properties.version
    assert fetched.properties.content_type == "application/json"
    assert fetched.properties.tags == {"b": "2", "c": "3"}
    assert fetched.properties.not_before == nbf and fetched.properties.expires_on == exp
    assert len(list(client.list_properties_of_secret_versions(name))) == 1

    # a partial update touches only the fields it sends
    partial = client.update_secret_properties(name, tags={"only": "tags"})
    assert partial.tags == {"only": "tags"}
    assert partial.content_type == "application/json"
    assert partial.not_before == nbf and partial.expires_on == exp and partial.enabled is True


def test_update_a_specific_version(client: SecretClient) -> None:
    name = unique("updv")
    old = client.set_secret(name, "old")
    new = client.set_secret(name, "new")
    changed = client.update_secret_properties(name, old.properties.version, tags={"version": "old"})
    assert changed.version == old.properties.version and changed.tags == {"version": "old"}
    assert client.get_secret(name).properties.tags is None
    assert client.get_secret(name, old.properties.version).properties.tags == {"version": "old"}
    assert client.get_secret(name).properties.version == new.properties.version


def test_disabled_secret_is_forbidden_until_enabled(client: SecretClient) -> None:
    name = unique("dis")
    old = client.set_secret(name, "old")
    new = client.set_secret(name, "new")
    assert client.update_secret_properties(name, enabled=False).enabled is False
    expect_error(lambda: client.get_secret(name), 403, "Forbidden", inner="SecretDisabled")
    expect_error(lambda: client.get_secret(name, new.properties.version), 403, "Forbidden", inner="SecretDisabled")
    # other versions stay readable, and properties stay listable
    assert client.get_secret(name, old.properties.version).value == "old"
    listed = {p.version: p.enabled for p in client.list_properties_of_secret_versions(name)}
    assert listed == {old.properties.version: True, new.properties.version: False}
    assert client.update_secret_properties(name, enabled=True).enabled is True
    assert client.get_secret(name).value == "new"
    # a secret created disabled is forbidden from the start
    off = unique("off")
    assert client.set_secret(off, "x", enabled=False).properties.enabled is False
    expect_error(lambda: client.get_secret(off), 403, "Forbidden", inner="SecretDisabled")


# --- list ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def thirty(client: SecretClient) -> tuple[str, set[str]]:
    """30 secrets sharing a prefix: more than one default page (25)."""
    prefix = unique("page")
    names = {f"{prefix}-{i:02d}" for i in range(30)}
    for name in sorted(names):
        client.set_secret(name, "v", tags={"prefix": prefix})
    return prefix, names


def _pages(paged: Any) -> list[tuple[list[Any], str | None]]:
    pages = []
    iterator = paged.by_page()
    for page in iterator:
        items = list(page)
        pages.append((items, iterator.continuation_token))
    return pages


def test_list_secrets_follows_next_link_past_the_default_page(client: SecretClient,
                                                              thirty: tuple[str, set[str]]) -> None:
    prefix, names = thirty
    pages = _pages(client.list_properties_of_secrets())
    assert len(pages) >= 2, "30+ secrets must not fit one default page of 25"
    assert len(pages[0][0]) == 25
    first_link = pages[0][1]
    assert first_link and "$skiptoken=" in first_link
    assert all(len(items) <= 25 for items, _ in pages)
    assert pages[-1][1] is None
    listed = [p.name for items, _ in pages for p in items]
    assert len(listed) == len(set(listed)), "an item appeared on two pages"
    assert names <= set(listed)
    for items, _ in pages:
        for props in items:
            if props.name in names:
                assert props.version is None  # items carry unversioned ids
                assert props.tags == {"prefix": prefix}
                assert props.enabled is True


@pytest.mark.parametrize("size", [7, 25])
def test_list_secrets_with_max_page_size(client: SecretClient, thirty: tuple[str, set[str]], size: int) -> None:
    _, names = thirty
    pages = _pages(client.list_properties_of_secrets(max_page_size=size))
    for index, (items, link) in enumerate(pages):
        if index < len(pages) - 1:
            assert len(items) == size
            assert link and f"maxresults={size}" in link  # the client re-sends only what nextLink carries
        else:
            assert 1 <= len(items) <= size and link is None
    listed = [p.name for items, _ in pages for p in items]
    assert len(listed) == len(set(listed))
    assert names <= set(listed)


def test_list_secrets_rejects_page_sizes_outside_1_to_25(client: SecretClient) -> None:
    for size in (0, 26):
        expect_error(lambda s=size: list(client.list_properties_of_secrets(max_page_size=s)), 400, "BadParameter")


def test_list_versions_pages(client: SecretClient) -> None:
    name = unique("vers")
    created = [client.set_secret(name, f"v{i}").properties.version for i in range(27)]
    client.update_secret_properties(name, created[3], enabled=False, tags={"n": "3"})
    everything = list(client.list_properties_of_secret_versions(name))
    assert sorted(p.version for p in everything) == sorted(created)
    for props in everything:
        assert props.name == name
        assert props.id.endswith(f"/secrets/{name}/{props.version}")
        assert props.enabled is (props.version != created[3])
    assert next(p for p in everything if p.version == created[3]).tags == {"n": "3"}
    pages = _pages(client.list_properties_of_secret_versions(name, max_page_size=5))
    assert [len(items) for items, _ in pages] == [5, 5, 5, 5, 5, 2]
    assert all(link and "maxresults=5" in link for _, link in pages[:-1]) and pages[-1][1] is None
    assert sorted(p.version for items, _ in pages for p in items) == sorted(created)
    pages = _pages(client.list_properties_of_secret_versions(name, max_page_size=1))
    assert [len(items) for items, _ in pages] == [1] * 27
    assert sorted(p.version for items, _ in pages for p in items) == sorted(created)
    expect_error(lambda: list(client.list_properties_of_secret_versions(unique("none"))), 404, "SecretNotFound",
                 exc_type=ResourceNotFoundError)


# --- delete / deleted / recover / purge ------------------------------------------------------------

def test_delete_then_get_and_list_deleted(client: SecretClient, dev_server: DevServer) -> None:
    name = unique("del")
    secret = client.set_secret(name, "doomed", content_type="text/plain", tags={"k": "v"})
    client.set_secret(unique("bystander"), "x")
    poller = client.begin_delete_secret(name)
    deleted = poller.result()
    poller.wait()
    assert poller.done() and poller.status() == "finished"
    assert isinstance(deleted, DeletedSecret)
    assert deleted.name == name
    assert deleted.recovery_id == f"{dev_server.vault_url}/deletedsecrets/{name}"
    assert deleted.deleted_date is not None and deleted.scheduled_purge_date is not None
    assert deleted.scheduled_purge_date - deleted.deleted_date == NINETY_DAYS
    assert deleted.properties.version == secret.properties.version
    assert deleted.properties.content_type == "text/plain" and deleted.properties.tags == {"k": "v"}

    fetched = client.get_deleted_secret(name)
    assert fetched.recovery_id == deleted.recovery_id
    assert fetched.deleted_date == deleted.deleted_date
    assert fetched.scheduled_purge_date == deleted.scheduled_purge_date
    assert fetched.properties.version == secret.properties.version

    expect_error(lambda: client.get_secret(name), 404, "SecretNotFound", exc_type=ResourceNotFoundError)
    expect_error(lambda: client.get_secret(name, secret.properties.version), 404, "SecretNotFound",
                 exc_type=ResourceNotFoundError)
    expect_error(lambda: client.update_secret_properties(name, enabled=False), 404, "SecretNotFound",
                 exc_type=ResourceNotFoundError)
    expect_error(lambda: client.begin_delete_secret(name), 404, "SecretNotFound", exc_type=ResourceNotFoundError)
    assert name not in names_of(client.list_properties_of_secrets())

    listed = {d.name: d for d in client.list_deleted_secrets()}
    assert name in listed
    assert listed[name].recovery_id == deleted.recovery_id
    assert listed[name].deleted_date == deleted.deleted_date
    assert listed[name].scheduled_purge_date == deleted.scheduled_purge_date


def test_list_deleted_secrets_pages(client: SecretClient) -> None:
    names = {unique("dl") for _ in range(5)}
    for name in names:
        client.set_secret(name, "v")
        delete_and_wait(client, name)
    pages = _pages(client.list_deleted_secrets(max_page_size=4))
    assert all(len(items) == 4 for items, _ in pages[:-1]) and 1 <= len(pages[-1][0]) <= 4
    assert all(link and "maxresults=4" in link for _, link in pages[:-1]) and pages[-1][1] is None
    listed = [d.name for items, _ in pages for d in items]
    assert len(listed) == len(set(listed))
    assert names <= set(listed)


def test_recover_deleted_secret(client: SecretClient) -> None:
    name = unique("rec")
    first = client.set_secret(name, "one")
    second = client.set_secret(name, "two", tags={"t": "2"})
    delete_and_wait(client, name)
    poller = client.begin_recover_deleted_secret(name)
    recovered = poller.result()
    poller.wait()
    assert poller.done()
    assert isinstance(recovered, SecretProperties)
    assert recovered.name == name and recovered.version == second.properties.version
    assert recovered.tags == {"t": "2"}
    assert client.get_secret(name).value == "two"
    assert client.get_secret(name, first.properties.version).value == "one"
    expect_error(lambda: client.get_deleted_secret(name), 404, "SecretNotFound", exc_type=ResourceNotFoundError)
    assert name not in names_of(client.list_deleted_secrets())
    assert name in names_of(client.list_properties_of_secrets())


def test_purge_deleted_secret(client: SecretClient) -> None:
    name = unique("purge")
    client.set_secret(name, "one")
    client.set_secret(name, "two")
    delete_and_wait(client, name)
    assert client.purge_deleted_secret(name) is None
    expect_error(lambda: client.get_deleted_secret(name), 404, "SecretNotFound", exc_type=ResourceNotFoundError)
    expect_error(lambda: client.get_secret(name), 404, "SecretNotFound", exc_type=ResourceNotFoundError)
    assert name not in names_of(client.list_deleted_secrets())
    # the name is free again: a brand-new secret with a single version
    fresh = client.set_secret(name, "three")
    assert fresh.properties.previous_version is None
    assert [p.version for p in client.list_properties_of_secret_versions(name)] == [fresh.properties.version]


def test_set_on_a_soft_deleted_name_conflicts(client: SecretClient) -> None:
    name = unique("sd")
    client.set_secret(name, "v")
    delete_and_wait(client, name)
    exc = expect_error(lambda: client.set_secret(name, "again"), 409, "Conflict",
                       inner="ObjectIsDeletedButRecoverable", exc_type=ResourceExistsError)
    raw = exc.response.json()
    assert raw["error"]["innererror"] == {"code": "ObjectIsDeletedButRecoverable"}
    assert name in raw["error"]["message"]
    # also with another spelling of the name
    expect_error(lambda: client.set_secret(name.upper(), "again"), 409, "Conflict",
                 inner="ObjectIsDeletedButRecoverable", exc_type=ResourceExistsError)


def test_purge_and_recover_require_a_deleted_secret(client: SecretClient) -> None:
    live = unique("live")
    client.set_secret(live, "v")
    missing = unique("missing")
    for name in (live, missing):
        expect_error(lambda n=name: client.purge_deleted_secret(n), 404, "SecretNotFound",
                     exc_type=ResourceNotFoundError)
        expect_error(lambda n=name: client.begin_recover_deleted_secret(n), 404, "SecretNotFound",
                     exc_type=ResourceNotFoundError)
        expect_error(lambda n=name: client.get_deleted_secret(n), 404, "SecretNotFound",
                     exc_type=ResourceNotFoundError)
    assert client.get_secret(live).value == "v"


# --- backup / restore ------------------------------------------------------------------------------

def test_backup_restore_after_purge(client: SecretClient) -> None:
    name = unique("bak")
    exp = whole_seconds(dt.timedelta(days=10))
    v1 = client.set_secret(name, "one", content_type="text/plain", tags={"v": "1"})
    v2 = client.set_secret(name, "two", expires_on=exp)
    client.update_secret_properties(name, v1.properties.version, enabled=False)
    backup = client.backup_secret(name)
    assert isinstance(backup, bytes) and len(backup) > 0

    delete_and_wait(client, name)
    client.purge_deleted_secret(name)
    expect_error(lambda: client.get_secret(name), 404, "SecretNotFound", exc_type=ResourceNotFoundError)

    restored = client.restore_secret_backup(backup)
    assert isinstance(restored, SecretProperties)
    assert restored.name == name
    assert restored.version == v2.properties.version
    assert restored.expires_on == exp
    latest = client.get_secret(name)
    assert latest.value == "two" and latest.properties.version == v2.properties.version
    assert latest.properties.created_on == v2.properties.created_on
    versions = {p.version: p for p in client.list_properties_of_secret_versions(name)}
    assert set(versions) == {v1.properties.version, v2.properties.version}
    assert versions[v1.properties.version].enabled is False
    assert versions[v1.properties.version].tags == {"v": "1"}
    assert versions[v1.properties.version].content_type == "text/plain"
    client.update_secret_properties(name, v1.properties.version, enabled=True)
    assert client.get_secret(name, v1.properties.version).value == "one"

    # restoring onto an existing name is a conflict
    expect_error(lambda: client.restore_secret_backup(backup), 409, "Conflict", exc_type=ResourceExistsError)


def test_restore_onto_existing_or_soft_deleted_name_conflicts(client: SecretClient) -> None:
    name = unique("bakx")
    client.set_secret(name, "v")
    backup = client.backup_secret(name)
    expect_error(lambda: client.restore_secret_backup(backup), 409, "Conflict", exc_type=ResourceExistsError)
    delete_and_wait(client, name)
    expect_error(lambda: client.restore_secret_backup(backup), 409, "Conflict", exc_type=ResourceExistsError)
    client.purge_deleted_secret(name)
    assert client.restore_secret_backup(backup).name == name


def test_restore_rejects_garbage_and_tampered_blobs(client: SecretClient) -> None:
    name = unique("tamper")
    client.set_secret(name, "v")
    backup = client.backup_secret(name)
    delete_and_wait(client, name)
    client.purge_deleted_secret(name)

    def flipped(index: int) -> bytes:
        data = bytearray(backup)
        data[index] ^= 0x01
        return bytes(data)

    candidates = [
        b"garbage", b"\x00", b"x" * 1000, backup[:-1], backup[:20], backup + b"\x00",
        flipped(0), flipped(3), flipped(10), flipped(len(backup) // 2), flipped(len(backup) - 1),
        base64.b64encode(backup),
    ]
    for blob in candidates:
        expect_error(lambda b=blob: client.restore_secret_backup(b), 400, "BadParameter")
    expect_error(lambda: client.get_secret(name), 404, "SecretNotFound", exc_type=ResourceNotFoundError)
    assert client.restore_secret_backup(backup).name == name  # the genuine blob still works


def test_backup_of_missing_secret_is_not_found(client: SecretClient) -> None:
    expect_error(lambda: client.backup_secret(unique("nobak")), 404, "SecretNotFound",
                 exc_type=ResourceNotFoundError)


def test_restore_of_another_installations_backup_is_rejected(client: SecretClient,
                                                             fresh_server: DevServer) -> None:
    name = unique("foreign")
    credential = client_secret_credential(fresh_server)
    with make_client(fresh_server, credential) as other:
        other.set_secret(name, "from elsewhere")
        foreign = other.backup_secret(name)
    credential.close()
    expect_error(lambda: client.restore_secret_backup(foreign), 400, "BadParameter")
    expect_error(lambda: client.get_secret(name), 404, "SecretNotFound", exc_type=ResourceNotFoundError)


# --- validation errors -----------------------------------------------------------------------------

def test_missing_secret_and_version(client: SecretClient) -> None:
    missing = unique("nope")
    exc = expect_error(lambda: client.get_secret(missing), 404, "SecretNotFound", exc_type=ResourceNotFoundError)
    assert missing in exc.error.message
    name = unique("has")
    client.set_secret(name, "v")
    expect_error(lambda: client.get_secret(name, "0" * 32), 404, "SecretNotFound", exc_type=ResourceNotFoundError)
    expect_error(lambda: client.update_secret_properties(name, "0" * 32, enabled=False), 404, "SecretNotFound",
                 exc_type=ResourceNotFoundError)
    expect_error(lambda: client.update_secret_properties(missing, enabled=False), 404, "SecretNotFound",
                 exc_type=ResourceNotFoundError)
    expect_error(lambda: client.begin_delete_secret(missing), 404, "SecretNotFound",
                 exc_type=ResourceNotFoundError)


@pytest.mark.parametrize("bad", ["bad_name", "a" * 128, "bad.name", "bad name", "ünïcode", "semi;colon"])
def test_invalid_names_are_bad_parameters(client: SecretClient, bad: str) -> None:
    expect_error(lambda: client.set_secret(bad, "v"), 400, "BadParameter")
    expect_error(lambda: client.get_secret(bad), 400, "BadParameter")


def test_name_length_limit(client: SecretClient) -> None:
    longest = (unique("n").replace("-", "") * 20)[:127]
    assert client.set_secret(longest, "v").name == longest
    assert client.get_secret(longest).value == "v"
    expect_error(lambda: client.set_secret(longest + "x", "v"), 400, "BadParameter")


def test_value_size_limit(client: SecretClient) -> None:
    name = unique("size")
    assert client.set_secret(name, "x" * 25600).value == "x" * 25600  # 25 KiB exactly
    two_byte = "é" * 12800  # 25600 bytes as UTF-8
    assert client.get_secret(name).value == "x" * 25600
    assert client.set_secret(name, two_byte).value == two_byte
    expect_error(lambda: client.set_secret(name, "x" * 25601), 400, "BadParameter")
    expect_error(lambda: client.set_secret(name, "é" * 12801), 400, "BadParameter")
    expect_error(lambda: client.set_secret(unique("size"), "x" * 100_000), 400, "BadParameter")
    assert client.get_secret(name).value == two_byte


def test_tag_limits(client: SecretClient) -> None:
    name = unique("tags")
    fifteen = {f"k{i}": f"v{i}" for i in range(15)}
    assert client.set_secret(name, "v", tags=fifteen).properties.tags == fifteen
    sixteen = {f"k{i}": f"v{i}" for i in range(16)}
    expect_error(lambda: client.set_secret(name, "v", tags=sixteen), 400, "BadParameter")
    expect_error(lambda: client.update_secret_properties(name, tags=sixteen), 400, "BadParameter")
    long_ok = {"k" * 256: "v" * 256}
    assert client.set_secret(name, "v", tags=long_ok).properties.tags == long_ok
    expect_error(lambda: client.set_secret(name, "v", tags={"k" * 257: "v"}), 400, "BadParameter")
    expect_error(lambda: client.set_secret(name, "v", tags={"k": "v" * 257}), 400, "BadParameter")
    assert client.get_secret(name).properties.tags == long_ok


def test_content_type_limit(client: SecretClient) -> None:
    name = unique("ct")
    assert client.set_secret(name, "v", content_type="c" * 255).properties.content_type == "c" * 255
    expect_error(lambda: client.set_secret(name, "v", content_type="c" * 256), 400, "BadParameter")
    expect_error(lambda: client.update_secret_properties(name, content_type="c" * 256), 400, "BadParameter")
    assert client.get_secret(name).properties.content_type == "c" * 255


def test_not_before_later_than_expiry_is_rejected(client: SecretClient) -> None:
    name = unique("dates")
    early, late = whole_seconds(dt.timedelta(days=1)), whole_seconds(dt.timedelta(days=2))
    expect_error(lambda: client.set_secret(name, "v", not_before=late, expires_on=early), 400, "BadParameter")
    client.set_secret(name, "v", not_before=early, expires_on=late)
    expect_error(lambda: client.update_secret_properties(name, not_before=late + dt.timedelta(days=5)),
                 400, "BadParameter")
    props = client.get_secret(name).properties
    assert props.not_before == early and props.expires_on == late


def test_secret_outside_its_validity_window_is_still_readable(client: SecretClient) -> None:
    # nbf/exp are informational for secrets (docs secrets/about-secrets.md)
    name = unique("window")
    client.set_secret(name, "expired", expires_on=whole_seconds(-dt.timedelta(days=1)))
    assert client.get_secret(name).value == "expired"
    other = unique("window")
    client.set_secret(other, "future", not_before=whole_seconds(dt.timedelta(days=1)))
    assert client.get_secret(other).value == "future"


# --- other credentials and api-versions ------------------------------------------------------------

def test_full_flow_with_client_secret_credential(sp_client: SecretClient, dev_server: DevServer) -> None:
    name = unique("sp")
    first = sp_client.set_secret(name, "one", tags={"via": "msal"})
    second = sp_client.set_secret(name, "two")
    assert sp_client.get_secret(name).value == "two"
    assert sp_client.get_secret(name, first.properties.version).value == "one"
    assert sp_client.update_secret_properties(name, content_type="text/plain").content_type == "text/plain"
    assert name in names_of(sp_client.list_properties_of_secrets(max_page_size=25))
    assert {p.version for p in sp_client.list_properties_of_secret_versions(name)} == {
        first.properties.version, second.properties.version}
    backup = sp_client.backup_secret(name)
    deleted = delete_and_wait(sp_client, name)
    assert deleted.recovery_id == f"{dev_server.vault_url}/deletedsecrets/{name}"
    assert sp_client.get_deleted_secret(name).name == name
    assert name in names_of(sp_client.list_deleted_secrets())
    sp_client.begin_recover_deleted_secret(name).wait()
    assert sp_client.get_secret(name).value == "two"
    delete_and_wait(sp_client, name)
    sp_client.purge_deleted_secret(name)
    assert sp_client.restore_secret_backup(backup).version == second.properties.version
    assert sp_client.get_secret(name).properties.content_type == "text/plain"


def _listed(paged: Any, name: str) -> bool:
    """Whether `name` is in a listing; stops at the first match (names starting with "0" come first)."""
    return any(item.name == name for item in paged)


@pytest.mark.parametrize("api_version", list(ApiVersion), ids=lambda v: v.value)
def test_every_api_version(dev_server: DevServer, identity_env: None, api_version: ApiVersion) -> None:
    from azure.identity import ManagedIdentityCredential

    credential = ManagedIdentityCredential(connection_verify=dev_server.ca)
    with make_client(dev_server, credential, api_version=api_version) as client:
        name = unique("0av")
        first = client.set_secret(name, "one", tags={"api": api_version.value})
        second = client.set_secret(name, "two", content_type="text/plain")
        assert client.get_secret(name).value == "two"
        assert client.get_secret(name, first.properties.version).value == "one"
        # previousVersion is part of the bundle only from 2025-06-01-preview on
        dated = api_version.value[:4].isdigit()
        expected_previous = first.properties.version if dated and api_version.value >= "2025-06-01" else None
        assert second.properties.previous_version == expected_previous
        assert client.update_secret_properties(name, tags={"u": "1"}).tags == {"u": "1"}
        assert _listed(client.list_properties_of_secrets(max_page_size=5), name)
        assert {p.version for p in client.list_properties_of_secret_versions(name, max_page_size=1)} == {
            first.properties.version, second.properties.version}
        delete_and_wait(client, name)
        assert client.get_deleted_secret(name).properties.version == second.properties.version
        assert _listed(client.list_deleted_secrets(max_page_size=5), name)
        client.purge_deleted_secret(name)
        expect_error(lambda: client.get_secret(name), 404, "SecretNotFound", exc_type=ResourceNotFoundError)
    credential.close()


def test_environment_only_configuration(dev_server: DevServer, identity_env: None,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """No connection_verify anywhere: requests trusts REQUESTS_CA_BUNDLE (C5), and both
    ManagedIdentityCredential() and DefaultAzureCredential() find the App Service endpoint (C12)."""
    from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", dev_server.env["REQUESTS_CA_BUNDLE"])
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    for credential in (ManagedIdentityCredential(), DefaultAzureCredential()):
        with SecretClient(dev_server.vault_url, credential) as client:
            name = unique("envonly")
            version = client.set_secret(name, "from env").properties.version
            assert client.get_secret(name, version).value == "from env"
        credential.close()
