"""Confidentiality scan after the whole run: no secret value, private key or client secret the tests used may sit in
any file a test server wrote in its data directory (SQLite database and WAL, audit log, TLS files, backups, SoftHSM
token) or in any server's captured output.

The throwaway PostgreSQL cluster is not scanned here: it is shared by every test of the run, including the storage
conformance suite, which writes unsealed payloads on purpose, so a hit in its WAL could not be attributed to a server.
tests/e2e/test_confidentiality.py scans one server's PostgreSQL database files and WAL, with a positive control.

Values are recorded at their source: the SDK calls that send them (SecretClient.set_secret, KeyClient.import_key,
CertificateClient.import_certificate, sync and async) and every DevServer's dev.env (client secret, identity header).
dev.env and dev-unseal.key hold dev credentials by design and are not scanned; SoftHSM's token files are encrypted
under a PIN stored beside them (documented), and are scanned like any other file.

`install()` is called once from tests/conftest.py; `report(session)` at session finish."""

from __future__ import annotations

import base64
import contextlib
import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ahocorasick

from tests.support.server import DevServer

MIN_LENGTH = 8
EXCLUDED_NAMES = {"dev.env", "dev-unseal.key"}
CHUNK = 8 * 1024 * 1024

values: dict[bytes, str] = {}  # value → kind (never printed)
servers: list[DevServer] = []


def record(value: Any, kind: str) -> None:
    if isinstance(value, str):
        value = value.encode("utf-8")
    if isinstance(value, (bytes, bytearray)) and len(value) >= MIN_LENGTH:
        values.setdefault(bytes(value), kind)


