"""The durable store: one SQLite file (``<data_dir>/amqpd.sqlite3``) in WAL mode.

Durability: ``synchronous=FULL`` in WAL mode fsyncs the log at every commit, so a batch whose
``commit()`` returned survives ``kill -9`` and power loss; one batch is one transaction, so a
crash never leaves part of a batch behind.

Threading: the connection is opened with ``check_same_thread=False`` because the broker
commits from a worker thread; a lock makes every call exclusive -- one commit at a time, and
``load``/``read_bodies``/``stats`` wait for a running commit. The file is opened with
``locking_mode=EXCLUSIVE``: a second process (a second broker on the same data dir) gets
:class:`StoreLockedError` instead of sharing the file.

Space: acked messages are deleted at once. Freed pages are reused by later writes, so under a
steady load the file stays at its high-water mark; when more than a quarter of the file is
free (a backlog was drained), each commit also returns up to ``COMPACT_STEP_PAGES`` pages to
the file system (``auto_vacuum=INCREMENTAL``), and :meth:`SQLiteStore.compact` does it all at
once. The log is checkpointed every ~4 MiB (``wal_autocheckpoint``) and truncated back to
``JOURNAL_SIZE_LIMIT`` after a large batch.

A damaged file raises :class:`StoreCorruptError` naming it; the store never writes to a file
it could not validate, and never replaces one.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import sqlite3
import struct
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from amqpd.store.batch import Batch, Cascade, CommitPlan, EntryChanges
from amqpd.store.records import (
    BindingRecord,
    ExchangeRecord,
    QueueKey,
    QueueRecord,
    Snapshot,
    StoreCorruptError,
    StoredEntry,
    StoredMessage,
    StoreError,
    StoreLockedError,
    StoreVersionError,
    UserRecord,
)
from amqpd.store.tables import decode_table

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

_TABLES = (
    "vhosts",
    "users",
    "exchanges",
    "queues",
    "bindings",
    "messages",
    "entries",
)
_COUNTERS = (
    "commits",
    "messages_written",
    "entries_written",
    "entries_deleted",
    "messages_deleted",
)

# SQLite primary result codes (sqlite3.Error.sqlite_errorcode & 0xFF).
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_CORRUPT, _SQLITE_FULL = 5, 6, 11, 13
_SQLITE_CONSTRAINT, _SQLITE_NOTADB = 19, 26


class SQLiteStore:
    """The durable :class:`~amqpd.store.base.Store` (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._counters: Counter[str] = Counter()
        self._conn: sqlite3.Connection | None = _open(self.path)
        try:
            self._queue_ids = self._read_queue_ids(self._conn)
        except BaseException:
            self._conn.close()
            raise

    # -- Store protocol -----------------------------------------------------------------------

    def load(self, with_bodies: bool = True, with_entries: bool = True) -> Snapshot:
        with self._lock, _no_gc(), self._transaction("loading the store", "BEGIN") as conn:
            try:
                return self._read_snapshot(conn, with_bodies, with_entries)
            except ValueError as exc:  # an argument table or user tags that do not decode
                problem = f"is damaged (loading the store: {exc})"
                raise StoreCorruptError(_corrupt_message(self.path, problem)) from exc

    def commit(self, batch: Batch) -> None:
        plan = batch.plan()
        with self._lock:
            if plan.is_empty:
                self._connection()  # still refuse a closed store
                return
            counts: Counter[str] = Counter()
            with self._transaction("committing a batch", "BEGIN IMMEDIATE") as conn:
                self._apply(conn, plan, counts)
                self._compact_step(conn, COMPACT_STEP_PAGES)
            counts["commits"] += 1
            self._counters.update(counts)

    def entry_counts(self) -> dict[QueueKey, tuple[int, int]]:
        with self._lock, self._transaction("counting entries", "BEGIN") as conn:
            names = {queue_id: queue for queue, queue_id in self._queue_ids.items()}
            rows = conn.execute(
                "SELECT queue_id, count(*), max(seq) FROM entries GROUP BY queue_id"
            )
            return {_queue_name(names, queue_id): (count, top) for queue_id, count, top in rows}

    def read_entries(
        self, queue: QueueKey, after_seq: int, limit: int
    ) -> list[tuple[StoredEntry, StoredMessage]]:
        with self._lock, self._transaction("reading entries", "BEGIN") as conn:
            queue_id = self._queue_ids.get(queue)
            if queue_id is None:
                return []
            rows = conn.execute(
                "SELECT e.seq, e.message_id, e.delivery_count, e.redelivered, e.expires_at,"
                " m.exchange, m.routing_key, m.header, m.body"
                " FROM entries e JOIN messages m ON m.id = e.message_id"
                " WHERE e.queue_id = ? AND e.seq > ? ORDER BY e.seq LIMIT ?",
                (queue_id, after_seq, limit),
            )
            return [
                (StoredEntry(seq, mid, count, bool(again), expires),
                 StoredMessage(mid, exchange, key, header, body))
                for seq, mid, count, again, expires, exchange, key, header, body in rows
            ]

    def read_bodies(self, message_ids: Sequence[int]) -> dict[int, bytes]:
        with self._lock, self._transaction("reading message bodies", "BEGIN") as conn:
            bodies: dict[int, bytes] = {}
            for start in range(0, len(message_ids), READ_CHUNK):
                chunk = message_ids[start : start + READ_CHUNK]
                marks = ",".join("?" * len(chunk))
                query = f"SELECT id, body FROM messages WHERE id IN ({marks})"
                bodies.update(conn.execute(query, chunk))
            return bodies

    def stats(self) -> dict[str, int]:
        with self._lock, self._transaction("reading statistics", "BEGIN") as conn:
            result = {
                table: int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
                for table in _TABLES
            }
            for pragma in ("page_size", "page_count", "freelist_count"):
                result[pragma] = int(conn.execute(f"PRAGMA {pragma}").fetchone()[0])
        result["file_bytes"] = _file_size(self.path)
        result["wal_bytes"] = _file_size(_wal_path(self.path))
        result.update({name: self._counters[name] for name in _COUNTERS})
        return result

    def close(self) -> None:
        """Close the file (SQLite checkpoints the log into it and removes the -wal file)."""
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()

    # -- beyond the protocol --------------------------------------------------------------------

    def compact(self, max_pages: int | None = None) -> int:
        """Return free pages to the file system now (all of them by default); the count.

        Also checkpoints the log, which is when the main file actually shrinks.
        """
        with self._lock:
            with self._transaction("compacting the store", "BEGIN IMMEDIATE") as conn:
                free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
                freed = self._vacuum(conn, free if max_pages is None else min(free, max_pages))
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.Error as exc:
                raise _translate(exc, self.path, "checkpointing the store") from exc
            return freed

    def check_integrity(self) -> None:
        """Read every page (``PRAGMA quick_check``); StoreCorruptError when something is wrong.

        ``load()`` notices damage in what it reads; this also finds it where load() does not
        read (the pointer map, the free list, indexes). It reads the whole file: 0.3 s for
        1,000,000 messages (330 MB) in the page cache.
        """
        with self._lock, self._transaction("checking the store", "BEGIN") as conn:
            problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            raise StoreCorruptError(_corrupt_message(self.path, "; ".join(problems)))

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- transactions and errors ----------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"{self.path}: the store is closed")
        return self._conn

    @contextmanager
    def _transaction(self, action: str, begin: str) -> Iterator[sqlite3.Connection]:
        """Run the body in one transaction; on any error roll back and raise a StoreError."""
        conn = self._connection()
        try:
            conn.execute(begin)
            yield conn
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._abort(conn)
            raise _translate(exc, self.path, action) from exc
        except BaseException:
            self._abort(conn)
            raise

    def _abort(self, conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                log.exception("rolling back %s failed", self.path)
        # The queue-id cache may hold ids of the rolled-back transaction.
        try:
            self._queue_ids = self._read_queue_ids(conn)
        except sqlite3.Error:
            log.exception("re-reading queue ids of %s failed", self.path)

    # -- commit ---------------------------------------------------------------------------------

    def _apply(self, conn: sqlite3.Connection, plan: CommitPlan, counts: Counter[str]) -> None:
        refs: Counter[int] = Counter(plan.extra_refs)
        for cascade in plan.cascades:
            self._cascade(conn, cascade, refs, counts)
        _apply_records(conn, plan)
        if plan.messages:
            conn.executemany(
                "INSERT INTO messages (id, refs, exchange, routing_key, header, body)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (m.message_id, m.refs, m.exchange, m.routing_key, m.header_payload, m.body)
                    for m in plan.messages
                ],
            )
            counts["messages_written"] += len(plan.messages)
        for changes in plan.entries:
            self._apply_entries(conn, changes, refs, counts)
        _apply_refs(conn, refs, counts)

    def _cascade(
        self, conn: sqlite3.Connection, cascade: Cascade, refs: Counter[int], counts: Counter[str]
    ) -> None:
        vhost, name = cascade.vhost, cascade.name
        if cascade.kind == "queue":
            self._drop_entries(conn, (vhost, name), refs, counts)
            conn.execute("DELETE FROM queues WHERE vhost = ? AND name = ?", (vhost, name))
            conn.execute(
                "DELETE FROM bindings"
                " WHERE vhost = ? AND destination_kind = 'queue' AND destination = ?",
                (vhost, name),
            )
        elif cascade.kind == "exchange":
            conn.execute("DELETE FROM exchanges WHERE vhost = ? AND name = ?", (vhost, name))
            conn.execute("DELETE FROM bindings WHERE vhost = ? AND source = ?", (vhost, name))
            conn.execute(
                "DELETE FROM bindings"
                " WHERE vhost = ? AND destination_kind = 'exchange' AND destination = ?",
                (vhost, name),
            )
        else:
            for queue in [queue for queue in self._queue_ids if queue[0] == vhost]:
                self._drop_entries(conn, queue, refs, counts)
            for table in ("queues", "exchanges", "bindings"):
                conn.execute(f"DELETE FROM {table} WHERE vhost = ?", (vhost,))
            conn.execute("DELETE FROM vhosts WHERE name = ?", (vhost,))

    def _drop_entries(
        self, conn: sqlite3.Connection, queue: QueueKey, refs: Counter[int], counts: Counter[str]
    ) -> None:
        """Delete every entry of the queue and forget its id."""
        queue_id = self._queue_ids.pop(queue, None)
        if queue_id is None:
            return
        rows = conn.execute(
            "SELECT message_id, count(*) FROM entries WHERE queue_id = ? GROUP BY message_id",
            (queue_id,),
        )
        for message_id, count in rows:
            refs[message_id] -= count
        cursor = conn.execute("DELETE FROM entries WHERE queue_id = ?", (queue_id,))
        counts["entries_deleted"] += cursor.rowcount
        conn.execute("DELETE FROM queue_ids WHERE id = ?", (queue_id,))

    def _apply_entries(
        self,
        conn: sqlite3.Connection,
        changes: EntryChanges,
        refs: Counter[int],
        counts: Counter[str],
    ) -> None:
        queue_id = self._queue_ids.get(changes.queue)
        if queue_id is None:
            if not changes.puts:
                return  # nothing of this queue is stored: deletes and updates have no target
            queue_id = self._new_queue_id(conn, changes.queue)
        for message_id in _delete_entries(conn, queue_id, changes.deletes):
            refs[message_id] -= 1
            counts["entries_deleted"] += 1
        if changes.puts:
            conn.executemany(
                "INSERT INTO entries (queue_id, seq, message_id, delivery_count, redelivered,"
                " expires_at) VALUES (?, ?, ?, ?, ?, ?)",
                [(queue_id, *put) for put in changes.puts],
            )
            counts["entries_written"] += len(changes.puts)
        if changes.updates:
            conn.executemany(
                "UPDATE entries SET delivery_count = ?, redelivered = ?"
                " WHERE queue_id = ? AND seq = ?",
                [
                    (count, redelivered, queue_id, seq)
                    for seq, count, redelivered in changes.updates
                ],
            )

    def _new_queue_id(self, conn: sqlite3.Connection, queue: QueueKey) -> int:
        cursor = conn.execute("INSERT INTO queue_ids (vhost, name) VALUES (?, ?)", queue)
        queue_id = cursor.lastrowid
        assert queue_id is not None  # an INSERT into a rowid table always sets it
        self._queue_ids[queue] = queue_id
        return queue_id

    def _compact_step(self, conn: sqlite3.Connection, max_pages: int) -> None:
        """Shrink the file a little when much of it is free (after a backlog drained)."""
        free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
        if free < COMPACT_MIN_FREE_PAGES:
            return
        pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
        if free * 4 >= pages:
            self._vacuum(conn, min(free, max_pages))

    @staticmethod
    def _vacuum(conn: sqlite3.Connection, pages: int) -> int:
        # Python's execute() steps a statement once, and incremental_vacuum frees one page
        # per step: so one execute per page (cheap: the statement is cached).
        for _ in range(pages):
            conn.execute("PRAGMA incremental_vacuum(1)")
        return pages

    # -- load -----------------------------------------------------------------------------------

    @staticmethod
    def _read_queue_ids(conn: sqlite3.Connection) -> dict[QueueKey, int]:
        return {
            (vhost, name): qid
            for qid, vhost, name in conn.execute("SELECT id, vhost, name FROM queue_ids")
        }

    def _read_snapshot(
        self, conn: sqlite3.Connection, with_bodies: bool, with_entries: bool = True
    ) -> Snapshot:
        messages = _read_messages(conn, with_bodies) if with_entries else {}
        next_id = conn.execute("SELECT max(id) FROM messages").fetchone()[0]
        return Snapshot(
            vhosts=[name for (name,) in conn.execute("SELECT name FROM vhosts ORDER BY name")],
            exchanges=_read_exchanges(conn),
            queues=_read_queues(conn),
            bindings=_read_bindings(conn),
            users=_read_users(conn),
            entries=self._read_entries(conn, messages) if with_entries else {},
            messages=messages,
            next_message_id=(next_id or 0) + 1,
        )

    def _read_entries(
        self, conn: sqlite3.Connection, messages: dict[int, StoredMessage]
    ) -> dict[QueueKey, list[StoredEntry]]:
        names = {queue_id: queue for queue, queue_id in self._queue_ids.items()}
        entries: dict[QueueKey, list[StoredEntry]] = {}
        current_id, current = -1, []
        dangling = 0
        rows = conn.execute(
            "SELECT queue_id, seq, message_id, delivery_count, redelivered, expires_at"
            " FROM entries ORDER BY queue_id, seq"
        )
        for queue_id, seq, message_id, delivery_count, redelivered, expires_at in rows:
            if queue_id != current_id:
                current_id, current = queue_id, entries.setdefault(_queue_name(names, queue_id), [])
            if message_id not in messages:
                dangling += 1
                continue
            entry = StoredEntry(seq, message_id, delivery_count, bool(redelivered), expires_at)
            current.append(entry)
        if dangling:
            # Cannot happen through this class (reference counts keep messages); a damaged or
            # hand-edited file could. Such entries cannot be delivered: skip them, loudly.
            log.warning("%s: skipped %d entries whose message is missing", self.path, dangling)
        return {queue: rows for queue, rows in entries.items() if rows}


