"""A queue: ready messages in order, a ring of consumers, dispatch, and message lifecycle.

Theory of operation:
- ``ready`` holds :class:`QueueEntry` objects in publish order (``seq`` increases). An entry
  that leaves early (expiry of a message that is not at the head) becomes a tombstone: its
  state is GONE and it stays in the deque until it reaches the head, so removal is O(1);
  ``message_count`` subtracts the tombstones.
- A message that comes back (nack, channel closed, consumer timeout) is put back at its
  original position by ``seq``, unless it has now failed more often than
  ``x-delivery-limit`` allows, in which case it is dead-lettered.
- ``consumers`` is a ring; ``dispatch`` gives each message to the next consumer in the ring
  with credit, so competing consumers are served round-robin. With single-active-consumer
  only the first consumer in the ring receives. Consumer priorities (x-priority) hand the
  choice to ``ConsumerRanks.next`` while some consumer has one.
- A priority queue (x-max-priority) is the subclass ``priority_queue.PriorityQueue``,
  chosen at declare time, whose ready entries are priority lanes instead of the deque.
- Dispatch is synchronous and runs whenever something may have changed: a publish, an ack
  that frees credit, a consumer added, a congested connection draining. It stops when no
  consumer can take more, so one call is bounded by credit and output watermarks -- no task
  per queue or per message.
- Leaving the queue for good (ack, drop, expiry, dead-letter) goes through ``_forget`` so
  the persistent store and the broker's memory accounting hear of every exit.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Protocol

from amqpd.broker.message import CLOCK, Message, QueueEntry
from amqpd.broker.paging import KEEP_IN_MEMORY, READ_BACK, WRITE_CHUNK, Pager
from amqpd.broker.priority import ConsumerRanks
from amqpd.broker.queue_arguments import QueuePolicy

if TYPE_CHECKING:
    from amqpd.broker.consumer import QueueConsumer, QueueOwner

READY = QueueEntry.READY
DELIVERED = QueueEntry.DELIVERED
GONE = QueueEntry.GONE


class ReadyEntries(Protocol):
    """What the generic queue code does with its ready entries: a deque for a FIFO queue,
    :class:`amqpd.broker.priority.PriorityReady` for a priority queue (whose subclass,
    ``amqpd.broker.priority_queue.PriorityQueue``, overrides every other use)."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[QueueEntry]: ...

    def append(self, entry: QueueEntry, /) -> None: ...

    def popleft(self) -> QueueEntry: ...

    def clear(self) -> None: ...


class QueueHooks(Protocol):
    """What a queue needs from its surroundings (the vhost implements it)."""

    def dead_letter(self, queue: Queue, message: Message, reason: str) -> None:
        """Republish a message to the queue's dead-letter exchange."""

    def entry_added(self, queue: Queue, entry: QueueEntry) -> None:
        """A message entered the queue (persistence, memory accounting)."""

    def entry_removed(self, queue: Queue, entry: QueueEntry) -> None:
        """A message left the queue for good."""

    def entry_returned(self, queue: Queue, entry: QueueEntry) -> None:
        """A delivered message came back (its delivery count changed)."""

    def entry_delivered(self, queue: Queue, entry: QueueEntry) -> None:
        """A message of a durable queue went to a consumer (persist "redelivered")."""

    def queue_unused(self, queue: Queue) -> None:
        """An auto-delete queue lost its last consumer."""


