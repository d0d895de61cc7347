"""X.509 for Key Vault certificates: self-signed issuance, certificate parsing, PKCS#12 and PEM export."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

__all__ = [
    "CertInfo",
    "CertificateError",
    "Imported",
    "build_csr",
    "ca_certificate",
    "export_pem",
    "export_pkcs12",
    "inspect",
    "issue",
    "load_import",
    "matches_key",
    "private_jwk",
    "self_signed",
    "to_pem",
]

_KEY_USAGES = (
    "digitalSignature",
    "nonRepudiation",
    "keyEncipherment",
    "dataEncipherment",
    "keyAgreement",
    "keyCertSign",
    "cRLSign",
    "encipherOnly",
    "decipherOnly",
)
_KU_ARGS = {
    "digitalSignature": "digital_signature",
    "nonRepudiation": "content_commitment",
    "keyEncipherment": "key_encipherment",
    "dataEncipherment": "data_encipherment",
    "keyAgreement": "key_agreement",
    "keyCertSign": "key_cert_sign",
    "cRLSign": "crl_sign",
    "encipherOnly": "encipher_only",
    "decipherOnly": "decipher_only",
}
_UPN_OID = ObjectIdentifier("1.3.6.1.4.1.311.20.2.3")
KEY_USAGES = _KEY_USAGES


class CertificateError(ValueError):
    """Bad certificate input (subject, usages, blobs); the message is safe to return to the client."""


@dataclass(frozen=True)
class CertInfo:
    der: bytes
    x5t: str  # base64url SHA-1 thumbprint
    not_before: int
    not_after: int
    subject: str


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _private(private_der: bytes) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    key = serialization.load_der_private_key(private_der, None)
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise CertificateError("Only RSA and EC keys can back a certificate.")
    return key


def _name(subject: str) -> x509.Name:
    # Key Vault subjects are written "CN=a, O=b" (X.500 style, spaces after the separators)
    parts = [part.strip() for part in re.split(r"(?<!\\)[,;]", subject)]
    try:
        return x509.Name.from_rfc4514_string(",".join(p for p in parts if p))
    except ValueError:
        raise CertificateError(f"Invalid subject name {subject[:64]!r}.") from None


def inspect(der: bytes) -> CertInfo:
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        raise CertificateError("Not a DER X.509 certificate.") from None
    return CertInfo(
        der=der,
        x5t=_b64url(hashlib.sha1(der).digest()),  # noqa: S324 (a thumbprint, as the protocol defines it)
        not_before=int(cert.not_valid_before_utc.timestamp()),
        not_after=int(cert.not_valid_after_utc.timestamp()),
        subject=cert.subject.rfc4514_string(),
    )


def self_signed(
    private_der: bytes,
    *,
    subject: str,
    dns_names: list[str],
    emails: list[str],
    upns: list[str],
    key_usage: list[str],
    ekus: list[str],
    validity_months: int,
) -> bytes:
    """A self-signed certificate (DER) for the key, as Key Vault's "Self" issuer makes it."""
    return issue(
        private_der,
        None,
        subject=subject,
        dns_names=dns_names,
        emails=emails,
        upns=upns,
        key_usage=key_usage,
        ekus=ekus,
        validity_months=validity_months,
    )


