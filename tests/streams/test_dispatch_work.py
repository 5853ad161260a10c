"""How much a stream's dispatch visits, and that visiting less never strands a consumer.

A stream feeds only the readers (plain consumers, groups) that may deliver: an ack feeds
the reader of that delivery, a push the readers waiting at the end of the log, any other
dispatch the readers waiting for credit. The work is counted by the ``can_take`` calls of
the consumers below, which stand in for the session layer's: ``Channel`` and ``Consumer``
here model ``amqpd.session`` (per-consumer and global prefetch, channel.flow, a congested
connection) and call the stream in the order the channel does (settle each delivery, then
dispatch each touched stream once; after the output drained, a flow or a qos change,
dispatch the queue of each consumer).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pamqp import commands

from amqpd.broker.message import Message, QueueEntry, route_for
from amqpd.broker.vhost import VirtualHost
from amqpd.protocol import codec
from amqpd.protocol.errors import ChannelError
from amqpd.streams import StreamTypes
from amqpd.streams.queue import StreamQueue


class Channel:
    """A channel: its consumers, its unacked deliveries in delivery order, and what
    ``amqpd.session.consumer.Consumer.can_take`` reads of it and of its connection."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.consumers: list[Consumer] = []
        self.unacked: list[tuple[Consumer, QueueEntry]] = []
        self.active = True  # channel.flow
        self.congested = False  # the connection's output is above its watermark
        self.global_prefetch_count = 0

    def __repr__(self) -> str:
        return f"<Channel {self.name}>"

    def shares_credit(self) -> bool:
        return self.global_prefetch_count > 0

    def consume(self, stream: StreamQueue, prefetch: int = 1, group: str | None = None,
                offset: object = "first") -> Consumer:
        arguments: dict[str, object] = {"x-stream-offset": offset}
        if group is not None:
            arguments["x-stream-group"] = group
        consumer = Consumer(self, stream, prefetch, arguments)
        stream.check_consume(False, prefetch, arguments)
        self.consumers.append(consumer)
        stream.add_consumer(consumer)
        return consumer

    def settle(self, count: int | None = None, requeue: bool = False) -> None:
        """Ack (or nack with requeue) the oldest ``count`` deliveries, as Channel._settle."""
        taken = self.unacked[:count] if count is not None else list(self.unacked)
        del self.unacked[:len(taken)]
        for consumer, _ in taken:
            consumer.unacked -= 1
        streams = dict.fromkeys(consumer.stream for consumer, _ in taken)
        for stream in streams:
            entries = [entry for consumer, entry in taken if consumer.stream is stream]
            if requeue:
                stream.requeue(entries)
                continue
            for entry in entries:
                stream.acknowledge(entry)
            if stream.consumers and stream.has_ready:
                stream.dispatch()

    def dispatch_consumers(self) -> None:
        """Channel.dispatch_consumers: the output drained, channel.flow or basic.qos."""
        for consumer in list(self.consumers):
            if consumer.stream.has_ready:
                consumer.stream.dispatch()

    def cancel(self, consumer: Consumer) -> None:
        """basic.cancel: the consumer's unacked deliveries stay on the channel."""
        self.consumers.remove(consumer)
        consumer.stream.remove_consumer(consumer)

    def close(self) -> None:
        """Channel.release: cancel the consumers, then give the unacked back."""
        for consumer in list(self.consumers):
            self.cancel(consumer)
        returned, self.unacked = self.unacked, []
        for consumer, _ in returned:
            consumer.unacked -= 1
        for stream in dict.fromkeys(consumer.stream for consumer, _ in returned):
            stream.requeue([entry for consumer, entry in returned if consumer.stream is stream])


