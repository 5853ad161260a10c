"""Exclusive groups and partition assignment, on real streams of a real virtual host.

The members stand in for the session layer's channels: each has consumers that take
deliveries while they have credit, acks them in order and, when it closes, cancels its
consumers and gives its unacked deliveries back -- the order ``Channel.release`` uses.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pamqp import commands

from amqpd.broker.message import Message, QueueEntry, route_for
from amqpd.broker.vhost import VirtualHost
from amqpd.protocol import codec
from amqpd.protocol.errors import ChannelError
from amqpd.streams import StreamTypes
from amqpd.streams.queue import StreamQueue

EXCHANGE = "orders"
GROUP = "g"
EXCLUSIVE = {"x-single-active-consumer": True}


class Member:
    """One channel: its consumers and its unacked deliveries, in delivery order."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.consumers: list[Consumer] = []
        self.unacked: list[tuple[StreamQueue, QueueEntry]] = []
        self.received: list[tuple[str, int, bool]] = []  # (stream, offset, redelivered)

    def __repr__(self) -> str:
        return f"<Member {self.name}>"

    def shares_credit(self) -> bool:
        return False  # a prefetch per consumer

    def consume(self, stream: StreamQueue, prefetch: int = 10,
                arguments: Mapping[str, object] | None = None) -> Consumer:
        consumer = Consumer(self, stream, prefetch,
                            {"x-stream-group": GROUP, **(arguments or {})})
        stream.check_consume(False, prefetch, consumer.arguments)
        self.consumers.append(consumer)
        stream.add_consumer(consumer)
        return consumer

    def ack(self, count: int | None = None) -> None:
        """Ack the oldest ``count`` deliveries (all by default), as a client would."""
        taken = self.unacked[:count] if count is not None else list(self.unacked)
        del self.unacked[:len(taken)]
        for stream, entry in taken:
            stream.acknowledge(entry)
        for stream in {stream for stream, _ in taken}:
            stream.dispatch()

    def close(self) -> None:
        """Channel.release: cancel the consumers, then give the unacked back."""
        for consumer in self.consumers:
            consumer.stream.remove_consumer(consumer)
        self.consumers = []
        returned = self.unacked
        self.unacked = []
        for stream in dict.fromkeys(stream for stream, _ in returned):
            stream.requeue([entry for s, entry in returned if s is stream])

    def offsets(self, stream: StreamQueue) -> list[int]:
        return [offset for name, offset, _ in self.received if name == stream.name]


class Consumer:
    """A subscription with a prefetch (the QueueConsumer protocol)."""

    def __init__(self, channel: Member, stream: StreamQueue, prefetch: int,
                 arguments: Mapping[str, object]) -> None:
        self.channel = channel
        self.stream = stream
        self.prefetch = prefetch
        self.arguments = arguments
        self.exclusive = False
        self.tag = f"{channel.name}-{stream.name}"

    @property
    def member(self) -> Member:
        return self.channel

    def can_take(self) -> bool:
        return self.has_credit()

    def has_credit(self) -> bool:
        held = sum(1 for stream, _ in self.channel.unacked if stream is self.stream)
        return held < self.prefetch

    def deliver(self, entry: QueueEntry) -> None:
        self.channel.unacked.append((self.stream, entry))
        self.channel.received.append((self.stream.name, entry.seq, entry.redelivered))

    def cancel_by_server(self) -> None:
        self.channel.consumers.remove(self)


def message(key: str) -> Message:
    header = codec.encode_header_payload(1, commands.Basic.Properties())
    return Message(route_for(EXCHANGE, key), header, b"x")


@pytest.fixture
def vhost(tmp_path: Path) -> Iterator[VirtualHost]:
    vhost = VirtualHost("/")
    types = StreamTypes(tmp_path)
    vhost.queue_types["stream"] = types.create
    yield vhost
    types.close()


def declare(vhost: VirtualHost, name: str) -> StreamQueue:
    stream = vhost.declare_queue(name, None, durable=True,
                                 arguments={"x-queue-type": "stream"})
    assert isinstance(stream, StreamQueue)
    return stream


def partitioned(vhost: VirtualHost, count: int) -> list[StreamQueue]:
    vhost.declare_exchange(EXCHANGE, "x-consistent-hash", durable=True)
    streams = [declare(vhost, f"p{i}") for i in range(count)]
    for stream in streams:
        vhost.bind(EXCHANGE, stream, "1", {})
    return streams


def publish(vhost: VirtualHost, keys: list[str]) -> None:
    exchange = vhost.exchanges[EXCHANGE]
    assert exchange.kind is not None
    for key in keys:
        msg = message(key)
        for destination in exchange.kind.route(msg):
            destination.push(msg)


def publish_each(streams: list[StreamQueue], count: int) -> None:
    for stream in streams:
        for i in range(count):
            stream.push(message(f"k{i}"))


