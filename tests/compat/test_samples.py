"""Microsoft's published azure-keyvault-secrets samples, unmodified, against Coffer with only dev.env applied.

The samples come from PyPI at test time (the sdist of the installed version; see tests/support/samples.py);
they are never copied into this repository. They start in the background with the first compat test
(each on its own dev server) and these tests, ordered last, collect their results.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.keyvault.secrets import SecretClient

from tests.compat.conftest import client_secret_credential
from tests.support.samples import SAMPLES, SampleResult, SampleRunner, installed_version
from tests.support.server import DevServer


def _lines(result: SampleResult) -> list[str]:
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]


def _sample(runner: SampleRunner, sample: str) -> SampleResult:
    result = runner.result(sample)
    assert result.error is None, f"{result.error}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    assert result.returncode == 0, (f"{sample} exited {result.returncode}\n--- stdout\n{result.stdout}\n"
                                    f"--- stderr\n{result.stderr[-6000:]}\n--- server\n"
                                    + "".join(result.server.output[-30:]))
    return result


@pytest.fixture()
def verify(request: pytest.FixtureRequest) -> Iterator[Callable[[DevServer], SecretClient]]:
    """A SecretClient on a sample's server, to check what the sample left behind."""
    opened: list[SecretClient] = []

    def make(server: DevServer) -> SecretClient:
        client = SecretClient(server.vault_url, client_secret_credential(server), connection_verify=server.ca)
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.close()


def _gone(client: SecretClient, name: str) -> None:
    with pytest.raises(ResourceNotFoundError):
        client.get_secret(name)
    with pytest.raises(ResourceNotFoundError):
        client.get_deleted_secret(name)


def _deleted(client: SecretClient, name: str) -> None:
    with pytest.raises(ResourceNotFoundError):
        client.get_secret(name)
    assert client.get_deleted_secret(name).name == name


@pytest.mark.parametrize("sample", SAMPLES)
def test_sample_needs_only_what_dev_env_provides(sample_runner: SampleRunner, dev_server: DevServer,
                                                 sample: str) -> None:
    sample_runner.result(sample)  # waits, and skips when the samples could not be downloaded
    assert sample_runner.directory is not None
    source = (sample_runner.directory / sample).read_text()
    wanted = set(re.findall(r"""os\.environ\[\s*["'](\w+)["']\s*\]""", source))
    wanted |= set(re.findall(r"""os\.(?:environ\.get|getenv)\(\s*["'](\w+)["']""", source))
    assert wanted == {"VAULT_URL"}, f"{sample} now reads {sorted(wanted)}; check dev.env still covers it"
    assert wanted <= set(dev_server.env)
    # DefaultAzureCredential → ManagedIdentityCredential (App Service) needs these two, and the transport
    # needs the CA: requests reads REQUESTS_CA_BUNDLE, aiohttp reads SSL_CERT_FILE (contract C5)
    assert "DefaultAzureCredential()" in source
    assert {"IDENTITY_ENDPOINT", "IDENTITY_HEADER", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"} <= set(dev_server.env)


def test_samples_come_from_the_installed_version(sample_runner: SampleRunner) -> None:
    sample_runner.result(SAMPLES[0])
    assert sample_runner.directory is not None
    assert (sample_runner.directory.parent / ".complete").read_text() == installed_version()
    assert {p.name for p in sample_runner.directory.glob("*.py")} >= set(SAMPLES)


@pytest.mark.parametrize("suffix", ["", "_async"])
def test_hello_world(sample_runner: SampleRunner, verify: Callable[[DevServer], SecretClient],
                     suffix: str) -> None:
    result = _sample(sample_runner, f"hello_world{suffix}.py")
    name = "helloWorldSecretName" + ("Async" if suffix else "")
    new_value = "newSecretValueAsync" if suffix else "newSecretValue"
    lines = _lines(result)
    assert f"Secret with name '{name}' created with value 'helloWorldSecretValue'" in lines
    assert f"Secret with name '{name}' was found with value 'helloWorldSecretValue'." in lines
    assert f"Secret with name '{name}' created with value '{new_value}'" in lines
    assert f"Secret with name '{name}' was deleted." in lines
    assert any(line.startswith(f"Secret with name '{name}' was updated to expire on '") for line in lines)
    _deleted(verify(result.server), name)


@pytest.mark.parametrize("suffix", ["", "_async"])
def test_list_operations(sample_runner: SampleRunner, verify: Callable[[DevServer], SecretClient],
                         suffix: str) -> None:
    result = _sample(sample_runner, f"list_operations{suffix}.py")
    tail = "Async" if suffix else ""
    bank, storage = f"listOpsBankSecretName{tail}", f"listOpsStorageSecretName{tail}"
    vault = result.server.vault_url
    lines = _lines(result)
    for name in (bank, storage):
        assert f"Secret with name '{name}' was created." in lines
        assert f"Secret with name '{name}' has recovery id '{vault}/deletedsecrets/{name}'" in lines
    found = [line for line in lines if line.startswith(f"Secret with name '{bank}'") and "was found" in line]
    assert len(found) == 1
    versions = [line for line in lines if line.startswith(f"Bank Secret with name '{bank}' has version: '")]
    assert len(versions) == 2 and len(set(versions)) == 2
    assert f"Secret with name '{bank}' was updated with new value 'newSecretValue'" in lines
    client = verify(result.server)
    for name in (bank, storage):
        _deleted(client, name)


@pytest.mark.parametrize("suffix", ["", "_async"])
def test_backup_restore_operations(sample_runner: SampleRunner, verify: Callable[[DevServer], SecretClient],
                                   suffix: str) -> None:
    result = _sample(sample_runner, f"backup_restore_operations{suffix}.py")
    name = "backupRestoreSecretName" + ("Async" if suffix else "")
    lines = _lines(result)
    assert f"Backup created for secret with name '{name}'." in lines
    assert f"Deleted secret with name '{name}'" in lines
    assert f"Purged secret with name '{name}'" in lines
    assert f"Restored secret with name '{name}'" in lines
    assert verify(result.server).get_secret(name).value == "backupRestoreSecretValue"


@pytest.mark.parametrize("suffix", ["", "_async"])
def test_recover_purge_operations(sample_runner: SampleRunner, verify: Callable[[DevServer], SecretClient],
                                  suffix: str) -> None:
    result = _sample(sample_runner, f"recover_purge_operations{suffix}.py")
    tail = "Async" if suffix else ""
    bank, storage = f"recoverPurgeBankSecretName{tail}", f"recoverPurgeStorageSecretName{tail}"
    lines = _lines(result)
    assert f"Recovered Secret with name '{bank}'." in lines
    assert "Secret has been permanently deleted." in lines
    assert any(line.startswith(f"Secret with name '{bank}' was deleted on date ") for line in lines)
    client = verify(result.server)
    assert client.get_secret(bank).value == "recoverPurgeSecretValue1"
    _gone(client, storage)
