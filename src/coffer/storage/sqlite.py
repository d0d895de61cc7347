"""Embedded SQLite storage: WAL journal, synchronous=FULL so a commit survives kill -9 and power loss."""

from __future__ import annotations

import collections
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Generator, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from coffer.storage.base import TABLES, Storage, StorageError, Transaction
from coffer.storage.schema import MIGRATIONS
from coffer.storage.sql_transaction import CHANGES_KEPT, VERSION_COLUMNS, SqlTransaction


class _SqliteTransaction(SqlTransaction):
    case_insensitive_like = "LIKE"

    def __init__(self, conn: sqlite3.Connection) -> None:
        super().__init__()
        self._c = conn

    def _one(self, query: str, *args: Any) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._c.execute(query, args).fetchone()
        return row

    def _all(self, query: str, *args: Any) -> list[sqlite3.Row]:
        return self._c.execute(query, args).fetchall()

    def _run(self, query: str, *args: Any) -> None:
        self._c.execute(query, args)

    def _json(self, value: Any) -> bytes:
        return orjson.dumps(value)

    def _wanted_versions(self, vault_key: str, kind: str, wanted: list[tuple[str, str]]) -> list[sqlite3.Row]:
        # a join on the wanted (name, version) pairs: one primary-key lookup each, whatever the vault's size
        values = ", ".join(["(?, ?)"] * len(wanted))
        columns = ", ".join(f"v.{c.strip()}" for c in VERSION_COLUMNS.split(","))
        args: list[Any] = [value for pair in wanted for value in pair]
        return self._all(
            f"WITH wanted(name_key, version) AS (VALUES {values}) "  # noqa: S608
            f"SELECT {columns} FROM wanted CROSS JOIN versions v "
            "ON v.vault = ? AND v.kind = ? AND v.name_key = wanted.name_key AND v.version = wanted.version",
            *args,
            vault_key,
            kind,
        )


_JSON_COLUMNS = {
    ("vaults", "access_policies"),
    ("credentials", "data"),
    ("role_definitions", "permissions"),
    ("role_definitions", "assignable_scopes"),
    ("objects", "data"),
    ("versions", "tags"),
    ("versions", "extra"),
}


def _neutral(table: str, column: str, value: Any) -> Any:
    """A column value as export_table promises it: JSON columns as text (some were written as BLOBs)."""
    if isinstance(value, memoryview):
        value = bytes(value)
    if isinstance(value, bytes) and (table, column) in _JSON_COLUMNS:
        return value.decode("utf-8")
    return value


def _record_changes(conn: sqlite3.Connection, topics: set[str]) -> None:
    """Append the transaction's change topics to the feed (same transaction), keeping the newest entries."""
    if not topics:
        return
    at = int(time.time())
    conn.executemany("INSERT INTO changes(topic, at) VALUES (?, ?)", [(t, at) for t in sorted(topics)])
    conn.execute("DELETE FROM changes WHERE seq <= (SELECT max(seq) FROM changes) - ?", (CHANGES_KEPT,))