class Queue:
    """One AMQP queue."""

    def __init__(
        self,
        name: str,
        vhost_name: str,
        durable: bool = False,
        exclusive_owner: QueueOwner | None = None,
        auto_delete: bool = False,
        arguments: Mapping[str, object] | None = None,
        policy: QueuePolicy | None = None,
        hooks: QueueHooks | None = None,
    ):
        self.name = name
        self.vhost_name = vhost_name
        self.durable = durable
        self.exclusive_owner = exclusive_owner
        self.auto_delete = auto_delete
        self.arguments: Mapping[str, object] = dict(arguments or {})
        self.policy = policy or QueuePolicy()
        self.hooks = hooks
        self.ready: ReadyEntries = deque()
        self.consumers: deque[QueueConsumer] = deque()
        # Consumer priorities (x-priority), ranked only while some consumer has one: then
        # ``_next_consumer`` asks ``ConsumerRanks.next``; otherwise the plain ring decides
        # (see add_consumer).
        self._ranks: ConsumerRanks | None = None
        self.tombstones = 0
        self.ready_bytes = 0
        self.had_consumers = False
        self.deleted = False
        self.last_used = time.monotonic()
        self._expiries: list[tuple[float, int, QueueEntry]] = []
        self._seq = itertools.count()
        # Paging (amqpd.broker.paging): entries newer than every in-memory ready entry, oldest
        # first -- ``paged`` of them in all, ``_spill_buffer`` the ones not written yet.
        self.pager: Pager | None = None
        self.paged = 0
        self.paged_bytes = 0
        self._spill_buffer: list[QueueEntry] = []
        # After a restart the persistent backlog stays in the durable store and is read back
        # like a paged tail: ``_stored_tail`` entries with seq > ``_stored_after``, older
        # than anything spilled since.
        self._stored_tail = 0
        self._stored_after = -1
        self._stored_reader: Callable[[int, int], list[QueueEntry]] | None = None
        # Monotonic event counts for the management API's message_stats (never reset).
        self.stat_publish = 0
        self.stat_deliver_get = 0
        self.stat_ack = 0
        self.stat_redeliver = 0
        # For amqpd.metrics, off the publish/deliver/ack path: messages that left for a
        # reason (expired, rejected, maxlen, delivery_limit) and those of them handed to
        # the dead-letter exchange, by reason; ack-deadline lease extensions.
        self.stat_left: dict[str, int] = {}
        self.stat_dead_lettered: dict[str, int] = {}
        self.stat_lease_extend = 0

    def __repr__(self) -> str:
        return f"<Queue {self.name!r} ready={self.message_count} consumers={len(self.consumers)}>"

    @property
    def exclusive(self) -> bool:
        """True for a queue owned by one connection."""
        return self.exclusive_owner is not None

    @property
    def has_ready(self) -> bool:
        """True when a message may be ready, in memory or paged out (cheap)."""
        return bool(self.ready) or self.paged > 0

    @property
    def message_count(self) -> int:
        """Messages ready for delivery (what declare-ok and get-ok report)."""
        return len(self.ready) - self.tombstones + self.paged

    def describe(self) -> str:
        """``queue 'name' in vhost '/'``, for reply texts."""
        return f"queue '{self.name}' in vhost '{self.vhost_name}'"

    # -- publishing --------------------------------------------------------------------

    def push(self, message: Message) -> bool:
        """Enqueue a routed message; False when the queue refused it (reject-publish)."""
        policy = self.policy
        if (policy.max_length is not None or policy.max_length_bytes is not None) and \
                not self._make_room(message):
            if policy.overflow == "reject-publish-dlx":
                self._dead_letter(message, "maxlen")
            return False
        self.stat_publish += 1
        entry = QueueEntry(message, next(self._seq))
        ttl = policy.message_ttl
        message_ttl = message.ttl_ms
        if message_ttl is not None and (ttl is None or message_ttl < ttl):
            ttl = message_ttl
        if ttl is not None:
            entry.expires_at = time.monotonic() + ttl / 1000.0
        pager = self.pager
        if self.paged or (pager is not None and pager.active and
                          len(self.ready) - self.tombstones >= KEEP_IN_MEMORY):
            self._spill(entry, pager)
            return True
        self._append(entry)
        if self.consumers:
            self.dispatch()
        if ttl == 0 and entry.state is READY:
            # RabbitMQ: a TTL of 0 means "deliver now or never".
            self._expire(entry)
        return True

    def continue_after(self, seq: int) -> None:
        """New entries get positions after ``seq`` (after recovery)."""
        self._seq = itertools.count(seq + 1)

    def _spill(self, entry: QueueEntry, pager: Pager | None) -> None:
        """Page a new entry out: it joins the spill buffer, written to disk in chunks."""
        assert pager is not None
        if self.hooks is not None:
            self.hooks.entry_added(self, entry)  # persistence sees it like any other
        pager.spilled(entry)
        self.paged += 1
        self.paged_bytes += entry.message.size
        buffer = self._spill_buffer
        buffer.append(entry)
        if len(buffer) >= WRITE_CHUNK:
            pager.file.write(self, buffer)
            self._spill_buffer = []

    def attach_stored_tail(
        self, count: int, last_seq: int, reader: Callable[[int, int], list[QueueEntry]]
    ) -> None:
        """Recovery: ``count`` entries (up to seq ``last_seq``) wait in the durable store;
        ``reader(after_seq, limit)`` reads them back in order."""
        self._stored_tail = count
        self._stored_reader = reader
        self.paged += count
        self.continue_after(last_seq)

    def _page_in_stored(self, pager: Pager) -> None:
        assert self._stored_reader is not None
        entries = self._stored_reader(self._stored_after, READ_BACK)
        if not entries:  # fewer than counted (a damaged store): stop waiting for them
            self.paged -= self._stored_tail
            self._stored_tail = 0
            return
        self._stored_tail -= len(entries)
        self._stored_after = entries[-1].seq
        for entry in entries:
            self.paged -= 1
            pager.restored(entry)
            self.ready.append(entry)
            self.ready_bytes += entry.message.size
            if entry.expires_at is not None:
                heapq.heappush(self._expiries, (entry.expires_at, entry.seq, entry))

    def _page_in(self) -> None:
        """Bring the oldest paged entries back into memory: the durable store's tail after a
        restart, then the scratch file, then the spill buffer."""
        pager = self.pager
        assert pager is not None
        if self._stored_tail:
            self._page_in_stored(pager)
            return
        on_disk = self.paged - len(self._spill_buffer)
        if on_disk:
            entries = pager.file.read(self, READ_BACK)
        else:
            entries, self._spill_buffer = self._spill_buffer, []
        for entry in entries:
            self.paged -= 1
            self.paged_bytes -= entry.message.size
            pager.loaded(entry)
            self.ready.append(entry)
            self.ready_bytes += entry.message.size
            if entry.expires_at is not None:
                heapq.heappush(self._expiries, (entry.expires_at, entry.seq, entry))

    def _append(self, entry: QueueEntry) -> None:
        self.ready.append(entry)
        self.ready_bytes += entry.message.size
        if entry.expires_at is not None:
            heapq.heappush(self._expiries, (entry.expires_at, entry.seq, entry))
        if self.hooks is not None:
            self.hooks.entry_added(self, entry)

    def _make_room(self, message: Message) -> bool:
        """Apply x-max-length / x-max-length-bytes before adding ``message``."""
        policy = self.policy
        max_length, max_bytes = policy.max_length, policy.max_length_bytes

        def too_full() -> bool:
            return (max_length is not None and self.message_count + 1 > max_length) or (
                max_bytes is not None
                and self.ready_bytes + self.paged_bytes + message.size > max_bytes
            )

        if not too_full():
            return True
        if policy.overflow != "drop-head":
            return False
        while too_full():
            head = self._pop_ready()
            if head is None:
                # Even an empty queue cannot hold it (max-length 0 or a body above the cap).
                return False
            self._remove(head, "maxlen")
        return True

    def enforce_limits(self) -> None:
        """Apply a lowered x-max-length / x-max-length-bytes now (a policy changed): with
        drop-head the oldest ready messages go, as RabbitMQ trims at once; the reject modes
        only refuse new publishes."""
        policy = self.policy
        max_length, max_bytes = policy.max_length, policy.max_length_bytes
        if policy.overflow != "drop-head" or (max_length is None and max_bytes is None):
            return
        while (max_length is not None and self.message_count > max_length) or (
                max_bytes is not None and self.ready_bytes + self.paged_bytes > max_bytes):
            head = self._pop_ready()
            if head is None:
                break
            self._remove(head, "maxlen")

    # -- delivering --------------------------------------------------------------------

    def _pop_ready(self) -> QueueEntry | None:
        ready = self.ready
        if self.paged and len(ready) - self.tombstones < READ_BACK // 2:
            self._page_in()
        while ready:
            entry = ready.popleft()
            if entry.state is GONE:
                self.tombstones -= 1
                continue
            self.ready_bytes -= entry.message.size
            return entry
        return None

    def _next_consumer(self) -> QueueConsumer | None:
        # A branch, not a method shadowed on the instance: compiled (mypyc) queues have no
        # instance __dict__.
        ranks = self._ranks
        if ranks is not None:
            return ranks.next()
        consumers = self.consumers
        if len(consumers) == 1 or self.policy.single_active_consumer:
            active = consumers[0]
            return active if active.can_take() else None
        for _ in range(len(consumers)):
            consumer = consumers[0]
            consumers.rotate(-1)
            if consumer.can_take():
                return consumer
        return None

    def dispatch(self) -> None:
        """Deliver ready messages to consumers with credit, round-robin."""
        ready = self.ready
        while (ready or self.paged) and self.consumers:
            consumer = self._next_consumer()
            if consumer is None:
                return
            entry = self._pop_ready()
            if entry is None:
                return
            expires_at = entry.expires_at
            if expires_at is not None and expires_at <= time.monotonic():
                self._remove(entry, "expired")
                continue
            entry.state = DELIVERED
            if self.durable and self.hooks is not None:
                self.hooks.entry_delivered(self, entry)
            self.stat_deliver_get += 1
            entry.delivered_at = CLOCK.now
            consumer.deliver(entry)

    def take(self) -> QueueEntry | None:
        """Remove and return the head for basic.get (expired heads are dropped first)."""
        self.last_used = time.monotonic()
        while True:
            entry = self._pop_ready()
            if entry is None:
                return None
            if entry.expires_at is not None and entry.expires_at <= time.monotonic():
                self._remove(entry, "expired")
                continue
            entry.state = DELIVERED
            if self.durable and self.hooks is not None:
                self.hooks.entry_delivered(self, entry)
            self.stat_deliver_get += 1
            entry.delivered_at = CLOCK.now
            return entry

    # -- leaving -----------------------------------------------------------------------

    def _remove(self, entry: QueueEntry, reason: str | None) -> None:
        """An entry leaves for good; dead-lettered when there is a reason and a DLX."""
        entry.state = GONE
        if reason is not None:
            self._count_exit(reason)
        if self.hooks is not None:
            self.hooks.entry_removed(self, entry)
            if reason is not None and self.policy.dead_letter_exchange is not None:
                self.hooks.dead_letter(self, entry.message, reason)

    def _dead_letter(self, message: Message, reason: str) -> None:
        self._count_exit(reason)
        if self.hooks is not None and self.policy.dead_letter_exchange is not None:
            self.hooks.dead_letter(self, message, reason)

    def _count_exit(self, reason: str) -> None:
        """Count a message leaving for ``reason`` (dead-lettered when there is a DLX)."""
        self.stat_left[reason] = self.stat_left.get(reason, 0) + 1
        if self.policy.dead_letter_exchange is not None:
            self.stat_dead_lettered[reason] = self.stat_dead_lettered.get(reason, 0) + 1

    def extend_lease(self, now: float, extend_ms: int) -> float:
        """The new ack deadline of a delivery whose lease is extended (amq.lease) by
        ``extend_ms`` from ``now``; counted per queue for monitoring."""
        self.stat_lease_extend += 1
        return now + extend_ms / 1000.0

    def acknowledge(self, entry: QueueEntry) -> None:
        """The consumer acked (or took with no-ack): the message is done."""
        if entry.state is DELIVERED:
            self.stat_ack += 1
            self._remove(entry, None)

    def reject(self, entry: QueueEntry) -> None:
        """basic.reject / nack without requeue: dead-letter with reason ``rejected``."""
        if entry.state is DELIVERED:
            self._remove(entry, "rejected")

    def _expire(self, entry: QueueEntry) -> None:
        """Expire a ready entry wherever it is in the queue (tombstone, then dead-letter)."""
        if entry.state is not READY:
            return
        self.tombstones += 1
        self.ready_bytes -= entry.message.size
        self._remove(entry, "expired")
        if self.tombstones > 1024 and self.tombstones * 2 > len(self.ready):
            self._compact()

    def _compact(self) -> None:
        live = [entry for entry in self.ready if entry.state is not GONE]
        self.ready = deque(live)
        self.tombstones = 0

    def expire_due(self, now: float) -> None:
        """Expire every message whose TTL has passed (called by the broker's ticker)."""
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:
            _, _, entry = heapq.heappop(expiries)
            if entry.state is READY:
                self._expire(entry)

    @property
    def next_expiry(self) -> float | None:
        """When the next message may expire (stale heap entries make this a lower bound)."""
        expiries = self._expiries
        while expiries and expiries[0][2].state is not READY:
            heapq.heappop(expiries)
        return expiries[0][0] if expiries else None

    # -- returning ---------------------------------------------------------------------

    def requeue(self, entries: Iterable[QueueEntry]) -> None:
        """Put delivered-but-unacked entries back at their original positions.

        Each return counts as a failed delivery; past ``x-delivery-limit`` the message is
        dead-lettered (reason ``delivery_limit``) or dropped instead of requeued.
        """
        if self.deleted:
            for entry in entries:
                if entry.state is DELIVERED:
                    self._remove(entry, None)
            return
        limit = self.policy.delivery_limit
        returned = []
        for entry in entries:
            if entry.state is not DELIVERED:
                continue
            entry.delivery_count += 1
            entry.redelivered = True
            self.stat_redeliver += 1
            if limit is not None and entry.delivery_count > limit:
                self._remove(entry, "delivery_limit")
                continue
            entry.state = READY
            self.ready_bytes += entry.message.size
            if self.hooks is not None:
                self.hooks.entry_returned(self, entry)
            returned.append(entry)
        if not returned:
            return
        self._reinsert(returned)
        if self.consumers:
            self.dispatch()

    def _reinsert(self, returned: list[QueueEntry]) -> None:
        """Merge returned entries back into ``ready`` by their original positions."""
        returned.sort(key=_by_seq)
        ready = self.ready
        assert isinstance(ready, deque)  # a PriorityQueue merges into its lanes instead
        if not ready or returned[-1].seq < ready[0].seq:
            ready.extendleft(reversed(returned))
        else:
            merged = sorted(itertools.chain(ready, returned), key=_by_seq)
            ready.clear()
            ready.extend(merged)

    def purge(self) -> int:
        """Drop every ready message; returns how many."""
        count = self.message_count
        while True:
            entry = self._pop_ready()  # pages the tail back in, so it is removed too
            if entry is None:
                break
            self._remove(entry, None)
        self.tombstones = 0
        self.ready_bytes = 0
        return count

    # -- consumers ---------------------------------------------------------------------

    def check_consume(
        self, no_ack: bool, prefetch_count: int, arguments: Mapping[str, object]
    ) -> None:
        """Refuse a basic.consume before consume-ok is sent (a stream needs a prefetch);
        a plain queue takes any."""

    def add_consumer(self, consumer: QueueConsumer, priority: int = 0) -> None:
        """Attach a consumer (``priority``: its x-priority) and start delivering to it."""
        self.consumers.append(consumer)
        ranks = self._ranks
        if priority or ranks is not None:
            if ranks is None:
                ranks = self._ranks = ConsumerRanks(
                    self.consumers, self.policy.single_active_consumer
                )
                for other in self.consumers:
                    if other is not consumer:
                        ranks.add(other, 0)
            ranks.add(consumer, priority)
        self.had_consumers = True
        self.last_used = time.monotonic()
        self.dispatch()

    def remove_consumer(self, consumer: QueueConsumer) -> None:
        """Detach a consumer; an auto-delete queue goes when its last consumer does."""
        try:
            self.consumers.remove(consumer)
        except ValueError:
            return
        if self._ranks is not None:
            self._ranks.remove(consumer)
            if self._ranks.all_default:
                self._unrank()
        self.last_used = time.monotonic()
        if not self.consumers and self.auto_delete and self.hooks is not None:
            self.hooks.queue_unused(self)
        elif self.has_ready:
            # With single-active-consumer the next consumer in line takes over now.
            self.dispatch()

    def _unrank(self) -> None:
        """Back to the plain round-robin ring (the ring kept every consumer in join order)."""
        self._ranks = None

    def on_deleted(self) -> None:
        """The queue is gone: every ready message leaves with it."""
        self.deleted = True
        self.consumers.clear()
        self._unrank()
        for entry in self.ready:
            if entry.state is READY:
                entry.state = GONE
        self.ready.clear()
        self._expiries.clear()
        self.tombstones = 0
        self.ready_bytes = 0
        spilled = self.paged - self._stored_tail
        if self.pager is not None and spilled:
            self.pager.drop(self, spilled)
        self._stored_tail = 0
        self.paged = self.paged_bytes = 0
        self._spill_buffer = []


def _by_seq(entry: QueueEntry) -> int:
    return entry.seq


__all__ = ["DELIVERED", "GONE", "READY", "Queue", "QueueHooks", "ReadyEntries"]