def issue(
    private_der: bytes,
    ca: tuple[bytes, bytes] | None,
    *,
    subject: str,
    dns_names: list[str],
    emails: list[str],
    upns: list[str],
    key_usage: list[str],
    ekus: list[str],
    validity_months: int,
) -> bytes:
    """A leaf certificate (DER) for the key: self-signed, or signed by ca = (CA private key DER, CA cert DER)."""
    key = _private(private_der)
    name = _name(subject)
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=5)
    end = start + dt.timedelta(days=30 * validity_months + validity_months // 2) + dt.timedelta(minutes=5)
    signer = key
    issuer_name = name
    builder = x509.CertificateBuilder()
    if ca is not None:
        signer = _private(ca[0])
        ca_cert = x509.load_der_x509_certificate(ca[1])
        issuer_name = ca_cert.subject
        end = min(end, ca_cert.not_valid_after_utc)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False
        )
    builder = (
        builder.subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    for extension, critical in _extensions(dns_names, emails, upns, key_usage, ekus):
        builder = builder.add_extension(extension, critical=critical)
    cert = builder.sign(signer, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.DER)


def ca_certificate(private_der: bytes, *, subject: str, validity_years: int) -> bytes:
    """A self-signed root CA certificate (DER) for the key (Coffer's internal CA)."""
    key = _private(private_der)
    name = _name(subject)
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=5)
    end = start + dt.timedelta(days=365 * validity_years + validity_years // 4)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


def to_pem(der: bytes) -> str:
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM).decode("ascii")


def _extensions(
    dns_names: list[str], emails: list[str], upns: list[str], key_usage: list[str], ekus: list[str]
) -> list[tuple[x509.ExtensionType, bool]]:
    found: list[tuple[x509.ExtensionType, bool]] = []
    general: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
    general += [x509.RFC822Name(e) for e in emails]
    general += [x509.OtherName(_UPN_OID, _der_utf8(u)) for u in upns]
    if general:
        found.append((x509.SubjectAlternativeName(general), False))
    if key_usage:
        unknown = [u for u in key_usage if u not in _KU_ARGS]
        if unknown:
            raise CertificateError(f"Invalid key usage {unknown[0][:32]!r}.")
        flags = {arg: name in key_usage for name, arg in _KU_ARGS.items()}
        found.append((x509.KeyUsage(**flags), True))
    if ekus:
        try:
            oids = [ObjectIdentifier(e) for e in ekus]
        except ValueError:
            raise CertificateError("Invalid extended key usage OID.") from None
        found.append((x509.ExtendedKeyUsage(oids), False))
    return found


def build_csr(
    private_der: bytes,
    *,
    subject: str,
    dns_names: list[str],
    emails: list[str],
    upns: list[str],
    key_usage: list[str],
    ekus: list[str],
) -> bytes:
    """A PKCS#10 request (DER) for the key, for an issuer outside Coffer ("Unknown")."""
    key = _private(private_der)
    builder = x509.CertificateSigningRequestBuilder().subject_name(_name(subject))
    for extension, critical in _extensions(dns_names, emails, upns, key_usage, ekus):
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def matches_key(cert_der: bytes, private_der: bytes) -> bool:
    """Whether the certificate (DER) carries the public key of the private key."""
    try:
        cert = x509.load_der_x509_certificate(cert_der)
    except ValueError:
        raise CertificateError("Not a DER X.509 certificate.") from None
    return _public_der(cert.public_key()) == _public_der(_private(private_der).public_key())


def _der_utf8(text: str) -> bytes:
    data = text.encode("utf-8")
    if len(data) > 127:
        raise CertificateError("UPN too long.")
    return bytes([0x0C, len(data)]) + data


def export_pkcs12(cert_der: bytes, private_der: bytes | None, name: str, chain: list[bytes] | None = None) -> bytes:
    cert = x509.load_der_x509_certificate(cert_der)
    key = _private(private_der) if private_der is not None else None
    cas = [x509.load_der_x509_certificate(c) for c in chain or []] or None
    return pkcs12.serialize_key_and_certificates(name.encode("utf-8"), key, cert, cas, serialization.NoEncryption())


def export_pem(cert_der: bytes, private_der: bytes | None, chain: list[bytes] | None = None) -> str:
    certificates = [x509.load_der_x509_certificate(c) for c in [cert_der, *(chain or [])]]
    text = ""
    if private_der is not None:
        text += (
            _private(private_der)
            .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
            .decode("ascii")
        )
    return text + "".join(c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in certificates)


