"""What is measured: the workload (the objects every system holds), the operations, and the result records."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

# The api-versions the Azure SDK sends by default (azure-keyvault-secrets 4.12, azure-keyvault-keys 4.11).
SECRET_API = "2026-04-01"
KEY_API = "2025-07-01"

GET_NAME = "db-primary-connection-string"
GET_VALUE = "Server=tcp:db;Password=hunter2"  # the anchor script's secret; a made-up value
DIGEST = hashlib.sha256(b"hello world").digest()  # what is signed: a SHA-256 digest, as Key Vault's sign takes
PLAINTEXT = bytes(range(32))  # what is encrypted: 32 bytes (an AES key being wrapped, say)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def secret_name(index: int) -> str:
    """The name of the index-th extra secret: bench-000001 ... bench-999999 (the 1,000,000 case fills on)."""
    return f"bench-{index:06d}"


def secret_value(index: int) -> str:
    return f"value-{index:06d}-" + hashlib.sha256(str(index).encode()).hexdigest()[:24]


@dataclass(frozen=True)
class Workload:
    """Every system holds `secrets` secrets: GET_NAME plus bench-000001 ... Writes go to the last one, as new
    versions, so the list always has exactly `secrets` items."""

    secrets: int = 1000

    @property
    def set_name(self) -> str:
        return secret_name(self.secrets - 1)

    def secret_items(self) -> list[tuple[str, str]]:
        return [(GET_NAME, GET_VALUE)] + [(secret_name(i), secret_value(i)) for i in range(1, self.secrets)]


# Operation ids, in the order they are measured and reported.
SECRET_GET = "secret-get"
SECRET_SET = "secret-set"
RSA_SIGN = "rsa2048-sign"
EC_SIGN = "p256-sign"
RSA_ENCRYPT = "rsa2048-oaep256-encrypt"
LIST = "list-1000"
# The list comes before the writes: every secret set adds a version, and what a list costs may depend on them.
OPERATIONS = [SECRET_GET, LIST, SECRET_SET, RSA_SIGN, EC_SIGN, RSA_ENCRYPT]


def title(op: str, secrets: int) -> str:
    return TITLES[op].replace("1000", f"{secrets:,}") if op == LIST else TITLES[op]


TITLES = {
    SECRET_GET: "secret get",
    SECRET_SET: "secret set",
    RSA_SIGN: "RSA-2048 sign (PKCS#1 v1.5, SHA-256)",
    EC_SIGN: "P-256 sign (ECDSA, SHA-256)",
    RSA_ENCRYPT: "RSA-OAEP-256 encrypt (RSA-2048)",
    LIST: "list of 1000 secrets",
}


@dataclass
class Request:
    """One HTTP request as wrk sends it (a list of paths: wrk cycles through them)."""

    method: str
    paths: list[str]
    body: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Load:
    """wrk at fixed concurrency."""

    rps: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    requests: int = 0
    seconds: float = 0.0
    errors: str = ""
    cpu_cores: float = 0.0  # CPU seconds the server's process tree used per second of load
    wrk_cores: float = 0.0  # and wrk
    other_cores: float = 0.0  # and everything else on the machine (should be near 0)
    requests_per_op: int = 1  # wrk requests that make one operation (the pages of a list)
    rounds_rps: list[float] = field(default_factory=list)  # each round's requests/s, when combined from rounds

    @property
    def ops(self) -> float:
        return self.rps / self.requests_per_op


@dataclass
class Latency:
    """Sequential calls from one client; milliseconds per operation."""

    client: str
    samples: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    mean_ms: float = 0.0


@dataclass
class Measurement:
    system: str
    op: str
    load: Load | None = None
    latency: list[Latency] = field(default_factory=list)
    note: str = ""
    # Coffer's crypto operations: the in-process OpenSSL rate per core, measured right after each round of load
    limit_per_core: list[float] = field(default_factory=list)

    def latency_of(self, client: str) -> Latency | None:
        return next((lat for lat in self.latency if lat.client == client), None)


def to_jsonable(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return {k: to_jsonable(v) for k, v in asdict(value).items()}
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_jsonable(v) for v in value]
    return value
