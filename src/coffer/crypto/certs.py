"""X.509 for Key Vault certificates: issuance (self-signed, by an internal CA), CSRs, certificate parsing, PKCS#12 and
PEM export.

Certificates and CSRs are signed through a `Signer`, whatever holds the private key: `key_signer(backend, material)`
signs with a Key Vault key through its KeyBackend's sign operation, so a key in an HSM signs in the token and its
private part is never needed here. `cryptography`'s builders sign only with in-process private keys, so each
certificate or CSR is first built and signed with a throwaway *placeholder* key of the same family (for a CSR the
placeholder's public key is then replaced with the real one); the to-be-signed bytes are hashed, signed by the
Signer, and the final DER is assembled from the draft's parts with the real signature (ECDSA r || s re-encoded as
the DER SEQUENCE X.509 wants). Every result is verified with `cryptography` before it is returned.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

from coffer.crypto.keys import KeyBackend, KeyMaterial

__all__ = [
    "CertInfo",
    "CertificateError",
    "Imported",
    "Signer",
    "SigningFailed",
    "add_months",
    "build_csr",
    "ca_certificate",
    "export_pem",
    "export_pkcs12",
    "inspect",
    "issue",
    "key_signer",
    "load_import",
    "matches_key",
    "pkcs12_to_pem",
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


class SigningFailed(RuntimeError):
    """The signer's signature does not verify with its public key (a faulty token or key backend)."""


PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
_PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Signer:
    """A key that signs certificates and CSRs, wherever its private part lives. `sign(alg, digest)` is a Key Vault
    sign operation: `alg` a JWS algorithm (RS256, ES256, ES256K, ES384, ES512), `digest` the hash of the data; it
    returns the PKCS#1 v1.5 signature (RSA) or r || s (ECDSA)."""

    public_key: PublicKey
    sign: Callable[[str, bytes], bytes]

    @property
    def algorithm(self) -> str:
        """RS256 for RSA; for EC the algorithm of the curve (a P-384 key signs with ES384, as Key Vault requires)."""
        if isinstance(self.public_key, rsa.RSAPublicKey):
            return "RS256"
        return _EC_ALGORITHMS[self.public_key.curve.name]


_EC_ALGORITHMS = {"secp256r1": "ES256", "secp256k1": "ES256K", "secp384r1": "ES384", "secp521r1": "ES512"}
_JWK_EC_CURVES: dict[str, ec.EllipticCurve] = {
    "P-256": ec.SECP256R1(),
    "P-256K": ec.SECP256K1(),
    "P-384": ec.SECP384R1(),
    "P-521": ec.SECP521R1(),
}
_ALGORITHM_HASHES: dict[str, type[hashes.SHA256 | hashes.SHA384 | hashes.SHA512]] = {
    "RS256": hashes.SHA256,
    "ES256": hashes.SHA256,
    "ES256K": hashes.SHA256,
    "ES384": hashes.SHA384,
    "ES512": hashes.SHA512,
}


def _b64url_int(value: str) -> int:
    return int.from_bytes(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)), "big")


def _material_public(material: KeyMaterial) -> PublicKey:
    """The public key of an RSA or EC key (software or HSM) from its public JWK members; a software key stored
    without them (an internal CA of an earlier release) gives its public key from the private key."""
    public = material.public
    try:
        if material.family == "RSA" and public.get("n") and public.get("e"):
            return rsa.RSAPublicNumbers(_b64url_int(public["e"]), _b64url_int(public["n"])).public_key()
        if material.family == "EC" and public.get("x") and public.get("y"):
            curve = _JWK_EC_CURVES[public.get("crv") or material.curve or ""]
            return ec.EllipticCurvePublicNumbers(_b64url_int(public["x"]), _b64url_int(public["y"]), curve).public_key()
    except (KeyError, ValueError):
        raise CertificateError("The key's public members are not a valid RSA or EC public key.") from None
    if material.kty in ("RSA", "EC") and material.private:
        return _private(material.private).public_key()
    raise CertificateError("Only RSA and EC keys can back a certificate.")


def key_signer(backend: KeyBackend, material: KeyMaterial) -> Signer:
    """A Signer for a Key Vault key: signatures come from the backend's sign operation (in an HSM for HSM keys)."""
    return Signer(public_key=_material_public(material), sign=lambda alg, digest: backend.sign(material, alg, digest))


# Throwaway keys that sign drafts only (their signatures are replaced): one per family, made on first use.
_placeholders: dict[str, _PrivateKey] = {}
_placeholders_lock = threading.Lock()