def owners(streams: list[StreamQueue]) -> dict[str, str | None]:
    result = {}
    for stream in streams:
        owner = stream.groups[GROUP].owner
        result[stream.name] = owner.name if isinstance(owner, Member) else None
    return result


def join_all(member: Member, streams: list[StreamQueue], prefetch: int = 10,
             arguments: Mapping[str, object] | None = None) -> Member:
    for stream in streams:
        member.consume(stream, prefetch, arguments)
    return member


def test_partitions_are_dealt_round_robin_then_kept_by_their_owners(vhost: VirtualHost
                                                                     ) -> None:
    streams = partitioned(vhost, 4)
    a = join_all(Member("a"), streams)
    assert owners(streams) == {"p0": "a", "p1": "a", "p2": "a", "p3": "a"}
    b = join_all(Member("b"), streams)
    # b consumes p0 first, then p1...: the first partition it consumes moves to it at once
    # (a holds two more than b), then p1; p2 and p3 stay with a (sticky).
    assert owners(streams) == {"p0": "b", "p1": "b", "p2": "a", "p3": "a"}
    publish_each(streams, 3)
    assert sorted({name for name, _, _ in a.received}) == ["p2", "p3"]
    assert sorted({name for name, _, _ in b.received}) == ["p0", "p1"]
    c = join_all(Member("c"), streams)
    # c takes one partition (the one it consumes first, from b); nothing else moves.
    assert owners(streams) == {"p0": "c", "p1": "b", "p2": "a", "p3": "a"}
    a.ack()
    b.ack()
    publish_each(streams, 2)
    assert c.offsets(streams[0]) == [3, 4]  # p0 moved from b (who had acked) to c
    assert b.offsets(streams[0]) == [0, 1, 2]
    assert a.offsets(streams[2]) == [0, 1, 2, 3, 4]
    join_all(Member("d"), streams)
    # d takes one of a's two (p2: the first of them d consumes): 4 over 4 is one each.
    assert owners(streams) == {"p0": "c", "p1": "b", "p2": "d", "p3": "a"}
    report = streams[2].group_report()[0]
    assert report["active_consumers"] == ["d-p2"]
    # d waits for a's unacked 3 and 4 of p2; p0 has not moved since c took it.
    assert report["partition_of"] == EXCHANGE and report["handing_over"] is True
    b.close()  # the leaver's partition goes to the earliest of the least loaded
    assert owners(streams) == {"p0": "c", "p1": "a", "p2": "d", "p3": "a"}
    assert streams[1].group_report()[0]["handing_over"] is False  # b gave its unacked back


def test_new_owner_waits_for_the_old_owners_unacked(vhost: VirtualHost) -> None:
    streams = partitioned(vhost, 2)
    a = join_all(Member("a"), streams)
    publish_each(streams, 3)
    assert a.offsets(streams[0]) == [0, 1, 2]  # unacked
    b = join_all(Member("b"), streams)
    assert owners(streams) == {"p0": "b", "p1": "a"}  # b consumes p0 first: it moves
    publish_each(streams, 2)
    assert b.received == []  # p0's previous owner still owes 0..2
    assert streams[0].group_report()[0]["handing_over"] is True
    assert a.offsets(streams[1]) == [0, 1, 2, 3, 4]
    a.ack(2)  # p0:0, p0:1
    assert b.received == []
    a.ack()  # the rest, p0:2 included
    assert b.offsets(streams[0]) == [3, 4]
    assert a.offsets(streams[0]) == [0, 1, 2]


def test_a_leaving_owner_is_replaced_and_its_unacked_redelivered_first(
    vhost: VirtualHost,
) -> None:
    streams = partitioned(vhost, 4)
    a = join_all(Member("a"), streams)
    b = join_all(Member("b"), streams)
    publish_each(streams, 3)
    a.ack()
    b.ack(2)  # p0:0, p0:1 acked; p0:2 and p1:0..2 open (b took p0 and p1)
    b.close()
    assert owners(streams) == dict.fromkeys(["p0", "p1", "p2", "p3"], "a")
    assert [(n, o, r) for n, o, r in a.received if n in ("p0", "p1")] == [
        ("p0", 2, True), ("p1", 0, True), ("p1", 1, True), ("p1", 2, True)]
    publish_each(streams, 1)
    assert a.offsets(streams[0])[-1] == 3


def test_exclusive_group_fails_over_in_join_order(vhost: VirtualHost) -> None:
    stream = declare(vhost, "s")
    a, b, c = Member("a"), Member("b"), Member("c")
    for member in (a, b, c):
        member.consume(stream, arguments=EXCLUSIVE)
    publish_each([stream], 4)
    assert a.offsets(stream) == [0, 1, 2, 3] and not b.received and not c.received
    report = stream.group_report()[0]
    assert report["single_active_consumer"] is True and report["active_consumers"] == ["a-s"]
    a.ack(2)
    a.close()
    assert b.received == [("s", 2, True), ("s", 3, True)] and not c.received
    with pytest.raises(ChannelError) as refused:
        Member("d").consume(stream)
    assert refused.value.reply_code == 406
    assert "x-single-active-consumer" in str(refused.value)