class Consumer:
    """A subscription (the QueueConsumer protocol) that counts the stream's questions."""

    asked = 0  # can_take calls of every consumer, for the tests that count work

    def __init__(self, channel: Channel, stream: StreamQueue, prefetch: int,
                 arguments: dict[str, object]) -> None:
        self.channel = channel
        self.stream = stream
        self.prefetch_count = prefetch
        self.arguments = arguments
        self.exclusive = False
        self.tag = f"{channel.name}-{len(channel.consumers)}"
        self.unacked = 0
        self.received: list[int] = []

    @property
    def member(self) -> Channel:
        return self.channel

    def can_take(self) -> bool:
        Consumer.asked += 1
        return self.has_credit()

    def has_credit(self) -> bool:
        channel = self.channel
        if not channel.active or channel.congested:
            return False
        if self.prefetch_count and self.unacked >= self.prefetch_count:
            return False
        limit = channel.global_prefetch_count
        return not (limit and len(channel.unacked) >= limit)

    def deliver(self, entry: QueueEntry) -> None:
        self.unacked += 1
        self.channel.unacked.append((self, entry))
        self.received.append(entry.seq)

    def cancel_by_server(self) -> None:
        self.channel.consumers.remove(self)


def message(body: bytes = b"x") -> Message:
    header = codec.encode_header_payload(len(body), commands.Basic.Properties())
    return Message(route_for("", "s"), header, body)


def publish(stream: StreamQueue, count: int) -> None:
    for _ in range(count):
        stream.push(message())


@pytest.fixture
def vhost(tmp_path: Path) -> Iterator[VirtualHost]:
    vhost = VirtualHost("/")
    types = StreamTypes(tmp_path)
    vhost.queue_types["stream"] = types.create
    yield vhost
    types.close()


def declare(vhost: VirtualHost, name: str = "s") -> StreamQueue:
    stream = vhost.declare_queue(name, None, durable=True,
                                 arguments={"x-queue-type": "stream"})
    assert isinstance(stream, StreamQueue)
    return stream


def asked_by(action: object) -> int:
    """How many ``can_take`` questions ``action()`` made the stream ask."""
    assert callable(action)
    before = Consumer.asked
    action()
    return Consumer.asked - before


def work_with_groups(vhost: VirtualHost, name: str, groups: int) -> tuple[int, int, int]:
    """``groups`` groups on one stream and one channel, one delivery each (prefetch 1):
    the questions asked by one more group joining, by one ack, and by a publish."""
    stream = declare(vhost, name)
    publish(stream, 3)
    channel = Channel(name)
    consumers = [channel.consume(stream, group=f"g{n}") for n in range(groups)]
    assert all(consumer.received == [0] for consumer in consumers)
    join = asked_by(lambda: channel.consume(stream, group="late"))
    ack = asked_by(lambda: channel.settle(1))  # g0's delivery
    assert consumers[0].received == [0, 1] and consumers[1].received == [0]
    # Every group waits for credit with messages behind: a new one reaches none of them.
    push = asked_by(lambda: publish(stream, 1))
    return join, ack, push


def test_an_ack_or_a_join_visits_only_its_own_group(vhost: VirtualHost) -> None:
    few = work_with_groups(vhost, "few", 10)
    many = work_with_groups(vhost, "many", 1000)
    assert few == many
    join, ack, push = many
    assert join <= 2 and ack <= 2 and push == 0, many


def test_an_ack_visits_only_its_own_plain_consumer(vhost: VirtualHost) -> None:
    stream = declare(vhost)
    publish(stream, 3)
    channel = Channel("c")
    consumers = [channel.consume(stream) for _ in range(500)]
    assert asked_by(lambda: channel.settle(1)) <= 2
    assert consumers[0].received == [0, 1] and consumers[1].received == [0]


def test_a_congested_consumer_resumes_when_the_output_drains(vhost: VirtualHost) -> None:
    stream = declare(vhost)
    slow, fast = Channel("slow"), Channel("fast")
    blocked = slow.consume(stream, prefetch=5)
    group = slow.consume(stream, prefetch=5, group="g")
    other = fast.consume(stream, prefetch=5)
    slow.congested = True
    publish(stream, 3)
    assert blocked.received == [] and group.received == [] and other.received == [0, 1, 2]
    fast.settle()  # acks elsewhere do not reach the stalled consumers...
    assert blocked.received == [] and group.received == []
    slow.congested = False
    slow.dispatch_consumers()  # ...the drain does
    assert blocked.received == [0, 1, 2] and group.received == [0, 1, 2]


