"""A :class:`~amqpd.store.base.Store` that keeps everything in dicts.

For tests and for a broker started without persistence. It behaves as the SQLite store does,
down to the argument tables: they are kept encoded and decoded on ``load()``, so a value comes
back with the same type after either store. Nothing survives the process.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from amqpd.store.batch import Batch, BindingKey, Cascade, CommitPlan, EntryChanges, binding_key
from amqpd.store.records import (
    BindingRecord,
    ExchangeRecord,
    QueueKey,
    QueueRecord,
    Snapshot,
    StoredEntry,
    StoredMessage,
    StoreError,
    UserRecord,
)
from amqpd.store.tables import decode_table


@dataclass(slots=True)
class _Entry:
    message_id: int
    delivery_count: int
    redelivered: bool
    expires_at: float | None


@dataclass(slots=True)
class _Message:
    refs: int
    exchange: str
    routing_key: str
    header_payload: bytes
    body: bytes


class MemoryStore:
    """The in-memory store (see the module docstring); thread-safe like SQLiteStore."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._closed = False
        self._vhosts: set[str] = set()
        self._users: dict[str, UserRecord] = {}
        self._exchanges: dict[tuple[str, str], tuple[ExchangeRecord, bytes]] = {}
        self._queues: dict[QueueKey, tuple[QueueRecord, bytes]] = {}
        self._bindings: set[BindingKey] = set()
        self._entries: dict[QueueKey, dict[int, _Entry]] = {}
        self._messages: dict[int, _Message] = {}
        self._counters: Counter[str] = Counter()

    # -- Store protocol -----------------------------------------------------------------------

    def load(self, with_bodies: bool = True, with_entries: bool = True) -> Snapshot:
        with self._lock:
            self._check_open()
            snapshot = Snapshot(
                vhosts=sorted(self._vhosts),
                exchanges=[_exchange(*self._exchanges[key]) for key in sorted(self._exchanges)],
                queues=[_queue(*self._queues[key]) for key in sorted(self._queues)],
                bindings=[_binding(key) for key in sorted(self._bindings)],
                users=[self._users[name] for name in sorted(self._users)],
                entries={
                    queue: [_stored_entry(seq, rows[seq]) for seq in sorted(rows)]
                    for queue, rows in self._entries.items()
                    if rows
                },
                messages={
                    message_id: _stored_message(message_id, message, with_bodies)
                    for message_id, message in self._messages.items()
                },
                next_message_id=max(self._messages, default=0) + 1,
            )
            if not with_entries:
                snapshot.entries, snapshot.messages = {}, {}
            return snapshot

    def commit(self, batch: Batch) -> None:
        plan = batch.plan()
        with self._lock:
            self._check_open()
            if plan.is_empty:
                return
            self._validate(plan)
            refs: Counter[int] = Counter(plan.extra_refs)
            for cascade in plan.cascades:
                self._cascade(cascade, refs)
            self._apply_records(plan)
            self._apply_messages(plan)
            for changes in plan.entries:
                self._apply_entries(changes, refs)
            self._apply_refs(refs)
            self._counters["commits"] += 1

    def entry_counts(self) -> dict[QueueKey, tuple[int, int]]:
        with self._lock:
            self._check_open()
            return {queue: (len(rows), max(rows)) for queue, rows in self._entries.items()
                    if rows}

    def read_entries(
        self, queue: QueueKey, after_seq: int, limit: int
    ) -> list[tuple[StoredEntry, StoredMessage]]:
        with self._lock:
            self._check_open()
            rows = self._entries.get(queue, {})
            seqs = sorted(seq for seq in rows if seq > after_seq)[:limit]
            return [
                (_stored_entry(seq, rows[seq]),
                 _stored_message(rows[seq].message_id,
                                 self._messages[rows[seq].message_id], True))
                for seq in seqs
            ]

    def read_entries_at(
        self, queue: QueueKey, seqs: Sequence[int]
    ) -> list[tuple[StoredEntry, StoredMessage]]:
        with self._lock:
            self._check_open()
            rows = self._entries.get(queue, {})
            return [
                (_stored_entry(seq, rows[seq]),
                 _stored_message(rows[seq].message_id,
                                 self._messages[rows[seq].message_id], True))
                for seq in sorted(set(seqs)) if seq in rows
            ]

    def read_due_times(
        self, queue: QueueKey, after_seq: int, limit: int
    ) -> list[tuple[int, float | None]]:
        with self._lock:
            self._check_open()
            rows = self._entries.get(queue, {})
            seqs = sorted(seq for seq in rows if seq > after_seq)[:limit]
            return [(seq, rows[seq].expires_at) for seq in seqs]

    def read_bodies(self, message_ids: Sequence[int]) -> dict[int, bytes]:
        with self._lock:
            self._check_open()
            messages = self._messages
            return {mid: messages[mid].body for mid in message_ids if mid in messages}

    def stats(self) -> dict[str, int]:
        with self._lock:
            self._check_open()
            return {
                "vhosts": len(self._vhosts),
                "users": len(self._users),
                "exchanges": len(self._exchanges),
                "queues": len(self._queues),
                "bindings": len(self._bindings),
                "entries": sum(map(len, self._entries.values())),
                "messages": len(self._messages),
                "file_bytes": 0,
                "wal_bytes": 0,
                **_counter_stats(self._counters),
            }

    def close(self) -> None:
        with self._lock:
            self._closed = True

    # -- commit steps -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the memory store is closed")

    def _validate(self, plan: CommitPlan) -> None:
        """Refuse what SQLite's constraints would refuse, before changing anything."""
        for message in plan.messages:
            if message.message_id in self._messages:
                raise StoreError(f"message {message.message_id} is already stored")
        for message_id in plan.extra_refs:
            if message_id not in self._messages:
                raise StoreError(f"an entry refers to message {message_id}, which is not stored")
        wiped = _wiped_queues(plan.cascades)
        for changes in plan.entries:
            stored = {} if _is_wiped(changes.queue, wiped) else self._entries.get(changes.queue, {})
            deleted = set(changes.deletes)
            for seq, *_ in changes.puts:
                if seq in stored and seq not in deleted:
                    raise StoreError(f"entry {seq} of queue {changes.queue} is already stored")

    def _cascade(self, cascade: Cascade, refs: Counter[int]) -> None:
        vhost, name = cascade.vhost, cascade.name
        if cascade.kind == "queue":
            self._drop_entries((vhost, name), refs)
            self._queues.pop((vhost, name), None)
            self._bindings = {
                key
                for key in self._bindings
                if not (key[0] == vhost and key[2] == "queue" and key[3] == name)
            }
        elif cascade.kind == "exchange":
            self._exchanges.pop((vhost, name), None)
            self._bindings = {
                key
                for key in self._bindings
                if not (key[0] == vhost and (key[1] == name or key[2:4] == ("exchange", name)))
            }
        else:
            for queue in [queue for queue in self._entries if queue[0] == vhost]:
                self._drop_entries(queue, refs)
            self._vhosts.discard(vhost)
            self._exchanges = {k: v for k, v in self._exchanges.items() if k[0] != vhost}
            self._queues = {k: v for k, v in self._queues.items() if k[0] != vhost}
            self._bindings = {key for key in self._bindings if key[0] != vhost}

    def _drop_entries(self, queue: QueueKey, refs: Counter[int]) -> None:
        for entry in self._entries.pop(queue, {}).values():
            refs[entry.message_id] -= 1
            self._counters["entries_deleted"] += 1

    def _apply_records(self, plan: CommitPlan) -> None:
        self._vhosts.update(plan.vhosts)
        for user in plan.users_put:
            self._users[user.name] = user
        for name in plan.users_deleted:
            self._users.pop(name, None)
        for exchange, arguments in plan.exchanges:
            self._exchanges[(exchange.vhost, exchange.name)] = (exchange, arguments)
        for queue, arguments in plan.queues:
            self._queues[(queue.vhost, queue.name)] = (queue, arguments)
        for binding, arguments in plan.bindings_put:
            self._bindings.add(binding_key(binding, arguments))
        self._bindings.difference_update(plan.bindings_deleted)

    def _apply_messages(self, plan: CommitPlan) -> None:
        for m in plan.messages:
            self._messages[m.message_id] = _Message(
                m.refs, m.exchange, m.routing_key, m.header_payload, m.body
            )
        self._counters["messages_written"] += len(plan.messages)

    def _apply_entries(self, changes: EntryChanges, refs: Counter[int]) -> None:
        rows = self._entries.setdefault(changes.queue, {})
        for seq in changes.deletes:
            entry = rows.pop(seq, None)
            if entry is not None:
                refs[entry.message_id] -= 1
                self._counters["entries_deleted"] += 1
        for seq, message_id, delivery_count, redelivered, expires_at in changes.puts:
            rows[seq] = _Entry(message_id, delivery_count, redelivered, expires_at)
        self._counters["entries_written"] += len(changes.puts)
        for seq, delivery_count, redelivered in changes.updates:
            entry = rows.get(seq)
            if entry is not None:
                entry.delivery_count, entry.redelivered = delivery_count, redelivered
        if not rows:
            del self._entries[changes.queue]

    def _apply_refs(self, refs: Counter[int]) -> None:
        for message_id, delta in refs.items():
            message = self._messages[message_id]
            message.refs += delta
            if message.refs <= 0:
                del self._messages[message_id]
                self._counters["messages_deleted"] += 1