@contextmanager
def _no_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while millions of (acyclic) records are built.

    Each collection would walk the whole growing heap: with it paused, loading a million
    messages takes about a third less time. Nothing here creates cycles to collect.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# -- commit helpers --------------------------------------------------------------------------


def _apply_records(conn: sqlite3.Connection, plan: CommitPlan) -> None:
    """Upserts and deletes of vhosts, users, exchanges, queues and bindings."""
    _many(conn, "INSERT OR IGNORE INTO vhosts (name) VALUES (?)", [(v,) for v in plan.vhosts])
    _many(
        conn,
        "INSERT OR REPLACE INTO users (name, password_hash, tags) VALUES (?, ?, ?)",
        [(u.name, u.password_hash, json.dumps(list(u.tags))) for u in plan.users_put],
    )
    _many(conn, "DELETE FROM users WHERE name = ?", [(name,) for name in plan.users_deleted])
    _many(
        conn,
        "INSERT OR REPLACE INTO exchanges"
        " (vhost, name, type, durable, auto_delete, internal, arguments)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (e.vhost, e.name, e.type, e.durable, e.auto_delete, e.internal, arguments)
            for e, arguments in plan.exchanges
        ],
    )
    _many(
        conn,
        "INSERT OR REPLACE INTO queues (vhost, name, durable, auto_delete, arguments)"
        " VALUES (?, ?, ?, ?, ?)",
        [(q.vhost, q.name, q.durable, q.auto_delete, arguments) for q, arguments in plan.queues],
    )
    _many(
        conn,
        "INSERT OR IGNORE INTO bindings"
        " (vhost, source, destination_kind, destination, routing_key, arguments)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [
            (b.vhost, b.source, b.destination_kind, b.destination, b.routing_key, arguments)
            for b, arguments in plan.bindings_put
        ],
    )
    _many(
        conn,
        "DELETE FROM bindings WHERE vhost = ? AND source = ? AND destination_kind = ?"
        " AND destination = ? AND routing_key = ? AND arguments = ?",
        list(plan.bindings_deleted),
    )


