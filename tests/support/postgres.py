"""A throwaway PostgreSQL server for tests, from Debian's `postgresql` package (scripts/test installs it).

    server = shared_server()            # started on first use (once per test process), stopped at exit
    dsn = server.new_database()         # a fresh, empty database: postgresql://postgres@127.0.0.1:PORT/test_N

The cluster lives in a temporary directory (data, log, Unix socket), listens on 127.0.0.1 on a free port, trusts
local connections, and keeps fsync on (the durability tests mean it). Its default collation is ICU's en-US, as on a
typical production server, so the backend's bytewise ordering (COLLATE "C") is really exercised.
initdb refuses to run as root: as root (tests and CI) the cluster belongs to the `postgres` system user that the
Debian package creates, and its programs run through `runuser`.
Without PostgreSQL installed, `require_postgres()` skips the test with the reason.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

SYSTEM_USER = "postgres"


def find_bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/*/bin holding initdb (Debian), else the directory of initdb on PATH."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[-3]))
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def missing_reason() -> str | None:
    if find_bin_dir() is None:
        return "PostgreSQL is not installed (apt-get install postgresql; scripts/test installs it)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            return f"running as root, and there is no '{SYSTEM_USER}' user to run initdb as"
    return None


def require_postgres() -> None:
    reason = missing_reason()
    if reason is not None:
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    def __init__(self, bin_dir: Path, root: Path, port: int) -> None:
        self.bin_dir = bin_dir
        self.root = root  # owned by the cluster's user: data/, socket, server.log
        self.data = root / "data"
        self.port = port
        self._counter = 0
        self._lock = threading.Lock()
        self._stopped = False

    @property
    def admin_dsn(self) -> str:
        return self.dsn("postgres")

    def dsn(self, database: str) -> str:
        return f"postgresql://{SYSTEM_USER}@127.0.0.1:{self.port}/{database}"

    # -- lifecycle -------------------------------------------------------------------------------
    @classmethod
    def start(cls) -> PostgresServer:
        bin_dir = find_bin_dir()
        if bin_dir is None:
            raise RuntimeError(missing_reason() or "PostgreSQL is not installed")
        root = Path(tempfile.mkdtemp(prefix="coffer-pg-"))
        if os.geteuid() == 0:
            user = pwd.getpwnam(SYSTEM_USER)
            os.chown(root, user.pw_uid, user.pw_gid)
        server = cls(bin_dir, root, 0)
        try:
            server._initdb()
            for attempt in range(3):  # a free port may be taken between choosing and binding
                server.port = _free_port()
                try:
                    server._pg_ctl("start", "-w", "-t", "60", "-l", str(root / "server.log"), "-o", f"-p {server.port}")
                    break
                except subprocess.CalledProcessError:
                    if attempt == 2:
                        raise
        except BaseException:
            log = root / "server.log"
            detail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
            shutil.rmtree(root, ignore_errors=True)
            if detail:
                raise RuntimeError(f"PostgreSQL did not start:\n{detail}") from None
            raise
        return server

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", SYSTEM_USER, "--", *command]
        return subprocess.run(command, cwd=self.root, check=True, capture_output=True, text=True, timeout=120)

    def _initdb(self) -> None:
        try:
            self._run(
                "initdb",
                "-D",
                str(self.data),
                "-U",
                SYSTEM_USER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--locale-provider=icu",
                "--icu-locale=en-US",
                "--wal-segsize=1",  # 1 MB WAL files: a confidentiality scan reads only the few a test wrote
            )
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"initdb failed:\n{exc.stdout}\n{exc.stderr}") from None
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.root}'",
            "fsync": "on",
            "synchronous_commit": "on",
            "max_connections": "400",
            "shared_buffers": "64MB",
            "log_min_messages": "warning",
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n# coffer tests\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))

    def _pg_ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.data), *args)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self._pg_ctl("stop", "-m", "fast", "-w", "-t", "60")
        shutil.rmtree(self.root, ignore_errors=True)

    # -- databases --------------------------------------------------------------------------------
    def new_database(self) -> str:
        """CREATE DATABASE test_<n>; returns its DSN."""
        import psycopg

        with self._lock:
            self._counter += 1
            name = f"test_{self._counter}"
        for attempt in range(10):
            try:
                with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
                    conn.execute(f"CREATE DATABASE {name}")
                break
            except psycopg.errors.ObjectInUse:  # template1 briefly in use by another CREATE DATABASE
                if attempt == 9:
                    raise
                time.sleep(0.1)
        return self.dsn(name)

    def files_of(self, dsn: str, since: float) -> list[Path]:
        """The cluster's files that can hold what was written to database `dsn` since `since` (a time.time()): WAL
        files written since then, every file of that database, and the server log (for confidentiality scans)."""
        import psycopg

        with psycopg.connect(dsn) as conn:
            row = conn.execute("SELECT oid FROM pg_database WHERE datname = current_database()").fetchone()
        assert row is not None
        # Write every dirty page to the database's files first: a row may otherwise exist on disk only as a WAL
        # record in a segment the cluster has already recycled for other tests' traffic (the scan would miss it).
        with psycopg.connect(self.admin_dsn, autocommit=True) as admin:
            admin.execute("CHECKPOINT")
        wal = [p for p in (self.data / "pg_wal").iterdir() if p.is_file() and p.stat().st_mtime >= since]
        database = [p for p in (self.data / "base" / str(row[0])).rglob("*") if p.is_file()]
        return sorted(wal) + sorted(database) + [self.root / "server.log"]


_shared: PostgresServer | None = None
_shared_lock = threading.Lock()


def shared_server() -> PostgresServer:
    """The test process's PostgreSQL server, started on first use; stopped when the process exits."""
    global _shared
    with _shared_lock:
        if _shared is None:
            require_postgres()
            _shared = PostgresServer.start()
            atexit.register(_shared.stop)
        return _shared


def stop_shared_server() -> None:
    global _shared
    with _shared_lock:
        if _shared is not None:
            _shared.stop()
            _shared = None


def storage_kind() -> str:
    """COFFER_TEST_STORAGE: "sqlite" (the default) or "postgres" (servers of the suite run on PostgreSQL)."""
    value = os.environ.get("COFFER_TEST_STORAGE", "sqlite").strip().lower() or "sqlite"
    if value not in ("sqlite", "postgres"):
        raise RuntimeError(f"COFFER_TEST_STORAGE must be sqlite or postgres, not {value!r}")
    return value
