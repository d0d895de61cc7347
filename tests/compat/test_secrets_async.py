"""The unmodified asynchronous `azure.keyvault.secrets.aio.SecretClient` (aiohttp transport) with
`azure.identity.aio` credentials against a real Coffer dev server.

Plain test functions that run their coroutine with `asyncio.run` (no pytest plugin). aiohttp builds its
default TLS context when it is imported, so the dev CA is passed as `connection_verify`; the
environment-only route (SSL_CERT_FILE) is exercised by the published async samples (test_samples.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.identity.aio import ClientSecretCredential, ManagedIdentityCredential
from azure.keyvault.secrets import ApiVersion, DeletedSecret, SecretProperties
from azure.keyvault.secrets.aio import SecretClient

from tests.compat.helpers import check_error, unique, whole_seconds
from tests.support.server import DevServer

pytestmark = pytest.mark.usefixtures("identity_env")


@contextlib.asynccontextmanager
async def mi_client(server: DevServer, **kwargs: Any) -> AsyncIterator[SecretClient]:
    credential = ManagedIdentityCredential(connection_verify=server.ca)
    async with credential, SecretClient(server.vault_url, credential, connection_verify=server.ca,
                                        **kwargs) as client:
        yield client


@contextlib.asynccontextmanager
async def sp_client(server: DevServer) -> AsyncIterator[SecretClient]:
    credential = ClientSecretCredential(
        server.env["COFFER_TENANT_ID"], server.env["COFFER_CLIENT_ID"], server.env["COFFER_CLIENT_SECRET"],
        authority=server.authority, disable_instance_discovery=True, connection_verify=server.ca,
    )
    async with credential, SecretClient(server.vault_url, credential, connection_verify=server.ca) as client:
        yield client


async def expect_error(call: Callable[[], Awaitable[Any]], status: int, code: str, *, inner: str | None = None,
                       exc_type: type[HttpResponseError] = HttpResponseError) -> HttpResponseError:
    with pytest.raises(HttpResponseError) as info:
        await call()
    return check_error(info.value, status, code, inner=inner, exc_type=exc_type)


async def collect(paged: Any) -> list[Any]:
    return [item async for item in paged]


async def contains(paged: Any, name: str) -> bool:
    async for item in paged:
        if item.name == name:
            return True
    return False


async def pages_of(paged: Any) -> list[tuple[list[Any], str | None]]:
    pages = []
    iterator = paged.by_page()
    async for page in iterator:
        items = [item async for item in page]
        pages.append((items, iterator.continuation_token))
    return pages


def test_set_get_update(dev_server: DevServer) -> None:
    async def main() -> None:
        async with mi_client(dev_server) as client:
            name = unique("aset")
            first = await client.set_secret(name, "one", content_type="text/plain", tags={"a": "1"})
            second = await client.set_secret(name, "two")
            assert first.properties.version != second.properties.version
            assert second.id == f"{dev_server.vault_url}/secrets/{name}/{second.properties.version}"
            assert second.properties.previous_version == first.properties.version
            assert (await client.get_secret(name)).value == "two"
            assert (await client.get_secret(name, "")).properties.version == second.properties.version
            assert (await client.get_secret(name, first.properties.version)).value == "one"

            nbf, exp = whole_seconds(-dt.timedelta(hours=1)), whole_seconds(dt.timedelta(days=7))
            updated = await client.update_secret_properties(name, content_type="application/json", tags={"b": "2"},
                                                            not_before=nbf, expires_on=exp, enabled=True)
            assert isinstance(updated, SecretProperties)
            assert updated.version == second.properties.version
            assert (updated.content_type, updated.tags) == ("application/json", {"b": "2"})
            assert (updated.not_before, updated.expires_on) == (nbf, exp)
            latest = await client.get_secret(name)
            assert latest.value == "two" and latest.properties.version == second.properties.version
            assert latest.properties.tags == {"b": "2"}

            assert (await client.update_secret_properties(name, enabled=False)).enabled is False
            await expect_error(lambda: client.get_secret(name), 403, "Forbidden", inner="SecretDisabled")
            assert (await client.get_secret(name, first.properties.version)).value == "one"

    asyncio.run(main())


def test_list_paging(dev_server: DevServer) -> None:
    async def main() -> None:
        async with mi_client(dev_server) as client:
            prefix = unique("apage")
            names = {f"{prefix}-{i:02d}" for i in range(28)}
            await asyncio.gather(*(client.set_secret(n, "v", tags={"p": prefix}) for n in names))

            pages = await pages_of(client.list_properties_of_secrets())
            assert len(pages) >= 2 and len(pages[0][0]) == 25
            assert pages[0][1] and "$skiptoken=" in pages[0][1]
            listed = [p.name for items, _ in pages for p in items]
            assert len(listed) == len(set(listed)) and names <= set(listed)

            pages = await pages_of(client.list_properties_of_secrets(max_page_size=20))
            assert all(len(items) == 20 and link and "maxresults=20" in link for items, link in pages[:-1])
            assert 1 <= len(pages[-1][0]) <= 20 and pages[-1][1] is None
            listed = [p.name for items, _ in pages for p in items]
            assert len(listed) == len(set(listed)) and names <= set(listed)

            name = sorted(names)[0]
            versions = [(await client.set_secret(name, f"v{i}")).properties.version for i in range(6)]
            pages = await pages_of(client.list_properties_of_secret_versions(name, max_page_size=3))
            assert [len(items) for items, _ in pages] == [3, 3, 1]
            assert {p.version for items, _ in pages for p in items} >= set(versions)

    asyncio.run(main())


def test_delete_recover_purge(dev_server: DevServer) -> None:
    async def main() -> None:
        async with mi_client(dev_server) as client:
            name, other = unique("adel"), unique("adel")
            secret = await client.set_secret(name, "v", tags={"t": "1"})
            await client.set_secret(other, "w")

            deleted = await client.delete_secret(name)  # polls until the deletion is visible
            assert isinstance(deleted, DeletedSecret)
            assert deleted.recovery_id == f"{dev_server.vault_url}/deletedsecrets/{name}"
            assert deleted.scheduled_purge_date - deleted.deleted_date == dt.timedelta(days=90)
            assert deleted.properties.version == secret.properties.version
            fetched = await client.get_deleted_secret(name)
            assert fetched.recovery_id == deleted.recovery_id and fetched.properties.tags == {"t": "1"}
            assert name in [d.name for d in await collect(client.list_deleted_secrets())]
            await expect_error(lambda: client.get_secret(name), 404, "SecretNotFound", exc_type=ResourceNotFoundError)
            await expect_error(lambda: client.set_secret(name, "again"), 409, "Conflict",
                               inner="ObjectIsDeletedButRecoverable", exc_type=ResourceExistsError)

            recovered = await client.recover_deleted_secret(name)  # polls until the secret is back
            assert recovered.name == name and recovered.version == secret.properties.version
            assert (await client.get_secret(name)).value == "v"
            await expect_error(lambda: client.get_deleted_secret(name), 404, "SecretNotFound",
                               exc_type=ResourceNotFoundError)

            await client.delete_secret(other)
            assert await client.purge_deleted_secret(other) is None
            await expect_error(lambda: client.get_deleted_secret(other), 404, "SecretNotFound",
                               exc_type=ResourceNotFoundError)
            assert other not in [d.name for d in await collect(client.list_deleted_secrets(max_page_size=3))]

            await expect_error(lambda: client.purge_deleted_secret(name), 404, "SecretNotFound",
                               exc_type=ResourceNotFoundError)
            await expect_error(lambda: client.recover_deleted_secret(name), 404, "SecretNotFound",
                               exc_type=ResourceNotFoundError)

    asyncio.run(main())


def test_backup_restore(dev_server: DevServer) -> None:
    async def main() -> None:
        async with mi_client(dev_server) as client:
            name = unique("abak")
            first = await client.set_secret(name, "one")
            second = await client.set_secret(name, "two", content_type="text/plain")
            backup = await client.backup_secret(name)
            await expect_error(lambda: client.restore_secret_backup(backup), 409, "Conflict",
                               exc_type=ResourceExistsError)
            await client.delete_secret(name)
            await client.purge_deleted_secret(name)
            for blob in (b"garbage", backup[:-1], bytes([backup[0] ^ 1]) + backup[1:]):
                await expect_error(lambda b=blob: client.restore_secret_backup(b), 400, "BadParameter")
            restored = await client.restore_secret_backup(backup)
            assert restored.name == name and restored.version == second.properties.version
            assert restored.content_type == "text/plain"
            assert (await client.get_secret(name, first.properties.version)).value == "one"
            assert (await client.get_secret(name)).value == "two"
            await expect_error(lambda: client.restore_secret_backup(backup), 409, "Conflict",
                               exc_type=ResourceExistsError)

    asyncio.run(main())


def test_validation_errors(dev_server: DevServer) -> None:
    async def main() -> None:
        async with mi_client(dev_server) as client:
            missing = unique("amiss")
            await expect_error(lambda: client.get_secret(missing), 404, "SecretNotFound",
                               exc_type=ResourceNotFoundError)
            for bad in ("bad_name", "a" * 128):
                await expect_error(lambda b=bad: client.set_secret(b, "v"), 400, "BadParameter")
            name = unique("aval")
            await expect_error(lambda: client.set_secret(name, "x" * 25601), 400, "BadParameter")
            await expect_error(lambda: client.set_secret(name, "v", tags={f"k{i}": "v" for i in range(16)}),
                               400, "BadParameter")
            await expect_error(lambda: client.set_secret(name, "v", content_type="c" * 256), 400, "BadParameter")
            await client.set_secret(name, "x" * 25600, tags={f"k{i}": "v" for i in range(15)},
                                    content_type="c" * 255)
            await expect_error(lambda: client.purge_deleted_secret(name), 404, "SecretNotFound",
                               exc_type=ResourceNotFoundError)
            await expect_error(lambda: client.recover_deleted_secret(name), 404, "SecretNotFound",
                               exc_type=ResourceNotFoundError)
            assert (await client.get_secret(name)).value == "x" * 25600

    asyncio.run(main())


def test_concurrent_requests(dev_server: DevServer) -> None:
    async def main() -> None:
        async with mi_client(dev_server) as client:
            name = unique("aconc")
            await client.set_secret(name, "seed")
            writes = await asyncio.gather(*(client.set_secret(name, f"v{i}") for i in range(20)))
            assert len({w.properties.version for w in writes}) == 20
            reads = await asyncio.gather(*(client.get_secret(name, w.properties.version) for w in writes))
            assert [r.value for r in reads] == [f"v{i}" for i in range(20)]
            versions = {p.version async for p in client.list_properties_of_secret_versions(name)}
            assert {w.properties.version for w in writes} <= versions and len(versions) == 21

    asyncio.run(main())


def test_client_secret_credential(dev_server: DevServer) -> None:
    async def main() -> None:
        async with sp_client(dev_server) as client:
            name = unique("asp")
            secret = await client.set_secret(name, "via msal")
            assert (await client.get_secret(name)).value == "via msal"
            assert name in [p.name async for p in client.list_properties_of_secrets()]
            backup = await client.backup_secret(name)
            await client.delete_secret(name)
            await client.recover_deleted_secret(name)
            await client.delete_secret(name)
            await client.purge_deleted_secret(name)
            assert (await client.restore_secret_backup(backup)).version == secret.properties.version

    asyncio.run(main())


def test_every_api_version(dev_server: DevServer) -> None:
    async def one(api_version: ApiVersion) -> None:
        async with mi_client(dev_server, api_version=api_version) as client:
            name = unique("0aav")  # sorts first: the listings below stop at the first match
            first = await client.set_secret(name, "one")
            second = await client.set_secret(name, "two")
            assert (await client.get_secret(name)).value == "two"
            assert (await client.get_secret(name, first.properties.version)).value == "one"
            assert await contains(client.list_properties_of_secrets(max_page_size=5), name)
            assert {p.version async for p in client.list_properties_of_secret_versions(name)} == {
                first.properties.version, second.properties.version}
            await client.delete_secret(name)
            assert await contains(client.list_deleted_secrets(max_page_size=5), name)
            await client.purge_deleted_secret(name)

    async def main() -> None:
        failures = []
        for api_version in ApiVersion:
            try:
                await one(api_version)
            except Exception as exc:
                failures.append(f"{api_version.value}: {type(exc).__name__}: {exc}")
        assert not failures, "\n".join(failures)

    asyncio.run(main())