def _many(conn: sqlite3.Connection, sql: str, rows: list[tuple[object, ...]]) -> None:
    if rows:
        conn.executemany(sql, rows)


def _delete_entries(conn: sqlite3.Connection, queue_id: int, seqs: Sequence[int]) -> list[int]:
    """Delete the entries that exist among ``seqs``; the message id of each one deleted."""
    message_ids: list[int] = []
    for start in range(0, len(seqs), READ_CHUNK):
        chunk = list(seqs[start : start + READ_CHUNK])
        # Pad to a power of two (repeating a seq is harmless in IN) so that only a few
        # distinct statements exist and all stay in the statement cache.
        chunk += chunk[-1:] * ((1 << (len(chunk) - 1).bit_length()) - len(chunk))
        rows = conn.execute(
            f"DELETE FROM entries WHERE queue_id = ? AND seq IN ({','.join('?' * len(chunk))})"
            " RETURNING message_id",
            (queue_id, *chunk),
        )
        message_ids.extend(message_id for (message_id,) in rows)
    return message_ids


def _apply_refs(conn: sqlite3.Connection, refs: Counter[int], counts: Counter[str]) -> None:
    """Apply the batch's net change of entries per message; delete messages left with none."""
    gains = [(delta, message_id) for message_id, delta in refs.items() if delta > 0]
    losses = [(message_id, -delta) for message_id, delta in refs.items() if delta < 0]
    if gains:
        cursor = conn.executemany("UPDATE messages SET refs = refs + ? WHERE id = ?", gains)
        if cursor.rowcount != len(gains):
            raise StoreError(
                "committing a batch: it puts entries for messages that are neither in the"
                " batch nor stored"
            )
    if losses:
        # Usually the last entry went: one DELETE per message, and no UPDATE at all.
        cursor = conn.executemany("DELETE FROM messages WHERE id = ? AND refs <= ?", losses)
        counts["messages_deleted"] += cursor.rowcount
        if cursor.rowcount != len(losses):
            conn.executemany(
                "UPDATE messages SET refs = refs - ? WHERE id = ?",
                [(count, message_id) for message_id, count in losses],
            )


