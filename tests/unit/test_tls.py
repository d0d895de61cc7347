import datetime as dt
import ipaddress
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509

from coffer.crypto import TlsFiles, tls

HOSTNAMES = ["localhost", "*.localhost", "dev.localhost"]
IPS = ["127.0.0.1", "::1"]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.fixture
def files(tmp_path: Path) -> TlsFiles:
    return tls.ensure_local_tls(tmp_path / "tls", HOSTNAMES, IPS)


def test_files_created(files: TlsFiles, tmp_path: Path) -> None:
    directory = tmp_path / "tls"
    assert files == TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    assert mode(directory) == 0o700
    assert mode(directory / "ca.key") == 0o600
    assert mode(files.key) == 0o600
    assert files.cert.read_bytes().count(b"BEGIN CERTIFICATE") == 1  # leaf only
    assert not list(directory.glob("*.tmp")) and not list(directory.glob(".*.tmp"))


def test_ca_certificate(files: TlsFiles) -> None:
    ca = load(files.ca_cert)
    assert ca.subject.rfc4514_string() == "CN=Coffer local CA"
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert dt.timedelta(days=3649) < lifetime < dt.timedelta(days=3651)


def test_server_certificate(files: TlsFiles) -> None:
    cert = load(files.cert)
    cert.verify_directly_issued_by(load(files.ca_cert))
    assert cert.subject.rfc4514_string() == "CN=localhost"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == HOSTNAMES
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(ip) for ip in IPS]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=396) < lifetime < dt.timedelta(days=398)


def test_reuse_on_second_call(files: TlsFiles, tmp_path: Path) -> None:
    ca_print = tls.fingerprint_sha256(files.ca_cert)
    server_print = tls.fingerprint_sha256(files.cert)
    assert len(ca_print) == 64 and int(ca_print, 16) >= 0
    again = tls.ensure_local_tls(tmp_path / "tls", ["LOCALHOST", "dev.localhost"], ["127.0.0.1"])
    assert again == files
    assert tls.fingerprint_sha256(again.ca_cert) == ca_print
    assert tls.fingerprint_sha256(again.cert) == server_print  # subset of the SANs: still covered


def test_reissue_when_hostnames_change(files: TlsFiles, tmp_path: Path) -> None:
    ca_print = tls.fingerprint_sha256(files.ca_cert)
    server_print = tls.fingerprint_sha256(files.cert)
    again = tls.ensure_local_tls(tmp_path / "tls", [*HOSTNAMES, "coffer.test"], IPS)
    assert tls.fingerprint_sha256(again.ca_cert) == ca_print
    assert tls.fingerprint_sha256(again.cert) != server_print
    san = load(again.cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "coffer.test" in san.get_values_for_type(x509.DNSName)
    second_print = tls.fingerprint_sha256(again.cert)
    newer = tls.ensure_local_tls(tmp_path / "tls", HOSTNAMES, [*IPS, "10.1.2.3"])
    assert tls.fingerprint_sha256(newer.cert) != second_print


def test_reissue_when_server_files_missing_or_broken(files: TlsFiles, tmp_path: Path) -> None:
    server_print = tls.fingerprint_sha256(files.cert)
    files.key.unlink()
    tls.ensure_local_tls(tmp_path / "tls", HOSTNAMES, IPS)
    assert tls.fingerprint_sha256(files.cert) != server_print
    files.cert.write_bytes(b"garbage")
    tls.ensure_local_tls(tmp_path / "tls", HOSTNAMES, IPS)
    load(files.cert).verify_directly_issued_by(load(files.ca_cert))


def test_new_ca_when_ca_key_missing(files: TlsFiles, tmp_path: Path) -> None:
    ca_print = tls.fingerprint_sha256(files.ca_cert)
    (tmp_path / "tls" / "ca.key").unlink()
    again = tls.ensure_local_tls(tmp_path / "tls", HOSTNAMES, IPS)
    assert tls.fingerprint_sha256(again.ca_cert) != ca_print
    load(again.cert).verify_directly_issued_by(load(again.ca_cert))


def test_requires_a_hostname(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        tls.ensure_local_tls(tmp_path, [], IPS)
    with pytest.raises(ValueError):
        tls.ensure_local_tls(tmp_path, ["localhost"], ["not-an-ip"])


def handshake(files: TlsFiles, server_hostname: str) -> str:
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(files.cert, files.key)
    client_context = ssl.create_default_context(cafile=str(files.ca_cert))
    assert client_context.check_hostname and client_context.verify_mode == ssl.CERT_REQUIRED

    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            connection, _ = listener.accept()
            try:
                with server_context.wrap_socket(connection, server_side=True) as tls_conn:
                    tls_conn.sendall(b"ok")
            except (ssl.SSLError, OSError):
                pass

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
                client_context.wrap_socket(raw, server_hostname=server_hostname) as client,
            ):
                return client.recv(2).decode()
        finally:
            thread.join(timeout=10)


@pytest.mark.parametrize("server_hostname", ["dev.localhost", "localhost", "127.0.0.1"])
def test_tls_handshake_verifies(files: TlsFiles, server_hostname: str) -> None:
    assert handshake(files, server_hostname) == "ok"


@pytest.mark.parametrize("server_hostname", ["other.localhost", "example.com", "127.0.0.2"])
def test_tls_handshake_rejects_unlisted_names(files: TlsFiles, server_hostname: str) -> None:
    # "*.localhost" is ignored by OpenSSL (wildcard directly under a single label).
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(files, server_hostname)


def test_deeper_wildcard_works(tmp_path: Path) -> None:
    files = tls.ensure_local_tls(tmp_path, ["localhost", "*.vault.localhost"], ["127.0.0.1"])
    assert handshake(files, "kv1.vault.localhost") == "ok"


def test_reloading_while_another_process_reissues_never_pairs_a_certificate_with_the_wrong_key(
        files: TlsFiles, tmp_path: Path) -> None:
    """A vault created on one node reissues the local certificate while every process reloads it (the change feed):
    the reload must see the old pair or the new pair, never the new certificate with the old key."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    errors: list[BaseException] = []
    stop = threading.Event()

    def reload() -> None:
        while not stop.is_set():
            try:
                tls.load_server_chain(context, files)
            except BaseException as error:  # collected for the assertion
                errors.append(error)
                return

    readers = [threading.Thread(target=reload) for _ in range(3)]
    for reader in readers:
        reader.start()
    try:
        for n in range(15):
            tls.ensure_local_tls(tmp_path / "tls", [*HOSTNAMES, f"v{n}.localhost"], IPS)
    finally:
        stop.set()
        for reader in readers:
            reader.join()
    assert not errors
