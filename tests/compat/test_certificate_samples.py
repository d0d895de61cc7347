"""Microsoft's published azure-keyvault-certificates samples, unmodified, against Coffer with only dev.env applied
(plus PFX_CERT_PATH / PEM_CERT_PATH, which import_certificate reads: files this module makes).

Every sample of the installed version's sdist (`samples/*.py`, each sync and async) comes from PyPI
(tests/support/samples.py) and runs as its own process on its own dev server; the tests check the exit status,
a few output lines and what the sample left in the vault.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.keyvault.certificates import CertificateClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from tests.compat.conftest import client_secret_credential
from tests.compat.helpers import check_error
from tests.e2e.helpers import release_connections
from tests.support.samples import SampleResult, SampleRunner, installed_version
from tests.support.server import DevServer

CERTS_PACKAGE = "azure-keyvault-certificates"
CERT_SAMPLES = [f"{base}{suffix}.py" for base in (
    "hello_world", "list_operations", "backup_restore_operations", "recover_purge_operations", "contacts",
    "issuers", "import_certificate", "parse_certificate") for suffix in ("", "_async")]


def _write_import_files(directory: Path) -> dict[str, str]:
    """A self-signed RSA certificate with its key, as PKCS#12 (no password) and as PEM (key + certificate)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sample-import.example")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=90)).sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    pfx, pem = directory / "sample.pfx", directory / "sample.pem"
    pfx.write_bytes(pkcs12.serialize_key_and_certificates(None, key, cert, None, serialization.NoEncryption()))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()) + cert.public_bytes(serialization.Encoding.PEM))
    return {"PFX_CERT_PATH": str(pfx), "PEM_CERT_PATH": str(pem)}


class CertSampleRunner(SampleRunner):
    """SampleRunner that adds the two certificate files import_certificate reads to each sample's environment."""

    def __init__(self, config: object, workdir: Path) -> None:
        super().__init__(config, workdir, CERTS_PACKAGE, CERT_SAMPLES)
        self.extra_env = _write_import_files(workdir / "import-files")

    def _run_one(self, result: SampleResult, env: dict[str, str]) -> None:
        super()._run_one(result, {**env, **self.extra_env})


@pytest.fixture(scope="module")
def cert_sample_runner(request: pytest.FixtureRequest,
                       tmp_path_factory: pytest.TempPathFactory) -> Iterator[SampleRunner]:
    runner = CertSampleRunner(request.config, tmp_path_factory.mktemp("cert-samples")).start()
    try:
        yield runner
    finally:
        runner.close()


def _lines(result: SampleResult) -> list[str]:
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]


def _sample(runner: SampleRunner, sample: str) -> SampleResult:
    result = runner.result(sample)
    assert result.error is None, f"{result.error}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    assert result.returncode == 0, (f"{sample} exited {result.returncode}\n--- stdout\n{result.stdout}\n"
                                    f"--- stderr\n{result.stderr[-6000:]}\n--- server\n"
                                    + "".join(result.server.output[-30:]))
    assert "run_sample done" in _lines(result) or sample.startswith("import_certificate"), result.stdout
    return result


def _one(lines: list[str], pattern: str) -> re.Match[str]:
    found = [m for m in (re.fullmatch(pattern, line) for line in lines) if m]
    assert len(found) == 1, f"{pattern!r} matched {len(found)} lines of:\n" + "\n".join(lines)
    return found[0]


@pytest.fixture()
def verify() -> Iterator[Callable[[DevServer], CertificateClient]]:
    """A CertificateClient on a sample's server, to check what the sample left behind."""
    opened: list[CertificateClient] = []

    def make(server: DevServer) -> CertificateClient:
        client = CertificateClient(server.vault_url, client_secret_credential(server), connection_verify=server.ca)
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.close()
    release_connections()


def _not_found(call: Callable[[], object], code: str = "CertificateNotFound") -> None:
    with pytest.raises(ResourceNotFoundError) as info:
        call()
    check_error(info.value, 404, code, exc_type=ResourceNotFoundError)