# -- load helpers ----------------------------------------------------------------------------


def _read_messages(conn: sqlite3.Connection, with_bodies: bool) -> dict[int, StoredMessage]:
    body = "body" if with_bodies else "NULL"
    rows = conn.execute(f"SELECT id, exchange, routing_key, header, {body} FROM messages")
    return {row[0]: StoredMessage(*row) for row in rows}


def _read_exchanges(conn: sqlite3.Connection) -> list[ExchangeRecord]:
    rows = conn.execute(
        "SELECT vhost, name, type, durable, auto_delete, internal, arguments"
        " FROM exchanges ORDER BY vhost, name"
    )
    return [
        ExchangeRecord(v, n, t, bool(d), bool(a), bool(i), decode_table(args))
        for v, n, t, d, a, i, args in rows
    ]


def _read_queues(conn: sqlite3.Connection) -> list[QueueRecord]:
    rows = conn.execute(
        "SELECT vhost, name, durable, auto_delete, arguments FROM queues ORDER BY vhost, name"
    )
    return [QueueRecord(v, n, bool(d), bool(a), decode_table(args)) for v, n, d, a, args in rows]


def _read_bindings(conn: sqlite3.Connection) -> list[BindingRecord]:
    rows = conn.execute(
        "SELECT vhost, source, destination_kind, destination, routing_key, arguments"
        " FROM bindings ORDER BY vhost, source, destination_kind, destination, routing_key,"
        " arguments"
    )
    return [
        BindingRecord(vhost, source, kind, destination, key, decode_table(arguments))
        for vhost, source, kind, destination, key, arguments in rows
    ]