class _FifoLock:
    """A lock granted in arrival order. threading.Lock is not fair: under a steady stream of writers, each holding
    it across two fsyncs, some waited seconds while others went round again (p99 of secret set at 16 clients: 1.4 s)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._waiters: collections.deque[threading.Lock] = collections.deque()
        self._held = False

    def __enter__(self) -> None:
        with self._guard:
            if not self._held:
                self._held = True
                return
            turn = threading.Lock()
            turn.acquire()
            self._waiters.append(turn)
        turn.acquire()  # released by the holder before us, which hands the lock over without releasing it

    def __exit__(self, *exc: object) -> None:
        with self._guard:
            if self._waiters:
                self._waiters.popleft().release()
            else:
                self._held = False


class SqliteStorage(Storage):
    fast_reads = True

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: dict[threading.Thread, sqlite3.Connection] = {}  # one per live thread, see _connection
        self._leader_file: BinaryIO | None = None
        self._write_lock = _FifoLock()
        self._writer_fd = -1  # flock'ed by the writing thread: one writer across the processes sharing the file

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
            with self._lock:
                # Close the connections of threads that have ended: requests run in anyio worker threads, retired
                # after 10 s idle and replaced by new ones, and each dead thread's connection was otherwise kept
                # for good with its page cache, prepared statements and two file descriptors (RSS grew for hours).
                for thread, old in list(self._connections.items()):
                    if not thread.is_alive():
                        del self._connections[thread]
                        with suppress(sqlite3.Error):
                            old.close()
                self._connections[threading.current_thread()] = conn
        return conn

    def migrate(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            current = conn.execute("PRAGMA user_version").fetchone()[0]
            for number, script in enumerate(MIGRATIONS, start=1):
                if number > current:
                    for statement in script.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return len(MIGRATIONS)

    @contextmanager
    def read(self) -> Iterator[Transaction]:
        conn = self._connection()
        try:
            conn.execute("BEGIN")
        except sqlite3.Error as exc:
            raise StorageError(str(exc)) from exc
        try:
            yield _SqliteTransaction(conn)
        except sqlite3.Error as exc:
            raise StorageError(str(exc)) from exc
        finally:
            conn.execute("ROLLBACK")

    @contextmanager
    def write(self) -> Iterator[Transaction]:
        # One writer at a time: this process's threads queue in arrival order, then the processes sharing the
        # database (workers, `coffer operator` commands) queue on a file lock in the kernel, instead of sleeping in
        # SQLite's busy handler (which backs off up to 100 ms at a time). busy_timeout still covers other programs.
        with self._write_lock:
            if self._writer_fd < 0:
                self._writer_fd = os.open(str(self.path) + ".writer", os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._writer_fd, fcntl.LOCK_EX)
            try:
                tx = yield from self._write()
            finally:
                fcntl.flock(self._writer_fd, fcntl.LOCK_UN)
        tx.run_committed_callbacks()

    def _write(self) -> Generator[Transaction, None, Transaction]:
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StorageError(str(exc)) from exc
        tx = _SqliteTransaction(conn)
        try:
            yield tx
            _record_changes(conn, tx.touched)
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK")
            raise StorageError(str(exc)) from exc
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StorageError(str(exc)) from exc
        return tx

    def close(self) -> None:
        with self._lock:
            for conn in self._connections.values():
                with suppress(sqlite3.Error):
                    conn.close()
            self._connections.clear()
            if self._leader_file is not None:
                self._leader_file.close()
                self._leader_file = None
        with self._write_lock:
            if self._writer_fd >= 0:
                os.close(self._writer_fd)
                self._writer_fd = -1
        self._local = threading.local()

    def integrity_check(self) -> list[str]:
        rows = self._connection().execute("PRAGMA integrity_check").fetchall()
        return [r[0] for r in rows if r[0] != "ok"]

    def files(self) -> Iterator[str]:
        for suffix in ("", "-wal", "-shm"):
            yield str(self.path) + suffix

    def export_table(self, table: str) -> Iterator[dict[str, Any]]:
        if table not in TABLES:
            raise ValueError(table)
        conn = self._connection()
        info = [r for r in conn.execute(f"PRAGMA table_info({table})") if r["pk"]]
        keys = [r["name"] for r in sorted(info, key=lambda r: r["pk"])]
        for row in conn.execute(f"SELECT * FROM {table} ORDER BY {', '.join(keys)}"):  # noqa: S608
            yield {k: _neutral(table, k, v) for k, v in dict(row).items()}

    def import_table(self, table: str, rows: Iterable[dict[str, Any]]) -> int:
        if table not in TABLES:
            raise ValueError(table)
        count = 0
        with self.write():
            conn = self._connection()
            for row in rows:
                columns = ", ".join(row)
                marks = ", ".join("?" for _ in row)
                conn.execute(f"INSERT INTO {table} ({columns}) VALUES ({marks})", tuple(row.values()))  # noqa: S608
                count += 1
        return count

    def changes_since(self, seq: int | None) -> tuple[int, set[str]]:
        conn = self._connection()
        if seq is None:
            return int(conn.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()[0]), set()
        rows = conn.execute("SELECT seq, topic FROM changes WHERE seq > ?", (seq,)).fetchall()
        return max((r["seq"] for r in rows), default=seq), {r["topic"] for r in rows}

    def hold_leadership(self) -> bool:
        """An exclusive lock on a file beside the database: the kernel releases it when the process dies."""
        if self._leader_file is None:
            handle = open(str(self.path) + ".leader", "a+b")  # noqa: SIM115 - held open while this process leads
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                return False
            self._leader_file = handle
        return True
