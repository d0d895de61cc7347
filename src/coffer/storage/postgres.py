"""PostgreSQL storage: one database shared by every process and node of an installation.

Same semantics as the SQLite backend (one conformance suite checks both):
- writes are serialized: every write transaction starts with a transaction-level advisory lock, so application
  code sees the one-writer-at-a-time behaviour of SQLite's `BEGIN IMMEDIATE`; reads run in `REPEATABLE READ READ
  ONLY` snapshots and never wait for that lock;
- a commit is durable (synchronous_commit is never left `off`);
- every write transaction that touched a cached topic appends it to the `changes` feed and sends `NOTIFY
  coffer_changes`, delivered at commit: other nodes wake at once (`wait_for_changes`);
- the process that holds a session-level advisory lock on a dedicated connection runs the background jobs
  (`hold_leadership`); PostgreSQL releases it when that connection ends, which is how the lead moves on.

Errors never carry the server's message text into a StorageError (it may quote row values): only the SQLSTATE,
the exception class and the constraint name. The DSN (which may hold a password) is never logged.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import orjson
import psycopg
import psycopg_pool
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import TransactionStatus
from psycopg.rows import DictRow, TupleRow, dict_row
from psycopg_pool import ConnectionPool

from coffer.storage.base import TABLES, Storage, StorageError, Transaction
from coffer.storage.schema import POSTGRES_MIGRATIONS
from coffer.storage.sql_transaction import CHANGES_KEPT, VERSION_COLUMNS, SqlTransaction

# Advisory lock keys (64-bit, per database): "coffer" followed by a purpose number.
WRITE_LOCK = 0x636F_6666_6572_0001  # held by every write transaction until it ends
MIGRATE_LOCK = 0x636F_6666_6572_0002  # held while migrating, so nodes starting together migrate once
LEADER_LOCK = 0x636F_6666_6572_0003  # held by the session of the node that runs background jobs
CHANNEL = "coffer_changes"

_POOL_MIN, _POOL_MAX = 1, 16
# libpq settings for every connection unless the URL sets them: give up connecting after 10 s, and notice a dead
# peer over TCP within ~30 s (ignored on Unix sockets).
_CONNECTION_DEFAULTS = {
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "30000",
    "application_name": "coffer",
}
_LOCK_TIMEOUT = "30s"  # like SQLite's busy timeout: a write waits this long for the write lock


def storage_error(exc: BaseException) -> StorageError:
    """A StorageError that names what failed without quoting the server's message (which may contain data).
    Connection problems (no SQLSTATE) keep libpq's text: host, port, user and database names, never a password."""
    if isinstance(exc, psycopg.Error):
        sqlstate = exc.sqlstate
        if sqlstate is None and isinstance(exc, psycopg.OperationalError):
            return StorageError(f"PostgreSQL unavailable: {_connect_failure(exc)}")
        detail = f"PostgreSQL error {sqlstate or '-'} ({type(exc).__name__})"
        constraint = exc.diag.constraint_name if sqlstate else None
        if constraint:
            detail += f" on constraint {constraint}"
        return StorageError(detail)
    return StorageError(type(exc).__name__)


class _PostgresTransaction(SqlTransaction):
    # ILIKE: SQLite's LIKE ignores ASCII case, and both backends must delete the same assignments
    case_insensitive_like = "ILIKE"

    def __init__(self, conn: psycopg.Connection[TupleRow]) -> None:
        super().__init__()
        self._cur: psycopg.Cursor[DictRow] = conn.cursor(row_factory=dict_row)

    def _one(self, query: str, *args: Any) -> DictRow | None:
        return self._cur.execute(_psycopg_style(query), args).fetchone()

    def _all(self, query: str, *args: Any) -> list[DictRow]:
        return self._cur.execute(_psycopg_style(query), args).fetchall()

    def _run(self, query: str, *args: Any) -> None:
        self._cur.execute(_psycopg_style(query), args)

    def _json(self, value: Any) -> str:
        return orjson.dumps(value).decode("utf-8")

    def _wanted_versions(self, vault_key: str, kind: str, wanted: list[tuple[str, str]]) -> list[DictRow]:
        return self._all(
            f"SELECT {VERSION_COLUMNS} FROM versions "  # noqa: S608
            "WHERE vault = ? AND kind = ? "
            "AND (name_key, version) IN (SELECT * FROM unnest(?::text[], ?::text[]))",
            vault_key,
            kind,
            [name_key for name_key, _ in wanted],
            [version for _, version in wanted],
        )

    # the change feed
    def record_changes(self) -> None:
        """Append the touched topics to the feed (in this transaction), keep the newest entries, and notify
        listeners (PostgreSQL delivers the notification at commit, and drops it on rollback)."""
        if not self.touched:
            return
        self._run(
            "WITH added AS (INSERT INTO changes(topic, at) SELECT topic, ? FROM unnest(?::text[]) AS topic "
            "RETURNING seq) DELETE FROM changes WHERE seq <= (SELECT max(seq) FROM added) - ?",
            int(time.time()),
            sorted(self.touched),
            CHANGES_KEPT,
        )
        self._run(f"NOTIFY {CHANNEL}")


