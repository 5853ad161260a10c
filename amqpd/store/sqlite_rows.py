"""Row-level reads and writes of the SQLite store: applying a commit plan's records and
entries, and reading the snapshot back (the :class:`~amqpd.store.sqlite.SQLiteStore`
calls these inside its transactions)."""

from __future__ import annotations

import gc
import json
import sqlite3
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from amqpd.store.batch import CommitPlan
from amqpd.store.records import (
    BindingRecord,
    ExchangeRecord,
    QueueKey,
    QueueRecord,
    StoredMessage,
    StoreError,
    UserRecord,
)
from amqpd.store.sqlite_file import READ_CHUNK
from amqpd.store.tables import decode_table


@contextmanager
def no_gc() -> Iterator[None]:
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


def apply_records(conn: sqlite3.Connection, plan: CommitPlan) -> None:
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


def delete_entries(conn: sqlite3.Connection, queue_id: int, seqs: Sequence[int]) -> list[int]:
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


def apply_refs(conn: sqlite3.Connection, refs: Counter[int], counts: Counter[str]) -> None:
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


def read_messages(conn: sqlite3.Connection, with_bodies: bool) -> dict[int, StoredMessage]:
    body = "body" if with_bodies else "NULL"
    rows = conn.execute(f"SELECT id, exchange, routing_key, header, {body} FROM messages")
    return {row[0]: StoredMessage(*row) for row in rows}


def read_exchanges(conn: sqlite3.Connection) -> list[ExchangeRecord]:
    rows = conn.execute(
        "SELECT vhost, name, type, durable, auto_delete, internal, arguments"
        " FROM exchanges ORDER BY vhost, name"
    )
    return [
        ExchangeRecord(v, n, t, bool(d), bool(a), bool(i), decode_table(args))
        for v, n, t, d, a, i, args in rows
    ]


def read_queues(conn: sqlite3.Connection) -> list[QueueRecord]:
    rows = conn.execute(
        "SELECT vhost, name, durable, auto_delete, arguments FROM queues ORDER BY vhost, name"
    )
    return [QueueRecord(v, n, bool(d), bool(a), decode_table(args)) for v, n, d, a, args in rows]


def read_bindings(conn: sqlite3.Connection) -> list[BindingRecord]:
    rows = conn.execute(
        "SELECT vhost, source, destination_kind, destination, routing_key, arguments"
        " FROM bindings ORDER BY vhost, source, destination_kind, destination, routing_key,"
        " arguments"
    )
    return [
        BindingRecord(vhost, source, kind, destination, key, decode_table(arguments))
        for vhost, source, kind, destination, key, arguments in rows
    ]


def read_users(conn: sqlite3.Connection) -> list[UserRecord]:
    rows = conn.execute("SELECT name, password_hash, tags FROM users ORDER BY name")
    return [UserRecord(name, password, _tags(tags)) for name, password, tags in rows]


def _tags(text: str) -> tuple[str, ...]:
    tags = json.loads(text)  # json.JSONDecodeError is a ValueError: reported as corruption
    if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        raise ValueError(f"user tags are not a list of strings: {text!r}")
    return tuple(tags)


def queue_name_of(names: dict[int, QueueKey], queue_id: int) -> QueueKey:
    try:
        return names[queue_id]
    except KeyError:
        raise ValueError(f"entries refer to queue id {queue_id}, which is unknown") from None


# -- opening ---------------------------------------------------------------------------------


