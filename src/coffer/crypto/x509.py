"""X.509 helpers for identity: registered client certificates."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

__all__ = ["ClientCertificate", "InvalidCertificate", "load_client_certificate"]


class InvalidCertificate(ValueError):
    """The bytes are not a usable PEM or DER certificate."""


@dataclass(frozen=True)
class ClientCertificate:
    pem: str
    public_key_pem: str
    x5t: str  # base64url SHA-1 thumbprint, as MSAL sends in the assertion header
    x5t_s256: str  # base64url SHA-256 thumbprint
    subject: str
    not_before: int
    not_after: int


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def load_client_certificate(data: bytes) -> ClientCertificate:
    """Parse the first certificate of a PEM (or a DER) blob; any private key in it is ignored."""
    try:
        cert = x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
    except ValueError:
        raise InvalidCertificate("not a PEM or DER X.509 certificate") from None
    der = cert.public_bytes(serialization.Encoding.DER)
    return ClientCertificate(
        pem=cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        public_key_pem=cert.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii"),
        x5t=_b64url(hashlib.sha1(der).digest()),  # noqa: S324 (a thumbprint, as the protocol defines it)
        x5t_s256=_b64url(hashlib.sha256(der).digest()),
        subject=cert.subject.rfc4514_string(),
        not_before=int(cert.not_valid_before_utc.timestamp()),
        not_after=int(cert.not_valid_after_utc.timestamp()),
    )
