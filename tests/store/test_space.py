"""Acked messages give their space back: the file stops growing under a steady load and
shrinks after a backlog drains."""

from __future__ import annotations

import os
from pathlib import Path

from amqpd.store import Batch, SQLiteStore
from amqpd.store.sqlite_file import COMPACT_MIN_FREE_PAGES

Q = ("/", "q")
BODY = os.urandom(256)


def on_disk(store: SQLiteStore) -> int:
    stats = store.stats()
    return stats["file_bytes"] + stats["wal_bytes"]


class Traffic:
    """Publishes to the tail of a queue and acks from its head."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store
        self.head = self.tail = 1

    def step(self, publish: int, ack: int) -> None:
        batch = Batch()
        for _ in range(publish):
            batch.put_message(self.tail, "", "q", b"header", BODY)
            batch.put_entry(Q, self.tail, self.tail)
            self.tail += 1
        for _ in range(min(ack, self.tail - self.head)):
            batch.delete_entry(Q, self.head)
            self.head += 1
        self.store.commit(batch)


def test_file_size_stabilises_under_steady_traffic(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "amqpd.sqlite3") as store:
        traffic = Traffic(store)
        traffic.step(publish=3000, ack=0)  # a standing backlog
        sizes = []
        for _ in range(8):
            for _ in range(25):
                traffic.step(publish=200, ack=200)
            sizes.append(on_disk(store))
        assert store.stats()["entries"] == 3000
    # 40,000 messages went through; the file held ~3,000 at a time and stayed that size.
    assert max(sizes[2:]) <= sizes[1] * 1.1, sizes


def test_file_shrinks_after_a_backlog_drains(tmp_path: Path) -> None:
    path = tmp_path / "amqpd.sqlite3"
    with SQLiteStore(path) as store:
        traffic = Traffic(store)
        for _ in range(8):
            traffic.step(publish=5000, ack=0)
        full = store.stats()["page_count"]
        for _ in range(8):
            traffic.step(publish=0, ack=5000)
        for _ in range(10):  # ongoing light traffic returns free pages a step at a time
            traffic.step(publish=1, ack=1)
        stepped = store.stats()
        # Commits shrink the file until less than COMPACT_MIN_FREE_PAGES are free ...
        assert stepped["page_count"] < full
        assert stepped["freelist_count"] < COMPACT_MIN_FREE_PAGES
        # ... and compact() gives back the rest.
        store.compact()
        assert store.stats()["freelist_count"] == 0
    assert path.stat().st_size < 200 * 1024  # from ~12 MiB with 40,000 messages
