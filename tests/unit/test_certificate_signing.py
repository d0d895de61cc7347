"""Certificates and CSRs signed through `certs.Signer`, whatever holds the key: the software backend and a SoftHSM2
token (PKCS#11 backend, keys generated in the token). Self-signed and CA-issued certificates and CSRs of every RSA
size and EC curve are checked with `cryptography` (signature, issuer, public key, extensions); a signer whose
signatures do not verify is refused; the DER surgery keeps every byte but the signature; PKCS#12 → PEM."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from tests.support.softhsm import missing_reason, shared_token

from coffer.crypto import certs
from coffer.crypto.keys import KeyBackend, KeyMaterial
from coffer.crypto.software import SoftwareBackend

KEYS = [
    ("RSA", 2048, None),
    ("RSA", 3072, None),
    ("EC", None, "P-256"),
    ("EC", None, "P-256K"),
    ("EC", None, "P-384"),
    ("EC", None, "P-521"),
]
HASH_OF_CURVE = {"P-256": hashes.SHA256, "P-256K": hashes.SHA256, "P-384": hashes.SHA384, "P-521": hashes.SHA512}
SPKI = serialization.PublicFormat.SubjectPublicKeyInfo
DER = serialization.Encoding.DER


def _label(kty: str, size: int | None, curve: str | None) -> str:
    return f"{kty}-{size or curve}"


@pytest.fixture(scope="module")
def hsm() -> Iterator[KeyBackend]:
    reason = missing_reason()
    if reason is not None:
        pytest.skip(reason)
    from coffer.crypto.pkcs11 import Pkcs11Backend

    token = shared_token()
    backend = Pkcs11Backend(token.module, token.label, token.pin)
    yield backend
    backend.close()


def _backend(name: str, request: pytest.FixtureRequest) -> KeyBackend:
    if name == "software":
        return SoftwareBackend()
    hsm: KeyBackend = request.getfixturevalue("hsm")
    return hsm


def _generate(backend: KeyBackend, protection: str, kty: str, size: int | None, curve: str | None) -> KeyMaterial:
    return backend.generate(kty if protection == "software" else f"{kty}-HSM", size=size, curve=curve)


def _leaf(signer: certs.Signer, ca: tuple[certs.Signer, bytes] | None = None) -> x509.Certificate:
    der = certs.issue(
        signer,
        ca,
        subject="CN=leaf.example, O=Coffer",
        dns_names=["leaf.example", "www.leaf.example"],
        emails=["ops@leaf.example"],
        upns=["svc@leaf.example"],
        key_usage=["digitalSignature", "keyEncipherment"],
        ekus=[ExtendedKeyUsageOID.SERVER_AUTH.dotted_string],
        validity_months=6,
    )
    return x509.load_der_x509_certificate(der)


def _spki(key: object) -> bytes:
    assert isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)
    return key.public_bytes(DER, SPKI)


@pytest.mark.parametrize("protection", ["software", "hsm"])
@pytest.mark.parametrize(("kty", "size", "curve"), KEYS, ids=[_label(*k) for k in KEYS])
def test_self_signed_csr_and_ca_issued(
    request: pytest.FixtureRequest, protection: str, kty: str, size: int | None, curve: str | None
) -> None:
    backend = _backend(protection, request)
    material = _generate(backend, protection, kty, size, curve)
    try:
        signer = certs.key_signer(backend, material)
        assert signer.algorithm == (
            "RS256"
            if kty == "RSA"
            else {"P-256": "ES256", "P-256K": "ES256K", "P-384": "ES384", "P-521": "ES512"}[curve or ""]
        )
        # self-signed
        cert = _leaf(signer)
        cert.verify_directly_issued_by(cert)
        assert _spki(cert.public_key()) == _spki(signer.public_key)
        expected_hash = hashes.SHA256 if kty == "RSA" else HASH_OF_CURVE[curve or ""]
        assert isinstance(cert.signature_hash_algorithm, expected_hash)
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "leaf.example"
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.DNSName) == ["leaf.example", "www.leaf.example"]
        assert sans.get_values_for_type(x509.RFC822Name) == ["ops@leaf.example"]
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
        assert usage.critical and usage.value.digital_signature and usage.value.key_encipherment
        assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
            ExtendedKeyUsageOID.SERVER_AUTH
        ]
        assert certs.matches_key(cert.public_bytes(DER), material)

        # a CSR for the key, signed by it
        csr = x509.load_der_x509_csr(
            certs.build_csr(
                signer,
                subject="CN=csr.example",
                dns_names=["csr.example"],
                emails=[],
                upns=[],
                key_usage=["digitalSignature"],
                ekus=[],
            )
        )
        assert csr.is_signature_valid
        assert _spki(csr.public_key()) == _spki(signer.public_key)
        assert csr.subject.rfc4514_string() == "CN=csr.example"
        assert csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName
        ) == ["csr.example"]

        # a CA made with this key signs a leaf of a software key
        ca_der = certs.ca_certificate(signer, subject="CN=Test Root CA", validity_years=2)
        ca_cert = x509.load_der_x509_certificate(ca_der)
        ca_cert.verify_directly_issued_by(ca_cert)
        assert ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
        software = SoftwareBackend()
        leaf_key = software.generate("EC", curve="P-256")
        leaf = _leaf(certs.key_signer(software, leaf_key), (signer, ca_der))
        leaf.verify_directly_issued_by(ca_cert)
        assert _spki(leaf.public_key()) == _spki(certs.key_signer(software, leaf_key).public_key)
        assert leaf.issuer == ca_cert.subject
    finally:
        backend.destroy(material)


def test_a_signer_whose_signature_does_not_verify_is_refused() -> None:
    backend = SoftwareBackend()
    good = certs.key_signer(backend, backend.generate("EC", curve="P-256"))
    other = backend.generate("EC", curve="P-256")
    impostor = certs.Signer(public_key=good.public_key, sign=lambda alg, digest: backend.sign(other, alg, digest))
    with pytest.raises(certs.SigningFailed):
        _leaf(impostor)
    with pytest.raises(certs.SigningFailed):
        certs.build_csr(impostor, subject="CN=x", dns_names=[], emails=[], upns=[], key_usage=[], ekus=[])
    garbage = certs.Signer(public_key=good.public_key, sign=lambda alg, digest: b"\x01" * 63)
    with pytest.raises(certs.SigningFailed):
        _leaf(garbage)


def test_software_keys_without_public_members_still_sign() -> None:
    """An internal CA of an earlier release keeps a software RSA key and no public JWK members."""
    backend = SoftwareBackend()
    material = backend.generate("RSA", size=2048)
    legacy = KeyMaterial(kty="RSA", public={}, private=material.private, size=2048)
    der = certs.ca_certificate(certs.key_signer(backend, legacy), subject="CN=Old CA", validity_years=1)
    cert = x509.load_der_x509_certificate(der)
    cert.verify_directly_issued_by(cert)


def test_der_surgery_replaces_only_the_signature() -> None:
    backend = SoftwareBackend()
    signer = certs.key_signer(backend, backend.generate("RSA", size=2048))
    cert = _leaf(signer)
    tbs, algorithm, signature = certs._der_children(cert.public_bytes(DER))
    assert tbs == cert.tbs_certificate_bytes
    assert certs._der_sequence(tbs, algorithm, signature) == cert.public_bytes(DER)
    assert signature == certs._der_bit_string(cert.signature)
    for length in (0, 1, 127, 128, 255, 256, 70000):
        encoded = certs._der_sequence(b"\x04" + certs._der_length(length) + bytes(length))
        assert certs._der_children(encoded) == [b"\x04" + certs._der_length(length) + bytes(length)]
    with pytest.raises(ValueError):
        certs._der_children(b"\x30\x05\x04\x01")


def test_pkcs12_to_pem() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "p12.example")])
    start = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    ca = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    blob = pkcs12.serialize_key_and_certificates(b"n", key, cert, [ca], serialization.NoEncryption())
    pem = certs.pkcs12_to_pem(blob)
    assert pem.index("-----BEGIN PRIVATE KEY-----") < pem.index("-----BEGIN CERTIFICATE-----")
    assert x509.load_pem_x509_certificates(pem.encode()) == [cert, ca]
    loaded = serialization.load_pem_private_key(pem.encode(), None)
    assert _spki(loaded.public_key()) == _spki(key.public_key())
    without_key = certs.pkcs12_to_pem(
        pkcs12.serialize_key_and_certificates(b"n", None, cert, None, serialization.NoEncryption())
    )
    assert "PRIVATE KEY" not in without_key and x509.load_pem_x509_certificates(without_key.encode()) == [cert]
    with pytest.raises(certs.CertificateError):
        certs.pkcs12_to_pem(base64.b64decode("AAAA"))
