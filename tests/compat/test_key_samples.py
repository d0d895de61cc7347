"""Microsoft's published azure-keyvault-keys samples, unmodified, against Coffer with only dev.env applied.

Every sample of the installed version's sdist (`samples/*.py`: hello_world, list_operations,
backup_restore_operations, recover_purge_operations, key_rotation, each also async, and send_request). They come
from PyPI at test time (tests/support/samples.py), start in the background with the first compat test, each on its
own dev server (they use fixed key names, and list_operations reads every key of the vault), and these tests,
ordered last, check their exit status, their output and what they left in the vault.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.keyvault.keys import KeyClient, KeyType

from tests.compat.conftest import client_secret_credential
from tests.compat.helpers import check_error
from tests.e2e.helpers import release_connections
from tests.support.samples import KEY_SAMPLES, KEYS_PACKAGE, SampleResult, SampleRunner, installed_version
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


def _one(lines: list[str], pattern: str) -> re.Match[str]:
    """The single output line matching `pattern` (the SDK prints key types as 'RSA' or 'JsonWebKeyType.RSA')."""
    found = [m for m in (re.fullmatch(pattern, line) for line in lines) if m]
    assert len(found) == 1, f"{pattern!r} matched {len(found)} lines of:\n" + "\n".join(lines)
    return found[0]


KTY = r"(?:JsonWebKeyType\.)?"


@pytest.fixture()
def verify() -> Iterator[Callable[[DevServer], KeyClient]]:
    """A KeyClient on a sample's server, to check what the sample left behind."""
    opened: list[KeyClient] = []

    def make(server: DevServer) -> KeyClient:
        client = KeyClient(server.vault_url, client_secret_credential(server), connection_verify=server.ca)
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.close()
    release_connections()


def _not_found(call: Callable[[], object]) -> None:
    with pytest.raises(ResourceNotFoundError) as info:
        call()
    check_error(info.value, 404, "KeyNotFound", exc_type=ResourceNotFoundError)


def _deleted(client: KeyClient, name: str) -> None:
    _not_found(lambda: client.get_key(name))
    assert client.get_deleted_key(name).name == name


def _purged(client: KeyClient, name: str) -> None:
    _not_found(lambda: client.get_key(name))
    _not_found(lambda: client.get_deleted_key(name))


@pytest.mark.parametrize("sample", KEY_SAMPLES)
def test_sample_needs_only_what_dev_env_provides(key_sample_runner: SampleRunner, dev_server: DevServer,
                                                 sample: str) -> None:
    key_sample_runner.result(sample)  # waits, and skips when the samples could not be downloaded
    assert key_sample_runner.directory is not None
    source = (key_sample_runner.directory / sample).read_text()
    wanted = set(re.findall(r"""os\.environ\[\s*["'](\w+)["']\s*\]""", source))
    wanted |= set(re.findall(r"""os\.(?:environ\.get|getenv)\(\s*["'](\w+)["']""", source))
    assert wanted == {"VAULT_URL"}, f"{sample} now reads {sorted(wanted)}; check dev.env still covers it"
    assert "DefaultAzureCredential()" in source
    assert {"VAULT_URL", "IDENTITY_ENDPOINT", "IDENTITY_HEADER", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"} <= set(
        dev_server.env)


def test_every_published_sample_is_run(key_sample_runner: SampleRunner) -> None:
    key_sample_runner.result(KEY_SAMPLES[0])
    assert key_sample_runner.directory is not None
    assert (key_sample_runner.directory.parent / ".complete").read_text() == installed_version(KEYS_PACKAGE)
    published = {p.name for p in key_sample_runner.directory.glob("*.py")}
    assert published == set(KEY_SAMPLES), f"the sdist's samples changed: {sorted(published)}"


@pytest.mark.parametrize("suffix", ["", "_async"])
def test_hello_world(key_sample_runner: SampleRunner, verify: Callable[[DevServer], KeyClient], suffix: str) -> None:
    result = _sample(key_sample_runner, f"hello_world{suffix}.py")
    tail = "Async" if suffix else ""
    rsa, ec = f"rsaKeyName{tail}", f"ECKeyName{tail}"
    lines = _lines(result)
    _one(lines, rf"RSA Key with name '{rsa}' created of type '{KTY}RSA'\.")
    _one(lines, rf"EC Key with name '{ec}' created of type '?{KTY}EC'?\.")
    _one(lines, rf"Key with name '{rsa}' was found\.")
    _one(lines, rf"Key with name '{ec}' was updated to expire on '\d{{4}}-.+'")
    client = verify(result.server)
    for name in (rsa, ec):
        _deleted(client, name)
    deleted_ec = client.get_deleted_key(ec)
    assert deleted_ec.properties.enabled is False and deleted_ec.properties.expires_on is not None
    assert deleted_ec.key.crv == "P-256"
    deleted_rsa = client.get_deleted_key(rsa)
    assert len(deleted_rsa.key.n) == 256
    assert deleted_rsa.key_operations == ["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"]