def test_a_global_prefetch_lets_any_consumer_of_the_channel_take(vhost: VirtualHost) -> None:
    stream = declare(vhost)
    channel = Channel("c")
    channel.global_prefetch_count = 1
    first = channel.consume(stream, prefetch=5, offset="next")
    publish(stream, 1)
    second = channel.consume(stream, prefetch=5, group="g", offset="first")
    assert first.received == [0] and second.received == []  # the channel's one is taken
    channel.settle()  # first's ack frees the credit second waits for
    assert second.received == [0]


def test_a_late_ack_does_not_feed_a_cancelled_consumer(vhost: VirtualHost) -> None:
    stream = declare(vhost)
    publish(stream, 2)
    channel = Channel("c")
    consumer = channel.consume(stream)
    channel.cancel(consumer)
    channel.settle()
    assert consumer.received == [0]


def stranded(stream: StreamQueue) -> list[str]:
    """Readers that are behind while a consumer could take: what a dispatch must never
    leave (the old dispatch, which visited every reader, never did)."""
    found = []
    for consumer, state in stream.states.items():
        cursor = state.cursor
        if cursor is not None and not cursor.at_end and consumer.has_credit():
            found.append(consumer.tag)
    for group in stream.groups.values():
        behind = not group.cursor.at_end or any(
            offset >= stream.log.first_offset for offset in group.redeliver)
        if behind and not group.handing_over and any(c.has_credit() for c in group.active):
            found.append(group.name)
    return found


STEP = st.tuples(
    st.sampled_from(["plain", "group", "exclusive", "ack", "ack1", "nack", "cancel",
                     "close", "publish", "congest", "drain", "flow-off", "flow-on",
                     "global", "qos"]),
    st.integers(0, 3))


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(STEP, max_size=50))
def test_no_reader_is_left_behind_with_credit(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, int]],
) -> None:
    vhost = VirtualHost("/")
    types = StreamTypes(tmp_path_factory.mktemp("streams"))
    vhost.queue_types["stream"] = types.create
    stream = declare(vhost)
    channels = [Channel(f"c{n}") for n in range(2)]
    try:
        for action, pick in steps:
            channel = channels[pick % len(channels)]
            if action in ("plain", "group", "exclusive"):
                arguments = {"x-single-active-consumer": True} if action == "exclusive" \
                    else {}
                group = None if action == "plain" else f"{action}{pick // 2}"
                prefetch = 1 + pick // 2
                consumer = Consumer(channel, stream, prefetch, {
                    "x-stream-offset": "first", **arguments,
                    **({"x-stream-group": group} if group else {})})
                try:
                    stream.check_consume(False, prefetch, consumer.arguments)
                except ChannelError:  # exclusive and shared members of one group
                    continue
                channel.consumers.append(consumer)
                stream.add_consumer(consumer)
            elif action in ("ack", "ack1", "nack"):
                channel.settle(1 if action == "ack1" else None, requeue=action == "nack")
            elif action == "cancel" and channel.consumers:
                channel.cancel(channel.consumers[pick % len(channel.consumers)])
            elif action == "close":
                channel.close()
            elif action == "publish":
                publish(stream, pick + 1)
            elif action == "congest":
                channel.congested = True
            elif action == "drain":
                channel.congested = False
                channel.dispatch_consumers()
            elif action == "flow-off":
                channel.active = False
            elif action == "flow-on":
                channel.active = True
                channel.dispatch_consumers()
            elif action == "global":
                channel.global_prefetch_count = pick % 3
                channel.dispatch_consumers()
            elif action == "qos":
                for consumer in channel.consumers:
                    consumer.prefetch_count = pick % 3
                channel.dispatch_consumers()
            assert stranded(stream) == [], (action, pick)
    finally:
        types.close()
