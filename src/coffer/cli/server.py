"""`coffer server`: bind, unseal (dev) or wait for an operator, serve HTTPS until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import functools
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator

import anyio.to_thread
import uvicorn
import uvloop

from coffer import devhsm
from coffer.api.protocol import guarded_protocol
from coffer.app import Coffer
from coffer.cli import sighup
from coffer.config import Config
from coffer.crypto import tls

log = logging.getLogger("coffer.server")

# On SIGTERM, in-flight requests get this long to finish. Idle keep-alive TLS connections would
# otherwise hold the shutdown for asyncio's 30 s TLS-close timeout (clients do not answer close_notify).
_GRACEFUL_SHUTDOWN_SECONDS = 5

DEV_BANNER = """\
==============================================================================
  DEVELOPMENT MODE. The unseal key is stored beside the data in {key}.
  Anyone who can read the data directory can read every secret.
  Never keep production credentials in a --dev server.
  {hsm}
=============================================================================="""


_M_MMAP_THRESHOLD = -3  # mallopt(3)


def _listen(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:  # one listening socket per worker on the same port: the kernel spreads connections evenly
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    # Accepted connections inherit this: without it the body of a response waits ~40 ms for the
    # client's delayed ACK of the headers (Nagle's algorithm).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((host, port))
    sock.listen(1024)
    return sock


def _bind(config: Config) -> list[socket.socket]:
    """Listen on the configured address; on loopback also on ::1, because resolvers map *.localhost
    to both 127.0.0.1 and ::1 and clients try ::1 first. The same port on both: with port 0, one that is free on
    both (else clients resolving ::1 would reach whatever other program holds that port there)."""
    reuse_port = config.workers > 1
    for _attempt in range(50):
        sockets = [_listen(config.bind, config.port, reuse_port=reuse_port)]
        if config.bind != "127.0.0.1":
            return sockets
        try:
            sockets.append(_listen("::1", sockets[0].getsockname()[1], reuse_port=reuse_port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                sockets[0].close()
                if config.port == 0:
                    continue  # another program has that port on ::1: pick another
                raise
            log.info("IPv6 loopback unavailable; listening on 127.0.0.1 only")
        return sockets
    raise OSError(errno.EADDRINUSE, "no port is free on both 127.0.0.1 and ::1")


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGINT/SIGTERM once its graceful shutdown is done, which kills the process
    before Coffer closes its storage and audit log; handle them without re-raising, so we exit 0."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


# How often a process checks whether it leads the background jobs: a dead leader's jobs resume elsewhere in time.
_LEADERSHIP_CHECK_SECONDS = 3.0


async def _maintenance_loop(coffer: Coffer) -> None:
    """Every few seconds: lead the background jobs if no other process does; the leader runs them every
    COFFER_PURGE_INTERVAL seconds (and at once when it takes over)."""
    interval = coffer.config.purge_interval_seconds
    last = time.monotonic()
    while True:
        await asyncio.sleep(min(interval, _LEADERSHIP_CHECK_SECONDS))
        due = time.monotonic() - last >= interval
        try:
            tick = functools.partial(coffer.run_jobs_if_leader, int(time.time()), due=due)
            done = await anyio.to_thread.run_sync(tick)
            if due or done:
                last = time.monotonic()
            for line in done:
                log.info("%s", line)
        except Exception as error:
            log.warning("maintenance job failed (%s); will retry", type(error).__name__)


def _reopen_audit_log(coffer: Coffer) -> None:
    """SIGHUP: continue the audit log in a new file at its path (log rotation has moved the old one away)."""
    try:
        coffer.audit.reopen()
    except OSError as error:
        log.error("could not reopen the audit log (%s); still writing to the old file", error.strerror)
    else:
        log.info("audit log reopened at %s", coffer.audit.path)


def _follow_changes(coffer: Coffer) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=coffer.follow_changes, args=(stop,), name="coffer-changes", daemon=True)
    thread.start()
    return thread, stop


async def _announce(server: uvicorn.Server, announce: Callable[[], None]) -> None:
    while not server.started:
        await asyncio.sleep(0.02)
    announce()


def _hsm_start(coffer: Coffer) -> bool:
    """With an HSM configured: connect to its token (the seal status tells whether it is available) and unseal
    with it if the root key is sealed by it. True when that unsealed the server."""
    if coffer.hsm_seal is None:
        return False
    coffer.hsm_seal.probe()
    if coffer.auto_unseal():
        log.info("unsealed with the HSM (PKCS#11 token '%s')", coffer.config.pkcs11_token)
        return True
    return False


def _dev_hsm_line(coffer: Coffer, dev_token: bool) -> str:
    """The dev banner's HSM line (after the token was probed)."""
    backend = coffer.hsm_backend
    if backend is None:
        return "HSM: none (install softhsm2 for HSM keys)"
    name = (
        f"SoftHSM2 token {backend.token_label} (development only)"
        if dev_token
        else (f"PKCS#11 token '{backend.token_label}' (COFFER_PKCS11_*)")
    )
    return f"HSM: {name}" + ("" if backend.connected else f", unavailable: {backend.last_error}")


