"""Assertions on X.509 certificates issued by Coffer, shared by the certificate compatibility tests."""

from __future__ import annotations

import datetime as dt

from azure.keyvault.certificates import CertificateContentType, CertificatePolicy, KeyType, KeyUsageType
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

UPN = ObjectIdentifier("1.3.6.1.4.1.311.20.2.3")
CODE_SIGNING = "1.3.6.1.5.5.7.3.3"


def add_months(moment: dt.datetime, months: int) -> dt.datetime:
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    for day in range(moment.day, 27, -1):  # Jan 31 + 1 month: the last day of February
        try:
            return moment.replace(year=year, month=month, day=day)
        except ValueError:
            continue
    return moment.replace(year=year, month=month)


def check_validity(cert: x509.Certificate, months: int) -> None:
    """not_valid_after minus not_valid_before is `months` calendar months (and at most a few minutes more)."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    assert add_months(start, months) <= end <= add_months(start, months) + dt.timedelta(minutes=15), (
        months,
        start,
        end,
    )
    assert start <= dt.datetime.now(dt.UTC) < end


def check_extensions(cert: x509.Certificate, name: str) -> None:
    """What `full_policy(name, ...)` asks for, and nothing it did not."""
    assert cert.subject.rfc4514_string() == f"CN={name}.corp,O=Corp"  # encoded O first, as Key Vault does
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == f"{name}.corp"
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert not sans.critical
    assert sans.value.get_values_for_type(x509.DNSName) == [f"{name}.corp", f"www.{name}.corp"]
    assert sans.value.get_values_for_type(x509.RFC822Name) == [f"ops@{name}.corp"]
    upns = [o.value for o in sans.value.get_values_for_type(x509.OtherName) if o.type_id == UPN]
    assert upns == [b"\x0c" + bytes([len(f"svc@{name}.corp")]) + f"svc@{name}.corp".encode()]  # UTF8String
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature and usage.value.key_encipherment and usage.value.content_commitment
    assert not (
        usage.value.data_encipherment or usage.value.key_agreement or usage.value.key_cert_sign or usage.value.crl_sign
    )
    ekus = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(ekus) == [ExtendedKeyUsageOID.SERVER_AUTH, ObjectIdentifier(CODE_SIGNING)]
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca is False


def full_policy(name: str, issuer: str, months: int, key_type: KeyType = KeyType.rsa) -> CertificatePolicy:
    """A policy with a subject, DNS, email and UPN SANs, three key usages, two EKUs and a validity: what
    `check_extensions(cert, name)` and `check_validity(cert, months)` check."""
    return CertificatePolicy(
        issuer_name=issuer,
        subject=f"CN={name}.corp, O=Corp",
        san_dns_names=[f"{name}.corp", f"www.{name}.corp"],
        san_emails=[f"ops@{name}.corp"],
        san_user_principal_names=[f"svc@{name}.corp"],
        key_usage=[KeyUsageType.digital_signature, KeyUsageType.key_encipherment, KeyUsageType.non_repudiation],
        enhanced_key_usage=[ExtendedKeyUsageOID.SERVER_AUTH.dotted_string, CODE_SIGNING],
        validity_in_months=months,
        key_type=key_type,
        content_type=CertificateContentType.pkcs12,
    )