@functools.lru_cache(maxsize=1024)
def _psycopg_style(query: str) -> str:
    """A `?`-marked statement (see sql_transaction) with psycopg's `%s` markers (a literal `%` doubled)."""
    return query.replace("%", "%%").replace("?", "%s")


Connection = psycopg.Connection[TupleRow]


class PostgresStorage(Storage):
    """`dsn`: a libpq URL or key=value string. `pool_timeout`: how long a transaction waits for a pooled connection
    (all in use, or PostgreSQL unreachable) before failing with StorageError."""

    def __init__(self, dsn: str, *, pool_timeout: float = 10.0) -> None:
        try:
            given = conninfo_to_dict(dsn)
        except psycopg.Error:
            raise StorageError("COFFER_DATABASE_URL is not a valid PostgreSQL connection string") from None
        self._conninfo = make_conninfo(
            dsn, **{key: value for key, value in _CONNECTION_DEFAULTS.items() if key not in given}
        )
        self._where = {key: str(given[key]) for key in ("host", "port", "dbname", "user") if given.get(key)}
        self._closed = threading.Event()
        self._pool: ConnectionPool[Connection] = ConnectionPool(
            self._conninfo,
            kwargs={"autocommit": True},  # transactions are begun and ended explicitly
            min_size=_POOL_MIN,
            max_size=_POOL_MAX,
            configure=_configure,
            open=True,
            name="coffer",
            timeout=pool_timeout,
        )
        self._leader_lock = threading.Lock()
        self._leader: Connection | None = None  # dedicated connection, tries for and holds LEADER_LOCK
        self._leading = False
        self._listen_lock = threading.Lock()
        self._listener: Connection | None = None  # dedicated connection that LISTENs on CHANNEL

    def __repr__(self) -> str:  # never the DSN: it may hold a password
        where = " ".join(f"{key}={value}" for key, value in self._where.items())
        return f"PostgresStorage({where})"

    # --- connections and transactions -----------------------------------------------------------
    def _begin(self, statement: str) -> Connection:
        """A pooled connection inside a new transaction. A connection found broken at BEGIN (the server restarted)
        is dropped and BEGIN retried once on a fresh one: nothing had been done on it."""
        for attempt in (1, 2):
            try:
                conn = self._pool.getconn()
            except psycopg_pool.PoolTimeout:
                raise self._unavailable() from None
            except psycopg.Error as exc:
                raise storage_error(exc) from None
            try:
                conn.execute(statement)
                return conn
            except psycopg.Error as exc:
                broken = conn.broken
                self._pool.putconn(conn)  # the pool discards a broken connection
                if not broken or attempt == 2:
                    raise storage_error(exc) from None
        raise AssertionError("unreachable")

    def _unavailable(self) -> StorageError:
        """Why no pooled connection came in time: PostgreSQL's answer to a connection attempt of our own (the pool
        only logs its failures), else an exhausted pool."""
        try:
            with self._connect():
                pass
        except psycopg.Error as exc:
            return StorageError(f"PostgreSQL unavailable: {_connect_failure(exc)}")
        return StorageError("no free PostgreSQL connection in time (all in use)")

    def _end(self, conn: Connection, statement: str = "ROLLBACK") -> None:
        """ROLLBACK (or another ending) and give the connection back; a failing ROLLBACK only breaks the
        connection, which the pool then discards."""
        try:
            if conn.info.transaction_status != TransactionStatus.IDLE:
                conn.execute(statement)
        except psycopg.Error:
            pass
        finally:
            self._pool.putconn(conn)

    @contextmanager
    def read(self) -> Iterator[Transaction]:
        conn = self._begin("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            yield _PostgresTransaction(conn)
        except psycopg.Error as exc:
            raise storage_error(exc) from None
        finally:
            self._end(conn)

    @contextmanager
    def write(self) -> Iterator[Transaction]:
        with self._write() as tx:
            yield tx
        tx.run_committed_callbacks()

    @contextmanager
    def _write(self) -> Iterator[_PostgresTransaction]:
        # READ COMMITTED: each statement sees everything committed before it, in particular by the writer that
        # held the lock before us (a REPEATABLE READ snapshot would date from before the lock was granted).
        conn = self._begin("BEGIN ISOLATION LEVEL READ COMMITTED READ WRITE")
        try:
            try:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
                tx = _PostgresTransaction(conn)
            except psycopg.Error as exc:
                raise storage_error(exc) from None
            try:
                yield tx
                tx.record_changes()
            except psycopg.Error as exc:
                raise storage_error(exc) from None
            # A statement that failed inside the block (its error caught there) aborted the transaction:
            # PostgreSQL would answer COMMIT with a silent ROLLBACK. Fail instead of reporting success.
            if conn.info.transaction_status != TransactionStatus.INTRANS:
                raise StorageError("the transaction was aborted by an earlier error; nothing was committed")
            try:
                cur = conn.execute("COMMIT")
            except psycopg.Error as exc:
                raise storage_error(exc) from None
            if cur.statusmessage != "COMMIT":
                raise StorageError("PostgreSQL rolled the transaction back; nothing was committed")
        finally:
            self._end(conn)

    # --- schema ------------------------------------------------------------------------------------
    def migrate(self) -> int:
        """Apply pending migrations in one transaction under MIGRATE_LOCK: nodes that start together wait for
        the first, then find nothing left to do."""
        conn = self._begin("BEGIN ISOLATION LEVEL READ COMMITTED READ WRITE")
        try:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied BIGINT NOT NULL)"
            )
            row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
            current = int(row[0]) if row else 0
            for number, script in enumerate(POSTGRES_MIGRATIONS, start=1):
                if number > current:
                    conn.execute(script)
                    conn.execute(
                        "INSERT INTO schema_version(version, applied) VALUES (%s, %s)", (number, int(time.time()))
                    )
            conn.execute("COMMIT")
        except psycopg.Error as exc:
            raise storage_error(exc) from None
        finally:
            self._end(conn)
        return len(POSTGRES_MIGRATIONS)

    def integrity_check(self) -> list[str]:
        """Cheap: the database answers, is at this code's schema version, and holds every table."""
        try:
            conn = self._begin("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        except StorageError as exc:
            return [str(exc)]
        try:
            problems = []
            missing = [
                table
                for table in (*TABLES, "changes", "schema_version")
                if (row := conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()) is None or row[0] is None
            ]
            problems += [f"table {table} is missing" for table in missing]
            if "schema_version" not in missing:
                row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
                found = int(row[0]) if row else 0
                if found != len(POSTGRES_MIGRATIONS):
                    problems.append(f"schema version {found}, expected {len(POSTGRES_MIGRATIONS)}")
            return problems
        except psycopg.Error as exc:
            return [str(storage_error(exc))]
        finally:
            self._end(conn)

    def files(self) -> Iterator[str]:
        return iter(())  # nothing on this machine: the data lives in the PostgreSQL server

    def close(self) -> None:
        self._closed.set()
        self._pool.close()
        with self._leader_lock:
            self._drop_leader()
        # A thread inside wait_for_changes holds the listen lock: it closes the listener itself when it returns.
        if self._listen_lock.acquire(blocking=False):
            try:
                self._drop_listener()
            finally:
                self._listen_lock.release()

    # --- whole-installation copy ----------------------------------------------------------------------
    def export_table(self, table: str) -> Iterator[dict[str, Any]]:
        if table not in TABLES:
            raise ValueError(table)
        conn = self._begin("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            keys = [
                r[0]
                for r in conn.execute(
                    "SELECT a.attname FROM pg_index i JOIN pg_attribute a "
                    "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
                    "WHERE i.indrelid = %s::regclass AND i.indisprimary "
                    "ORDER BY array_position(i.indkey::int2[], a.attnum)",
                    (table,),
                )
            ]
            query = sql.SQL("SELECT * FROM {} ORDER BY {}").format(
                sql.Identifier(table), sql.SQL(", ").join(sql.Identifier(k) for k in keys)
            )
            with conn.cursor(name="coffer_export", row_factory=dict_row) as cur:
                cur.itersize = 500
                cur.execute(query)
                for row in cur:
                    yield dict(row)
        except psycopg.Error as exc:
            raise storage_error(exc) from None
        finally:
            self._end(conn)

    def import_table(self, table: str, rows: Iterable[dict[str, Any]]) -> int:
        if table not in TABLES:
            raise ValueError(table)
        count = 0
        with self._write() as tx:
            batch: list[tuple[Any, ...]] = []
            columns: tuple[str, ...] = ()

            def flush() -> None:
                if batch:
                    statement = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
                        sql.Identifier(table),
                        sql.SQL(", ").join(sql.Identifier(c) for c in columns),
                        sql.SQL(", ").join(sql.Placeholder() for _ in columns),
                    )
                    tx._cur.executemany(statement, batch)
                    batch.clear()

            for row in rows:
                if tuple(row) != columns:
                    flush()
                    columns = tuple(row)
                batch.append(tuple(row.values()))
                count += 1
                if len(batch) >= 500:
                    flush()
            flush()
        return count

    # --- coordination between processes and nodes ------------------------------------------------------
    def changes_since(self, seq: int | None) -> tuple[int, set[str]]:
        conn = self._begin("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            if seq is None:
                row = conn.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()
                return (int(row[0]) if row else 0), set()
            rows = conn.execute("SELECT seq, topic FROM changes WHERE seq > %s", (seq,)).fetchall()
            return max((int(r[0]) for r in rows), default=seq), {str(r[1]) for r in rows}
        except psycopg.Error as exc:
            raise storage_error(exc) from None
        finally:
            self._end(conn)

    def _connect(self) -> Connection:
        return psycopg.connect(self._conninfo, autocommit=True)

    def wait_for_changes(self, timeout: float) -> None:
        """Wait for a NOTIFY on a dedicated LISTEN connection. Right after (re)connecting it returns at once: a
        change committed before LISTEN took effect was not heard, so the caller should look at the feed now.
        When the connection breaks, it is dropped and the rest of `timeout` slept out (the next call reconnects)."""
        deadline = time.monotonic() + timeout
        with self._listen_lock:
            if self._closed.is_set():
                self._drop_listener()
                self._closed.wait(timeout)
                return
            if self._listener is None:
                try:
                    conn = self._connect()
                except psycopg.Error:
                    self._closed.wait(max(0.0, deadline - time.monotonic()))
                    return
                try:
                    conn.execute(f"LISTEN {CHANNEL}")
                except psycopg.Error:
                    conn.close()
                    self._closed.wait(max(0.0, deadline - time.monotonic()))
                    return
                self._listener = conn
                return
            try:
                for _ in self._listener.notifies(timeout=max(0.0, timeout), stop_after=1):
                    pass
            except psycopg.Error:
                self._drop_listener()
                self._closed.wait(max(0.0, deadline - time.monotonic()))
            if self._closed.is_set():
                self._drop_listener()

    def _drop_listener(self) -> None:
        if self._listener is not None:
            with suppress(psycopg.Error):
                self._listener.close()
            self._listener = None

    def hold_leadership(self) -> bool:
        """A session-level advisory lock on a dedicated connection. While held, each call checks that the connection
        still works (a broken one means PostgreSQL released the lock: drop it and try to take the lock again)."""
        with self._leader_lock:
            if self._closed.is_set():
                return False
            if self._leading and self._leader is not None:
                try:
                    self._leader.execute("SELECT 1")
                    return True
                except psycopg.Error:
                    self._drop_leader()
            try:
                if self._leader is None:
                    self._leader = self._connect()
                row = self._leader.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK,)).fetchone()
            except psycopg.Error:
                self._drop_leader()
                return False
            self._leading = bool(row and row[0])
            return self._leading

    def _drop_leader(self) -> None:
        if self._leader is not None:
            if self._leading and not self._leader.broken:
                # released at once (closing the session releases it too, but only once the server has noticed)
                with suppress(psycopg.Error):
                    self._leader.execute("SELECT pg_advisory_unlock(%s)", (LEADER_LOCK,))
            with suppress(psycopg.Error):
                self._leader.close()  # ends the session: PostgreSQL releases the lock
            self._leader = None
        self._leading = False


def _connect_failure(exc: psycopg.Error) -> str:
    """libpq's message about a failed connection attempt: host, port, user and database names, never a password."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _configure(conn: Connection) -> None:
    """Settings of every pooled connection: a bounded wait for the write lock, and durable commits even where the
    server or database was configured with synchronous_commit = off."""
    conn.execute(f"SET lock_timeout = '{_LOCK_TIMEOUT}'")
    row = conn.execute("SHOW synchronous_commit").fetchone()
    if row is not None and row[0] == "off":
        conn.execute("SET synchronous_commit = on")
