"""The local development CA and the server certificate it issues.

Note: OpenSSL (and browsers) ignore a wildcard directly under a single-label
name, so ``*.localhost`` does NOT match ``dev.localhost``; list such names
explicitly, or use a deeper wildcard like ``*.vault.localhost``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["TlsFiles", "ensure_local_tls", "fingerprint_sha256", "load_server_chain"]

CA_COMMON_NAME = "Coffer local CA"
CA_VALIDITY = dt.timedelta(days=3650)
SERVER_VALIDITY = dt.timedelta(days=397)
RENEW_BEFORE = dt.timedelta(days=30)
_BACKDATE = dt.timedelta(minutes=5)

_IssuerKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
_IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class TlsFiles:
    """Paths of the CA certificate and the server certificate/key (PEM)."""

    ca_cert: Path
    cert: Path
    key: Path


def ensure_local_tls(directory: Path, hostnames: list[str], ip_addresses: list[str]) -> TlsFiles:
    """Create or reuse the local CA, and (re)issue the server certificate when needed."""
    if not hostnames:
        raise ValueError("at least one hostname is required")
    names = list(dict.fromkeys(name.lower() for name in hostnames))
    ips = list(dict.fromkeys(ipaddress.ip_address(address) for address in ip_addresses))
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    files = TlsFiles(ca_cert=directory / "ca.pem", cert=directory / "server.pem", key=directory / "server.key")
    with _locked(directory):
        ca = _load_ca(directory / "ca.key", files.ca_cert)
        fresh_ca = ca is None
        if ca is None:
            ca = _create_ca(directory / "ca.key", files.ca_cert)
        if fresh_ca or not _server_is_current(files, ca[1], names, ips):
            _issue_server(files, ca, names, ips)
    return files


_loading = threading.Lock()


def load_server_chain(context: ssl.SSLContext, files: TlsFiles) -> None:
    """(Re)load the server certificate and key into a live context. One thread at a time (OpenSSL contexts are not
    safe to reload concurrently), and for the local CA's files under the lock `ensure_local_tls` writes them under, so
    a certificate is never paired with the key of the one being reissued by another process."""
    local = (files.cert.parent / ".lock").exists() and files.key.parent == files.cert.parent
    with _loading:
        if local:
            with _locked(files.cert.parent):
                context.load_cert_chain(str(files.cert), str(files.key))
        else:
            context.load_cert_chain(str(files.cert), str(files.key))


def fingerprint_sha256(cert_path: Path) -> str:
    """Return the SHA-256 fingerprint of a PEM certificate as lowercase hex."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return cert.fingerprint(hashes.SHA256()).hex()


def _load_ca(key_path: Path, cert_path: Path) -> tuple[_IssuerKey, x509.Certificate] | None:
    if not (key_path.exists() and cert_path.exists()):
        return None
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except ValueError:
        return None
    if not isinstance(key, _IssuerKey) or not _same_public_key(key, cert):
        return None
    if cert.not_valid_after_utc - _now() < RENEW_BEFORE:
        return None
    return key, cert


def _create_ca(key_path: Path, cert_path: Path) -> tuple[_IssuerKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_COMMON_NAME)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(key_path, _private_pem(key), 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return key, cert


def _server_is_current(files: TlsFiles, ca_cert: x509.Certificate, names: list[str], ips: list[_IpAddress]) -> bool:
    if not (files.cert.exists() and files.key.exists()):
        return False
    try:
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
        key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
        cert.verify_directly_issued_by(ca_cert)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except Exception:  # any unreadable, foreign or incomplete certificate is simply replaced
        return False
    if not _same_public_key(key, cert) or cert.not_valid_after_utc - _now() < RENEW_BEFORE:
        return False
    dns_names = {name.lower() for name in san.get_values_for_type(x509.DNSName)}
    return set(names) <= dns_names and set(ips) <= set(san.get_values_for_type(x509.IPAddress))


def _issue_server(
    files: TlsFiles, ca: tuple[_IssuerKey, x509.Certificate], names: list[str], ips: list[_IpAddress]
) -> None:
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in names]
    sans += [x509.IPAddress(ip) for ip in ips]
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + SERVER_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write(files.key, _private_pem(key), 0o600)
    _write(files.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _key_usage(
    *, digital_signature: bool = False, key_cert_sign: bool = False, crl_sign: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _same_public_key(key: object, cert: x509.Certificate) -> bool:
    if not isinstance(key, _IssuerKey):
        return False
    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return key.public_key().public_bytes(der, spki) == cert.public_key().public_bytes(der, spki)


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    """Atomically replace ``path``; the file is created with ``mode`` from the start."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialise concurrent callers (e.g. several workers starting at once)."""
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if sys.platform != "win32":
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