def _placeholder(signer: Signer) -> _PrivateKey:
    family = "RSA" if isinstance(signer.public_key, rsa.RSAPublicKey) else "EC"
    with _placeholders_lock:
        if family not in _placeholders:
            _placeholders[family] = (
                rsa.generate_private_key(public_exponent=65537, key_size=2048)
                if family == "RSA"
                else ec.generate_private_key(ec.SECP256R1())
            )
        return _placeholders[family]


def _signature(signer: Signer, data: bytes) -> bytes:
    """The signer's X.509 signature (DER-encoded for ECDSA) over `data`, verified with its public key."""
    alg = signer.algorithm
    algorithm = _ALGORITHM_HASHES[alg]()
    digest = hashes.Hash(algorithm)
    digest.update(data)
    raw = signer.sign(alg, digest.finalize())
    try:
        if isinstance(signer.public_key, rsa.RSAPublicKey):
            signer.public_key.verify(raw, data, padding.PKCS1v15(), algorithm)
            return raw
        half = len(raw) // 2
        if not half or len(raw) % 2:
            raise InvalidSignature
        der = encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))
        signer.public_key.verify(der, data, ec.ECDSA(algorithm))
        return der
    except InvalidSignature:
        raise SigningFailed(f"The key's {alg} signature does not verify with its public key.") from None


# --- just enough DER to take a signed structure apart and put it back together -------------------------------------
def _tlv_end(data: bytes, offset: int) -> tuple[int, int]:
    """(start of the contents, end) of the DER element at `offset` (single-byte tags, definite lengths)."""
    if offset + 2 > len(data) or data[offset] & 0x1F == 0x1F:
        raise ValueError("unsupported DER")
    first = data[offset + 1]
    if first < 0x80:
        start, length = offset + 2, first
    else:
        count = first & 0x7F
        if not 1 <= count <= 4:
            raise ValueError("unsupported DER length")
        start, length = offset + 2 + count, int.from_bytes(data[offset + 2 : offset + 2 + count], "big")
    if start + length > len(data):
        raise ValueError("truncated DER")
    return start, start + length


def _der_children(der: bytes) -> list[bytes]:
    """The encoded elements of a DER SEQUENCE."""
    if not der or der[0] != 0x30:
        raise ValueError("not a DER SEQUENCE")
    start, end = _tlv_end(der, 0)
    if end != len(der):
        raise ValueError("trailing bytes after the DER SEQUENCE")
    children, position = [], start
    while position < end:
        _, child_end = _tlv_end(der, position)
        children.append(der[position:child_end])
        position = child_end
    return children


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    encoded = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(encoded)]) + encoded


def _der_sequence(*elements: bytes) -> bytes:
    body = b"".join(elements)
    return b"\x30" + _der_length(len(body)) + body


def _der_bit_string(data: bytes) -> bytes:
    body = b"\x00" + data  # no unused bits
    return b"\x03" + _der_length(len(body)) + body


def _signed_certificate(builder: x509.CertificateBuilder, signer: Signer) -> x509.Certificate:
    """The builder's certificate, signed by `signer` (see the module docstring)."""
    draft = builder.sign(_placeholder(signer), _ALGORITHM_HASHES[signer.algorithm]())
    tbs, algorithm_id, _ = _der_children(draft.public_bytes(serialization.Encoding.DER))
    signature = _signature(signer, tbs)
    return x509.load_der_x509_certificate(_der_sequence(tbs, algorithm_id, _der_bit_string(signature)))


