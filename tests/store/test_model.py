"""Random batches applied to SQLiteStore, MemoryStore and the naive Model give the same load().

The SQLite store is closed and reopened at random points, so the comparison also covers what
is on disk. Operations respect the batch contract: a seq is unique in its queue while its
entry lives, and an entry names a message put in the same batch or still stored.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amqpd.store import (
    Batch,
    BindingRecord,
    ExchangeRecord,
    MemoryStore,
    QueueRecord,
    SQLiteStore,
    UserRecord,
)
from tests.store import Model, amqp_tables, canonical

# More for a thorough run: STORE_EXAMPLES=2000 pytest tests/store/test_model.py
EXAMPLES = int(os.environ.get("STORE_EXAMPLES", "50"))
VHOSTS = ["/", "v"]
QUEUES = ["q1", "q2", "q3"]
EXCHANGES = ["e1", "e2"]
SEQS = range(1, 7)
BINDING_ARGUMENTS: list[dict[str, object]] = [{}, {"x-match": "all"}, {"a": 1}, {"a": True}]

OPERATIONS = [
    "publish",
    "publish",
    "publish",
    "another_entry",
    "delete_entry",
    "delete_entry",
    "delete_entry",
    "update_entry",
    "put_queue",
    "delete_queue",
    "put_exchange",
    "delete_exchange",
    "put_binding",
    "put_binding",
    "delete_binding",
    "put_vhost",
    "delete_vhost",
    "put_user",
    "delete_user",
]


class Generator:
    """Draws operations that are valid for the model's current state."""

    def __init__(self, data: st.DataObject, model: Model) -> None:
        self.data, self.model = data, model
        self.next_id = 1
        self.usable: set[int] = set()  # messages an entry may name in the current batch

    def start_batch(self) -> None:
        self.usable = self.model.referenced()

    def draw(self, strategy: st.SearchStrategy[Any]) -> Any:
        return self.data.draw(strategy)

    def queue(self) -> tuple[str, str]:
        return (self.draw(st.sampled_from(VHOSTS)), self.draw(st.sampled_from(QUEUES)))

    def free_seq(self, queue: tuple[str, str]) -> int | None:
        taken = self.model.entries.get(queue, {})
        free = [seq for seq in SEQS if seq not in taken]
        return self.draw(st.sampled_from(free)) if free else None

    def some_entry(self) -> tuple[tuple[str, str], int]:
        live = [(q, seq) for q, rows in self.model.entries.items() for seq in rows]
        if live and self.draw(st.booleans()):
            return self.draw(st.sampled_from(sorted(live)))  # type: ignore[no-any-return]
        return self.queue(), self.draw(st.sampled_from(SEQS))

    def operations(self, kind: str) -> list[tuple[str, tuple[object, ...]]]:
        return getattr(self, "op_" + kind)()  # type: ignore[no-any-return]

    def op_publish(self) -> list[tuple[str, tuple[object, ...]]]:
        mid, self.next_id = self.next_id, self.next_id + 1
        fields = (
            self.draw(st.sampled_from(["", "amq.topic"])),
            self.draw(st.text(max_size=8)),
            self.draw(st.binary(max_size=16)),
            self.draw(st.binary(max_size=64)),
        )
        ops: list[tuple[str, tuple[object, ...]]] = [("put_message", (mid, *fields))]
        self.usable.add(mid)
        for _ in range(self.draw(st.integers(0, 2))):
            ops += self._entry_for(mid)
        return ops

    def op_another_entry(self) -> list[tuple[str, tuple[object, ...]]]:
        if not self.usable:
            return []
        return self._entry_for(self.draw(st.sampled_from(sorted(self.usable))))

    def _entry_for(self, mid: int) -> list[tuple[str, tuple[object, ...]]]:
        queue = self.queue()
        seq = self.free_seq(queue)
        if seq is None:
            return []
        expires = self.draw(st.none() | st.floats(0, 4e9, allow_nan=False))
        return [("put_entry", (queue, seq, mid, expires))]

    def op_delete_entry(self) -> list[tuple[str, tuple[object, ...]]]:
        return [("delete_entry", self.some_entry())]

    def op_update_entry(self) -> list[tuple[str, tuple[object, ...]]]:
        count = self.draw(st.integers(0, 1000))
        return [("update_entry", (*self.some_entry(), count, self.draw(st.booleans())))]

    def op_put_queue(self) -> list[tuple[str, tuple[object, ...]]]:
        vhost, name = self.queue()
        durable, auto_delete = self.draw(st.booleans()), self.draw(st.booleans())
        record = QueueRecord(vhost, name, durable, auto_delete, self.draw(amqp_tables))
        return [("put_queue", (record,))]

    def op_delete_queue(self) -> list[tuple[str, tuple[object, ...]]]:
        return [("delete_queue", self.queue())]

    def exchange(self) -> tuple[str, str]:
        return (self.draw(st.sampled_from(VHOSTS)), self.draw(st.sampled_from(EXCHANGES)))

    def op_put_exchange(self) -> list[tuple[str, tuple[object, ...]]]:
        vhost, name = self.exchange()
        durable, auto_delete, internal = (self.draw(st.booleans()) for _ in range(3))
        arguments = self.draw(amqp_tables)
        record = ExchangeRecord(vhost, name, "topic", durable, auto_delete, internal, arguments)
        return [("put_exchange", (record,))]

    def op_delete_exchange(self) -> list[tuple[str, tuple[object, ...]]]:
        return [("delete_exchange", self.exchange())]

    def binding(self) -> BindingRecord:
        vhost, source = self.exchange()
        kind = self.draw(st.sampled_from(["queue", "exchange"]))
        destination = self.draw(st.sampled_from(QUEUES if kind == "queue" else EXCHANGES))
        key = self.draw(st.sampled_from(["", "a.*", "#"]))
        arguments = self.draw(st.sampled_from(BINDING_ARGUMENTS))
        return BindingRecord(vhost, source, kind, destination, key, arguments)

    def op_put_binding(self) -> list[tuple[str, tuple[object, ...]]]:
        return [("put_binding", (self.binding(),))]

    def op_delete_binding(self) -> list[tuple[str, tuple[object, ...]]]:
        bindings = list(self.model.bindings.values())
        if bindings and self.draw(st.booleans()):
            return [("delete_binding", (self.draw(st.sampled_from(bindings)),))]
        return [("delete_binding", (self.binding(),))]

    def op_put_vhost(self) -> list[tuple[str, tuple[object, ...]]]:
        return [("put_vhost", (self.draw(st.sampled_from(VHOSTS)),))]

    def op_delete_vhost(self) -> list[tuple[str, tuple[object, ...]]]:
        return [("delete_vhost", (self.draw(st.sampled_from(VHOSTS)),))]

    def op_put_user(self) -> list[tuple[str, tuple[object, ...]]]:
        name = self.draw(st.sampled_from(["guest", "admin"]))
        tags = tuple(self.draw(st.lists(st.sampled_from(["administrator", "monitoring"]))))
        return [("put_user", (UserRecord(name, self.draw(st.text(max_size=8)), tags),))]

    def op_delete_user(self) -> list[tuple[str, tuple[object, ...]]]:
        return [("delete_user", (self.draw(st.sampled_from(["guest", "admin"])),))]


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_random_batches_match_the_model(data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "amqpd.sqlite3"
        sqlite, memory, model = SQLiteStore(path), MemoryStore(), Model()
        generator = Generator(data, model)
        try:
            for _ in range(data.draw(st.integers(1, 6), label="batches")):
                generator.start_batch()
                batch = Batch()
                for _ in range(data.draw(st.integers(0, 10), label="operations")):
                    kind = data.draw(st.sampled_from(OPERATIONS))
                    for name, args in generator.operations(kind):
                        model.apply(batch, name, *args)
                sqlite.commit(batch)
                memory.commit(batch)
                if data.draw(st.booleans(), label="reopen"):
                    sqlite.close()
                    sqlite = SQLiteStore(path)
                expected = canonical(model.snapshot())
                assert canonical(sqlite.load()) == expected
                assert canonical(memory.load()) == expected
            assert canonical(sqlite.load(with_bodies=False)) == canonical(model.snapshot(False))
            bodies = {mid: fields[3] for mid, fields in model.bodies.items()}
            wanted = sorted(model.referenced())
            assert sqlite.read_bodies(wanted) == {mid: bodies[mid] for mid in wanted}
            stats = sqlite.stats()
            assert stats["messages"] == len(wanted)
            assert stats["entries"] == sum(map(len, model.entries.values()))
        finally:
            sqlite.close()
