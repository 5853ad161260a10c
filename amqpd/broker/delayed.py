"""Messages held by ``x-delayed-message`` exchanges until their ``x-delay`` has passed.

Theory of operation:
- One :class:`DelayedMessages` per virtual host. A publish to a delayed exchange with a
  positive ``x-delay`` (see :func:`exchanges.delayed.delay_of`) is held here instead of
  routed; the broker's ticker (every 0.1 s, as TTL expiry) routes whatever is due through
  the exchange's inner type, in due order (publish order among equal due times). As the
  plugin: routing happens when the delay ends (bindings made meanwhile count), nothing is
  returned then, and the delivered message carries ``x-delay`` negated (so it is never
  delayed twice on its way through further exchanges).
- Due times are a binary heap of (monotonic due, sequence, held message): holding and
  releasing cost O(log n), and the ticker looks only at the top, so a million pending
  messages cost the tick nothing.
- Durability follows queues: a persistent message (delivery-mode 2) held by a durable
  exchange is written to the store as an entry of the pseudo-queue ``amq.delayed/<exchange>``
  (a name no client can declare) with its wall-clock due time; the publisher confirm waits
  for that commit, and the move into the queues at release is one batch (delete the held
  entry, add the queue entries). After a restart the heap is rebuilt from the store.
- Memory: held messages beyond :attr:`DelayedMessages.memory_budget` bytes of bodies keep
  only their place in the heap once they are on disk; the body is read back from the store
  when it is due. So a million pending persistent messages cost their heap entries (about
  200 bytes each), not their bodies.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections.abc import Mapping
from typing import Any, Protocol

from amqpd.broker import routing
from amqpd.broker.exchange import Exchange
from amqpd.broker.journal import Journal
from amqpd.broker.message import ENTRY_OVERHEAD, Message
from amqpd.broker.queue import Queue
from amqpd.protocol import codec
from amqpd.store import QueueKey, Store
from exchanges.delayed import HEADER, TYPE_NAME, DelayedMessageExchange, delay_of

LOGGER = logging.getLogger(__name__)

#: The store's pseudo-queue of a delayed exchange's held messages: ``amq.delayed/<name>``.
STORE_PREFIX = "amq.delayed/"

# Bodies of held messages kept in memory per vhost before stored ones are left on disk.
DEFAULT_MEMORY_BUDGET = 16 * 1024 * 1024
# Stored held messages read per query at start-up.
RECOVERY_WINDOW = 2000


class DelayingHost(Protocol):
    """What the holder needs of its virtual host (the vhost module imports this one)."""

    name: str
    journal: Journal
    exchanges: dict[str, Exchange]
    queues: dict[str, Queue]

    def get_exchange(self, name: str) -> Exchange | None: ...


class Held:
    """A held message: its exchange, and the message or (left on disk) its store seq."""

    __slots__ = ("delay_ms", "exchange", "message", "seq", "stored")

    def __init__(self, exchange: Exchange, message: Message | None, seq: int, delay_ms: int,
                 stored: bool):
        self.exchange = exchange
        self.message = message
        self.seq = seq
        self.delay_ms = delay_ms
        self.stored = stored


def is_delayed(exchange: Exchange) -> bool:
    """Whether publishes to ``exchange`` go through :meth:`DelayedMessages.hold`."""
    return exchange.type_name == TYPE_NAME


def store_key(exchange: Exchange) -> QueueKey:
    """The store's pseudo-queue of the exchange's held messages."""
    return (exchange.vhost_name, STORE_PREFIX + exchange.name)


class DelayedMessages:
    """The held messages of one virtual host."""

    def __init__(self, vhost: DelayingHost) -> None:
        self.vhost = vhost
        self._heap: list[tuple[float, int, Held]] = []
        self._seq = itertools.count(1)
        self.memory_budget = DEFAULT_MEMORY_BUDGET
        self.bytes_in_memory = 0
        # Stored held messages whose body is dropped from memory after the next commit.
        self._to_page: list[Held] = []

    def __len__(self) -> int:
        return len(self._heap)

    @staticmethod
    def count(exchange: Exchange) -> int:
        """How many messages ``exchange`` holds (its type keeps the count, so the
        management API finds it on the exchange)."""
        kind = exchange.kind
        return kind.messages_delayed if isinstance(kind, DelayedMessageExchange) else 0

    @staticmethod
    def _add(exchange: Exchange, count: int) -> None:
        kind = exchange.kind
        if isinstance(kind, DelayedMessageExchange):
            kind.messages_delayed += count

    # -- holding -----------------------------------------------------------------------

    def hold(self, exchange: Exchange, message: Message, now: float | None = None) -> bool:
        """Hold a message published to a delayed exchange; False when it asks for no
        delay (then the caller routes it at once)."""
        # Decoded without caching the properties on the message: a held message should
        # cost its bytes, not a decoded property object as well.
        if not codec.header_flags(message.header_payload) & codec.FLAG_HEADERS:
            return False
        delay = delay_of(codec.decode_properties(message.header_payload).headers)
        if delay is None:
            return False
        if now is None:
            now = time.monotonic()
        seq = next(self._seq)
        journal = self.vhost.journal
        stored = exchange.durable and message.persistent and \
            journal.delayed_added(store_key(exchange), seq, message, time.time() + delay / 1000)
        held = Held(exchange, message, seq, delay, stored)
        self._push(now + delay / 1000, held)
        size = len(message.body) + ENTRY_OVERHEAD
        self.bytes_in_memory += size
        journal.queued_bytes += size
        if stored and self.bytes_in_memory > self.memory_budget:
            # Over budget: once this message is on disk its body need not stay in memory.
            if not self._to_page:
                journal.after_commit(self._page_committed)
            self._to_page.append(held)
        return True

    def _push(self, due: float, held: Held) -> None:
        heapq.heappush(self._heap, (due, held.seq, held))
        self._add(held.exchange, 1)

    def _page_committed(self) -> None:
        """The held messages in ``_to_page`` are on disk: drop their bodies from memory."""
        paging, self._to_page = self._to_page, []
        journal = self.vhost.journal
        for held in paging:
            message = held.message
            if message is not None:
                held.message = None
                size = len(message.body) + ENTRY_OVERHEAD
                self.bytes_in_memory -= size
                journal.queued_bytes -= size

    # -- releasing ---------------------------------------------------------------------

    @property
    def next_due(self) -> float | None:
        """The monotonic time the next held message is due, or None."""
        return self._heap[0][0] if self._heap else None

    def tick(self, now: float) -> int:
        """Route every held message that is due; returns how many were released."""
        heap = self._heap
        released = 0
        while heap and heap[0][0] <= now:
            _, _, held = heapq.heappop(heap)
            self._release(held)
            released += 1
        return released

    def _release(self, held: Held) -> None:
        exchange = held.exchange
        self._add(exchange, -1)
        journal = self.vhost.journal
        message = held.message
        if message is not None:
            size = len(message.body) + ENTRY_OVERHEAD
            self.bytes_in_memory -= size
            journal.queued_bytes -= size
        elif held.stored:
            message = journal.read_delayed(store_key(exchange), held.seq)
        if held.stored:
            journal.delayed_removed(store_key(exchange), held.seq)
        vhost = self.vhost
        if message is None or vhost.exchanges.get(exchange.name) is not exchange:
            return  # the exchange was deleted (its held messages with it) or the row is gone
        message = _with_delay_spent(message, held.delay_ms)
        for queue in routing.route(exchange, message, vhost.queues, vhost.get_exchange):
            queue.push(message)

    def exchange_deleted(self, exchange: Exchange) -> None:
        """Drop the messages a deleted exchange held (RabbitMQ's plugin does the same)."""
        if not self.count(exchange):
            return
        kept = []
        journal = self.vhost.journal
        for item in self._heap:
            held = item[2]
            if held.exchange is not exchange:
                kept.append(item)
            elif held.message is not None:
                size = len(held.message.body) + ENTRY_OVERHEAD
                self.bytes_in_memory -= size
                journal.queued_bytes -= size
        heapq.heapify(kept)
        self._heap = kept
        self._to_page = [held for held in self._to_page if held.exchange is not exchange]
        self._add(exchange, -self.count(exchange))
        if exchange.durable:
            journal.delayed_dropped(store_key(exchange))

    # -- recovery ----------------------------------------------------------------------

    def recover(self, store: Store, counts: Mapping[QueueKey, tuple[int, int]]) -> int:
        """Rebuild the heap from the store at start-up (bodies stay on disk until due);
        returns how many held messages came back. Rows of exchanges that no longer exist
        or are no longer delayed exchanges are deleted."""
        wall, mono = time.time(), time.monotonic()
        recovered = 0
        top = 0
        for key in counts:
            vhost_name, name = key
            if vhost_name != self.vhost.name or not name.startswith(STORE_PREFIX):
                continue
            exchange = self.vhost.exchanges.get(name[len(STORE_PREFIX):])
            if exchange is None or not is_delayed(exchange) or not exchange.durable:
                LOGGER.warning("dropping %d held messages of missing delayed exchange '%s' "
                               "in vhost '%s'", counts[key][0], name[len(STORE_PREFIX):],
                               vhost_name)
                self.vhost.journal.delayed_dropped(key)
                continue
            after = 0
            while True:
                rows = store.read_entries(key, after, RECOVERY_WINDOW)
                if not rows:
                    break
                for stored, record in rows:
                    due = mono + ((stored.expires_at or wall) - wall)
                    delay = _header_delay(record.header_payload)
                    self._push(due, Held(exchange, None, stored.seq, delay, True))
                    recovered += 1
                after = rows[-1][0].seq
            top = max(top, after)
        # New holds must not reuse a stored seq of the same exchange.
        self._seq = itertools.count(max(top, next(self._seq)) + 1)
        return recovered


def _header_delay(header_payload: bytes) -> int:
    headers = codec.decode_properties(header_payload).headers
    return delay_of(headers) or 0


def _with_delay_spent(message: Message, delay_ms: int) -> Message:
    """The message as the plugin delivers it: ``x-delay`` set to minus the delay."""
    properties = codec.decode_properties(message.header_payload)
    headers: dict[str, Any] = dict(properties.headers or {})
    headers[HEADER] = -delay_ms
    properties.headers = headers
    return message.with_properties(properties)


__all__ = ["DelayedMessageExchange", "DelayedMessages", "is_delayed"]
