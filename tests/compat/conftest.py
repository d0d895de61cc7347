"""Shared fixtures for the compatibility suite: real Azure SDK clients against a real Coffer dev server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.identity import ClientSecretCredential, ManagedIdentityCredential
from azure.keyvault.secrets import SecretClient

from tests.support.samples import SampleRunner
from tests.support.server import DevServer

HERE = Path(__file__).parent

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
SAMPLE_RUNNER = pytest.StashKey[SampleRunner]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the sample tests last: their samples start with the first compat test and run meanwhile."""
    samples = [item for item in items if item.path.name == SAMPLES_MODULE and item.path.parent == HERE]
    if samples:
        items[:] = [item for item in items if item not in samples] + samples


@pytest.fixture(scope="session", autouse=True)
def _start_samples(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    selected = any(item.path.name == SAMPLES_MODULE and item.path.parent == HERE for item in request.session.items)
    if not selected:
        yield
        return
    runner = SampleRunner(request.config, tmp_path_factory.mktemp("samples")).start()
    request.config.stash[SAMPLE_RUNNER] = runner
    yield
    runner.close()


@pytest.fixture(scope="session")
def sample_runner(request: pytest.FixtureRequest, _start_samples: None) -> SampleRunner:
    return request.config.stash[SAMPLE_RUNNER]
