"""Both stores: every record kind round-trips, entries and messages keep their invariants.

SQLite cases reopen the file before reading back, so they also prove the data is on disk.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import pytest

from amqpd.store import (
    Batch,
    BindingRecord,
    ExchangeRecord,
    MemoryStore,
    QueueRecord,
    Snapshot,
    SQLiteStore,
    Store,
    StoredEntry,
    StoredMessage,
    StoreError,
    UserRecord,
    open_store,
)
from tests.store import canonical, typed

Q1 = ("/", "q1")
Q2 = ("/", "q2")

ARGUMENTS: dict[str, object] = {
    "x-message-ttl": 60000,
    "x-negative": -5,
    "x-big": -(2**40),
    "x-bool": True,
    "x-false": False,
    "x-decimal": Decimal("-12.345"),
    "x-double": 0.1,
    "x-when": datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC),
    "x-bytes": bytearray(b"\x00\x01"),
    "x-void": None,
    "x-table": {"a": [1, "b", {"c": Decimal("1.0")}], "empty": {}},
    "x-array": [[], ["nested"], 2.5],
    "x-string": "dead-letters",
}


class Harness:
    """A store that can be closed and opened again (a no-op for the memory store)."""

    def __init__(self, kind: str, path: Path) -> None:
        self.kind, self.path = kind, path
        self.store: Store = MemoryStore() if kind == "memory" else SQLiteStore(path)

    def commit(self, *changes: tuple[str, tuple[object, ...]]) -> None:
        batch = Batch()
        for name, args in changes:
            getattr(batch, name)(*args)
        self.store.commit(batch)

    def reopened(self) -> Store:
        if self.kind == "sqlite":
            self.store.close()
            self.store = SQLiteStore(self.path)
        return self.store

    def load(self, with_bodies: bool = True) -> Snapshot:
        return self.reopened().load(with_bodies)


@pytest.fixture(params=["sqlite", "memory"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    h = Harness(request.param, tmp_path / "amqpd.sqlite3")
    yield h
    h.store.close()


def binding_form(b: BindingRecord) -> str:
    return repr((b.vhost, b.source, b.destination_kind, b.destination, b.routing_key)) + repr(
        typed(b.arguments)
    )


def message(mid: int, body: bytes = b"body") -> tuple[str, tuple[object, ...]]:
    return ("put_message", (mid, "amq.direct", f"key.{mid}", b"\x00\x3c\x00\x00header", body))


def entry(
    queue: tuple[str, str], seq: int, mid: int, expires: float | None = None
) -> tuple[str, tuple[object, ...]]:
    return ("put_entry", (queue, seq, mid, expires))


def test_every_record_kind_round_trips(harness: Harness) -> None:
    exchange = ExchangeRecord("/", "events", "topic", True, False, True, ARGUMENTS)
    queue = QueueRecord("/", "q1", True, True, ARGUMENTS)
    bindings = [
        BindingRecord("/", "events", "queue", "q1", "a.*", {}),
        BindingRecord("/", "events", "queue", "q1", "a.*", {"x-match": "any", "n": 1}),
        BindingRecord("/", "events", "exchange", "other", "#", ARGUMENTS),
    ]
    user = UserRecord("guest", "salted$hash", ("administrator", "monitoring"))
    harness.commit(
        ("put_vhost", ("/",)),
        ("put_vhost", ("vhost-ü",)),
        ("put_exchange", (exchange,)),
        ("put_queue", (queue,)),
        *[("put_binding", (b,)) for b in bindings],
        ("put_user", (user,)),
    )
    snapshot = harness.load()
    assert snapshot.vhosts == ["/", "vhost-ü"]
    assert snapshot.exchanges == [exchange]
    assert typed(snapshot.exchanges[0].arguments) == typed(ARGUMENTS)
    assert snapshot.queues == [queue]
    assert typed(snapshot.queues[0].arguments) == typed(ARGUMENTS)
    assert sorted(map(binding_form, snapshot.bindings)) == sorted(map(binding_form, bindings))
    assert snapshot.users == [user]
    assert snapshot.entries == {} and snapshot.messages == {}
    assert snapshot.next_message_id == 1


def test_redeclare_replaces_and_deletes_remove(harness: Harness) -> None:
    binding = BindingRecord("/", "e", "queue", "q1", "k", {"a": 1})
    harness.commit(
        ("put_exchange", (ExchangeRecord("/", "e", "direct", True, False, False, {}),)),
        ("put_queue", (QueueRecord("/", "q1", True, False, {}),)),
        ("put_binding", (binding,)),
        ("put_binding", (binding,)),  # a duplicate is one binding
        ("put_user", (UserRecord("u", "h"),)),
    )
    harness.commit(
        ("put_queue", (QueueRecord("/", "q1", False, True, {"x": "y"}),)),
        ("delete_user", ("u",)),
    )
    snapshot = harness.load()
    assert snapshot.queues == [QueueRecord("/", "q1", False, True, {"x": "y"})]
    assert snapshot.bindings == [binding] and snapshot.users == []
    harness.commit(("delete_binding", (BindingRecord("/", "e", "queue", "q1", "k", {"a": 2}),)))
    assert harness.load().bindings == [binding]  # other arguments: another binding
    harness.commit(("delete_binding", (binding,)))
    assert harness.load().bindings == []


def test_entries_come_back_in_seq_order_with_their_state(harness: Harness) -> None:
    harness.commit(
        *[message(mid, b"body-%d" % mid) for mid in range(1, 6)],
        entry(Q1, 30, 3, 1700000000.25),
        entry(Q1, 10, 1),
        entry(Q1, 20, 2),
        entry(Q2, 5, 4),
        entry(Q2, 1, 5),
    )
    harness.commit(("update_entry", (Q1, 20, 4, True)))
    snapshot = harness.load()
    assert snapshot.entries == {
        Q1: [
            StoredEntry(10, 1, 0, False, None),
            StoredEntry(20, 2, 4, True, None),
            StoredEntry(30, 3, 0, False, 1700000000.25),
        ],
        Q2: [StoredEntry(1, 5, 0, False, None), StoredEntry(5, 4, 0, False, None)],
    }
    assert snapshot.messages[2] == StoredMessage(
        2, "amq.direct", "key.2", b"\x00\x3c\x00\x00header", b"body-2"
    )
    assert snapshot.next_message_id == 6


def test_load_without_bodies_then_page_them_in(harness: Harness) -> None:
    big = bytes(range(256)) * 1000  # several overflow pages
    harness.commit(message(1, big), message(2, b""), entry(Q1, 1, 1), entry(Q1, 2, 2))
    snapshot = harness.load(with_bodies=False)
    assert {m.body for m in snapshot.messages.values()} == {None}
    assert snapshot.messages[1].header_payload == b"\x00\x3c\x00\x00header"
    assert harness.store.read_bodies([2, 1, 99]) == {1: big, 2: b""}
    assert harness.store.read_bodies(list(range(1, 2000))) == {1: big, 2: b""}  # chunked


def test_a_message_shared_by_two_queues_stays_until_both_entries_go(harness: Harness) -> None:
    harness.commit(message(1), entry(Q1, 1, 1), entry(Q2, 1, 1))
    harness.commit(("delete_entry", (Q1, 1)))
    snapshot = harness.load()
    assert list(snapshot.messages) == [1] and snapshot.entries == {
        Q2: [StoredEntry(1, 1, 0, False, None)]
    }
    harness.commit(("delete_entry", (Q2, 1)))
    snapshot = harness.load()
    assert snapshot.messages == {} and snapshot.entries == {}
    assert harness.store.stats()["messages"] == 0


def test_deleting_a_queue_removes_its_entries_bindings_and_orphans(harness: Harness) -> None:
    harness.commit(
        ("put_queue", (QueueRecord("/", "q1", True, False, {}),)),
        ("put_queue", (QueueRecord("/", "q2", True, False, {}),)),
        ("put_binding", (BindingRecord("/", "e", "queue", "q1", "k", {}),)),
        ("put_binding", (BindingRecord("/", "e", "queue", "q2", "k", {}),)),
        message(1),
        message(2),
        entry(Q1, 1, 1),
        entry(Q1, 2, 2),
        entry(Q2, 1, 2),  # message 2 is shared: it must survive
    )
    harness.commit(("delete_queue", ("/", "q1")))
    snapshot = harness.load()
    assert [q.name for q in snapshot.queues] == ["q2"]
    assert [b.destination for b in snapshot.bindings] == ["q2"]
    assert snapshot.entries == {Q2: [StoredEntry(1, 2, 0, False, None)]}
    assert list(snapshot.messages) == [2]


def test_deleting_an_exchange_removes_bindings_from_and_to_it(harness: Harness) -> None:
    keep = BindingRecord("/", "other", "queue", "q1", "", {})
    harness.commit(
        ("put_exchange", (ExchangeRecord("/", "e", "fanout", True, False, False, {}),)),
        ("put_binding", (BindingRecord("/", "e", "queue", "q1", "", {}),)),
        ("put_binding", (BindingRecord("/", "other", "exchange", "e", "", {}),)),
        ("put_binding", (BindingRecord("v2", "e", "queue", "q1", "", {}),)),
        ("put_binding", (keep,)),
    )
    harness.commit(("delete_exchange", ("/", "e")))
    snapshot = harness.load()
    assert snapshot.exchanges == []
    assert snapshot.bindings == [keep, BindingRecord("v2", "e", "queue", "q1", "", {})]


def test_deleting_a_vhost_removes_everything_in_it(harness: Harness) -> None:
    harness.commit(
        ("put_vhost", ("v",)),
        ("put_vhost", ("w",)),
        ("put_exchange", (ExchangeRecord("v", "e", "direct", True, False, False, {}),)),
        ("put_queue", (QueueRecord("v", "q", True, False, {}),)),
        ("put_queue", (QueueRecord("w", "q", True, False, {}),)),
        ("put_binding", (BindingRecord("v", "e", "queue", "q", "", {}),)),
        message(1),
        message(2),
        entry(("v", "q"), 1, 1),
        entry(("w", "q"), 1, 2),
    )
    harness.commit(("delete_vhost", ("v",)))
    snapshot = harness.load()
    assert snapshot.vhosts == ["w"]
    assert [(q.vhost, q.name) for q in snapshot.queues] == [("w", "q")]
    assert snapshot.exchanges == [] and snapshot.bindings == []
    assert list(snapshot.entries) == [("w", "q")] and list(snapshot.messages) == [2]


def test_queue_deleted_and_redeclared_in_one_batch_reuses_seqs(harness: Harness) -> None:
    harness.commit(message(1), entry(Q1, 1, 1))
    harness.commit(
        ("delete_queue", Q1),
        ("put_queue", (QueueRecord("/", "q1", True, False, {}),)),
        message(2),
        entry(Q1, 1, 2),
    )
    snapshot = harness.load()
    assert snapshot.entries == {Q1: [StoredEntry(1, 2, 0, False, None)]}
    assert list(snapshot.messages) == [2]


def test_an_entry_can_move_to_a_message_stored_earlier(harness: Harness) -> None:
    # Acking the last entry and adding another for the same message in one batch keeps it.
    harness.commit(message(1), entry(Q1, 1, 1))
    harness.commit(("delete_entry", (Q1, 1)), entry(Q2, 7, 1))
    snapshot = harness.load()
    assert snapshot.entries == {Q2: [StoredEntry(7, 1, 0, False, None)]}
    assert list(snapshot.messages) == [1]


def test_put_and_delete_in_one_batch_writes_nothing(harness: Harness) -> None:
    harness.commit(message(1), entry(Q1, 1, 1), ("delete_entry", (Q1, 1)))
    stats = harness.store.stats()
    assert stats["messages_written"] == stats["entries_written"] == 0
    assert stats["messages"] == stats["entries"] == 0
    harness.commit(message(2), entry(Q1, 2, 2))
    stats = harness.store.stats()
    assert stats["messages_written"] == stats["entries_written"] == 1


def test_a_bad_batch_changes_nothing_and_the_store_stays_usable(harness: Harness) -> None:
    harness.commit(message(1), entry(Q1, 1, 1))
    batch = Batch()
    batch.put_queue(QueueRecord("/", "new", True, False, {}))
    batch.put_entry(Q2, 1, 1)  # fine: message 1 is stored
    batch.put_entry(Q2, 2, 404)  # message 404 was never stored
    with pytest.raises(StoreError):
        harness.store.commit(batch)
    before = canonical(harness.store.load())
    assert before["queues"] == [] and list(before["entries"]) == [Q1]
    duplicate = Batch()
    duplicate.put_entry(Q1, 1, 1)  # seq 1 of q1 is taken
    with pytest.raises(StoreError):
        harness.store.commit(duplicate)
    harness.commit(message(2), entry(Q2, 1, 2))
    assert list(harness.load().entries) == [Q1, Q2]


def test_closed_store_refuses_calls(harness: Harness) -> None:
    harness.store.close()
    harness.store.close()
    with pytest.raises(StoreError):
        harness.store.load()
    with pytest.raises(StoreError):
        harness.store.commit(Batch())


def test_stats_count_rows(harness: Harness) -> None:
    harness.commit(("put_vhost", ("/",)), message(1), entry(Q1, 1, 1), entry(Q2, 1, 1))
    stats = harness.store.stats()
    assert (stats["vhosts"], stats["messages"], stats["entries"], stats["commits"]) == (1, 1, 2, 1)
    if harness.kind == "sqlite":
        assert stats["file_bytes"] > 0


def test_open_store(tmp_path: Path) -> None:
    assert isinstance(open_store(None), MemoryStore)
    store = open_store(tmp_path / "data")
    try:
        assert isinstance(store, SQLiteStore)
        assert store.path == tmp_path / "data" / "amqpd.sqlite3"
    finally:
        store.close()


def test_commits_in_a_worker_thread_while_the_next_batch_is_built(harness: Harness) -> None:
    # The broker's pattern: the loop fills batch N + 1 while a worker thread commits batch N;
    # meanwhile another thread pages bodies in (it waits for the commit, never sees half).
    store = harness.store
    with ThreadPoolExecutor(max_workers=2) as pool:
        pending = None
        for number in range(1, 41):
            batch = Batch()
            for i in range(25):
                mid = number * 100 + i
                batch.put_message(mid, "", "q", b"h", b"%d" % mid)
                batch.put_entry(Q1, mid, mid)
            if number > 1:
                for i in range(25):
                    batch.delete_entry(Q1, (number - 1) * 100 + i)
            if pending is not None:
                pending.result()
            pending = pool.submit(store.commit, batch)
            bodies = pool.submit(store.read_bodies, [number * 100, (number - 1) * 100]).result()
            assert set(bodies) <= {number * 100, (number - 1) * 100}
        assert pending is not None
        pending.result()
    snapshot = harness.load()
    assert [e.seq for e in snapshot.entries[Q1]] == list(range(4000, 4025))
    assert sorted(snapshot.messages) == list(range(4000, 4025))
