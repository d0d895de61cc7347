"""Server configuration: frozen, typed, and the only reader of the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path


@dataclass(frozen=True)
class Config:
    data_dir: Path = Path(".coffer")
    bind: str = "127.0.0.1"
    port: int = 8443
    dns_suffix: str = "localhost"
    # Port clients use (differs from `port` behind a TCP load balancer); None = `port`.
    public_port: int | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    dev: bool = False
    # Serve the IMDS managed-identity protocol to callers on this host (on by default with --dev).
    imds: bool = False
    purge_interval_seconds: float = 60.0
    # Data-plane service limits: transactions per vault per 10 s (all; secret sets + imports), and per principal per
    # vault; 0 = no limit. Key Vault's numbers by default.
    throttle_vault: int = 4000
    throttle_vault_creates: int = 300
    throttle_principal: int = 2000
    # Worker processes serving requests (each with its own event loop; they share the listening sockets).
    workers: int = 1
    max_body_bytes: int = 4 * 1024 * 1024
    # Slow clients: a request's line and headers must arrive within this many seconds of the connection opening (or
    # of the previous response), and its body within as many seconds of the application starting to read it.
    request_read_timeout_seconds: float = 30.0
    token_lifetime_seconds: int = 3600
    token_key_rotation_days: float = 30.0
    extra_hostnames: tuple[str, ...] = field(default_factory=tuple)
    # Private CAs trusted (beside the system store) when fetching external issuers' JWKS: SSL_CERT_FILE and
    # REQUESTS_CA_BUNDLE, as other programs read them.
    trusted_ca_files: tuple[Path, ...] = field(default_factory=tuple)
    # PKCS#11 HSM (RSA-HSM / EC-HSM / oct-HSM keys and auto-unseal): the module (shared library), the label of
    # the token, and the user PIN, either in a file (first line) or given directly. Never on the command line.
    pkcs11_module: Path | None = None
    pkcs11_token: str | None = None
    pkcs11_pin_file: Path | None = None
    pkcs11_pin: str | None = field(default=None, repr=False)
    # PostgreSQL instead of SQLite (postgresql://user:password@host:port/db, or ?host=/socket/dir): several processes
    # and nodes share it. None: SQLite in data_dir. Never printed (it may hold a password).
    database_url: str | None = field(default=None, repr=False)

    @property
    def database_path(self) -> Path:
        return self.data_dir / "coffer.db"

    @property
    def audit_path(self) -> Path:
        return self.data_dir / "audit.log"

    @property
    def tls_dir(self) -> Path:
        return self.data_dir / "tls"

    @property
    def unseal_key_path(self) -> Path:
        """Development only: the unseal key kept beside the data (never in production)."""
        return self.data_dir / "dev-unseal.key"

    def with_port(self, port: int) -> Config:
        return replace(self, port=port)

    @property
    def hsm_configured(self) -> bool:
        return self.pkcs11_module is not None


def from_environment(**overrides: object) -> Config:
    """Build a Config from COFFER_* variables, then explicit overrides (CLI flags) on top."""
    env = os.environ
    values: dict[str, object] = {}
    if "COFFER_DATA_DIR" in env:
        values["data_dir"] = Path(env["COFFER_DATA_DIR"])
    if "COFFER_BIND" in env:
        values["bind"] = env["COFFER_BIND"]
    if "COFFER_PORT" in env:
        values["port"] = int(env["COFFER_PORT"])
    if "COFFER_PUBLIC_PORT" in env:
        values["public_port"] = int(env["COFFER_PUBLIC_PORT"])
    if "COFFER_DNS_SUFFIX" in env:
        values["dns_suffix"] = env["COFFER_DNS_SUFFIX"]
    if "COFFER_TLS_CERT" in env:
        values["tls_cert"] = Path(env["COFFER_TLS_CERT"])
    if "COFFER_TLS_KEY" in env:
        values["tls_key"] = Path(env["COFFER_TLS_KEY"])
    if "COFFER_TOKEN_LIFETIME" in env:
        values["token_lifetime_seconds"] = int(env["COFFER_TOKEN_LIFETIME"])
    if "COFFER_TOKEN_KEY_ROTATION_DAYS" in env:
        values["token_key_rotation_days"] = float(env["COFFER_TOKEN_KEY_ROTATION_DAYS"])
    if "COFFER_IMDS" in env:
        values["imds"] = env["COFFER_IMDS"].lower() in ("1", "true", "yes")
    if "COFFER_PURGE_INTERVAL" in env:
        values["purge_interval_seconds"] = float(env["COFFER_PURGE_INTERVAL"])
    if "COFFER_REQUEST_READ_TIMEOUT" in env:
        values["request_read_timeout_seconds"] = float(env["COFFER_REQUEST_READ_TIMEOUT"])
        if not values["request_read_timeout_seconds"] > 0:  # type: ignore[operator]
            raise ValueError("COFFER_REQUEST_READ_TIMEOUT must be a positive number of seconds")
    if env.get("COFFER_DATABASE_URL"):
        values["database_url"] = env["COFFER_DATABASE_URL"]
    for name, key in (
        ("COFFER_THROTTLE_VAULT", "throttle_vault"),
        ("COFFER_THROTTLE_VAULT_CREATES", "throttle_vault_creates"),
        ("COFFER_THROTTLE_PRINCIPAL", "throttle_principal"),
    ):
        if name in env:
            values[key] = int(env[name])
            if values[key] < 0:  # type: ignore[operator]
                raise ValueError(f"{name} must be 0 (no limit) or a positive number of requests per 10 seconds")
    if "COFFER_WORKERS" in env:
        values["workers"] = int(env["COFFER_WORKERS"])
    values["trusted_ca_files"] = tuple(Path(env[n]) for n in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE") if env.get(n))
    values.update(_pkcs11_from_environment(env))
    values.update({k: v for k, v in overrides.items() if v is not None})
    if not 1 <= int(values.get("workers", 1)) <= 64:  # type: ignore[call-overload]
        raise ValueError("COFFER_WORKERS / --workers must be between 1 and 64")
    if values.get("dev") and "imds" not in values:
        values["imds"] = True
    return Config(**values)  # type: ignore[arg-type]


def _pkcs11_from_environment(env: Mapping[str, str]) -> dict[str, object]:
    """COFFER_PKCS11_MODULE, COFFER_PKCS11_TOKEN and one of COFFER_PKCS11_PIN_FILE / COFFER_PKCS11_PIN.
    An incomplete or ambiguous HSM configuration is an error (ValueError), not a silent "no HSM"."""
    names = ("COFFER_PKCS11_MODULE", "COFFER_PKCS11_TOKEN", "COFFER_PKCS11_PIN_FILE", "COFFER_PKCS11_PIN")
    given = {name: env[name] for name in names if env.get(name)}
    if not given:
        return {}
    missing = [name for name in names[:2] if name not in given]
    if missing:
        raise ValueError(f"HSM configuration incomplete: set {' and '.join(missing)} (or unset every COFFER_PKCS11_*)")
    if ("COFFER_PKCS11_PIN_FILE" in given) == ("COFFER_PKCS11_PIN" in given):
        raise ValueError("HSM configuration: set exactly one of COFFER_PKCS11_PIN_FILE and COFFER_PKCS11_PIN")
    return {
        "pkcs11_module": Path(given["COFFER_PKCS11_MODULE"]),
        "pkcs11_token": given["COFFER_PKCS11_TOKEN"],
        "pkcs11_pin_file": Path(given["COFFER_PKCS11_PIN_FILE"]) if "COFFER_PKCS11_PIN_FILE" in given else None,
        "pkcs11_pin": given.get("COFFER_PKCS11_PIN"),
    }