def test_a_cancelled_active_member_is_followed_once_it_has_acked(vhost: VirtualHost) -> None:
    stream = declare(vhost, "s")
    a, b = Member("a"), Member("b")
    consumer = a.consume(stream, arguments=EXCLUSIVE)
    b.consume(stream, arguments=EXCLUSIVE)
    publish_each([stream], 3)
    stream.remove_consumer(consumer)  # basic.cancel: the unacked stay on a's channel
    publish_each([stream], 2)
    assert b.received == []  # b is active but a still owes 0..2
    a.ack()
    assert b.received == [("s", 3, False), ("s", 4, False)]


def test_exclusive_partitioned_group_gives_everything_to_the_first(
    vhost: VirtualHost,
) -> None:
    streams = partitioned(vhost, 3)
    join_all(Member("a"), streams, arguments=EXCLUSIVE)
    b = join_all(Member("b"), streams, arguments=EXCLUSIVE)
    assert set(owners(streams).values()) == {"a"}
    with pytest.raises(ChannelError):
        Member("c").consume(streams[2])  # not exclusive: conflicts with the members
    publish_each(streams, 1)
    assert b.received == []


def test_binding_changes_re_read_the_partitions(vhost: VirtualHost) -> None:
    streams = partitioned(vhost, 3)
    a = join_all(Member("a"), streams)
    join_all(Member("b"), streams)
    assert owners(streams) == {"p0": "b", "p1": "a", "p2": "a"}
    vhost.unbind(EXCHANGE, streams[0], "1", {})
    streams[1].dispatch()  # any partition's next dispatch notices the change
    assert owners(streams[1:]) == {"p1": "a", "p2": "b"}  # b lost p0: it takes a's extra
    assert streams[0].groups[GROUP].restricted is False  # plain shared group again
    extra = declare(vhost, "p3")
    vhost.bind(EXCHANGE, extra, "1", {})
    a.consume(extra)  # b does not consume p3: a takes it
    assert owners([*streams[1:], extra]) == {"p1": "a", "p2": "b", "p3": "a"}
    vhost.delete_queue("p2", None, False, False)
    # a would hold both; b consumes p1, so it takes p1 over (a keeps p3, b cannot have it).
    assert owners([streams[1], extra]) == {"p1": "b", "p3": "a"}


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["join", "leave", "ack", "ack1", "nack",
                                            "publish"]), st.integers(0, 3)),
                max_size=40))
# A hand-over with the old owner's deliveries still open, then both ack.
@example(steps=[("join", 0), ("publish", 3), ("join", 0), ("publish", 3), ("ack", 1),
                ("ack", 0)])
def test_order_per_partition_and_one_owner_at_a_time(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, int]],
) -> None:
    vhost = VirtualHost("/")
    types = StreamTypes(tmp_path_factory.mktemp("streams"))
    vhost.queue_types["stream"] = types.create
    streams = partitioned(vhost, 3)
    members: list[Member] = []
    processed: dict[str, list[int]] = {s.name: [] for s in streams}  # acked, in ack order
    published = 0
    names = iter(range(1000))

    def ack(member: Member, count: int | None) -> None:
        taken = member.unacked[:count] if count is not None else member.unacked
        for stream, entry in taken:
            processed[stream.name].append(entry.seq)
        member.ack(count)

    def check() -> None:
        for stream in streams:
            owing = [m for m in members if any(s is stream for s, _ in m.unacked)]
            assert len(owing) <= 1, (stream.name, owing)

    for action, pick in steps:
        if action == "join" or not members:
            members.append(join_all(Member(f"m{next(names)}"), streams, prefetch=2))
        elif action == "leave":
            members.pop(pick % len(members)).close()
        elif action in ("ack", "ack1"):
            ack(members[pick % len(members)], 1 if action == "ack1" else None)
        elif action == "nack":
            member = members[pick % len(members)]
            returned, member.unacked = member.unacked, []
            for stream in streams:
                stream.requeue([entry for s, entry in returned if s is stream])
        else:
            publish(vhost, [f"key{published + i}" for i in range(pick + 1)])
            published += pick + 1
        check()
    if not members:
        members.append(join_all(Member("last"), streams, prefetch=2))
    for _ in range(published + 1):  # drain: everyone acks until nothing is left
        for member in members:
            ack(member, None)
    total = 0
    for stream in streams:
        acked = processed[stream.name]
        assert acked == sorted(set(acked)), stream.name  # in order, each once
        assert acked == list(range(stream.log.next_offset))
        total += len(acked)
    assert total == published
    types.close()