def _record_private_key_bytes(data: bytes, password: str | None) -> None:
    """PEM/PKCS#12 certificate imports: the bytes themselves and the private key's DER."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs12

    record(data, "certificate import (with private key)")
    secret = password.encode() if password else None
    key = None
    try:
        key = pkcs12.load_key_and_certificates(data, secret)[0]
    except Exception:
        with contextlib.suppress(Exception):
            key = serialization.load_pem_private_key(data, secret)
    if key is not None:
        der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        record(der, "certificate private key (DER)")
        record(der[-64:], "certificate private key (DER tail)")


def _wrap(cls: Any, name: str, before: Callable[..., None]) -> None:
    original = getattr(cls, name)
    if getattr(original, "_leak_recorder", False):
        return

    if getattr(original, "__code__", None) is not None and original.__code__.co_flags & 0x80:  # coroutine
        @functools.wraps(original)
        async def async_wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            before(*args, **kwargs)
            return await original(self, *args, **kwargs)

        async_wrapper._leak_recorder = True  # type: ignore[attr-defined]
        setattr(cls, name, async_wrapper)
    else:
        @functools.wraps(original)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            before(*args, **kwargs)
            return original(self, *args, **kwargs)

        wrapper._leak_recorder = True  # type: ignore[attr-defined]
        setattr(cls, name, wrapper)


def _on_set_secret(name: Any = None, value: Any = None, *args: Any, **kwargs: Any) -> None:
    record(kwargs.get("value", value), "secret value")


def _on_import_key(name: Any = None, key: Any = None, *args: Any, **kwargs: Any) -> None:
    jwk = kwargs.get("key", key)
    for member in ("d", "p", "q", "dp", "dq", "qi", "k"):
        part = getattr(jwk, member, None)
        if part:
            record(part, f"imported key private member {member}")


def _on_import_certificate(name: Any = None, certificate_bytes: Any = None, *args: Any, **kwargs: Any) -> None:
    data = kwargs.get("certificate_bytes", certificate_bytes)
    if isinstance(data, (bytes, bytearray)):
        _record_private_key_bytes(bytes(data), kwargs.get("password"))


def install() -> None:
    from azure.keyvault.certificates import CertificateClient
    from azure.keyvault.certificates.aio import CertificateClient as AsyncCertificateClient
    from azure.keyvault.keys import KeyClient
    from azure.keyvault.keys.aio import KeyClient as AsyncKeyClient
    from azure.keyvault.secrets import SecretClient
    from azure.keyvault.secrets.aio import SecretClient as AsyncSecretClient

    for cls in (SecretClient, AsyncSecretClient):
        _wrap(cls, "set_secret", _on_set_secret)
    for cls in (KeyClient, AsyncKeyClient):
        _wrap(cls, "import_key", _on_import_key)
    for cls in (CertificateClient, AsyncCertificateClient):
        _wrap(cls, "import_certificate", _on_import_certificate)

    original_start = DevServer.start
    if getattr(original_start, "_leak_recorder", False):
        return

    @functools.wraps(original_start)
    def start(self: DevServer, *args: Any, **kwargs: Any) -> DevServer:
        result = original_start(self, *args, **kwargs)
        if self not in servers:
            servers.append(self)
        record(self.env.get("COFFER_CLIENT_SECRET"), "dev client secret")
        record(self.env.get("IDENTITY_HEADER"), "managed-identity endpoint secret")
        return result

    start._leak_recorder = True  # type: ignore[attr-defined]
    DevServer.start = start  # type: ignore[method-assign]


def _forms(value: bytes) -> list[bytes]:
    forms = [value, base64.b64encode(value).rstrip(b"="), base64.urlsafe_b64encode(value).rstrip(b"="),
             value.hex().encode()]
    with contextlib.suppress(UnicodeDecodeError):
        forms.append(value.decode("utf-8").encode("utf-16-le"))
    return [form for form in forms if len(form) >= MIN_LENGTH]


def scan() -> tuple[list[str], dict[str, float]]:
    started = time.monotonic()
    patterns: dict[bytes, str] = {}
    for value, kind in values.items():
        for form in _forms(value):
            patterns.setdefault(form, kind)
    findings: list[str] = []
    files = 0
    total = 0
    if patterns:
        longest = max(map(len, patterns))

        # One pass per chunk for all patterns (Aho-Corasick); bytes as latin-1 text, one character per byte.
        automaton = ahocorasick.Automaton()
        for pattern, kind in patterns.items():
            automaton.add_word(pattern.decode("latin-1"), kind)
        automaton.make_automaton()

        def search(data: bytes) -> str | None:
            return next((kind for _end, kind in automaton.iter(data.decode("latin-1"))), None)

        seen: set[Path] = set()
        for server in servers:
            paths = sorted(p for p in server.data_dir.rglob("*") if p.is_file()) if server.data_dir.exists() else []
            for path in paths:
                if path in seen or path.name in EXCLUDED_NAMES or not path.is_file():
                    continue
                seen.add(path)
                files += 1
                try:
                    with path.open("rb") as handle:
                        tail = b""
                        while chunk := handle.read(CHUNK):
                            total += len(chunk)
                            found = search(tail + chunk)
                            if found:
                                findings.append(f"{path}: {found}")
                                break
                            tail = chunk[-longest:]
                except OSError:
                    continue
            output = "".join(server.output).encode("utf-8", "replace")
            total += len(output)
            found = search(output)
            if found:
                findings.append(f"output of the server on {server.data_dir}: {found}")
    figures = {"servers": len(servers), "files": files, "bytes": total, "values": len(values),
               "patterns": len(patterns), "seconds": time.monotonic() - started}
    return findings, figures


def report(session: Any) -> None:
    if not servers:
        return
    findings, figures = scan()
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    line = ("confidentiality scan: {servers} servers, {files} files, {bytes} bytes, {values} values "
            "({patterns} patterns), {leaks} leaks, {seconds:.2f} s").format(leaks=len(findings), **figures)
    if reporter is not None:
        reporter.write_line(line)
        for finding in findings:
            reporter.write_line(f"LEAK: {finding}", red=True)
    if findings:
        session.exitstatus = 1
