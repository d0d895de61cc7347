"""Shared fixtures for the compatibility suite: real Azure SDK clients against a real Coffer dev server."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from azure.identity import ClientSecretCredential, ManagedIdentityCredential
from azure.keyvault.secrets import SecretClient

from tests.e2e.helpers import run_cli
from tests.support.samples import KEY_SAMPLES, KEYS_PACKAGE, PACKAGE, SAMPLES, SampleRunner
from tests.support.server import DevServer

HERE = Path(__file__).parent
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"

# Variables that would steer ManagedIdentityCredential / DefaultAzureCredential away from the
# App Service endpoint that dev.env describes.
FOREIGN_IDENTITY_VARIABLES = (
    "MSI_ENDPOINT", "MSI_SECRET", "IMDS_ENDPOINT", "IDENTITY_SERVER_THUMBPRINT",
    "AZURE_POD_IDENTITY_AUTHORITY_HOST", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_TENANT_ID",
    "AZURE_FEDERATED_TOKEN_FILE", "AZURE_CLIENT_CERTIFICATE_PATH",
)


@pytest.fixture(scope="module")
def identity_env(dev_server: DevServer) -> Iterator[None]:
    """IDENTITY_ENDPOINT / IDENTITY_HEADER from dev.env in os.environ (App Service managed identity)."""
    with pytest.MonkeyPatch.context() as mp:
        for name in FOREIGN_IDENTITY_VARIABLES:
            mp.delenv(name, raising=False)
        mp.setenv("IDENTITY_ENDPOINT", dev_server.env["IDENTITY_ENDPOINT"])
        mp.setenv("IDENTITY_HEADER", dev_server.env["IDENTITY_HEADER"])
        yield


@pytest.fixture(scope="module")
def client(dev_server: DevServer, identity_env: None) -> Iterator[SecretClient]:
    """SecretClient + ManagedIdentityCredential (App Service protocol), trusting the dev CA explicitly."""
    credential = ManagedIdentityCredential(connection_verify=dev_server.ca)
    with SecretClient(dev_server.vault_url, credential, connection_verify=dev_server.ca) as secret_client:
        yield secret_client
    credential.close()


def client_secret_credential(server: DevServer) -> ClientSecretCredential:
    return ClientSecretCredential(
        server.env["COFFER_TENANT_ID"], server.env["COFFER_CLIENT_ID"], server.env["COFFER_CLIENT_SECRET"],
        authority=server.authority, disable_instance_discovery=True, connection_verify=server.ca,
    )


@pytest.fixture(scope="module")
def sp_client(dev_server: DevServer) -> Iterator[SecretClient]:
    """SecretClient + ClientSecretCredential (MSAL, self-hosted authority) for the dev service principal."""
    credential = client_secret_credential(dev_server)
    with SecretClient(dev_server.vault_url, credential, connection_verify=dev_server.ca) as secret_client:
        yield secret_client
    credential.close()


# --- the published samples run in the background while the other tests run ------------------------

SAMPLES_MODULE = "test_samples.py"
KEY_SAMPLES_MODULE = "test_key_samples.py"
SAMPLE_SUITES = {SAMPLES_MODULE: (PACKAGE, SAMPLES), KEY_SAMPLES_MODULE: (KEYS_PACKAGE, KEY_SAMPLES)}
SAMPLE_RUNNERS = pytest.StashKey[dict[str, SampleRunner]]()


def _is_sample_test(item: pytest.Item) -> bool:
    return item.path.name in SAMPLE_SUITES and item.path.parent == HERE


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the sample tests last: their samples start with the first compat test and run meanwhile."""
    samples = [item for item in items if _is_sample_test(item)]
    if samples:
        items[:] = [item for item in items if item not in samples] + samples


