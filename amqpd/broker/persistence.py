"""The persistent journal: turns the core's changes into store batches, and recovery.

Theory of operation:
- The core calls the journal synchronously (``entry_added``, ``queue_declared``...). The
  journal appends operations to the current :class:`~amqpd.store.Batch`; nothing touches the
  disk on the event loop.
- The shell's flusher task swaps the batch out and commits it in a worker thread (group
  commit: everything gathered while the previous commit ran goes in one transaction and one
  fsync). When the commit returns, the callbacks registered for that batch run -- this is
  how publisher confirms and tx.commit-ok for persistent messages wait for the disk.
- What is persisted: durable exchanges, queues and the bindings between durable ends; and
  entries of persistent messages (delivery-mode 2) in durable queues, with their delivery
  count and redelivered flag, so both survive a restart. Transient messages never reach the
  disk.
"""

from __future__ import annotations

import gc
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from amqpd.broker.exchange import Exchange
from amqpd.broker.journal import Journal
from amqpd.broker.message import Message, QueueEntry, route_for
from amqpd.broker.queue import Queue
from amqpd.store import (
    Batch,
    BindingRecord,
    ExchangeRecord,
    QueueKey,
    QueueRecord,
    Snapshot,
    Store,
)

if TYPE_CHECKING:
    from amqpd.broker.broker import Broker

LOGGER = logging.getLogger(__name__)


def _persists(queue: Queue, entry: QueueEntry) -> bool:
    return queue.durable and entry.message.persistent


