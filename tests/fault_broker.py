"""A real amqpd process whose disk is a test double (``python -m tests.fault_broker ARGS``).

It takes amqpd's own arguments and runs amqpd's own ``main``; only the disk differs, steered
through files in the directory named by ``AMQPD_TEST_CONTROL``:

- ``free_bytes``: when present, the free-space probe reads its number instead of statvfs;
- ``fail``: while it holds ``enospc`` every store commit raises StoreFullError, while it
  holds ``eio`` StoreIOError -- in both cases before anything is written, like the real
  SQLite store (a full disk rolls the transaction back; the double keeps EIO as simple);
- ``paging``: while it holds ``enospc`` or ``eio`` every write to the paging file
  (``paging.sqlite3``) fails the way SQLite reports them (sqlite3.OperationalError), before
  anything is written; ``read-eio`` fails its reads instead.

Everything else -- sockets, sessions, the real SQLite file underneath -- is the real broker.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import sys
from pathlib import Path

import amqpd.broker.broker as broker_module
import amqpd.broker.paging as paging
import amqpd.server as server
from amqpd.cli import main
from amqpd.store import Batch, SQLiteStore, Store, StoreFullError, StoreIOError
from amqpd.store.sqlite import FILENAME

CONTROL = Path(os.environ.get("AMQPD_TEST_CONTROL", "."))


def _control(name: str) -> str | None:
    try:
        return (CONTROL / name).read_text().strip()
    except FileNotFoundError:
        return None


def free_bytes(path: Path) -> int:
    """The probe: the control file's number, or the real free space."""
    value = _control("free_bytes")
    return int(value) if value else broker_module.disk_free_bytes(path)


class FaultyStore(SQLiteStore):
    """The SQLite store, with commits that fail on demand."""

    def commit(self, batch: Batch) -> None:
        fault = _control("fail")
        if fault == "enospc":
            raise StoreFullError(f"{self.path}: the disk is full (test double)")
        if fault == "eio":
            raise StoreIOError(f"{self.path}: disk I/O error (test double)")
        super().commit(batch)


def open_faulty(data_dir: Path) -> Store:
    return FaultyStore(Path(data_dir) / FILENAME)


class FaultySpillFile(paging.SpillFile):
    """The paging file, with writes or reads that fail on demand."""

    def _insert(self, rows: list[paging._Row]) -> None:
        fault = _control("paging")
        if fault == "enospc":
            raise sqlite3.OperationalError("database or disk is full")
        if fault == "eio":
            raise sqlite3.OperationalError("disk I/O error")
        super()._insert(rows)

    def _select(self, queue_id: int, after: int, limit: int) -> list[paging._Selected]:
        if _control("paging") == "read-eio":
            raise sqlite3.OperationalError("disk I/O error")
        return super()._select(queue_id, after, limit)


class _Broker(broker_module.Broker):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.free_bytes = free_bytes
        self.pager.file_type = FaultySpillFile


if __name__ == "__main__":
    broker_module.Broker = _Broker  # type: ignore[misc]
    server.run = functools.partial(server.run, opener=open_faulty)  # type: ignore[assignment]
    sys.exit(main(sys.argv[1:]))