def _deleted(client: CertificateClient, name: str) -> None:
    _not_found(lambda: client.get_certificate(name))
    assert client.get_deleted_certificate(name).name == name


def _purged(client: CertificateClient, name: str) -> None:
    _not_found(lambda: client.get_certificate(name))
    _not_found(lambda: client.get_deleted_certificate(name))


def _tail(suffix: str) -> str:
    return "Async" if suffix else ""


@pytest.mark.parametrize("sample", CERT_SAMPLES)
def test_sample_needs_only_what_dev_env_provides(cert_sample_runner: SampleRunner, sample: str) -> None:
    cert_sample_runner.result(sample)  # waits, and skips when the samples could not be downloaded
    assert cert_sample_runner.directory is not None
    source = (cert_sample_runner.directory / sample).read_text()
    wanted = set(re.findall(r"""os\.environ\[\s*["'](\w+)["']\s*\]""", source))
    wanted |= set(re.findall(r"""os\.(?:environ\.get|getenv)\(\s*["'](\w+)["']""", source))
    extra = {"PFX_CERT_PATH", "PEM_CERT_PATH"} if sample.startswith("import_certificate") else set()
    assert wanted == {"VAULT_URL"} | extra, f"{sample} now reads {sorted(wanted)}"
    assert "DefaultAzureCredential()" in source


def test_every_published_sample_is_run(cert_sample_runner: SampleRunner) -> None:
    cert_sample_runner.result(CERT_SAMPLES[0])
    assert cert_sample_runner.directory is not None
    assert (cert_sample_runner.directory.parent / ".complete").read_text() == installed_version(CERTS_PACKAGE)
    published = {p.name for p in cert_sample_runner.directory.glob("*.py")}
    assert published == set(CERT_SAMPLES), f"the sdist's samples changed: {sorted(published)}"


@pytest.mark.parametrize("suffix", ["", "_async"])
def test_hello_world(cert_sample_runner: SampleRunner, verify: Callable[[DevServer], CertificateClient],
                     suffix: str) -> None:
    result = _sample(cert_sample_runner, f"hello_world{suffix}.py")
    name = f"HelloWorldCertificate{_tail(suffix)}"
    lines = _lines(result)
    assert f"Certificate with name '{name}' created" in lines, lines
    _one(lines, rf"Certificate with name '{name}' was found'?\.")
    _one(lines, rf"Certificate with name '{name}' was updated on date '\d{{4}}-.+'")
    _one(lines, rf"Certificate with name '{name}' was updated with tags '\{{'a': 'b'\}}'")
    assert f"Certificate with name '{name}' was deleted." in lines, lines
    _deleted(verify(result.server), name)


@pytest.mark.parametrize("suffix", ["", "_async"])
def test_list_operations(cert_sample_runner: SampleRunner, verify: Callable[[DevServer], CertificateClient],
                         suffix: str) -> None:
    result = _sample(cert_sample_runner, f"list_operations{suffix}.py")
    tail = _tail(suffix)
    bank, storage = f"BankListCertificate{tail}", f"StorageListCertificate{tail}"
    vault = re.escape(result.server.vault_url)
    lines = _lines(result)
    for name in (bank, storage):
        assert f"Certificate with name '{name}' was created." in lines, lines
        _one(lines, rf"Certificate with name '{name}' was found\.")
        _one(lines, rf"Certificate with name '{name}' has recovery id '{vault}/deletedcertificates/{name}'")
    client = verify(result.server)
    for name in (bank, storage):
        _deleted(client, name)


@pytest.mark.parametrize("suffix", ["", "_async"])
def test_backup_restore_operations(cert_sample_runner: SampleRunner,
                                   verify: Callable[[DevServer], CertificateClient], suffix: str) -> None:
    result = _sample(cert_sample_runner, f"backup_restore_operations{suffix}.py")
    name = f"BackupRestoreCertificate{_tail(suffix)}"
    lines = _lines(result)
    for line in (f"Certificate with name '{name}' created.", f"Backup created for certificate with name '{name}'.",
                 f"Deleted certificate with name '{name}'", f"Purged certificate with name '{name}'",
                 f"Restored certificate with name '{name}'"):
        assert line in lines, lines
    restored = verify(result.server).get_certificate(name)
    assert restored.name == name and restored.cer