class PersistentJournal(Journal):
    """Memory accounting plus batches for the store."""

    def __init__(self, store: Store, next_message_id: int = 1) -> None:
        super().__init__()
        self.store = store
        self.batch = Batch()
        self.batch_number = 1  # the number of ``self.batch``; committed ones are lower
        self.committed = 0
        self._message_ids = itertools.count(next_message_id)
        self._after_commit: dict[int, list[Callable[[], None]]] = {}
        self.wakeup: Callable[[], None] = _nothing
        self.writes = 0  # operations added; the core compares it before and after a publish
        self.recovering = False
        self.external_pending = False  # a stream wrote since the last batch was taken

    # -- batches -----------------------------------------------------------------------

    def _changed(self) -> None:
        self.writes += 1
        self.wakeup()

    def take_batch(self) -> tuple[int, Batch]:
        """Hand the current batch to the flusher and start the next one."""
        number, batch = self.batch_number, self.batch
        self.batch = Batch()
        self.batch_number += 1
        self.external_pending = False
        return number, batch

    def mark_external(self) -> None:
        """A stream's log was written: the next batch syncs it, even with no store work."""
        self.external_pending = True
        self._changed()

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once everything written so far is durable."""
        if not self.batch and not self.external_pending and \
                self.committed >= self.batch_number - 1:
            callback()
            return
        self._after_commit.setdefault(self.batch_number, []).append(callback)
        self.wakeup()

    def committed_through(self, number: int) -> None:
        """The flusher committed batch ``number``: release whoever waited for it."""
        self.committed = number
        for pending in [n for n in self._after_commit if n <= number]:
            for callback in self._after_commit.pop(pending):
                callback()

    def batch_lost(self, number: int) -> None:
        """Batch ``number`` could not be written (a failed write or fsync): whoever waited
        for it is released, and channels nack its messages (see ``lost_from``)."""
        if not self.lost_from:
            self.lost_from = number
        for pending in [n for n in self._after_commit if n <= number]:
            for callback in self._after_commit.pop(pending):
                callback()

    @property
    def pending(self) -> bool:
        """True when there is something to commit or someone waiting."""
        return bool(self.batch) or bool(self._after_commit) or self.external_pending

    # -- messages ----------------------------------------------------------------------

    def _store_message(self, message: Message) -> None:
        if not message.message_id:
            message.message_id = next(self._message_ids)
            self.batch.put_message(
                message.message_id, message.exchange, message.routing_key,
                message.header_payload, message.body,
            )

    def entry_added(self, queue: Queue, entry: QueueEntry) -> None:
        super().entry_added(queue, entry)
        if self.recovering or not _persists(queue, entry):
            return
        message = entry.message
        self._store_message(message)
        expires_at = None
        if entry.expires_at is not None:
            expires_at = time.time() + (entry.expires_at - time.monotonic())
        self.batch.put_entry((queue.vhost_name, queue.name), entry.seq, message.message_id,
                             expires_at)
        self._changed()

    def entry_removed(self, queue: Queue, entry: QueueEntry) -> None:
        super().entry_removed(queue, entry)
        if _persists(queue, entry):
            self.batch.delete_entry((queue.vhost_name, queue.name), entry.seq)
            self._changed()

    def entry_returned(self, queue: Queue, entry: QueueEntry) -> None:
        if _persists(queue, entry):
            self.batch.update_entry((queue.vhost_name, queue.name), entry.seq,
                                    entry.delivery_count, True)
            self._changed()

    def entry_delivered(self, queue: Queue, entry: QueueEntry) -> None:
        if _persists(queue, entry) and not entry.redelivered:
            # Marked so a crash before the ack brings it back with redelivered=true. When the
            # ack lands in the same batch, the batch drops this update.
            self.batch.update_entry((queue.vhost_name, queue.name), entry.seq,
                                    entry.delivery_count, True)
            self._changed()

    # -- held by delayed exchanges (amqpd.broker.delayed) ------------------------------

    def delayed_added(self, key: QueueKey, seq: int, message: Message, due_at: float) -> bool:
        self._store_message(message)
        self.batch.put_entry(key, seq, message.message_id, due_at)
        self._changed()
        return True

    def delayed_removed(self, key: QueueKey, seq: int) -> None:
        self.batch.delete_entry(key, seq)
        self._changed()

    def delayed_dropped(self, key: QueueKey) -> None:
        self.batch.delete_queue(*key)
        self._changed()

    def read_delayed(self, key: QueueKey, seqs: Sequence[int]) -> dict[int, Message]:
        # Indexed reads of the due rows, on the event loop, as a restarted queue reads its
        # stored backlog: one query for a batch of them.
        messages = {}
        for stored, record in self.store.read_entries_at(key, seqs):
            message = Message(route_for(record.exchange, record.routing_key),
                              record.header_payload, record.body or b"")
            message.message_id = record.message_id
            messages[stored.seq] = message
        return messages

    # -- definitions -------------------------------------------------------------------

    def queue_declared(self, queue: Queue) -> None:
        if queue.durable and not self.recovering:
            self.batch.put_queue(QueueRecord(queue.vhost_name, queue.name, True,
                                             queue.auto_delete, dict(queue.arguments)))
            self._changed()

    def queue_deleted(self, queue: Queue, dropped_bytes: int, dropped_entries: int) -> None:
        super().queue_deleted(queue, dropped_bytes, dropped_entries)
        if queue.durable:
            self.batch.delete_queue(queue.vhost_name, queue.name)
            self._changed()

    def exchange_declared(self, exchange: Exchange) -> None:
        if exchange.durable and not self.recovering:
            self.batch.put_exchange(ExchangeRecord(
                exchange.vhost_name, exchange.name, exchange.type_name, True,
                exchange.auto_delete, exchange.internal, dict(exchange.arguments)))
            self._changed()

    def exchange_deleted(self, exchange: Exchange) -> None:
        if exchange.durable:
            self.batch.delete_exchange(exchange.vhost_name, exchange.name)
            self._changed()

    def _binding(self, source: Exchange, destination: Queue | Exchange, routing_key: str,
                 arguments: dict[str, object]) -> BindingRecord | None:
        if not source.durable or not destination_durable(destination):
            return None
        kind = "queue" if isinstance(destination, Queue) else "exchange"
        return BindingRecord(source.vhost_name, source.name, kind, destination.name,
                             routing_key, arguments)

    def binding_added(self, source: Exchange, destination: Queue | Exchange, routing_key: str,
                      arguments: dict[str, object]) -> None:
        record = self._binding(source, destination, routing_key, arguments)
        if record is not None and not self.recovering:
            self.batch.put_binding(record)
            self._changed()

    def binding_removed(self, source: Exchange, destination: Queue | Exchange,
                        routing_key: str, arguments: dict[str, object]) -> None:
        record = self._binding(source, destination, routing_key, arguments)
        if record is not None:
            self.batch.delete_binding(record)
            self._changed()


def destination_durable(destination: Queue | Exchange) -> bool:
    """Only bindings whose both ends are durable survive a restart (RabbitMQ)."""
    return destination.durable


def recover(broker: Broker, journal: PersistentJournal, snapshot: Snapshot) -> int:
    """Rebuild the durable topology from ``snapshot`` (loaded without entries) and hand each
    queue its persistent backlog; returns the number of messages waiting."""
    journal.recovering = True
    # Millions of acyclic objects are built here; the cyclic collector would rescan them
    # over and over (seconds for a million messages) while finding nothing to free.
    collecting = gc.isenabled()
    gc.disable()
    try:
        for name in snapshot.vhosts:
            broker.add_vhost(name)
        for record in snapshot.exchanges:
            vhost = broker.add_vhost(record.vhost)
            if record.name not in vhost.exchanges:
                vhost.declare_exchange(record.name, record.type, durable=True,
                                       auto_delete=record.auto_delete, internal=record.internal,
                                       arguments=record.arguments)
        for queue_record in snapshot.queues:
            vhost = broker.add_vhost(queue_record.vhost)
            vhost.declare_queue(queue_record.name, None, durable=True,
                                auto_delete=queue_record.auto_delete,
                                arguments=queue_record.arguments)
        for binding in snapshot.bindings:
            vhost = broker.add_vhost(binding.vhost)
            destination: Queue | Exchange | None
            if binding.destination_kind == "queue":
                destination = vhost.queues.get(binding.destination)
            else:
                destination = vhost.exchanges.get(binding.destination)
            if destination is not None and binding.source in vhost.exchanges:
                vhost.bind(binding.source, destination, binding.routing_key, binding.arguments)
        counts = journal.store.entry_counts()
        for vhost in list(broker.vhosts.values()):
            vhost.delayed.recover(journal.store, counts)  # held by delayed exchanges
        return _attach_stored_backlogs(broker, journal.store)
    finally:
        journal.recovering = False
        if collecting:
            gc.enable()


def _attach_stored_backlogs(broker: Broker, store: Store) -> int:
    """Recovered queues read their persistent backlog from the store when they need it, a
    window at a time (like a paged tail): restart time and memory do not grow with the
    backlog. Returns how many messages wait in the store."""
    total = 0
    for (vhost_name, queue_name), (count, last_seq) in store.entry_counts().items():
        vhost = broker.vhosts.get(vhost_name)
        queue = vhost.queues.get(queue_name) if vhost is not None else None
        if queue is None:
            continue
        queue.attach_stored_tail(count, last_seq, _stored_reader(store, (vhost_name, queue_name)))
        total += count
    return total


def _stored_reader(store: Store, key: QueueKey) -> Callable[[int, int], list[QueueEntry]]:
    def read(after_seq: int, limit: int) -> list[QueueEntry]:
        wall, mono = time.time(), time.monotonic()
        entries = []
        for stored, record in store.read_entries(key, after_seq, limit):
            message = Message(route_for(record.exchange, record.routing_key),
                              record.header_payload, record.body or b"")
            message.message_id = record.message_id
            entry = QueueEntry(message, stored.seq)
            entry.delivery_count = stored.delivery_count
            entry.redelivered = stored.redelivered
            if stored.expires_at is not None:
                entry.expires_at = mono + (stored.expires_at - wall)
            entries.append(entry)
        return entries

    return read


def _nothing() -> None:
    return None