DEFAULT_EKUS = [ExtendedKeyUsageOID.SERVER_AUTH.dotted_string, ExtendedKeyUsageOID.CLIENT_AUTH.dotted_string]


@dataclass(frozen=True)
class Imported:
    private_der: bytes  # PKCS#8
    cert_der: bytes
    chain: list[bytes]  # further certificates, DER
    pem: bool  # the content was PEM (else PKCS#12)


def _pkcs8(key: object) -> bytes:
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise CertificateError("The certificate's key must be an RSA or EC key.")
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _public_der(key: object) -> bytes:
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise CertificateError("The certificate's key must be an RSA or EC key.")
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_import(value: str, password: str | None) -> Imported:
    """A PEM text (private key + certificates) or a base64 PKCS#12 blob, checked: the key matches the leaf."""
    data = value.encode("utf-8")
    if b"-----BEGIN" not in data:
        try:
            data = base64.b64decode(value, validate=True)
        except ValueError:
            raise CertificateError("Property value is neither PEM text nor base64 content.") from None
    if b"-----BEGIN" in data:
        try:
            key = serialization.load_pem_private_key(data, password.encode("utf-8") if password else None)
            chain = x509.load_pem_x509_certificates(data)
        except (ValueError, TypeError):
            raise CertificateError("The PEM content is not a valid private key and certificate.") from None
        certificates = chain
    else:
        try:
            p12_key, leaf, extra = pkcs12.load_key_and_certificates(
                data, password.encode("utf-8") if password else None
            )
        except (ValueError, TypeError):
            raise CertificateError(
                "The specified PKCS#12 X.509 certificate content can not be read. Please check if certificate "
                "is in valid PKCS#12 format and the password is correct."
            ) from None
        if leaf is None:
            raise CertificateError("The PKCS#12 content holds no certificate.")
        certificates = [leaf, *extra]
        if p12_key is None:
            raise CertificateError("The content holds no private key.")
        key = p12_key
    if key is None:
        raise CertificateError("The content holds no private key.")
    wanted = _public_der(key.public_key())
    leaf_index = next((i for i, c in enumerate(certificates) if _public_der(c.public_key()) == wanted), None)
    if leaf_index is None:
        raise CertificateError("The private key does not match the public key of the certificate.")
    leaf_cert = certificates[leaf_index]
    rest = [c for i, c in enumerate(certificates) if i != leaf_index]
    return Imported(
        private_der=_pkcs8(key),
        cert_der=leaf_cert.public_bytes(serialization.Encoding.DER),
        chain=[c.public_bytes(serialization.Encoding.DER) for c in rest],
        pem=b"-----BEGIN" in data,
    )


def _b64_int(value: int) -> str:
    return _b64url(value.to_bytes((value.bit_length() + 7) // 8 or 1, "big"))


_JWK_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521", "secp256k1": "P-256K"}


def private_jwk(private_der: bytes) -> dict[str, str]:
    """The JWK (with private members) of a PKCS#8 RSA or EC key, for the key backend's import."""
    key = _private(private_der)
    if isinstance(key, rsa.RSAPrivateKey):
        numbers = key.private_numbers()
        return {
            "kty": "RSA",
            "n": _b64_int(numbers.public_numbers.n),
            "e": _b64_int(numbers.public_numbers.e),
            "d": _b64_int(numbers.d),
            "p": _b64_int(numbers.p),
            "q": _b64_int(numbers.q),
        }
    curve = _JWK_CURVES.get(key.curve.name)
    if curve is None:
        raise CertificateError(f"Unsupported curve {key.curve.name}.")
    size = (key.curve.key_size + 7) // 8
    ec_numbers = key.private_numbers()
    return {
        "kty": "EC",
        "crv": curve,
        "x": _b64url(ec_numbers.public_numbers.x.to_bytes(size, "big")),
        "y": _b64url(ec_numbers.public_numbers.y.to_bytes(size, "big")),
        "d": _b64url(ec_numbers.private_value.to_bytes(size, "big")),
    }