@pytest.mark.parametrize("suffix", ["", "_async"])
def test_recover_purge_operations(cert_sample_runner: SampleRunner,
                                  verify: Callable[[DevServer], CertificateClient], suffix: str) -> None:
    result = _sample(cert_sample_runner, f"recover_purge_operations{suffix}.py")
    tail = _tail(suffix)
    bank, storage = f"BankRecoverCertificate{tail}", f"ServerRecoverCertificate{tail}"
    lines = _lines(result)
    for name in (bank, storage):
        assert f"Certificate with name '{name}' was created." in lines, lines
    assert f"Recovered Certificate with name '{bank}'." in lines, lines
    assert "Certificate has been permanently deleted." in lines, lines
    client = verify(result.server)
    assert client.get_certificate(bank).name == bank
    _purged(client, storage)


@pytest.mark.parametrize("suffix", ["", "_async"])
def test_contacts(cert_sample_runner: SampleRunner, verify: Callable[[DevServer], CertificateClient],
                  suffix: str) -> None:
    result = _sample(cert_sample_runner, f"contacts{suffix}.py")
    lines = _lines(result)
    assert lines[:6] == ["John Doe", "admin@contoso.com", "1111111111",
                         "John Doe2", "admin2@contoso.com", "2222222222"], lines
    # the sample deletes them at the end; Key Vault then answers 404 ContactsNotFound
    _not_found(lambda: verify(result.server).get_contacts(), "ContactsNotFound")


@pytest.mark.parametrize("suffix", ["", "_async"])
def test_issuers(cert_sample_runner: SampleRunner, verify: Callable[[DevServer], CertificateClient],
                 suffix: str) -> None:
    result = _sample(cert_sample_runner, f"issuers{suffix}.py")
    lines = _lines(result)
    assert lines[:7] == ["issuer1", "Test", "keyvaultuser", "John", "Doe", "admin@microsoft.com", "4255555555"], lines
    assert lines[7:11] == ["Jane", "Doe", "admin@microsoft.com", "4255555555"], lines
    client = verify(result.server)
    _not_found(lambda: client.get_issuer("issuer1"), "CertificateIssuerNotFound")
    issuer2 = client.get_issuer("issuer2")
    assert issuer2.provider == "Test" and issuer2.account_id == "keyvaultuser"


@pytest.mark.parametrize("suffix", ["", "_async"])
def test_import_certificate(cert_sample_runner: SampleRunner, verify: Callable[[DevServer], CertificateClient],
                            suffix: str) -> None:
    result = _sample(cert_sample_runner, f"import_certificate{suffix}.py")
    tail = _tail(suffix)
    lines = _lines(result)
    assert f"PFX certificate 'pfxCert{tail}' imported successfully." in lines, lines
    assert f"PEM-formatted certificate 'pemCert{tail}' imported successfully." in lines, lines
    client = verify(result.server)
    pfx, pem = client.get_certificate(f"pfxCert{tail}"), client.get_certificate(f"pemCert{tail}")
    assert x509.load_der_x509_certificate(bytes(pfx.cer)).subject.rfc4514_string() == "CN=sample-import.example"
    assert pfx.policy is not None and pfx.policy.content_type == "application/x-pkcs12"
    assert pem.policy is not None and pem.policy.content_type == "application/x-pem-file"


@pytest.mark.parametrize("suffix", ["", "_async"])
def test_parse_certificate(cert_sample_runner: SampleRunner, verify: Callable[[DevServer], CertificateClient],
                           suffix: str) -> None:
    result = _sample(cert_sample_runner, f"parse_certificate{suffix}.py")
    name = f"PrivateKeyCertificate{_tail(suffix)}"
    lines = _lines(result)
    for line in (f"Certificate with name '{name}' was created", f"Certificate secret with name '{name}' was found.",
                 f"Certificate with name '{name}' was parsed.", f"Certificate with name '{name}' was deleted."):
        assert line in lines, lines
    _purged(verify(result.server), name)
