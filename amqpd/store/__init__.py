"""The persistent store: topology, users and durable messages across restarts.

``open_store(data_dir)`` gives the SQLite store in ``<data_dir>/amqpd.sqlite3``, or a
:class:`MemoryStore` when there is no data directory. The API is in :mod:`amqpd.store.base`.
"""

from __future__ import annotations

from pathlib import Path

from amqpd.store.base import (
    Batch,
    BindingRecord,
    ExchangeRecord,
    QueueKey,
    QueueRecord,
    Snapshot,
    Store,
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
from amqpd.store.memory import MemoryStore
from amqpd.store.sqlite import FILENAME, SQLiteStore

__all__ = [
    "FILENAME",
    "Batch",
    "BindingRecord",
    "ExchangeRecord",
    "MemoryStore",
    "QueueKey",
    "QueueRecord",
    "SQLiteStore",
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
    "open_store",
]


def open_store(data_dir: Path | None) -> Store:
    """The store of a data directory (created if missing), or an in-memory one for None."""
    if data_dir is None:
        return MemoryStore()
    return SQLiteStore(Path(data_dir) / FILENAME)
