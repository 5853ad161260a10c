"""Paging: the tail of a long queue lives in a scratch SQLite file instead of memory.

Buffering is a broker's first job, and a backlog of ten million messages must not exhaust
memory. When the messages held in memory pass the paging budget, a queue that already has
``KEEP_IN_MEMORY`` ready messages appends new ones to its spill buffer instead of its deque;
full buffers are written to the scratch file, and when the in-memory part of the queue runs
low the oldest spilled rows are read back, in order, and deleted from the file.

The scratch file is not the durable store: it is recreated empty at every start, written
without fsync (a crash loses nothing that was promised -- persistent messages of durable
queues are in the durable store as well, and transient ones die with the broker anyway).
Writes and reads are a few milliseconds for a thousand rows and happen on the event loop,
only while the broker is paging.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Protocol

from amqpd.broker.message import ENTRY_OVERHEAD, Message, QueueEntry, route_for

LOGGER = logging.getLogger(__name__)

FILENAME = "paging.sqlite3"
# A paging queue keeps this many ready messages in memory, reads this many back at once...
KEEP_IN_MEMORY = 2000
READ_BACK = 2000
# ...and writes its spill buffer to the file in chunks of this many.
WRITE_CHUNK = 1000

_SCHEMA = """
CREATE TABLE spill (
    queue_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    message_id INTEGER NOT NULL,
    exchange TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    header BLOB NOT NULL,
    body BLOB NOT NULL,
    ttl_ms INTEGER,
    delivery_count INTEGER NOT NULL,
    redelivered INTEGER NOT NULL,
    expires_at REAL,
    PRIMARY KEY (queue_id, seq)
) WITHOUT ROWID;
"""

_Row = tuple[int, int, int, str, str, bytes, bytes, int | None, int, int, float | None]


class SpillFile:
    """The scratch file: one table of spilled entries, clustered by (queue, seq)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        if path is not None:
            for stale in (path, path.with_name(path.name + "-journal")):
                stale.unlink(missing_ok=True)
        self._db = sqlite3.connect(str(path) if path is not None else ":memory:",
                                   isolation_level=None, check_same_thread=False)
        # Nothing here must survive a crash, so no journal and no fsync.
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.executescript(_SCHEMA)
        self._queue_ids: dict[object, int] = {}

    def queue_id(self, queue: object) -> int:
        """A small integer naming a queue object in the file."""
        number = self._queue_ids.get(queue)
        if number is None:
            number = self._queue_ids[queue] = len(self._queue_ids) + 1
        return number

    def write(self, queue: object, entries: list[QueueEntry]) -> None:
        """Append entries (oldest first) for a queue."""
        queue_id = self.queue_id(queue)
        rows: list[_Row] = []
        for entry in entries:
            message = entry.message
            rows.append((
                queue_id, entry.seq, message.message_id, message.route.exchange,
                message.route.routing_key, message.header_payload, message.body,
                message.ttl_ms, entry.delivery_count, int(entry.redelivered), entry.expires_at,
            ))
        with self._db:
            self._db.executemany("INSERT INTO spill VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)

    def read(self, queue: object, limit: int) -> list[QueueEntry]:
        """Take the oldest ``limit`` entries of a queue out of the file."""
        queue_id = self.queue_id(queue)
        rows = self._db.execute(
            "SELECT seq, message_id, exchange, routing_key, header, body, ttl_ms,"
            " delivery_count, redelivered, expires_at FROM spill WHERE queue_id = ?"
            " ORDER BY seq LIMIT ?",
            (queue_id, limit),
        ).fetchall()
        if rows:
            with self._db:
                self._db.execute("DELETE FROM spill WHERE queue_id = ? AND seq <= ?",
                                 (queue_id, rows[-1][0]))
        entries = []
        for (seq, message_id, exchange, routing_key, header, body, ttl_ms, delivery_count,
             redelivered, expires_at) in rows:
            message = Message(route_for(exchange, routing_key), header, body, ttl_ms)
            message.message_id = message_id
            entry = QueueEntry(message, seq)
            entry.delivery_count = delivery_count
            entry.redelivered = bool(redelivered)
            entry.expires_at = expires_at
            entries.append(entry)
        return entries

    def drop(self, queue: object) -> None:
        """Forget a deleted queue's spilled entries."""
        queue_id = self._queue_ids.pop(queue, None)
        if queue_id is not None:
            with self._db:
                self._db.execute("DELETE FROM spill WHERE queue_id = ?", (queue_id,))

    def close(self) -> None:
        """Close and remove the file."""
        self._db.close()
        if self.path is not None:
            self.path.unlink(missing_ok=True)


class MemoryAccount(Protocol):
    """The broker-wide count of queued bytes (the journal keeps it)."""

    queued_bytes: int


class Pager:
    """Decides when queues page, and owns the scratch file (created on first use)."""

    def __init__(self, journal: MemoryAccount, budget: int, path: Path | None = None) -> None:
        # Bytes of queued messages held in memory above which long queues start paging
        # (RabbitMQ pages at half its memory high watermark, and so does amqpd by default).
        self.journal = journal
        self.budget = budget
        self.path = path
        self._file: SpillFile | None = None
        self.spilled_entries = 0  # across all queues, buffered or in the file

    @property
    def active(self) -> bool:
        """True while the messages held in memory are above the budget."""
        return self.journal.queued_bytes > self.budget

    def spilled(self, entry: QueueEntry) -> None:
        """An entry left memory for the spill buffer (the journal counted it in)."""
        self.journal.queued_bytes -= entry.message.size + ENTRY_OVERHEAD
        self.spilled_entries += 1

    def restored(self, entry: QueueEntry) -> None:
        """An entry of a recovered persistent backlog was read into memory."""
        self.journal.queued_bytes += entry.message.size + ENTRY_OVERHEAD

    def loaded(self, entry: QueueEntry) -> None:
        """A spilled entry is back in memory."""
        self.journal.queued_bytes += entry.message.size + ENTRY_OVERHEAD
        self.spilled_entries -= 1
        if not self.spilled_entries:
            self._release_file()

    def _release_file(self) -> None:
        # Deleted rows do not shrink a SQLite file: when nothing is spilled any more, the
        # file goes, so a drained backlog gives its disk space back.
        if self._file is not None:
            self._file.close()
            self._file = None

    @property
    def file(self) -> SpillFile:
        """The scratch file (made on first use)."""
        if self._file is None:
            LOGGER.info("paging queue tails to %s", self.path or "memory")
            self._file = SpillFile(self.path)
        return self._file

    def drop(self, queue: object, entries: int) -> None:
        """A queue with ``entries`` spilled entries was deleted."""
        self.spilled_entries -= entries
        if not self.spilled_entries:
            self._release_file()
        elif self._file is not None:
            self._file.drop(queue)

    def close(self) -> None:
        """Remove the scratch file."""
        if self._file is not None:
            self._file.close()
            self._file = None