COUNTERS = ("commits", "messages_written", "entries_written", "entries_deleted", "messages_deleted")


def _counter_stats(counters: Counter[str]) -> dict[str, int]:
    return {name: counters[name] for name in COUNTERS}


def _wiped_queues(cascades: Sequence[Cascade]) -> tuple[set[QueueKey], set[str]]:
    queues = {(c.vhost, c.name) for c in cascades if c.kind == "queue"}
    return queues, {c.vhost for c in cascades if c.kind == "vhost"}


def _is_wiped(queue: QueueKey, wiped: tuple[set[QueueKey], set[str]]) -> bool:
    return queue in wiped[0] or queue[0] in wiped[1]


def _exchange(record: ExchangeRecord, arguments: bytes) -> ExchangeRecord:
    return ExchangeRecord(
        record.vhost,
        record.name,
        record.type,
        record.durable,
        record.auto_delete,
        record.internal,
        decode_table(arguments),
    )


def _queue(record: QueueRecord, arguments: bytes) -> QueueRecord:
    return QueueRecord(
        record.vhost, record.name, record.durable, record.auto_delete, decode_table(arguments)
    )


def _binding(key: BindingKey) -> BindingRecord:
    return BindingRecord(*key[:5], decode_table(key[5]))


def _stored_entry(seq: int, entry: _Entry) -> StoredEntry:
    return StoredEntry(
        seq, entry.message_id, entry.delivery_count, entry.redelivered, entry.expires_at
    )


def _stored_message(message_id: int, message: _Message, with_body: bool) -> StoredMessage:
    body = message.body if with_body else None
    return StoredMessage(
        message_id, message.exchange, message.routing_key, message.header_payload, body
    )
