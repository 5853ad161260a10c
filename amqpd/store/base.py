"""The persistent store's API: data types, the batch, and the :class:`Store` protocol (no I/O).

Any backend implements :class:`Store`; :mod:`amqpd.store.sqlite` is the durable one and
:mod:`amqpd.store.memory` keeps everything in dicts.

Threading contract (all backends): ``commit`` may run in a worker thread while the event loop
fills the *next* :class:`Batch`; calls on one store never overlap (one commit at a time, and
``load``/``read_bodies``/``stats``/``close`` not during a commit). Backends guard themselves
with a lock, so an overlapping call waits instead of corrupting anything -- but it waits for
the commit's fsync, so the event loop should make every store call from a worker thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from amqpd.store.batch import Batch, CommitPlan
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
    StoreFullError,
    StoreIOError,
    StoreLockedError,
    StoreVersionError,
    UserRecord,
)

__all__ = [
    "Batch",
    "BindingRecord",
    "CommitPlan",
    "ExchangeRecord",
    "QueueKey",
    "QueueRecord",
    "Snapshot",
    "Store",
    "StoreCorruptError",
    "StoreError",
    "StoreFullError",
    "StoreIOError",
    "StoreLockedError",
    "StoreVersionError",
    "StoredEntry",
    "StoredMessage",
    "UserRecord",
]


class Store(Protocol):
    def load(self, with_bodies: bool = True, with_entries: bool = True) -> Snapshot:
        """Everything stored; with ``with_bodies=False`` message bodies are None (paging);
        with ``with_entries=False`` only the definitions (then use :meth:`entry_counts` and
        :meth:`read_entries`)."""
        ...

    def commit(self, batch: Batch) -> None:
        """Apply the batch atomically; it is durable when this returns.

        Seals the batch. On StoreFullError nothing of the batch was applied; the same batch
        may be committed again. On StoreIOError (a failed write or fsync) what reached the
        disk is unknown: the caller treats the batch as lost and writes nothing more.
        """
        ...

    def entry_counts(self) -> dict[QueueKey, tuple[int, int]]:
        """Per queue with entries: (how many, the highest seq) -- for a lazy recovery."""
        ...

    def read_entries(
        self, queue: QueueKey, after_seq: int, limit: int
    ) -> list[tuple[StoredEntry, StoredMessage]]:
        """Up to ``limit`` entries of ``queue`` with seq > ``after_seq``, in seq order, each
        with its message (body included)."""
        ...

    def read_entries_at(
        self, queue: QueueKey, seqs: Sequence[int]
    ) -> list[tuple[StoredEntry, StoredMessage]]:
        """The entries of ``queue`` among ``seqs`` (those that exist), in seq order, each with
        its message (body included)."""
        ...

    def read_due_times(
        self, queue: QueueKey, after_seq: int, limit: int
    ) -> list[tuple[int, float | None]]:
        """(seq, expires_at) of up to ``limit`` entries of ``queue`` with seq > ``after_seq``,
        in seq order, without their messages (a restart's pass over held messages)."""
        ...

    def read_bodies(self, message_ids: Sequence[int]) -> dict[int, bytes]:
        """The bodies of the stored messages among ``message_ids`` (paging them back in)."""
        ...

    def stats(self) -> dict[str, int]:
        """Row counts, file sizes, and write counters since the store was opened.

        Keys: vhosts, users, exchanges, queues, bindings, messages, entries, file_bytes,
        wal_bytes, commits, messages_written, entries_written, entries_deleted,
        messages_deleted (SQLite adds page_size, page_count, freelist_count).
        """
        ...

    def close(self) -> None:
        """Release the store; further calls raise StoreError. Closing twice is harmless."""
        ...
