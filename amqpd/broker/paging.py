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

A failed write (a full disk, EIO) loses nothing either: each write is one transaction, and
SQLite rolls a failed one back (an in-memory rollback journal: the file needs no crash
safety, but it must stay consistent when a write fails). The entries it held stay in memory,
counted in the queued bytes again, so the memory alarm blocks publishers at the high
watermark exactly as if there were no paging; reads merge them back in order with what the
file holds. The write is retried later (after 1 s, doubling up to 30 s, a chunk at a time).
One log line when writes start failing, one when they succeed again. A read that fails leaves
the entries where they are, counted in their queue, and is retried at the queue's next
delivery attempt.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import logging
import sqlite3
import time
from collections.abc import Callable
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
# After a failed write: seconds until the next attempt (doubling), and how many chunks of
# held entries one retry writes (it runs on the event loop).
RETRY_FIRST = 1.0
RETRY_MAX = 30.0
RETRY_CHUNKS = 10

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spill (
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
_Selected = tuple[int, int, str, str, bytes, bytes, int | None, int, int, float | None]


def _entry_bytes(entries: list[QueueEntry]) -> int:
    return sum(entry.message.size + ENTRY_OVERHEAD for entry in entries)


class SpillFile:
    """The scratch file: one table of spilled entries, clustered by (queue, seq), plus the
    entries whose write failed, held in memory until a retry writes them.

    ``account(delta)`` adds to the broker's queued bytes: held entries are in memory again.
    """

    def __init__(self, path: Path | None, account: Callable[[int], None] = lambda _: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._account = account
        self._clock = clock
        self._db: sqlite3.Connection | None = None
        # Never reused: rows of a dropped queue may outlive a failed DELETE.
        self._queue_ids: dict[object, int] = {}
        self._new_ids = itertools.count(1)
        # Per queue id, the highest seq read back: the next read starts after it even when
        # the DELETE of what was read failed (those rows must not come back twice).
        self._taken_through: dict[int, int] = {}
        # Per queue id, entries whose write failed, oldest first.
        self._held: dict[int, list[QueueEntry]] = {}
        self.held_entries = 0
        self.failing_since: float | None = None
        self._retry_at = 0.0
        self._retry_delay = RETRY_FIRST
        self.read_failing = False

    @property
    def name(self) -> str:
        """The file's path as log lines show it."""
        return str(self.path) if self.path is not None else "(memory)"

    def _connection(self) -> sqlite3.Connection:
        """The database, opened on first use (an open that fails is a failed write)."""
        if self._db is not None:
            return self._db
        path = self.path
        if path is not None:
            # Nothing of ours is in a file we could not open: start from scratch.
            for stale in (path, path.with_name(path.name + "-journal")):
                stale.unlink(missing_ok=True)
        db = sqlite3.connect(str(path) if path is not None else ":memory:",
                             isolation_level=None, check_same_thread=False)
        try:
            # No fsync, and a rollback journal in memory only: nothing here must survive a
            # crash, but a write that fails must be rolled back whole.
            db.execute("PRAGMA journal_mode=MEMORY")
            db.execute("PRAGMA synchronous=OFF")
            db.executescript(_SCHEMA)
        except sqlite3.Error:
            db.close()
            raise
        self._db = db
        return db

    def queue_id(self, queue: object) -> int:
        """A small integer naming a queue object in the file."""
        number = self._queue_ids.get(queue)
        if number is None:
            number = self._queue_ids[queue] = next(self._new_ids)
        return number

    # -- the SQL (a test double overrides these to fail) ----------------------------------

    def _insert(self, rows: list[_Row]) -> None:
        db = self._connection()
        db.execute("BEGIN")
        try:
            db.executemany("INSERT INTO spill VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):  # SQLite may have rolled back itself
                db.execute("ROLLBACK")
            raise

    def _select(self, queue_id: int, after: int, limit: int) -> list[_Selected]:
        assert self._db is not None
        return self._db.execute(
            "SELECT seq, message_id, exchange, routing_key, header, body, ttl_ms,"
            " delivery_count, redelivered, expires_at FROM spill"
            " WHERE queue_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            (queue_id, after, limit),
        ).fetchall()

    def _delete(self, queue_id: int, through: int | None) -> None:
        assert self._db is not None
        if through is None:
            self._db.execute("DELETE FROM spill WHERE queue_id = ?", (queue_id,))
        else:
            self._db.execute("DELETE FROM spill WHERE queue_id = ? AND seq <= ?",
                             (queue_id, through))

    # -- writing ----------------------------------------------------------------------------

    @staticmethod
    def _rows(queue_id: int, entries: list[QueueEntry]) -> list[_Row]:
        rows: list[_Row] = []
        for entry in entries:
            message = entry.message
            rows.append((
                queue_id, entry.seq, message.message_id, message.route.exchange,
                message.route.routing_key, message.header_payload, message.body,
                message.ttl_ms, entry.delivery_count, int(entry.redelivered), entry.expires_at,
            ))
        return rows

    def write(self, queue: object, entries: list[QueueEntry]) -> None:
        """Append entries (oldest first) for a queue; never raises: what cannot be written
        is held in memory."""
        queue_id = self.queue_id(queue)
        if self.failing_since is None or self._clock() >= self._retry_at:
            try:
                self._insert(self._rows(queue_id, entries))
            except (sqlite3.Error, OSError) as exc:
                self._write_failed(exc)
            else:
                if self.failing_since is not None:
                    self.retry()  # the file takes writes again: the held entries first
                return
        self._hold(queue_id, entries)

    def _hold(self, queue_id: int, entries: list[QueueEntry]) -> None:
        self._held.setdefault(queue_id, []).extend(entries)
        self.held_entries += len(entries)
        self._account(_entry_bytes(entries))

    def _write_failed(self, exc: sqlite3.Error | OSError) -> None:
        now = self._clock()
        if self.failing_since is None:
            self.failing_since = now
            self._retry_delay = RETRY_FIRST
            LOGGER.error("paging file %s: write failed: %s; queue tails stay in memory "
                         "(publishers are blocked at the memory high watermark), retrying",
                         self.name, exc)
        else:
            self._retry_delay = min(self._retry_delay * 2, RETRY_MAX)
        self._retry_at = now + self._retry_delay

    def retry(self) -> None:
        """Write some of the entries held after a failed write, when a retry is due (the
        shell calls this once a second; a successful write calls it too)."""
        if self.failing_since is None or self._clock() < self._retry_at:
            return
        chunks = RETRY_CHUNKS  # a bounded amount of work on the event loop per call
        for queue_id in list(self._held):
            held = self._held[queue_id]
            # Entries no newer than what was already read back from the file stay in memory
            # until read: the file's side of this queue starts after that point.
            start = bisect.bisect_right(held, self._taken_through.get(queue_id, -1),
                                        key=_by_seq)
            while start < len(held):
                if not chunks:
                    return
                chunks -= 1
                chunk = held[start:start + WRITE_CHUNK]
                try:
                    self._insert(self._rows(queue_id, chunk))
                except (sqlite3.Error, OSError) as exc:
                    self._write_failed(exc)
                    return
                del held[start:start + len(chunk)]
                self.held_entries -= len(chunk)
                self._account(-_entry_bytes(chunk))
            if not held:
                del self._held[queue_id]
        LOGGER.warning("paging file %s: writes succeed again after %.1f s",
                       self.name, self._clock() - self.failing_since)
        self.failing_since = None

    # -- reading ----------------------------------------------------------------------------

    def read(self, queue: object, limit: int) -> list[QueueEntry]:
        """Take the oldest ``limit`` entries of a queue out of the file and out of those held
        in memory, in order; nothing when the file cannot be read (retried next time)."""
        queue_id = self.queue_id(queue)
        rows: list[_Selected] = []
        if self._db is not None:
            try:
                rows = self._select(queue_id, self._taken_through.get(queue_id, -1), limit)
            except sqlite3.Error as exc:
                if not self.read_failing:
                    self.read_failing = True
                    LOGGER.error("paging file %s: read failed: %s; paged messages stay in "
                                 "their queues until it can be read", self.name, exc)
                return []
            if self.read_failing:
                self.read_failing = False
                LOGGER.warning("paging file %s: reads succeed again", self.name)
        if rows:
            through = self._taken_through[queue_id] = rows[-1][0]
            # Rows a failed DELETE leaves are skipped (_taken_through) and go with the file.
            with contextlib.suppress(sqlite3.Error):
                self._delete(queue_id, through)
        entries = [self._entry(row) for row in rows]
        held = self._held.get(queue_id)
        if held:
            entries = self._merge(queue_id, entries, held, limit)
        return entries

    @staticmethod
    def _entry(row: _Selected) -> QueueEntry:
        (seq, message_id, exchange, routing_key, header, body, ttl_ms, delivery_count,
         redelivered, expires_at) = row
        message = Message(route_for(exchange, routing_key), header, body, ttl_ms)
        message.message_id = message_id
        entry = QueueEntry(message, seq)
        entry.delivery_count = delivery_count
        entry.redelivered = bool(redelivered)
        entry.expires_at = expires_at
        return entry

    def _merge(self, queue_id: int, from_file: list[QueueEntry], held: list[QueueEntry],
               limit: int) -> list[QueueEntry]:
        """The oldest ``limit`` of the rows read and the held entries; rows read past them
        go back to the file's side (the next read starts after the last one taken)."""
        merged: list[QueueEntry] = []
        taken_held = index = 0
        while len(merged) < limit and (index < len(from_file) or taken_held < len(held)):
            if taken_held == len(held) or (
                    index < len(from_file) and from_file[index].seq < held[taken_held].seq):
                merged.append(from_file[index])
                index += 1
            else:
                merged.append(held[taken_held])
                taken_held += 1
        if index < len(from_file):
            # Read and deleted, but not taken: hold them (in memory, counted) with the rest.
            held.extend(from_file[index:])
            held.sort(key=_by_seq)
            self.held_entries += len(from_file) - index
            self._account(_entry_bytes(from_file[index:]))
        taken = held[:taken_held]
        del held[:taken_held]
        if not held:
            del self._held[queue_id]
        self.held_entries -= taken_held
        # The queue counts entries it reads back into memory itself (Pager.loaded).
        self._account(-_entry_bytes(taken))
        return merged

    def drop(self, queue: object) -> None:
        """Forget a deleted queue's spilled entries."""
        queue_id = self._queue_ids.pop(queue, None)
        if queue_id is None:
            return
        self._taken_through.pop(queue_id, None)
        held = self._held.pop(queue_id, None)
        if held:
            self.held_entries -= len(held)
            self._account(-_entry_bytes(held))
        if self._db is not None:
            try:
                self._delete(queue_id, None)
            except sqlite3.Error as exc:  # its id is never reused: the rows are just dead
                LOGGER.warning("paging file %s: cannot delete a queue's rows: %s",
                               self.name, exc)

    def close(self) -> None:
        """Close and remove the file (and forget anything still held)."""
        for held in self._held.values():
            self._account(-_entry_bytes(held))
        self._held.clear()
        self.held_entries = 0
        if self._db is not None:
            self._db.close()
            self._db = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def _by_seq(entry: QueueEntry) -> int:
    return entry.seq


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
        # Makes the scratch file (tests give one whose disk fails on purpose).
        self.file_type: Callable[[Path | None, Callable[[int], None]], SpillFile] = SpillFile

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
            self._file = self.file_type(self.path, self._account)
        return self._file

    def problems(self) -> list[str]:
        """The scratch file's failures for the broker's health, one line each."""
        spill = self._file
        problems = []
        if spill is not None and spill.failing_since is not None:
            problems.append(f"paging file {spill.name}: writes failing, {spill.held_entries} "
                            "messages held in memory instead")
        if spill is not None and spill.read_failing:
            problems.append(f"paging file {spill.name}: reads failing, paged messages wait")
        return problems

    def _account(self, delta: int) -> None:
        # Entries the file could not take are in memory after all: they count towards the
        # memory alarm (and the paging budget) until a retry writes them.
        self.journal.queued_bytes += delta

    def retry(self) -> None:
        """Retry writing what a failed write left in memory (the shell, once a second)."""
        if self._file is not None:
            self._file.retry()

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
