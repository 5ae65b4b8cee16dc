"""The engine, the session factory and session_scope(): edges own transactions."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, Engine, create_engine, event, text
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC in Python, whatever the database keeps; naive datetimes are a bug and refused."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:  # noqa: ARG002 (SQLAlchemy's signature)
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


LOCK_WAIT = "mailer.lock_wait"  # Connection.info: seconds this connection waits for the writer lock
_HOLDS_WRITER = "mailer.holds_writer"


def make_engine(url: str, *, pre_ping: bool = True, wait: float = 30.0, **kwargs: Any) -> Engine:
    """pre_ping tests each pooled connection before use (a round trip): pages need it, so that a
    restarted PostgreSQL never shows as an error; workers skip it and retry what fails instead.
    `wait`: seconds a SQLite statement waits for another writer's lock before it fails with
    "database is locked" (Runtime sets it: pages wait less than workers)."""
    if url.startswith("sqlite"):
        # isolation_level=None hands transactions to us, so each one can BEGIN IMMEDIATE: a
        # deferred SQLite transaction that reads then writes fails at once (SQLITE_BUSY_SNAPSHOT)
        # when another writer committed in between, instead of waiting its turn.
        engine = create_engine(
            url,
            connect_args={"timeout": wait, "isolation_level": None, "check_same_thread": False},
            **kwargs,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            dbapi_cursor = dbapi_connection.cursor()
            dbapi_cursor.execute("PRAGMA journal_mode=WAL")
            dbapi_cursor.execute("PRAGMA synchronous=NORMAL")
            dbapi_cursor.execute("PRAGMA foreign_keys=ON")
            dbapi_cursor.close()

        # SQLite has one writer at a time, and a writer waiting for another polls: its busy handler
        # sleeps 1, 2, 5 … up to 100 ms between tries, so under a rush of sign-ups some wait
        # seconds for a lock free most of that time. Within one process the threads (a server's,
        # the embedded worker's) queue on this lock instead and are woken the moment it is free;
        # other processes still meet SQLite's own lock. A transaction that has to wait for either
        # says so (waiting_flag), so a worker in a long send lets it in.
        writer = threading.Lock()
        flag = waiting_flag(engine)

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            if writer.acquire(blocking=False):
                conn.info[_HOLDS_WRITER] = True
            else:
                if flag is not None:
                    flag.touch()
                if writer.acquire(timeout=conn.info.get(LOCK_WAIT, wait)):
                    conn.info[_HOLDS_WRITER] = True
                # else: a transaction of this process held it past the wait; SQLite decides.
            try:
                _begin_immediate(conn, flag)
            except BaseException:
                _sqlite_end(conn)
                raise

        @event.listens_for(engine, "commit")
        @event.listens_for(engine, "rollback")
        def _sqlite_end(conn: Any) -> None:
            if conn.info.pop(_HOLDS_WRITER, False):
                writer.release()

        return engine
    return create_engine(url, pool_pre_ping=pre_ping, **kwargs)


def _begin_immediate(conn: Any, flag: Path | None) -> None:
    """BEGIN IMMEDIATE; when another process holds the lock, touch `flag` first, then wait."""
    if flag is None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        return
    # A first try that does not wait: when another writer holds the lock, say so (the flag's
    # time) before waiting, so a worker sending a long run lets this one in.
    raw = conn.connection.driver_connection
    patience = int(raw.execute("PRAGMA busy_timeout").fetchone()[0])  # writable() lowers it
    raw.execute("PRAGMA busy_timeout = 0")
    try:
        raw.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
            raise
    else:
        return
    finally:
        raw.execute(f"PRAGMA busy_timeout = {patience}")
    flag.touch()
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def waiting_flag(engine: Engine) -> Path | None:
    """The file whose time says when a writer last had to wait for this SQLite database's write
    lock (None: not a SQLite file). SQLite keeps no queue for the lock: a waiter polls, sleeping
    up to 100 ms between tries, and a worker that commits one group and begins the next takes it
    back every time; measured, an unsubscribe or a `broadcast cancel` waited for a whole run of
    minutes. A worker that sees the flag move lets go for a moment (`Deliverer.give_turn`)."""
    if engine.dialect.name != "sqlite" or engine.url.database in {None, "", ":memory:"}:
        return None
    return Path(f"{engine.url.database}-waiting")


# Why a database cannot answer now, as the drivers say it: not a bug in a statement, an outage that
# passes (a lock, a read-only or full disk, a server restarting or away). SQLite's primary result
# codes (https://sqlite.org/rescode.html; SQLITE_ERROR, a "no such table", is not one of them):
SQLITE_OUTAGES = frozenset({5, 6, 8, 10, 13, 14, 15})  # BUSY LOCKED READONLY IOERR FULL CANTOPEN PROTOCOL
# PostgreSQL's SQLSTATE classes and codes (https://www.postgresql.org/docs/current/errcodes-appendix.html):
# 08 connection, 53 resources (disk full, too many connections), 57 operator intervention
# (shutdown, starting up, statement timeout), 58 system (I/O); 25006 a read-only transaction (a
# standby, default_transaction_read_only), 40001 and 40P01 a serialization failure and a deadlock
# (a retry passes), 55P03 a lock not available.
POSTGRES_OUTAGES = ("08", "53", "57", "58", "25006", "40001", "40P01", "55P03")


def outage(exc: BaseException) -> str | None:
    """What makes the database unavailable now, if `exc` says so ("SQLITE_BUSY", "sqlstate:25006",
    "disconnect", "unreachable", "pool_timeout"); None for any other failure. No statement and no
    parameters: the name is safe to log."""
    if isinstance(exc, PoolTimeoutError):  # every pooled connection busy past the pool's timeout
        return "pool_timeout"
    if not isinstance(exc, DBAPIError):
        return None
    if exc.connection_invalidated:
        return "disconnect"
    code = getattr(exc.orig, "sqlite_errorcode", None)
    if isinstance(code, int):  # its low byte is the primary code; the name may be an extended one
        return str(getattr(exc.orig, "sqlite_errorname", code)) if code & 0xFF in SQLITE_OUTAGES else None
    state = getattr(exc.orig, "sqlstate", None)
    if isinstance(state, str):
        return f"sqlstate:{state}" if state.startswith(POSTGRES_OUTAGES) else None
    # A driver that says no more, as psycopg when no server answers the connection.
    return "unreachable" if isinstance(exc, OperationalError) else None


def writable(engine: Engine, *, wait: float) -> bool:
    """Does the database take a write now, waiting at most `wait` seconds for SQLite's lock? False
    for a read-only PostgreSQL; raises what the driver raises for a database locked, read-only
    or away. Nothing durable changes: the transaction is rolled back."""
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            # Tried on SQLite 3: the transaction's BEGIN IMMEDIATE (the engine's "begin" hook)
            # waits for a locked file's write lock and fails, but succeeds on a read-only file;
            # there only a write fails, and writing the header's user_version (unused, set to
            # what it is) needs no table and leaves nothing in the WAL once rolled back. The busy
            # timeout is the connection's own, lowered for this check and put back after.
            raw = connection.connection.driver_connection
            assert raw is not None  # a checked-out connection has one
            connection.info[LOCK_WAIT] = wait
            before = int(raw.execute("PRAGMA busy_timeout").fetchone()[0])
            raw.execute(f"PRAGMA busy_timeout = {int(wait * 1000)}")
            try:
                version = int(connection.execute(text("PRAGMA user_version")).scalar_one())
                connection.execute(text(f"PRAGMA user_version = {version}"))
            finally:
                connection.rollback()
                raw.execute(f"PRAGMA busy_timeout = {before}")
            return True
        # On a standby, or with default_transaction_read_only, every transaction is read-only.
        read_only: str = connection.execute(text("SHOW transaction_read_only")).scalar_one()
        return read_only != "on"


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One transaction: committed when the block ends, rolled back when it raises."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def utcnow() -> datetime:
    return datetime.now(UTC)


def current_revision(engine: Engine) -> str | None:
    """The schema's revision as Alembic recorded it; None for a database it never touched."""
    with engine.connect() as connection:
        try:
            return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except DBAPIError:  # no such table: a new database
            return None


def alembic_config(engine: Engine) -> Any:
    from alembic.config import Config  # noqa: PLC0415 (only the migrating commands need Alembic)

    config = Config()
    config.set_main_option("script_location", "mailer:migrations")
    config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return config


def upgrade(engine: Engine) -> None:
    """Create or migrate the schema to the newest revision (safe to run at every start)."""
    from mailer.migrations import HEAD  # noqa: PLC0415 (the package is Alembic's folder)

    if current_revision(engine) == HEAD:
        return  # nothing to do, and Alembic (a third of a short command's start) not imported
    from alembic import command  # noqa: PLC0415

    config = alembic_config(engine)
    with engine.connect() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
        connection.commit()