def _signed_csr(builder: x509.CertificateSigningRequestBuilder, signer: Signer) -> x509.CertificateSigningRequest:
    """The builder's request for the signer's public key, signed by `signer`."""
    draft = builder.sign(_placeholder(signer), _ALGORITHM_HASHES[signer.algorithm]())
    info, algorithm_id, _ = _der_children(draft.public_bytes(serialization.Encoding.DER))
    version, subject, _placeholder_key, *attributes = _der_children(info)  # CertificationRequestInfo
    info = _der_sequence(version, subject, _public_der(signer.public_key), *attributes)
    signature = _signature(signer, info)
    csr = x509.load_der_x509_csr(_der_sequence(info, algorithm_id, _der_bit_string(signature)))
    if not csr.is_signature_valid:
        raise SigningFailed("The certificate signing request's signature does not verify.")
    return csr


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
    key: Signer,
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
        key,
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
    key: Signer,
    ca: tuple[Signer, bytes] | None,
    *,
    subject: str,
    dns_names: list[str],
    emails: list[str],
    upns: list[str],
    key_usage: list[str],
    ekus: list[str],
    validity_months: int,
) -> bytes:
    """A leaf certificate (DER) for the key: self-signed (signed by `key`), or signed by ca = (CA signer, CA
    certificate DER). The certificate is verified against its issuer before it is returned."""
    name = _name(subject)
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=5)
    # validity_months calendar months (the day of the month kept, or the month's last day), plus ten minutes
    end = add_months(start, validity_months) + dt.timedelta(minutes=10)
    signer = key
    issuer_name = name
    issuer_cert: x509.Certificate | None = None
    builder = x509.CertificateBuilder()
    if ca is not None:
        signer = ca[0]
        issuer_cert = x509.load_der_x509_certificate(ca[1])
        issuer_name = issuer_cert.subject
        end = min(end, issuer_cert.not_valid_after_utc)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key), critical=False
        )
    builder = (
        builder.subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    for extension, critical in _extensions(dns_names, emails, upns, key_usage, ekus):
        builder = builder.add_extension(extension, critical=critical)
    cert = _signed_certificate(builder, signer)
    _verify_issued(cert, issuer_cert or cert)
    return cert.public_bytes(serialization.Encoding.DER)


def add_months(moment: dt.datetime, months: int) -> dt.datetime:
    """`moment` plus whole calendar months; a day that the month lacks becomes its last day (Jan 31 + 1 → Feb 28)."""
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    following = dt.date(year + month // 12, month % 12 + 1, 1)
    last_day = (following - dt.timedelta(days=1)).day
    return moment.replace(year=year, month=month, day=min(moment.day, last_day))


def _verify_issued(cert: x509.Certificate, issuer: x509.Certificate) -> None:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        raise SigningFailed("The new certificate does not verify against its issuer.") from None


def ca_certificate(
    key: Signer,
    *,
    subject: str,
    validity_years: int,
    issuer: tuple[Signer, bytes] | None = None,
    path_length: int = 0,
) -> bytes:
    """A CA certificate (DER) for the key (Coffer's internal CA): a self-signed root, or an intermediate signed by
    issuer = (root signer, root certificate DER), which it does not outlive. `path_length`: how many CAs may sit
    below (1 for a root above an intermediate)."""
    name = _name(subject)
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=5)
    end = start + dt.timedelta(days=365 * validity_years + validity_years // 4)
    public = key.public_key
    signer, issuer_name, issuer_cert = key, name, None
    builder = x509.CertificateBuilder()
    if issuer is not None:
        signer, issuer_cert = issuer[0], x509.load_der_x509_certificate(issuer[1])
        issuer_name = issuer_cert.subject
        end = min(end, issuer_cert.not_valid_after_utc)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key), critical=False
        )
    builder = (
        builder.subject_name(name)
        .issuer_name(issuer_name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
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
    )
    cert = _signed_certificate(builder, signer)
    _verify_issued(cert, issuer_cert or cert)
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
    key: Signer,
    *,
    subject: str,
    dns_names: list[str],
    emails: list[str],
    upns: list[str],
    key_usage: list[str],
    ekus: list[str],
) -> bytes:
    """A PKCS#10 request (DER) for the key, signed by it, for an issuer outside Coffer ("Unknown")."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(_name(subject))
    for extension, critical in _extensions(dns_names, emails, upns, key_usage, ekus):
        builder = builder.add_extension(extension, critical=critical)
    return _signed_csr(builder, key).public_bytes(serialization.Encoding.DER)


def matches_key(cert_der: bytes, key: KeyMaterial) -> bool:
    """Whether the certificate (DER) carries the public key of the key (software or HSM)."""
    try:
        cert = x509.load_der_x509_certificate(cert_der)
    except ValueError:
        raise CertificateError("Not a DER X.509 certificate.") from None
    return _public_der(cert.public_key()) == _public_der(_material_public(key))


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


def pkcs12_to_pem(blob: bytes) -> str:
    """A certificate secret's unencrypted PKCS#12 as PEM: the private key (PKCS#8) if it holds one, then the leaf
    certificate and the rest of the chain (Key Vault's outContentType conversion)."""
    try:
        key, leaf, chain = pkcs12.load_key_and_certificates(blob, None)
    except (ValueError, TypeError):
        raise CertificateError("The secret's value is not a PKCS#12 certificate.") from None
    # without a private key there is no "leaf" for cryptography: the certificates come in their stored order
    certificates = [c.public_bytes(serialization.Encoding.DER) for c in ([leaf] if leaf is not None else []) + chain]
    if not certificates:
        raise CertificateError("The secret's PKCS#12 content holds no certificate.")
    private = _pkcs8(key) if key is not None else None
    return export_pem(certificates[0], private, certificates[1:])


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