@pytest.fixture(scope="session", autouse=True)
def _start_samples(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    selected = {item.path.name for item in request.session.items if _is_sample_test(item)}
    runners: dict[str, SampleRunner] = {}
    request.config.stash[SAMPLE_RUNNERS] = runners
    try:
        for module in sorted(selected):
            package, samples = SAMPLE_SUITES[module]
            workdir = tmp_path_factory.mktemp(module.removesuffix(".py"))
            runners[module] = SampleRunner(request.config, workdir, package, samples).start()
        yield
    finally:
        for runner in runners.values():
            runner.close()


@pytest.fixture(scope="session")
def sample_runner(request: pytest.FixtureRequest, _start_samples: None) -> SampleRunner:
    return request.config.stash[SAMPLE_RUNNERS][SAMPLES_MODULE]


@pytest.fixture(scope="session")
def key_sample_runner(request: pytest.FixtureRequest, _start_samples: None) -> SampleRunner:
    return request.config.stash[SAMPLE_RUNNERS][KEY_SAMPLES_MODULE]


# --- a principal that may use keys but not read them ------------------------------------------------

CRYPTO_DATA_ACTIONS = tuple(f"Microsoft.KeyVault/vaults/keys/{op}/action"
                            for op in ("encrypt", "decrypt", "wrap", "unwrap", "sign", "verify"))


@dataclass(frozen=True)
class CryptoOnlyApp:
    """An application holding a custom role with the six key-operation data actions and nothing else."""

    tenant_id: str
    client_id: str
    secret: str


@pytest.fixture(scope="session")
def crypto_only_app(dev_server: DevServer, tmp_path_factory: pytest.TempPathFactory) -> CryptoOnlyApp:
    """Provisioned with the `coffer` CLI as the dev administrator. Without keys/read its `get_key` answers 403, so a
    `CryptographyClient(key_id, ...)` of this principal does *every* operation in Coffer, including those the SDK
    would otherwise do locally with the public key (RSA encrypt/wrap/verify, EC verify) or with its own
    placeholder key (oct CBCPAD/KW: Key Vault never returns `k`)."""
    cwd = tmp_path_factory.mktemp("crypto-only")
    env = dev_server.client_env()
    name = f"crypto-only-{uuid.uuid4().hex[:8]}"
    created = run_cli("identity", "principal", "create", name, env=env, cwd=cwd).stdout
    rows = [line for line in created.splitlines() if name in line and "│" in line]
    assert len(rows) == 1, created
    client_id = re.findall(UUID, rows[0])[1]
    added = run_cli("identity", "secret", "add", client_id, env=env, cwd=cwd).stdout
    secret = re.search(r"^Client secret: (\S+)$", added, re.M)
    assert secret, added
    role = f"Key operations only {name}"
    actions = [arg for action in CRYPTO_DATA_ACTIONS for arg in ("--data-action", action)]
    run_cli("role", "definition", "create", "--name", role, *actions, env=env, cwd=cwd)
    run_cli("role", "assignment", "create", "--role", role, "--assignee", client_id, "--scope", "/", env=env, cwd=cwd)
    return CryptoOnlyApp(env["COFFER_TENANT_ID"], client_id, secret.group(1))


# --- vaults of a given SKU ----------------------------------------------------------------------------------

def create_vault(server: DevServer, cwd: Path, sku: str, prefix: str) -> str:
    """`coffer vault create NAME --sku SKU` as the dev administrator; the new vault's URL."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    out = run_cli("vault", "create", name, "--sku", sku, env=server.client_env(), cwd=cwd).stdout
    rows = [line for line in out.splitlines() if f" {name} " in line and "│" in line]
    assert len(rows) == 1 and f" {sku} " in rows[0], out
    url = re.search(r"https://\S+", rows[0])
    assert url, out
    return url.group(0)


@pytest.fixture(scope="session")
def standard_vault(dev_server: DevServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A standard-SKU vault on the dev server (the `dev` vault itself is premium when the server has an HSM)."""
    return create_vault(dev_server, tmp_path_factory.mktemp("standard"), "standard", "std")