def _read_users(conn: sqlite3.Connection) -> list[UserRecord]:
    rows = conn.execute("SELECT name, password_hash, tags FROM users ORDER BY name")
    return [UserRecord(name, password, _tags(tags)) for name, password, tags in rows]


def _tags(text: str) -> tuple[str, ...]:
    tags = json.loads(text)  # json.JSONDecodeError is a ValueError: reported as corruption
    if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        raise ValueError(f"user tags are not a list of strings: {text!r}")
    return tuple(tags)


def _queue_name(names: dict[int, QueueKey], queue_id: int) -> QueueKey:
    try:
        return names[queue_id]
    except KeyError:
        raise ValueError(f"entries refer to queue id {queue_id}, which is unknown") from None


# -- opening ---------------------------------------------------------------------------------


def _open(path: Path) -> sqlite3.Connection:
    """Open (creating if absent) and validate the store file; never modifies a bad file."""
    if not path.exists():
        if _wal_path(path).exists():
            raise StoreCorruptError(
                _corrupt_message(path, f"is missing but its log {_wal_path(path)} exists")
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
    for leftover in (temporary, _wal_path(temporary), Path(f"{temporary}-shm")):
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
        _fsync(temporary)
        os.replace(temporary, path)
        _fsync(path.parent)
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
        raise StoreCorruptError(_corrupt_message(path, f"is truncated ({size} bytes)"))
    if not header.startswith(_SQLITE_MAGIC):
        raise StoreCorruptError(_corrupt_message(path, "is not an SQLite database"))
    (page_size,) = struct.unpack_from(">H", header, 16)
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        raise StoreCorruptError(_corrupt_message(path, "has a damaged header"))
    if size % page_size:
        raise StoreCorruptError(
            _corrupt_message(path, f"is truncated ({size} bytes: not whole {page_size}-byte pages)")
        )
    # The page count in the header is valid when the two change counters agree. Checkpoints
    # may leave the file shorter for a moment while the log holds the rest: only trust the
    # comparison when there is no log to replay.
    (pages,) = struct.unpack_from(">I", header, 28)
    counters_agree = header[24:28] == header[92:96]
    if counters_agree and pages * page_size > size and _file_size(_wal_path(path)) == 0:
        raise StoreCorruptError(
            _corrupt_message(path, f"is truncated ({size} bytes, the header says {pages} pages)")
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
        raise _translate(exc, path, "opening the store") from exc
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
        raise _translate(exc, path, "opening the store") from exc
    if application_id != APPLICATION_ID or len(rows) != 1 or not isinstance(rows[0][0], int):
        raise StoreCorruptError(_corrupt_message(path, "is not an amqpd store"))
    version: int = rows[0][0]
    if version > SCHEMA_VERSION:
        raise StoreVersionError(
            f"{path}: written by a newer amqpd (store schema version {version}; this amqpd "
            f"knows versions up to {SCHEMA_VERSION}). Run that newer amqpd, or move the file "
            "aside to start this one with an empty store."
        )
    if version < 1:
        raise StoreCorruptError(_corrupt_message(path, f"has schema version {version}"))
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
            raise _translate(exc, path, f"migrating from schema version {version}") from exc
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
        raise _translate(exc, path, "opening the store") from exc
    if str(mode).lower() != "wal":
        raise StoreError(f"{path}: cannot switch the store to WAL mode (got {mode!r})")


# -- errors and files ------------------------------------------------------------------------


def _translate(exc: sqlite3.Error, path: Path, action: str) -> StoreError:
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return StoreCorruptError(_corrupt_message(path, f"is damaged ({action}: {exc})"))
    if code in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return StoreLockedError(
            f"{path}: in use by another process ({exc}); stop the other amqpd or use another"
            " data directory"
        )
    if code == _SQLITE_FULL:
        return StoreError(f"{path}: the disk is full ({action})")
    if code == _SQLITE_CONSTRAINT:
        return StoreError(f"{path}: {action}: a message id or entry seq was reused ({exc})")
    return StoreError(f"{path}: {action} failed: {exc}")


def _corrupt_message(path: Path, problem: str) -> str:
    return (
        f"{path} {problem}. amqpd has left it as it is. To start with an empty store, move it"
        f" aside (with any {path.name}-wal beside it), e.g. mv {path} {path}.corrupt; or"
        " restore it from a backup."
    )


def _wal_path(path: Path) -> Path:
    return Path(f"{path}-wal")


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