@pytest.mark.parametrize("suffix", ["", "_async"])
def test_list_operations(key_sample_runner: SampleRunner, verify: Callable[[DevServer], KeyClient],
                         suffix: str) -> None:
    result = _sample(key_sample_runner, f"list_operations{suffix}.py")
    tail = "Async" if suffix else ""
    rsa, ec = f"rsaKeyName{tail}", f"ecKeyName{tail}"
    vault = result.server.vault_url
    lines = _lines(result)
    _one(lines, rf"Key with name '{rsa}' with type '{KTY}RSA' was found\.")
    _one(lines, rf"Key with name '{ec}' with type '{KTY}EC' was found\.")
    versions = [m.group(1) for m in (re.fullmatch(rf".*'{rsa}' has version: '([0-9a-f]{{32}})'", line)
                                     for line in lines) if m]
    assert len(versions) == 2 and len(set(versions)) == 2, lines
    for name in (rsa, ec):
        _one(lines, rf"Key with name '{name}' has recovery id '{re.escape(vault)}/deletedkeys/{name}'")
    client = verify(result.server)
    for name in (rsa, ec):
        _deleted(client, name)
    latest = client.get_deleted_key(rsa)
    assert latest.properties.version in versions and len(latest.key.n) == 384  # the 3072-bit second version


@pytest.mark.parametrize("suffix", ["", "_async"])
def test_backup_restore_operations(key_sample_runner: SampleRunner, verify: Callable[[DevServer], KeyClient],
                                   suffix: str) -> None:
    result = _sample(key_sample_runner, f"backup_restore_operations{suffix}.py")
    name = "keyName" + ("Async" if suffix else "")
    lines = _lines(result)
    _one(lines, rf"Key with name '{name}' created with key type '{KTY}RSA'")
    for line in (f"Backup created for key with name '{name}'.", f"Deleted key with name '{name}'",
                 f"Purged key with name '{name}'", f"Restored key with name '{name}'"):
        assert line in lines, lines
    restored = verify(result.server).get_key(name)
    assert restored.key_type == KeyType.rsa and len(restored.key.n) == 256


@pytest.mark.parametrize("suffix", ["", "_async"])
def test_recover_purge_operations(key_sample_runner: SampleRunner, verify: Callable[[DevServer], KeyClient],
                                  suffix: str) -> None:
    result = _sample(key_sample_runner, f"recover_purge_operations{suffix}.py")
    tail = "Async" if suffix else ""
    rsa, ec = f"rsaKeyName{tail}", f"ecKeyName{tail}"
    lines = _lines(result)
    for name in (rsa, ec):
        assert f"Deleted key '{name}'" in lines and f"Purged '{name}'" in lines, lines
    assert f"Recovered key '{rsa}'" in lines
    client = verify(result.server)
    for name in (rsa, ec):
        _purged(client, name)


@pytest.mark.parametrize("suffix", ["", "_async"])
def test_key_rotation(key_sample_runner: SampleRunner, verify: Callable[[DevServer], KeyClient], suffix: str) -> None:
    """The sample asserts the policy round trip itself (expires_in kept across an update, trigger fields)."""
    result = _sample(key_sample_runner, f"key_rotation{suffix}.py")
    name = "rotation-sample-key" + ("-async" if suffix else "")
    lines = _lines(result)
    created = _one(lines, r"Created a key; new version is ([0-9a-f]{32})").group(1)
    rotated = _one(lines, r"Rotated the key on-demand; new version is ([0-9a-f]{32})").group(1)
    assert created != rotated
    _one(lines, r"Created a new key rotation policy: (?:KeyRotationPolicyAction\.)?(?:ROTATE|Rotate) after P2M")
    _one(lines, r"New policy action: (?:KeyRotationPolicyAction\.)?(?:NOTIFY|Notify) P10D before expiry")
    client = verify(result.server)
    _deleted(client, name)
    deleted = client.get_deleted_key(name)
    assert deleted.properties.version == rotated and deleted.key_type == KeyType.rsa


def test_send_request(key_sample_runner: SampleRunner, verify: Callable[[DevServer], KeyClient]) -> None:
    result = _sample(key_sample_runner, "send_request.py")
    vault = re.escape(result.server.vault_url)
    kid = _one(_lines(result), rf"\.\. Key with ID ({vault}/keys/sampleKey/[0-9a-f]{{32}}) was found\.").group(1)
    client = verify(result.server)
    _deleted(client, "sampleKey")
    assert client.get_deleted_key("sampleKey").id == kid
