"""The SQLite file itself: its schema, opening and validating it, pragmas, migrations, and
SQLite errors translated into the store's errors that name the file (see
:mod:`amqpd.store.sqlite` for durability and space)."""

from __future__ import annotations

import logging
import os
import sqlite3
import struct
from pathlib import Path

from amqpd.store.records import (
    StoreCorruptError,
    StoreError,
    StoreFullError,
    StoreIOError,
    StoreLockedError,
    StoreVersionError,
)

log = logging.getLogger("amqpd.store")

FILENAME = "amqpd.sqlite3"
SCHEMA_VERSION = 1
APPLICATION_ID = 0x616D7164  # "amqd" in the file header: tells our files from other SQLite files
PAGE_SIZE = 4096
CACHE_KIB = 65536
WAL_AUTOCHECKPOINT_PAGES = 1000
JOURNAL_SIZE_LIMIT = 16 * 1024 * 1024
COMPACT_MIN_FREE_PAGES = 2048  # 8 MiB: below that, free pages are simply reused
COMPACT_STEP_PAGES = 512  # per commit, so shrinking never makes one commit slow
LOCK_TIMEOUT = 0.5  # seconds to wait for another process's lock before StoreLockedError
READ_CHUNK = 512  # ids per ... IN (...): well below SQLite's limit of bound parameters

_SQLITE_MAGIC = b"SQLite format 3\x00"
_HEADER_SIZE = 100

_SCHEMA = f"""
CREATE TABLE schema_version (version INTEGER NOT NULL);
INSERT INTO schema_version (version) VALUES ({SCHEMA_VERSION});
CREATE TABLE vhosts (name TEXT PRIMARY KEY NOT NULL) WITHOUT ROWID;
CREATE TABLE users (
    name TEXT PRIMARY KEY NOT NULL,
    password_hash TEXT NOT NULL,
    tags TEXT NOT NULL  -- JSON list of strings
) WITHOUT ROWID;
CREATE TABLE exchanges (
    vhost TEXT NOT NULL,
    name TEXT NOT NULL,
    type TEXT NOT NULL,
    durable INTEGER NOT NULL,
    auto_delete INTEGER NOT NULL,
    internal INTEGER NOT NULL,
    arguments BLOB NOT NULL,  -- AMQP field table
    PRIMARY KEY (vhost, name)
) WITHOUT ROWID;
CREATE TABLE queues (
    vhost TEXT NOT NULL,
    name TEXT NOT NULL,
    durable INTEGER NOT NULL,
    auto_delete INTEGER NOT NULL,
    arguments BLOB NOT NULL,
    PRIMARY KEY (vhost, name)
) WITHOUT ROWID;
CREATE TABLE bindings (
    vhost TEXT NOT NULL,
    source TEXT NOT NULL,
    destination_kind TEXT NOT NULL,
    destination TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    arguments BLOB NOT NULL,
    PRIMARY KEY (vhost, source, destination_kind, destination, routing_key, arguments)
) WITHOUT ROWID;
CREATE INDEX bindings_by_destination ON bindings (vhost, destination_kind, destination);
-- Entries name their queue by a small integer: cheaper per row than (vhost, name).
CREATE TABLE queue_ids (
    id INTEGER PRIMARY KEY,
    vhost TEXT NOT NULL,
    name TEXT NOT NULL,
    UNIQUE (vhost, name)
);
-- refs = number of entries that refer to the message; the row goes when it reaches 0.
CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    refs INTEGER NOT NULL,
    exchange TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    header BLOB NOT NULL,
    body BLOB NOT NULL
);
-- Clustered on (queue, seq): loading a queue is one range scan in delivery order.
CREATE TABLE entries (
    queue_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    message_id INTEGER NOT NULL,
    delivery_count INTEGER NOT NULL,
    redelivered INTEGER NOT NULL,
    expires_at REAL,
    PRIMARY KEY (queue_id, seq)
) WITHOUT ROWID;
"""

