"""Several worker processes on one node (COFFER_WORKERS > 1).

The supervisor binds the listening sockets (a set per worker, on one port with SO_REUSEPORT), brings the installation
up once (dev: identities, dev.env, TLS files), then starts each worker as a fresh interpreter (no fork: the PKCS#11
library and OpenSSL start clean) that inherits its set; the kernel spreads connections over them. Every worker is a
whole Coffer: its own caches, kept current by the change feed, and the background jobs run in whichever process holds
the leadership.

The seal is per process, so the supervisor relays it: an unseal share submitted to one worker is handed to the others
(the next share may reach any of them); when a worker unseals, it sends its root key over its private socketpair and
the supervisor hands it to the other workers, and to a worker that restarts after a crash; sealing is relayed the
same way and the supervisor forgets the key. The key crosses only
these anonymous Unix sockets between processes of the same user, never a file.

The supervisor holds no Coffer: `coffer server` replaces itself (exec, same PID) with a fresh interpreter that
imports only this module, and the one-time set-up runs in a short-lived child. It takes ~12 MB instead of a
whole server's ~75 MB (idle RSS per node counts every process)."""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import NoReturn

from coffer.cli import sighup
from coffer.config import Config

log = logging.getLogger("coffer.workers")

_UNSEALED, _SEALED, _SHARE, _READY = b"U", b"S", b"P", b"R"
_RESTART_DELAY_SECONDS = 1.0


class _Worker:
    def __init__(self, index: int, config: Config, sockets: list[socket.socket], root: bytes | None) -> None:
        self.index = index
        self.channel, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        fds = [theirs.fileno(), *(s.fileno() for s in sockets)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "coffer.cli.workers", "worker", *map(str, fds)], pass_fds=fds
        )
        theirs.close()
        # the handshake: the configuration, then the seal state (the root key while unsealed)
        self.channel.sendall(pickle.dumps(config))
        self.channel.sendall(_SEALED if root is None else _UNSEALED + root)
        self.ready = False
        self.reopen_pending = False  # a SIGHUP to pass on once it is ready


def exec_supervisor(config: Config, socket_sets: list[list[socket.socket]], dev_token: bool) -> NoReturn:
    """Replace this process (the CLI, with the whole server imported) with a lean supervisor of the same PID.
    `socket_sets`: the listening sockets of each worker."""
    read_fd, write_fd = os.pipe()
    per_worker = len(socket_sets[0])
    os.write(write_fd, pickle.dumps((config, dev_token, per_worker)))  # a few KB: fits in the pipe's buffer
    os.close(write_fd)
    fds = [read_fd, *(s.fileno() for sockets in socket_sets for s in sockets)]
    for fd in fds:
        os.set_inheritable(fd, True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "coffer.cli.workers", "supervise", *map(str, fds)])  # noqa: S606


def _set_up(config: Config, dev_token: bool) -> tuple[list[str], bytes | None]:
    """Set up (dev) or unseal (dev key file, HSM) the installation once, before the workers race for it, in a child
    process: returns the lines announcing readiness and the root key when unsealed."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    proc = subprocess.Popen(
        [sys.executable, "-m", "coffer.cli.workers", "setup", str(theirs.fileno())], pass_fds=[theirs.fileno()]
    )
    theirs.close()
    with ours:
        ours.sendall(pickle.dumps((config, dev_token)))
        ours.shutdown(socket.SHUT_WR)
        answer = _receive_all(ours)
    code = proc.wait()
    if code != 0 or not answer:
        raise SystemExit(code or 1)  # the child said why on stderr
    lines, root = pickle.loads(answer)  # noqa: S301 - from our own child
    return lines, root


def _setup_main(channel_fd: int) -> None:
    from coffer.app import Coffer
    from coffer.cli.server import start

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    with socket.socket(fileno=channel_fd) as channel:
        config, dev_token = pickle.loads(_receive_all(channel))  # noqa: S301 - from the supervisor, our own parent
        coffer = Coffer(config)
        try:
            _files, lines = start(coffer, dev_token)
            root = None if coffer.barrier.sealed else coffer.barrier.root_key()
        finally:
            coffer.close()
        channel.sendall(pickle.dumps((lines, root)))


def _receive_all(channel: socket.socket) -> bytes:
    chunks = []
    while chunk := channel.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _supervisor_main(config_fd: int, socket_fds: list[int]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    with os.fdopen(config_fd, "rb") as pipe:
        config, dev_token, per_worker = pickle.load(pipe)  # noqa: S301 - written by this same process before exec
    sockets = [socket.socket(fileno=fd) for fd in socket_fds]
    supervise(config, [sockets[i : i + per_worker] for i in range(0, len(sockets), per_worker)], dev_token)


def supervise(config: Config, socket_sets: list[list[socket.socket]], dev_token: bool) -> None:
    """Run `config.workers` workers until SIGINT/SIGTERM; restart a worker that dies."""
    lines, root = _set_up(config, dev_token)
    lines[0] += f" ({config.workers} worker processes)"

    stopping = threading.Event()
    selector = selectors.DefaultSelector()
    workers: list[_Worker] = []

    def spawn(index: int) -> _Worker:
        worker = _Worker(index, config, socket_sets[index], root)
        selector.register(worker.channel, selectors.EVENT_READ, worker)
        return worker

    def stop(_signum: int, _frame: object) -> None:
        stopping.set()

    def reopen_audit_logs(_signum: int, _frame: object) -> None:
        """Each worker writes its own records: pass SIGHUP on, to a starting worker once it says it is ready (its
        handler is in place then; before, the signal's default action would end it)."""
        for worker in workers:
            worker.reopen_pending = True
            if worker.ready and worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGHUP)
                worker.reopen_pending = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, reopen_audit_logs)
    for i in range(config.workers):
        workers.append(spawn(i))
    announced = False
    while not stopping.is_set():
        for event, _mask in selector.select(timeout=0.2):
            worker: _Worker = event.data
            try:
                message = worker.channel.recv(4096)
            except OSError:
                message = b""
            if not message:
                selector.unregister(worker.channel)
                continue
            kind, payload = message[:1], message[1:]
            if kind == _READY:
                worker.ready = True
                if worker.reopen_pending and worker.proc.poll() is None:  # a SIGHUP came while it started
                    worker.proc.send_signal(signal.SIGHUP)
                    worker.reopen_pending = False
                if announced:  # a restarted worker: say that the restart is over
                    log.info("worker %d (pid %d) is serving again", worker.index, worker.proc.pid)
            elif kind == _UNSEALED:
                root = payload
                _tell(workers, worker, message)
            elif kind == _SEALED:
                root = None
                _tell(workers, worker, message)
            elif kind == _SHARE:
                _tell(workers, worker, message)
        if not announced and all(w.ready for w in workers):
            print("\n".join(lines), flush=True)
            announced = True
        for i, worker in enumerate(workers):
            if worker.proc.poll() is not None and not stopping.is_set():
                log.warning(
                    "worker %d (pid %d) exited with %s; restarting it",
                    worker.index,
                    worker.proc.pid,
                    worker.proc.returncode,
                )
                _close(selector, worker)
                time.sleep(_RESTART_DELAY_SECONDS)
                workers[i] = spawn(worker.index)
    for worker in workers:
        if worker.proc.poll() is None:
            worker.proc.send_signal(signal.SIGTERM)
    for worker in workers:
        try:
            worker.proc.wait(30)
        except subprocess.TimeoutExpired:
            worker.proc.kill()
        _close(selector, worker)
    print("Coffer stopped.", flush=True)


