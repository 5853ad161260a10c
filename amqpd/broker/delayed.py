"""Messages held by ``x-delayed-message`` exchanges until their ``x-delay`` has passed.

Theory of operation:
- One :class:`DelayedMessages` per virtual host. A message with a positive ``x-delay`` (see
  :func:`exchanges.delayed.delay_of`) that is published to a delayed exchange, or reaches
  one through an exchange-to-exchange binding or as an alternate exchange
  (:func:`amqpd.broker.routing.route` offers it to :meth:`DelayedMessages.hold`), is held
  here instead of routed on; the broker's ticker (every 0.1 s, as TTL expiry) routes
  whatever is due through the exchange's inner type, in due order (publish order among
  equal due times). As the plugin: routing happens when the delay ends (bindings made
  meanwhile count), nothing is returned then, and the delivered message carries ``x-delay``
  negated (so it is never delayed twice on its way through further exchanges).
- Each held message is a key, ``(due ms << SEQ_BITS) | seq``: one int orders by due time,
  then by publish order, and names the stored row. Per exchange, two binary heaps: keys
  with their message (transient messages, and stored ones while their bodies fit
  :attr:`DelayedMessages.memory_budget`), and bare keys of stored messages whose body is
  left on disk -- about 50 bytes each (the int and its list slot), so millions of pending
  persistent messages cost tens of MiB. Transient messages are not stored: they stay in
  memory whole, as a queue's would.
- Durability follows queues: a persistent message (delivery-mode 2) held by a durable
  exchange is written to the store as an entry of the pseudo-queue ``amq.delayed/<exchange>``
  (a name no client can declare) with its wall-clock due time; the publisher confirm waits
  for that commit, and the move into the queues at release is one batch (delete the held
  entry, add the queue entries). Bodies left on disk are read back a batch per query.
- The event loop is shared with every client: a tick works for at most :data:`TICK_SLICE`
  seconds (a million messages coming due at once are released over several ticks, in due
  order), and after a restart the keys are read back from the store (seq and due time only)
  :data:`RECOVERY_WINDOW` rows per query, a slice per tick, while the broker serves clients.
  Nothing is released until every held message is back (due order would not hold
  otherwise); the management API counts them all from the start. Measured by
  ``interop/bench_delayed.py``; TICK_SLICE trades release rate (about a third of the loop
  at 0.05 s) for other clients' latency.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
import math
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
# Stored held messages (seq and due time) read per query at start-up.
RECOVERY_WINDOW = 10_000
# Held messages whose body is on disk read back per query when they come due.
RELEASE_BATCH = 500
# Seconds of releasing (or recovering) per tick of 0.1 s: the rest is the clients'.
TICK_SLICE = 0.05
# Low bits of a key: the seq (a trillion holds per vhost run); the due time in ms above.
SEQ_BITS = 40
SEQ_MASK = (1 << SEQ_BITS) - 1
# A key above any due time: tick(float("inf")) releases everything.
NO_LIMIT = 1 << 100


class DelayingHost(Protocol):
    """What the holder needs of its virtual host (the vhost module imports this one)."""

    name: str
    journal: Journal
    exchanges: dict[str, Exchange]
    queues: dict[str, Queue]

    def get_exchange(self, name: str) -> Exchange | None: ...


class Holding:
    """What one delayed exchange holds, as two heaps of keys (see the module docstring)."""

    __slots__ = ("exchange", "in_memory", "on_disk", "store_key")

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.store_key = store_key(exchange)
        self.in_memory: list[tuple[int, Message]] = []
        self.on_disk: list[int] = []

    def top(self) -> int | None:
        """The key of the next message due, or None when nothing is held."""
        in_memory, on_disk = self.in_memory, self.on_disk
        if in_memory:
            return min(in_memory[0][0], on_disk[0]) if on_disk else in_memory[0][0]
        return on_disk[0] if on_disk else None


class Recovery:
    """A stored holding being read back after a restart."""

    __slots__ = ("after_seq", "holding", "loaded")

    def __init__(self, holding: Holding) -> None:
        self.holding = holding
        self.after_seq = 0
        self.loaded: list[int] = []


def is_delayed(exchange: Exchange) -> bool:
    """Whether publishes to ``exchange`` go through :meth:`DelayedMessages.hold`."""
    return exchange.type_name == TYPE_NAME


def store_key(exchange: Exchange) -> QueueKey:
    """The store's pseudo-queue of the exchange's held messages."""
    return (exchange.vhost_name, STORE_PREFIX + exchange.name)


def key_of(due: float, seq: int) -> int:
    """The heap key of a message due at ``due`` (monotonic s): rounded up to the ms, so it
    is never released early."""
    return math.ceil(max(due, 0.0) * 1000) << SEQ_BITS | seq


class DelayedMessages:
    """The held messages of one virtual host."""

    def __init__(self, vhost: DelayingHost) -> None:
        self.vhost = vhost
        self._holdings: dict[Exchange, Holding] = {}
        self._seq = itertools.count(1)
        self.memory_budget = DEFAULT_MEMORY_BUDGET
        self.bytes_in_memory = 0
        # Stored messages over the budget whose row is not committed yet (key -> message):
        # their key is already on the on-disk heap; the commit drops the message.
        self._unflushed: dict[int, Message] = {}
        self._unflushed_by_batch: dict[int, list[int]] = {}
        self._recovering: list[Recovery] = []
        self._store: Store | None = None
        self._recovery_started = 0.0

    def __len__(self) -> int:
        return sum(len(holding.in_memory) + len(holding.on_disk)
                   for holding in self._holdings.values()) + \
            sum(len(recovery.loaded) for recovery in self._recovering)

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

    def _holding(self, exchange: Exchange) -> Holding:
        holding = self._holdings.get(exchange)
        if holding is None:
            holding = self._holdings[exchange] = Holding(exchange)
        return holding

    # -- holding -----------------------------------------------------------------------

    def hold(self, exchange: Exchange, message: Message, now: float | None = None) -> bool:
        """Hold a message that reached a delayed exchange; False when it asks for no delay
        (then the caller routes it through the exchange at once)."""
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
        key = key_of(now + delay / 1000, seq)
        holding = self._holding(exchange)
        journal = self.vhost.journal
        stored = exchange.durable and message.persistent and journal.delayed_added(
            holding.store_key, seq, message, time.time() + delay / 1000)
        size = len(message.body) + ENTRY_OVERHEAD
        self.bytes_in_memory += size
        journal.queued_bytes += size
        if stored and self.bytes_in_memory > self.memory_budget:
            # Over budget: once its row is committed the message is only its key.
            heapq.heappush(holding.on_disk, key)
            self._unflushed[key] = message
            batch = journal.batch_number
            keys = self._unflushed_by_batch.get(batch)
            if keys is None:
                keys = self._unflushed_by_batch[batch] = []
                journal.after_commit(functools.partial(self._flushed, batch))
            keys.append(key)
        else:
            heapq.heappush(holding.in_memory, (key, message))
        self._add(exchange, 1)
        return True

    def _flushed(self, batch: int) -> None:
        """Batch ``batch`` is on disk: its held messages over the budget leave memory."""
        journal = self.vhost.journal
        for key in self._unflushed_by_batch.pop(batch, ()):
            message = self._unflushed.pop(key, None)
            if message is not None:  # not released (nor dropped) meanwhile
                size = len(message.body) + ENTRY_OVERHEAD
                self.bytes_in_memory -= size
                journal.queued_bytes -= size

    def _forget(self, message: Message) -> None:
        size = len(message.body) + ENTRY_OVERHEAD
        self.bytes_in_memory -= size
        self.vhost.journal.queued_bytes -= size

    # -- releasing ---------------------------------------------------------------------

    @property
    def next_due(self) -> float | None:
        """The monotonic time the next held message is due (0 while a restart's held
        messages are still being read back: the ticker carries on with that), or None."""
        if self._recovering:
            return 0.0
        best: int | None = None
        for holding in self._holdings.values():
            top = holding.top()
            if top is not None and (best is None or top < best):
                best = top
        return None if best is None else (best >> SEQ_BITS) / 1000

    def tick(self, now: float) -> int:
        """Route held messages that are due, in due order, for at most TICK_SLICE seconds
        (the next tick goes on); returns how many were released."""
        deadline = time.monotonic() + TICK_SLICE
        if self._recovering:
            self._recover_some(deadline)
            if self._recovering:
                return 0
        limit = NO_LIMIT if math.isinf(now) else (math.floor(now * 1000) + 1 << SEQ_BITS) - 1
        released = 0
        while True:
            # The holding with the earliest due message, and how far it may go before the
            # next holding's first (so due order holds across exchanges).
            first: Holding | None = None
            first_top = second_top = limit + 1
            for holding in self._holdings.values():
                top = holding.top()
                if top is None:
                    continue
                if top < first_top:
                    first, second_top, first_top = holding, first_top, top
                elif top < second_top:
                    second_top = top
            if first is None:
                return released
            released += self._release_batch(first, second_top - 1)
            if time.monotonic() >= deadline:
                return released

    def _release_batch(self, holding: Holding, limit: int) -> int:
        """Release up to RELEASE_BATCH of ``holding``'s messages with keys <= ``limit``,
        reading the bodies left on disk with one query."""
        in_memory, on_disk, unflushed = holding.in_memory, holding.on_disk, self._unflushed
        batch: list[tuple[int, Message | None]] = []
        while len(batch) < RELEASE_BATCH:
            if in_memory and (not on_disk or in_memory[0][0] < on_disk[0]):
                if in_memory[0][0] > limit:
                    break
                batch.append(heapq.heappop(in_memory))
            elif on_disk and on_disk[0] <= limit:
                key = heapq.heappop(on_disk)
                batch.append((key, unflushed.pop(key, None)))
            else:
                break
        exchange = holding.exchange
        journal = self.vhost.journal
        missing = [key & SEQ_MASK for key, message in batch if message is None]
        read = journal.read_delayed(holding.store_key, missing) if missing else {}
        vhost = self.vhost
        for key, kept in batch:
            seq = key & SEQ_MASK
            message = kept
            if message is None:
                stored = True
                message = read.get(seq)  # None: the row is gone (cannot happen but by hand)
            else:
                self._forget(message)
                stored = exchange.durable and message.persistent
            if stored:
                journal.delayed_removed(holding.store_key, seq)
            if message is not None:
                spent = _with_delay_spent(message)
                for queue in routing.route(exchange, spent, vhost.queues, vhost.get_exchange,
                                           self.hold):
                    queue.push(spent)
        self._add(exchange, -len(batch))
        return len(batch)

    def exchange_deleted(self, exchange: Exchange) -> None:
        """Drop the messages a deleted exchange held (RabbitMQ's plugin does the same)."""
        holding = self._holdings.pop(exchange, None)
        if holding is None:
            return
        self._recovering = [r for r in self._recovering if r.holding is not holding]
        for _, message in holding.in_memory:
            self._forget(message)
        for key in holding.on_disk:
            unflushed = self._unflushed.pop(key, None)
            if unflushed is not None:
                self._forget(unflushed)
        held = self.count(exchange)
        self._add(exchange, -held)
        if exchange.durable and held:
            self.vhost.journal.delayed_dropped(holding.store_key)

    # -- recovery ----------------------------------------------------------------------

    def recover(self, store: Store, counts: Mapping[QueueKey, tuple[int, int]]) -> int:
        """Start reading back the held messages the store has (at start-up); the ticker
        loads them a slice at a time. Returns how many there are. Rows of exchanges that
        no longer exist or are no longer delayed exchanges are deleted."""
        self._store = store
        self._recovery_started = time.monotonic()
        held = 0
        top = 0
        for key, (count, last_seq) in counts.items():
            vhost_name, name = key
            if vhost_name != self.vhost.name or not name.startswith(STORE_PREFIX):
                continue
            exchange = self.vhost.exchanges.get(name[len(STORE_PREFIX):])
            if exchange is None or not is_delayed(exchange) or not exchange.durable:
                LOGGER.warning("dropping %d held messages of missing delayed exchange '%s' "
                               "in vhost '%s'", count, name[len(STORE_PREFIX):], vhost_name)
                self.vhost.journal.delayed_dropped(key)
                continue
            self._recovering.append(Recovery(self._holding(exchange)))
            self._add(exchange, count)  # counted at once: the management API shows them all
            held += count
            top = max(top, last_seq)
        # New holds must not reuse a stored seq.
        self._seq = itertools.count(max(top, next(self._seq)) + 1)
        return held

    def _recover_some(self, deadline: float) -> None:
        """Read stored keys (seq and due time only) until ``deadline``; a holding whose
        rows are all read gets them in its heap."""
        store = self._store
        assert store is not None  # recover() set it before any recovery was pending
        wall, mono = time.time(), time.monotonic()
        while self._recovering and time.monotonic() < deadline:
            recovery = self._recovering[0]
            rows = store.read_due_times(recovery.holding.store_key, recovery.after_seq,
                                        RECOVERY_WINDOW)
            if not rows:
                on_disk = recovery.holding.on_disk
                on_disk += recovery.loaded
                heapq.heapify(on_disk)
                del self._recovering[0]
                if not self._recovering:
                    LOGGER.info("vhost '%s': %d held delayed messages read back in %.2f s",
                                self.vhost.name, len(self),
                                time.monotonic() - self._recovery_started)
                continue
            loaded = recovery.loaded
            for seq, due_at in rows:
                loaded.append(key_of(mono + ((wall if due_at is None else due_at) - wall), seq))
            recovery.after_seq = rows[-1][0]


def _with_delay_spent(message: Message) -> Message:
    """The message as the plugin delivers it: ``x-delay`` set to minus the delay."""
    properties = codec.decode_properties(message.header_payload)
    headers: dict[str, Any] = dict(properties.headers or {})
    headers[HEADER] = -(delay_of(headers) or 0)
    properties.headers = headers
    return message.with_properties(properties)


__all__ = ["DelayedMessageExchange", "DelayedMessages", "is_delayed"]