# Scripts that bring a file from version N to N + 1 (none yet: version 1 is the first).
_MIGRATIONS: dict[int, str] = {}

TABLES = (
    "vhosts",
    "users",
    "exchanges",
    "queues",
    "bindings",
    "messages",
    "entries",
)
COUNTERS = (
    "commits",
    "messages_written",
    "entries_written",
    "entries_deleted",
    "messages_deleted",
)

# SQLite primary result codes (sqlite3.Error.sqlite_errorcode & 0xFF).
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_CORRUPT, _SQLITE_FULL = 5, 6, 11, 13
_SQLITE_CONSTRAINT, _SQLITE_NOTADB = 19, 26
_SQLITE_IOERR = 10


def open_database(path: Path) -> sqlite3.Connection:
    """Open (creating if absent) and validate the store file; never modifies a bad file."""
    if not path.exists():
        if wal_path(path).exists():
            raise StoreCorruptError(
                corrupt_message(path, f"is missing but its log {wal_path(path)} exists")
            )
        _create(path)
    _check_header(path)
    conn = _connect(path)
    try:
        version = _read_version(conn, path)
        _migrate(conn, path, version)
        _configure(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def _create(path: Path) -> None:
    """Build an empty store beside ``path`` and rename it into place.

    The rename makes creation atomic: a file at ``path`` always has our schema, so an empty
    or schema-less file there is damage, never a creation interrupted by a crash.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".new")
    for leftover in (temporary, wal_path(temporary), Path(f"{temporary}-shm")):
        leftover.unlink(missing_ok=True)
    try:
        conn = sqlite3.connect(temporary, isolation_level=None)
        try:
            # page_size and auto_vacuum only take effect before the first table exists.
            conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute("PRAGMA journal_mode = WAL")  # recorded in the file: stays WAL
            conn.execute("PRAGMA synchronous = FULL")
            conn.executescript(f"BEGIN; {_SCHEMA} COMMIT;")
        finally:
            conn.close()  # checkpoints the log into the file and removes it
        fsync_path(temporary)
        os.replace(temporary, path)
        fsync_path(path.parent)
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(f"{path}: cannot create the store: {exc}") from exc
    log.info("created an empty store at %s", path)


def _check_header(path: Path) -> None:
    """Catch an empty, foreign or truncated file before SQLite reads (or repairs) it."""
    try:
        size = path.stat().st_size
        with path.open("rb") as file:
            header = file.read(_HEADER_SIZE)
    except OSError as exc:
        raise StoreError(f"{path}: cannot read the store: {exc}") from exc
    if len(header) < _HEADER_SIZE:
        raise StoreCorruptError(corrupt_message(path, f"is truncated ({size} bytes)"))
    if not header.startswith(_SQLITE_MAGIC):
        raise StoreCorruptError(corrupt_message(path, "is not an SQLite database"))
    (page_size,) = struct.unpack_from(">H", header, 16)
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        raise StoreCorruptError(corrupt_message(path, "has a damaged header"))
    if size % page_size:
        raise StoreCorruptError(
            corrupt_message(path, f"is truncated ({size} bytes: not whole {page_size}-byte pages)")
        )
    # The page count in the header is valid when the two change counters agree. Checkpoints
    # may leave the file shorter for a moment while the log holds the rest: only trust the
    # comparison when there is no log to replay.
    (pages,) = struct.unpack_from(">I", header, 28)
    counters_agree = header[24:28] == header[92:96]
    if counters_agree and pages * page_size > size and file_size(wal_path(path)) == 0:
        raise StoreCorruptError(
            corrupt_message(path, f"is truncated ({size} bytes, the header says {pages} pages)")
        )


def _connect(path: Path) -> sqlite3.Connection:
    # mode=rw: never let SQLite create a file here (a missing file was handled above).
    uri = path.absolute().as_uri() + "?mode=rw"
    try:
        conn = sqlite3.connect(
            uri, uri=True, isolation_level=None, check_same_thread=False, timeout=LOCK_TIMEOUT
        )
        # Before the first read: take the file for this process alone (and keep the WAL index
        # in private memory, no -shm file).
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")
    except sqlite3.Error as exc:
        raise translate_error(exc, path, "opening the store") from exc
    return conn


def _read_version(conn: sqlite3.Connection, path: Path) -> int:
    try:
        application_id = conn.execute("PRAGMA application_id").fetchone()[0]
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_schema")}
        rows = (
            conn.execute("SELECT version FROM schema_version").fetchall()
            if ("schema_version" in tables)
            else []
        )
    except sqlite3.Error as exc:
        raise translate_error(exc, path, "opening the store") from exc
    if application_id != APPLICATION_ID or len(rows) != 1 or not isinstance(rows[0][0], int):
        raise StoreCorruptError(corrupt_message(path, "is not an amqpd store"))
    version: int = rows[0][0]
    if version > SCHEMA_VERSION:
        raise StoreVersionError(
            f"{path}: written by a newer amqpd (store schema version {version}; this amqpd "
            f"knows versions up to {SCHEMA_VERSION}). Run that newer amqpd, or move the file "
            "aside to start this one with an empty store."
        )
    if version < 1:
        raise StoreCorruptError(corrupt_message(path, f"has schema version {version}"))
    return version


def _migrate(conn: sqlite3.Connection, path: Path, version: int) -> None:
    """Bring an older file up to SCHEMA_VERSION, one version per transaction."""
    while version < SCHEMA_VERSION:
        try:
            conn.executescript(
                f"BEGIN IMMEDIATE; {_MIGRATIONS[version]}"
                f" UPDATE schema_version SET version = {version + 1}; COMMIT;"
            )
        except sqlite3.Error as exc:
            raise translate_error(exc, path, f"migrating from schema version {version}") from exc
        log.info("migrated %s to schema version %d", path, version + 1)
        version += 1


def _configure(conn: sqlite3.Connection, path: Path) -> None:
    try:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        for pragma in (
            "synchronous = FULL",  # fsync the log at every commit
            f"wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}",
            f"journal_size_limit = {JOURNAL_SIZE_LIMIT}",
            f"cache_size = -{CACHE_KIB}",
            "temp_store = MEMORY",
        ):
            conn.execute(f"PRAGMA {pragma}")
    except sqlite3.Error as exc:
        raise translate_error(exc, path, "opening the store") from exc
    if str(mode).lower() != "wal":
        raise StoreError(f"{path}: cannot switch the store to WAL mode (got {mode!r})")


# -- errors and files ------------------------------------------------------------------------


def translate_error(exc: sqlite3.Error, path: Path, action: str) -> StoreError:
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return StoreCorruptError(corrupt_message(path, f"is damaged ({action}: {exc})"))
    if code in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return StoreLockedError(
            f"{path}: in use by another process ({exc}); stop the other amqpd or use another"
            " data directory"
        )
    if code == _SQLITE_FULL:
        return StoreFullError(f"{path}: the disk is full ({action})")
    if code == _SQLITE_IOERR:
        return StoreIOError(f"{path}: {action}: disk I/O error ({exc})")
    if code == _SQLITE_CONSTRAINT:
        return StoreError(f"{path}: {action}: a message id or entry seq was reused ({exc})")
    return StoreError(f"{path}: {action} failed: {exc}")


def corrupt_message(path: Path, problem: str) -> str:
    return (
        f"{path} {problem}. amqpd has left it as it is. To start with an empty store, move it"
        f" aside (with any {path.name}-wal beside it), e.g. mv {path} {path}.corrupt; or"
        " restore it from a backup."
    )


def wal_path(path: Path) -> Path:
    return Path(f"{path}-wal")


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
