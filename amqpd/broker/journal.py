"""Where the core reports every change that outlives a method call.

The core (vhost, queues) calls a :class:`Journal` for each durable definition change and each
message entering or leaving a queue. The base class keeps only the broker-wide memory
account; the persistent journal (``amqpd.broker.persistence``) also turns the calls into store
batches. Keeping this seam narrow is what lets the core stay synchronous and I/O-free.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from amqpd.broker.message import ENTRY_OVERHEAD, Message, QueueEntry

if TYPE_CHECKING:
    from amqpd.broker.exchange import Exchange
    from amqpd.broker.queue import Queue


class Journal:
    """Memory accounting only; subclasses persist."""

    def __init__(self) -> None:
        self.queued_bytes = 0
        # Operations written for the store, the batch being filled and the last one made
        # durable; without a store nothing is ever written, so nothing waits.
        self.writes = 0
        self.batch_number = 0
        self.committed = 0
        # The first batch that was lost (a failed write or fsync), 0 while none was: its
        # publishers and every later batch's are nacked.
        self.lost_from = 0
        # Bumped by every exchange, queue or binding change (the live topology file).
        self.definitions_version = 0
        # Logs kept outside the store (amqpd.streams) that each batch must make durable:
        # called on the loop before a batch commits, each returns the fsync to run in the
        # flusher's worker thread (or None).
        self.external_syncs: list[Callable[[], Callable[[], None] | None]] = []

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once everything written so far is durable (now, without a
        store)."""
        callback()

    def mark_external(self) -> None:
        """A log outside the store was written: the next batch must sync it (counted as a
        write, so a publisher confirm waits for that batch)."""
        self.writes += 1

    def prepare_external(self) -> list[Callable[[], None]]:
        """The fsyncs the external logs need for the batch being committed."""
        return [sync for prepare in self.external_syncs if (sync := prepare()) is not None]

    def entry_added(self, queue: Queue, entry: QueueEntry) -> None:
        """A message entered a queue."""
        self.queued_bytes += len(entry.message.body) + ENTRY_OVERHEAD

    def entry_removed(self, queue: Queue, entry: QueueEntry) -> None:
        """A message left a queue for good."""
        self.queued_bytes -= len(entry.message.body) + ENTRY_OVERHEAD

    def entry_returned(self, queue: Queue, entry: QueueEntry) -> None:
        """A delivered message came back to its queue."""

    def entry_delivered(self, queue: Queue, entry: QueueEntry) -> None:
        """A message of a durable queue was delivered (not yet acknowledged)."""

    # Messages held by delayed exchanges (amqpd.broker.delayed), kept as entries of the
    # pseudo-queue ``key``; without a store nothing is written and nothing can be read back.

    def delayed_added(self, key: tuple[str, str], seq: int, message: Message,
                      due_at: float) -> bool:
        """A durable delayed exchange holds a persistent message until ``due_at`` (epoch
        seconds); True when it is written to the store."""
        return False

    def delayed_removed(self, key: tuple[str, str], seq: int) -> None:
        """A held message was released (or dropped)."""

    def delayed_dropped(self, key: tuple[str, str]) -> None:
        """Every message held under ``key`` is gone (its exchange was deleted)."""

    def read_delayed(self, key: tuple[str, str], seqs: Sequence[int]) -> dict[int, Message]:
        """Held messages whose body was left on disk (by seq), read back when they are
        due; a seq whose row is gone is missing from the answer."""
        return {}

    def queue_declared(self, queue: Queue) -> None:
        """A queue was created."""

    def queue_deleted(self, queue: Queue, dropped_bytes: int, dropped_entries: int) -> None:
        """A queue was deleted together with its ready messages."""
        self.queued_bytes -= dropped_bytes + dropped_entries * ENTRY_OVERHEAD

    def exchange_declared(self, exchange: Exchange) -> None:
        """An exchange was created."""

    def exchange_deleted(self, exchange: Exchange) -> None:
        """An exchange was deleted."""

    def binding_added(
        self, source: Exchange, destination: Queue | Exchange, routing_key: str,
        arguments: dict[str, object],
    ) -> None:
        """A binding was created."""

    def binding_removed(
        self, source: Exchange, destination: Queue | Exchange, routing_key: str,
        arguments: dict[str, object],
    ) -> None:
        """A binding was removed."""
