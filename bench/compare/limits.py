"""The limits: the same cryptographic operations in-process with `cryptography` (OpenSSL), per core and with one
thread per core, and a bare ASGI "hello" served by the same server stack Coffer uses (bench/stack/apps.py)."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bench.compare import procs
from bench.compare.model import DIGEST, EC_SIGN, PLAINTEXT, RSA_ENCRYPT, RSA_SIGN
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

STACK_DIR = Path(__file__).resolve().parent.parent / "stack"
RSA_PSS_SIGN = "rsa2048-pss-sign"
RSA_SIGN_WITH_LOAD = "rsa2048-sign+load"
EC_SIGN_WITH_LOAD = "p256-sign+load"
CRYPTO_TITLES = {
    RSA_SIGN: "RSA-2048 sign, PKCS#1 v1.5, SHA-256 (prehashed)",
    RSA_PSS_SIGN: "RSA-2048 sign, PSS, SHA-256 (prehashed)",
    EC_SIGN: "P-256 ECDSA sign, SHA-256 (prehashed)",
    RSA_ENCRYPT: "RSA-2048 OAEP-256 encrypt",
    RSA_SIGN_WITH_LOAD: "RSA-2048 sign, private key parsed from DER each time (what Coffer's key cache saves)",
    EC_SIGN_WITH_LOAD: "P-256 sign, private key parsed from DER each time (what Coffer's key cache saves)",
}


def operations() -> dict[str, Callable[[], object]]:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_public = rsa_key.public_key()
    sha = hashes.SHA256()
    pkcs1 = padding.PKCS1v15()
    pss = padding.PSS(mgf=padding.MGF1(sha), salt_length=sha.digest_size)  # Key Vault's PS256
    oaep = padding.OAEP(mgf=padding.MGF1(sha), algorithm=sha, label=None)
    pre = utils.Prehashed(sha)
    rsa_der = rsa_key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    ec_der = ec_key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )

    def rsa_with_load() -> bytes:
        key = serialization.load_der_private_key(rsa_der, None, unsafe_skip_rsa_key_validation=True)
        assert isinstance(key, rsa.RSAPrivateKey)
        return key.sign(DIGEST, pkcs1, pre)

    def ec_with_load() -> bytes:
        key = serialization.load_der_private_key(ec_der, None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key.sign(DIGEST, ec.ECDSA(pre))

    return {
        RSA_SIGN: lambda: rsa_key.sign(DIGEST, pkcs1, pre),
        RSA_PSS_SIGN: lambda: rsa_key.sign(DIGEST, pss, pre),
        EC_SIGN: lambda: ec_key.sign(DIGEST, ec.ECDSA(pre)),
        RSA_ENCRYPT: lambda: rsa_public.encrypt(PLAINTEXT, oaep),
        RSA_SIGN_WITH_LOAD: rsa_with_load,
        EC_SIGN_WITH_LOAD: ec_with_load,
    }


def _rate(fn: Callable[[], object], seconds: float, threads: int) -> float:
    """Operations per second with `threads` threads calling fn for `seconds` (cryptography releases the GIL
    around OpenSSL's work, so threads use several cores)."""
    for _ in range(20):
        fn()
    counts = [0] * threads
    stop = time.monotonic() + seconds

    def worker(i: int) -> None:
        n = 0
        while time.monotonic() < stop:
            for _ in range(10):
                fn()
            n += 10
        counts[i] = n

    started = time.monotonic()
    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return sum(counts) / (time.monotonic() - started)


def _best_rate(fn: Callable[[], object], seconds: float, threads: int, trials: int = 3) -> float:
    """The best of a few short trials: a limit should be what the machine can do, and on a shared VM a single
    trial is easily slowed by something else."""
    return max(_rate(fn, seconds / trials, threads) for _ in range(trials))


def per_core_rate(fn: Callable[[], object], seconds: float) -> float:
    """One thread's rate (the best of three trials in `seconds`)."""
    return _best_rate(fn, seconds, 1)


def crypto_limits(seconds: float) -> dict[str, dict[str, float]]:
    """{op: {"per_core": ops/s with 1 thread, "all_cores": ops/s with one thread per core}}."""
    cores = os.cpu_count() or 1
    result = {}
    for op, fn in operations().items():
        per_core = per_core_rate(fn, seconds)
        all_cores = _best_rate(fn, seconds, cores) if cores > 1 else per_core
        result[op] = {"per_core": per_core, "all_cores": all_cores, "cores": float(cores)}
    return result


def coffer_stack() -> str:
    """The server Coffer's `coffer server` runs today: 'granian' when its source uses granian, else 'uvicorn'."""
    import coffer.cli.server as server_module

    source = Path(server_module.__file__).read_text()
    return "granian" if "granian" in source and "import uvicorn" not in source else "uvicorn"


def self_signed(directory: Path) -> tuple[Path, Path]:
    """An EC P-256 certificate for 127.0.0.1 (the key type Coffer's local CA uses), PKCS#8 key."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "hello-cert.pem", directory / "hello-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def start_hello(workdir: Path, stack: str, workers: int, app: str = "raw") -> tuple[procs.Server, int]:
    """bench/stack/apps.py's `app` behind the given stack, on a free port, with Coffer's server options."""
    cert, key = self_signed(workdir)
    port = procs.free_port()
    py = sys.executable
    if stack == "granian" and workers == 1:
        argv = [py, str(STACK_DIR / "granian_embed.py"), app, str(port), str(cert), str(key)]
    elif stack == "granian":
        argv = [
            py,
            "-m",
            "granian",
            f"apps:{app}",
            "--interface",
            "asgi",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--ssl-certificate",
            str(cert),
            "--ssl-keyfile",
            str(key),
            "--log-level",
            "warning",
        ]
    else:
        # The options coffer.cli.server gives uvicorn.Config (loop/http "auto" pick uvloop and httptools).
        argv = [
            py,
            "-m",
            "uvicorn",
            f"apps:{app}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--ssl-certfile",
            str(cert),
            "--ssl-keyfile",
            str(key),
            "--log-level",
            "warning",
            "--no-access-log",
            "--no-server-header",
            "--lifespan",
            "off",
            "--timeout-keep-alive",
            "30",
        ]
    env = {**os.environ, "PYTHONPATH": str(STACK_DIR)}
    server = procs.Server(f"hello-{stack}", argv, workdir / f"hello-{stack}.log", env=env)

    def answers() -> bool:
        import ssl
        import urllib.request

        if not server.alive():
            raise RuntimeError("hello server exited:\n" + server.log_tail())
        ctx = ssl.create_default_context(cafile=str(cert))
        with urllib.request.urlopen(
            f"https://127.0.0.1:{port}/secrets/hello?api-version=7.5", context=ctx, timeout=2
        ) as r:
            return bool(r.status == 200)

    procs.wait_until(answers, 30, "the hello server")
    return server, port
