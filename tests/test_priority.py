"""Priority queues against a reference model, consumer ranking, and the priority reader.

The model of a priority queue is a list kept sorted by (-priority, seq): every operation
(publish, get, requeue, ack, expiry anywhere, paging on and off with tiny windows) must leave
the queue delivering exactly what the model says, in that order.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from pamqp import commands

from amqpd.broker import priority_queue, queue
from amqpd.broker.message import Message, QueueEntry, route_for
from amqpd.broker.paging import Pager
from amqpd.broker.priority import ConsumerRanks
from amqpd.broker.priority_queue import PriorityQueue, queue_class
from amqpd.broker.queue import Queue
from amqpd.broker.queue_arguments import QueuePolicy
from amqpd.protocol import codec

from .amqp_client import Peer

MAX_PRIORITY = 5
PRIORITIES = st.one_of(st.none(), st.integers(min_value=0, max_value=9))


def message(body: str, priority: int | None) -> Message:
    payload = codec.encode_header_payload(
        len(body), commands.Basic.Properties(priority=priority))
    return Message(route_for("", "q"), payload, body.encode())


class Account:
    queued_bytes = 0


class PriorityQueueMachine(RuleBasedStateMachine):
    """A PriorityQueue driven directly, with paging windows of a few entries."""

    def __init__(self) -> None:
        super().__init__()
        self._saved = (queue.KEEP_IN_MEMORY, priority_queue.KEEP_IN_MEMORY,
                       priority_queue.READ_BACK, priority_queue.WRITE_CHUNK)
        queue.KEEP_IN_MEMORY = priority_queue.KEEP_IN_MEMORY = 4
        priority_queue.READ_BACK = 4
        priority_queue.WRITE_CHUNK = 3
        self.account = Account()
        self.pager = Pager(self.account, budget=10**12)
        self.queue = PriorityQueue("q", "/", policy=QueuePolicy(max_priority=MAX_PRIORITY))
        self.queue.pager = self.pager
        self.model: list[tuple[int, int, str]] = []  # (-priority, seq, body), sorted
        self.taken: dict[str, tuple[QueueEntry, tuple[int, int, str]]] = {}
        self.published = 0

    def teardown(self) -> None:
        (queue.KEEP_IN_MEMORY, priority_queue.KEEP_IN_MEMORY,
         priority_queue.READ_BACK, priority_queue.WRITE_CHUNK) = self._saved
        self.pager.close()

    @rule(priority=PRIORITIES, count=st.integers(min_value=1, max_value=6))
    def publish(self, priority: int | None, count: int) -> None:
        for _ in range(count):
            body = f"m{self.published}"
            seq = self.published  # the queue numbers entries from 0 too
            self.published += 1
            assert self.queue.push(message(body, priority))
            level = min(priority or 0, MAX_PRIORITY)
            self.model.append((-level, seq, body))
        self.model.sort()

    @rule(paging=st.booleans())
    def set_paging(self, paging: bool) -> None:
        self.pager.budget = -(10**12) if paging else 10**12

    @rule(count=st.integers(min_value=1, max_value=5))
    def take(self, count: int) -> None:
        for _ in range(count):
            entry = self.queue.take()
            if not self.model:
                assert entry is None
                return
            assert entry is not None
            expected = self.model.pop(0)
            assert entry.message.body.decode() == expected[2]
            self.taken[expected[2]] = (entry, expected)

    @precondition(lambda self: self.taken)
    @rule(data=st.data(), requeue=st.booleans())
    def settle(self, data: Any, requeue: bool) -> None:
        bodies = data.draw(st.lists(st.sampled_from(sorted(self.taken)), min_size=1,
                                    unique=True))
        entries = []
        for body in bodies:
            entry, key = self.taken.pop(body)
            entries.append(entry)
            if requeue:
                self.model.append(key)
        if requeue:
            self.queue.requeue(entries)
            self.model.sort()
        else:
            for entry in entries:
                self.queue.acknowledge(entry)

    @precondition(lambda self: len(self.queue.ready))
    @rule(data=st.data())
    def expire_one_in_memory(self, data: Any) -> None:
        live = [entry for entry in self.queue.ready if entry.state is QueueEntry.READY]
        if not live:
            return
        entry = data.draw(st.sampled_from(live))
        self.queue._expire(entry)  # what the ticker does when its TTL passes
        body = entry.message.body.decode()
        self.model = [key for key in self.model if key[2] != body]

    @rule()
    def compact(self) -> None:
        self.queue._compact()

    @invariant()
    def counts_agree(self) -> None:
        assert self.queue.message_count == len(self.model)
        if self.model:  # (tombstones may make it True with nothing ready, as for FIFO)
            assert self.queue.has_ready
        paged_bytes = sum(len(key[2]) for key in self.model) - self.queue.ready_bytes
        assert self.queue.paged_bytes == paged_bytes


PriorityQueueMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40,
                                                  deadline=None)
TestPriorityQueue = PriorityQueueMachine.TestCase


def test_purge_and_delete_with_paged_lanes() -> None:
    pager = Pager(Account(), budget=-(10**12))
    q = PriorityQueue("q", "/", policy=QueuePolicy(max_priority=3))
    q.pager = pager
    for index in range(6000):
        q.push(message(str(index), index % 4))
    assert q.paged > 0
    assert q.message_count == 6000
    assert q.purge() == 6000
    assert q.message_count == 0 and not q.has_ready
    for index in range(5000):
        q.push(message(str(index), index % 4))
    q.on_deleted()
    assert pager.spilled_entries == 0


def test_queue_class_is_chosen_at_declare_time() -> None:
    assert queue_class(QueuePolicy()) is Queue
    assert queue_class(QueuePolicy(max_priority=0)) is Queue
    assert queue_class(QueuePolicy(max_priority=1)) is PriorityQueue


@settings(max_examples=300)
@given(
    priority=st.one_of(st.none(), st.integers(min_value=0, max_value=255)),
    content_type=st.one_of(st.none(), st.text(max_size=20)),
    content_encoding=st.one_of(st.none(), st.text(max_size=20)),
    headers=st.one_of(st.none(), st.dictionaries(st.text(max_size=8), st.integers(0, 9),
                                                 max_size=3)),
    delivery_mode=st.one_of(st.none(), st.sampled_from([1, 2])),
    expiration=st.one_of(st.none(), st.just("100")),
)
def test_priority_reader_agrees_with_pamqp(priority: int | None, content_type: str | None,
                                           content_encoding: str | None,
                                           headers: dict[str, int] | None,
                                           delivery_mode: int | None,
                                           expiration: str | None) -> None:
    properties = commands.Basic.Properties(
        content_type=content_type, content_encoding=content_encoding, headers=headers,
        delivery_mode=delivery_mode, priority=priority, expiration=expiration)
    payload = codec.encode_header_payload(3, properties)
    assert codec.priority(payload) == (codec.decode_properties(payload).priority or 0)


# -- consumer ranks --------------------------------------------------------------------


class FakeConsumer:
    def __init__(self, name: str) -> None:
        self.name = name
        self.credit = 1000

    def can_take(self) -> bool:
        return self.credit > 0


def pick(ranks: ConsumerRanks, count: int) -> list[str]:
    names = []
    for _ in range(count):
        consumer: Any = ranks.next()
        if consumer is None:
            names.append("-")
            continue
        consumer.credit -= 1
        names.append(consumer.name)
    return names


def test_ranks_prefer_higher_priority_then_round_robin() -> None:
    from collections import deque

    a, b, low, lowest = (FakeConsumer(n) for n in ("a", "b", "low", "lowest"))
    ring: Any = deque([low, a, lowest, b])
    ranks = ConsumerRanks(ring, single_active=False)
    for consumer, priority in ((low, 0), (a, 5), (lowest, -3), (b, 5)):
        ranks.add(consumer, priority)  # type: ignore[arg-type]
    assert pick(ranks, 4) == ["a", "b", "a", "b"]
    a.credit = b.credit = 0
    low.credit = 2
    assert pick(ranks, 4) == ["low", "low", "lowest", "lowest"]
    lowest.credit = 0
    assert pick(ranks, 1) == ["-"]
    ranks.remove(a)  # type: ignore[arg-type]
    ranks.remove(b)  # type: ignore[arg-type]
    ranks.remove(lowest)  # type: ignore[arg-type]
    assert ranks.all_default


def test_single_active_consumer_ignores_priorities() -> None:
    from collections import deque

    first, second = FakeConsumer("first"), FakeConsumer("second")
    ring: Any = deque([first, second])
    ranks = ConsumerRanks(ring, single_active=True)
    ranks.add(first, 0)  # type: ignore[arg-type]
    ranks.add(second, 9)  # type: ignore[arg-type]
    assert pick(ranks, 2) == ["first", "first"]


def test_queue_switches_to_ranking_and_back() -> None:
    peer = Peer()
    peer.handshake()
    peer.open_channel()
    peer.send(1, commands.Queue.Declare(queue="q"))
    q = peer.broker.vhosts["/"].queues["q"]
    peer.send(1, commands.Basic.Consume(queue="q", consumer_tag="plain"))
    assert q._ranks is None  # the plain ring
    peer.send(1, commands.Basic.Consume(queue="q", consumer_tag="high",
                                        arguments={"x-priority": 3}))
    assert q._ranks is not None
    frames = peer.publish(1, "", "q", b"x")
    delivers = [v for _, v in frames if isinstance(v, commands.Basic.Deliver)]
    assert [d.consumer_tag for d in delivers] == ["high"]
    peer.send(1, commands.Basic.Cancel(consumer_tag="high"))
    assert q._ranks is None
    frames = peer.publish(1, "", "q", b"y")
    delivers = [v for _, v in frames if isinstance(v, commands.Basic.Deliver)]
    assert [d.consumer_tag for d in delivers] == ["plain"]