def serve(config: Config) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # ignored (also across the supervisor's exec) until handled
    configured = config.hsm_configured
    config = devhsm.prepare(config)  # dev without COFFER_PKCS11_*: the SoftHSM2 token in DATA/softhsm, if installed
    dev_token = config.hsm_configured and not configured
    sockets = _bind(config)
    config = config.with_port(sockets[0].getsockname()[1])
    if config.workers > 1:
        from coffer.cli import workers

        # Each worker its own listening sockets on the port (SO_REUSEPORT): with one shared socket, whichever worker
        # woke first took a new connection, and a few long-lived connections could all end up on one worker.
        socket_sets = [sockets]
        for _ in range(config.workers - 1):
            socket_sets.append([_listen(s.getsockname()[0], config.port, reuse_port=True) for s in sockets])
        workers.exec_supervisor(config, socket_sets, dev_token)
    sighup.hold()
    coffer = Coffer(config)
    files, lines = start(coffer, dev_token)
    run(coffer, sockets, files, announce=lambda: print("\n".join(lines), flush=True))


def start(coffer: Coffer, dev_token: bool) -> tuple[tls.TlsFiles, list[str]]:
    """Bring the installation up in this process: dev (set up or unseal from the key file) or production (HSM
    auto-unseal when configured). Returns the TLS files and the lines that announce readiness."""
    config = coffer.config
    lines: list[str] = []
    if config.dev:
        dev = coffer.start_dev()
        if coffer.hsm_seal is not None:  # dev unseals with its key file; the token is for HSM keys
            coffer.hsm_seal.probe()
        files = coffer.tls_files()
        env_path = coffer.write_dev_env(dev, files.ca_cert)
        banner = DEV_BANNER.format(key=config.unseal_key_path, hsm=_dev_hsm_line(coffer, dev_token))
        print(banner, file=sys.stderr, flush=True)
        lines.append(f"Coffer dev server ready at {coffer.authority}; vault 'dev' at {coffer.vault_url('dev')}")
        lines.append(f"Environment for clients: source {env_path}")
    else:
        hsm_unsealed = _hsm_start(coffer)
        files = coffer.tls_files()
        status = coffer.barrier.status()
        lines.append(f"Coffer ready at {coffer.authority}")
        if not status.initialized:
            lines.append(
                f"Not initialized: run `coffer operator init --addr {coffer.authority} --ca-cert {files.ca_cert}`"
            )
        elif hsm_unsealed:
            lines.append(f"Unsealed with the HSM (PKCS#11 token '{coffer.config.pkcs11_token}')")
        elif status.sealed:
            lines.append(
                f"Sealed: run `coffer operator unseal --addr {coffer.authority}` "
                f"({status.threshold} of {status.shares} shares)"
            )
            if coffer.hsm_seal is not None and coffer.hsm_seal.error:
                lines.append(f"HSM auto-unseal unavailable: {coffer.hsm_seal.error}")
    lines.append(f"CA certificate: {files.ca_cert} (sha256 {tls.fingerprint_sha256(files.ca_cert)})")
    return files, lines


def _return_large_buffers_to_the_os() -> None:
    """glibc raises its mmap threshold to the size of the largest block freed, so from the second scrypt hash on (16
    MiB: a client secret checked at the token endpoint) such buffers come from the heap and their memory stays with
    the process for good. A fixed threshold keeps them mmapped, and returned when freed."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, 1 << 20)


def run(coffer: Coffer, sockets: list[socket.socket], files: tls.TlsFiles, announce: Callable[[], None]) -> None:
    """Serve HTTPS on the (already listening) sockets until SIGINT/SIGTERM, with the maintenance loop and the
    change-feed follower; `announce` is called once the server accepts connections."""
    _return_large_buffers_to_the_os()
    uv_config = uvicorn.Config(
        coffer.api,
        http=guarded_protocol(coffer.config.request_read_timeout_seconds),
        ssl_certfile=str(files.cert),
        ssl_keyfile=str(files.key),
        log_level="warning",
        access_log=False,
        lifespan="off",
        server_header=False,
        date_header=True,
        proxy_headers=False,  # Coffer is the edge: X-Forwarded-For from a local process must not set the caller IP
        timeout_keep_alive=30,
        timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_SECONDS,
    )
    uv_config.load()

    def reload_certificate(new: tls.TlsFiles) -> None:
        assert uv_config.ssl is not None
        tls.load_server_chain(uv_config.ssl, new)

    coffer.tls_reloader = reload_certificate
    server = _Server(uv_config)

    async def main() -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, _reopen_audit_log, coffer)
        if sighup.requested():  # one came while the process started
            _reopen_audit_log(coffer)
        maintenance = asyncio.create_task(_maintenance_loop(coffer))
        announced = asyncio.create_task(_announce(server, announce))
        try:
            await server.serve(sockets=sockets)
        finally:
            maintenance.cancel()
            announced.cancel()

    follower, stop_following = _follow_changes(coffer)
    try:
        # uvloop (libuv, and TLS in Cython): the event loop and TLS took about half the CPU of a request on asyncio's
        # own loop. uvicorn picks it only in uvicorn.run(); Coffer runs its own loop, so it asks for it here.
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())
    finally:
        stop_following.set()
        follower.join(timeout=5)
        coffer.close()
        print("Coffer stopped.", flush=True)