def _tell(workers: list[_Worker], sender: _Worker, message: bytes) -> None:
    for other in workers:
        if other is not sender and other.proc.poll() is None:
            with contextlib.suppress(OSError):  # it is dying; it gets the state again when restarted
                other.channel.sendall(message)


def _close(selector: selectors.BaseSelector, worker: _Worker) -> None:
    with contextlib.suppress(KeyError, ValueError):
        selector.unregister(worker.channel)
    worker.channel.close()


def _worker_main(channel_fd: int, socket_fds: list[int]) -> None:
    """A worker: a whole Coffer serving the inherited sockets, in touch with the supervisor."""
    from coffer.app import Coffer
    from coffer.cli.server import run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    channel = socket.socket(fileno=channel_fd)
    config: Config = pickle.loads(channel.recv(1 << 20))  # noqa: S301 - from the supervisor, our own parent
    state = channel.recv(4096)
    sockets = [socket.socket(fileno=fd) for fd in socket_fds]
    coffer = Coffer(config)
    if state[:1] == _UNSEALED:
        coffer.unseal_as_sibling(state[1:])
    if coffer.hsm_seal is not None:  # connect the token for HSM keys (the supervisor already tried auto-unseal)
        coffer.hsm_seal.probe()
    files = coffer.tls_files()
    send_lock = threading.Lock()

    def send(message: bytes) -> None:
        with send_lock:
            channel.sendall(message)

    coffer.on_unsealed = lambda root: send(_UNSEALED + root)
    coffer.on_sealed = lambda: send(_SEALED)
    coffer.on_share = lambda share: send(_SHARE + share.encode())

    def listen() -> None:
        while True:
            message = channel.recv(4096)
            if not message:  # the supervisor is gone: stop serving
                os.kill(os.getpid(), signal.SIGTERM)
                return
            try:
                if message[:1] == _UNSEALED:
                    coffer.unseal_as_sibling(message[1:])
                elif message[:1] == _SEALED:
                    coffer.seal_as_sibling()
                elif message[:1] == _SHARE:
                    coffer.submit_share(message[1:].decode(), from_sibling=True)
            except Exception as error:
                log.warning("could not follow a sibling's seal change (%s)", type(error).__name__)

    threading.Thread(target=listen, name="coffer-supervisor", daemon=True).start()
    run(coffer, sockets, files, announce=lambda: send(_READY))


if __name__ == "__main__":
    _role, _fds = sys.argv[1], [int(fd) for fd in sys.argv[2:]]
    if _role == "worker":
        sighup.hold()  # before the heavy imports of _worker_main: a SIGHUP then would have ended the worker
    if _role == "supervise":
        _supervisor_main(_fds[0], _fds[1:])
    elif _role == "setup":
        _setup_main(_fds[0])
    else:
        _worker_main(_fds[0], _fds[1:])
