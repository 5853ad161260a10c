"""Exclusive consumer groups (``x-single-active-consumer`` on basic.consume) and partitioned
streams (streams bound to one ``x-consistent-hash`` exchange, each assigned to one member
of a group), with pika and aio-pika against a real amqpd. amqpd's own: RabbitMQ has no
consumer groups on 0-9-1 streams."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from typing import Any

import aio_pika
import pytest
from pika.exceptions import ChannelClosedByBroker
from test_management_api import Api
from test_streams import bodies, declare_stream, publish

pytestmark = pytest.mark.amqpd_only

EXCLUSIVE = {"x-single-active-consumer": True}


class Delivery:
    """One message as a member saw it."""

    def __init__(self, turn: int, stream: str, method: Any, properties: Any, body: bytes):
        self.turn = turn  # when it was processed, across all members of the test
        self.stream = stream
        self.tag = method.delivery_tag
        self.redelivered = bool(method.redelivered)
        self.offset = properties.headers["x-stream-offset"]
        self.key, _, seq = body.decode().partition(":")
        self.seq = int(seq) if seq else -1


class Member:
    """One pika connection and channel consuming streams with one group."""

    def __init__(self, connect: Callable[[], Any], clock: itertools.count[int],
                 prefetch: int = 50):
        self.connection = connect()
        self.channel = self.connection.channel()
        self.channel.basic_qos(prefetch_count=prefetch)
        self.clock = clock
        self.acking = True  # ack each message in the callback (a worker done with it)
        self.got: list[Delivery] = []
        self.unacked: list[Delivery] = []
        self.tags: dict[str, str] = {}  # stream -> consumer tag

    def consume(self, stream: str, arguments: dict[str, Any] | None = None) -> None:
        def on_message(channel: Any, method: Any, properties: Any, body: bytes) -> None:
            delivery = Delivery(next(self.clock), stream, method, properties, body)
            self.got.append(delivery)
            if self.acking:
                channel.basic_ack(method.delivery_tag)
            else:
                self.unacked.append(delivery)

        self.tags[stream] = self.channel.basic_consume(
            stream, on_message,
            arguments={"x-stream-group": "g", "x-stream-offset": "first", **(arguments or {})})

    def ack_all(self) -> None:
        for delivery in self.unacked:
            self.channel.basic_ack(delivery.tag)
        self.unacked = []

    def streams(self, since: int = 0) -> set[str]:
        return {d.stream for d in self.got if d.turn >= since}


def pump(members: list[Member], done: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        for member in members:
            if member.connection.is_open:
                member.connection.process_data_events(0.01)


def settle(members: list[Member], seconds: float = 0.3) -> None:
    """Let in-flight frames arrive (an idle member must stay idle, not just be slow)."""
    pump(members, lambda: False, seconds)


# -- exclusive groups ----------------------------------------------------------------------


def test_exclusive_group_fails_over_to_the_next_member_at_the_commit(
    pika_connect: Any, names: Any, management_url: str,
) -> None:
    q = names.queue()
    producer = pika_connect().channel()
    declare_stream(producer, q)
    publish(producer, q, bodies(10))
    clock = itertools.count()
    a, b, c = (Member(pika_connect, clock) for _ in range(3))
    for member in (a, b, c):
        member.acking = False
        member.consume(q, EXCLUSIVE)
    members = [a, b, c]
    pump(members, lambda: len(a.got) >= 10)
    settle(members)
    assert [d.offset for d in a.got] == list(range(10))
    assert b.got == [] and c.got == []
    row = next(r for r in Api(management_url).get("stream-groups/%2F").json()
               if r["queue"] == q)
    assert row["single_active_consumer"] is True
    assert row["active_consumers"] == [a.tags[q]] and row["consumers"] == 3
    for delivery in a.unacked[:6]:
        a.channel.basic_ack(delivery.tag)
    a.connection.close()  # 6..9 were never acked
    pump(members, lambda: len(b.got) >= 4)
    assert [(d.offset, d.redelivered) for d in b.got] == [(o, True) for o in range(6, 10)]
    b.ack_all()
    b.acking = True
    publish(producer, q, bodies(3, "late"))
    pump(members, lambda: len(b.got) >= 7)
    settle(members)
    assert [(d.offset, d.redelivered) for d in b.got[4:]] == [(10, False), (11, False),
                                                              (12, False)]
    assert c.got == []
    # A member that does not ask for exclusivity conflicts with the group's members.
    other = pika_connect().channel()
    other.basic_qos(prefetch_count=10)
    with pytest.raises(ChannelClosedByBroker) as refused:
        other.basic_consume(q, lambda *_: None, arguments={"x-stream-group": "g"})
    assert refused.value.reply_code == 406
    assert "x-single-active-consumer" in refused.value.reply_text


def test_single_active_consumer_needs_a_group(pika_connect: Any, names: Any) -> None:
    q = names.queue()
    channel = pika_connect().channel()
    declare_stream(channel, q)
    channel.basic_qos(prefetch_count=10)
    with pytest.raises(ChannelClosedByBroker) as refused:
        channel.basic_consume(q, lambda *_: None, arguments=EXCLUSIVE)
    assert refused.value.reply_code == 406
    assert "x-single-active-consumer" in refused.value.reply_text


@pytest.mark.anyio
async def test_aio_pika_exclusive_failover(aio_connect: Any, names: Any) -> None:
    q = names.queue()
    publisher = await aio_connect()
    first = await aio_connect()
    second = await aio_connect()
    try:
        channel = await publisher.channel()
        await channel.declare_queue(q, durable=True, arguments={"x-queue-type": "stream"})
        for body in bodies(6, "aio"):
            await channel.default_exchange.publish(aio_pika.Message(body), routing_key=q)
        got: dict[str, list[tuple[int, bool]]] = {"first": [], "second": []}
        first_messages: list[aio_pika.abc.AbstractIncomingMessage] = []
        arguments = {"x-stream-group": "aio", "x-stream-offset": "first", **EXCLUSIVE}

        async def subscribe(connection: Any, name: str, ack: bool) -> None:
            consumer_channel = await connection.channel()
            await consumer_channel.set_qos(prefetch_count=20)
            queue = await consumer_channel.get_queue(q, ensure=False)

            async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                offset = message.headers["x-stream-offset"]
                assert isinstance(offset, int)
                got[name].append((offset, bool(message.redelivered)))
                if ack:
                    await message.ack()
                else:
                    first_messages.append(message)

            await queue.consume(on_message, arguments=arguments)

        await subscribe(first, "first", ack=False)
        await subscribe(second, "second", ack=True)

        async def wait_for(done: Callable[[], bool]) -> None:
            for _ in range(200):
                if done():
                    return
                await asyncio.sleep(0.025)

        await wait_for(lambda: len(got["first"]) >= 6)
        assert [offset for offset, _ in got["first"]] == list(range(6))
        for message in first_messages[:2]:
            await message.ack()
        await first.close()  # 2..5 go back to the group
        await wait_for(lambda: len(got["second"]) >= 4)
        assert got["second"] == [(offset, True) for offset in range(2, 6)]
    finally:
        for connection in (publisher, first, second):
            if not connection.is_closed:
                await connection.close()


# -- partitioned streams -------------------------------------------------------------------


class Partitioned:
    """An x-consistent-hash exchange over ``count`` streams, and a keyed publisher."""

    def __init__(self, connect: Callable[[], Any], names: Any, count: int):
        self.channel = connect().channel()
        self.exchange = names.exchange()
        self.channel.exchange_declare(self.exchange, "x-consistent-hash", durable=True)
        self.streams = sorted(names.queue() for _ in range(count))  # the assignment order
        for stream in self.streams:
            declare_stream(self.channel, stream)
            self.channel.queue_bind(stream, self.exchange, routing_key="1")
        self.channel.confirm_delivery()
        self.sent: dict[str, int] = {}

    def publish(self, keys: int, per_key: int) -> int:
        for _ in range(per_key):
            for k in range(keys):
                key = f"key{k}"
                seq = self.sent.get(key, 0)
                self.sent[key] = seq + 1
                self.channel.basic_publish(self.exchange, key, f"{key}:{seq}".encode())
        return keys * per_key


def processed_in_order(members: list[Member], sent: dict[str, int]) -> None:
    """Every message processed (acked) exactly once, and each key's in publish order."""
    processed = sorted((d for m in members for d in m.got if d not in m.unacked),
                       key=lambda d: d.turn)
    per_key: dict[str, list[int]] = {}
    for delivery in processed:
        per_key.setdefault(delivery.key, []).append(delivery.seq)
    assert per_key == {key: list(range(count)) for key, count in sent.items()}


def test_partitions_are_assigned_and_reassigned_with_order_per_key(
    pika_connect: Any, names: Any, management_url: str,
) -> None:
    topic = Partitioned(pika_connect, names, 4)
    p0, p1, p2, p3 = topic.streams
    clock = itertools.count()
    a, b = Member(pika_connect, clock), Member(pika_connect, clock)
    members = [a, b]
    for member in members:
        for stream in topic.streams:
            member.consume(stream)
    total = topic.publish(keys=40, per_key=3)
    pump(members, lambda: sum(len(m.got) for m in members) >= total)
    settle(members)
    # a consumed every partition first; b consumes p0 first, then p1, ...: each of the
    # first two moves to b as it consumes it (a holds two more), then a keeps the rest.
    assert a.streams() == {p2, p3} and b.streams() == {p0, p1}
    offsets = [(d.stream, d.offset) for m in members for d in m.got]
    assert len(offsets) == len(set(offsets)) == total  # each message to exactly one member
    processed_in_order(members, topic.sent)

    c = Member(pika_connect, clock)
    members.append(c)
    for stream in topic.streams:
        c.consume(stream)
    since = next(clock)
    total += topic.publish(keys=40, per_key=3)
    pump(members, lambda: sum(len(m.got) for m in members) >= total)
    settle(members)
    # The newcomer takes one partition (p0, the first it consumes, from b: a keeps the one
    # extra of 4 over 3); nothing else moves.
    assert (a.streams(since), b.streams(since), c.streams(since)) == ({p2, p3}, {p1}, {p0})
    offsets = [(d.stream, d.offset) for m in members for d in m.got]
    assert len(offsets) == len(set(offsets)) == total
    processed_in_order(members, topic.sent)
    rows = {r["queue"]: r for r in Api(management_url).get("stream-groups/%2F").json()
            if r["queue"] in topic.streams}
    assert {stream: rows[stream]["active_consumers"] for stream in topic.streams} == {
        p0: [c.tags[p0]], p1: [b.tags[p1]], p2: [a.tags[p2]], p3: [a.tags[p3]]}
    assert {row["partition_of"] for row in rows.values()} == {topic.exchange}

    # A fourth member takes p2 (a's extra one) while a still holds p2's messages unacked:
    # d gets nothing of p2 until a has acked them.
    a.acking = False
    total += topic.publish(keys=40, per_key=1)
    pump(members, lambda: sum(len(m.got) for m in members) >= total)
    held = [d.offset for d in a.unacked if d.stream == p2]
    assert held
    d = Member(pika_connect, clock)
    members.append(d)
    for stream in topic.streams:
        d.consume(stream)
    since = next(clock)
    total += topic.publish(keys=40, per_key=1)
    settle(members, 1.0)  # the batch's p0, p1, p3 messages arrive; p2's must not
    assert d.streams(since) <= {p2} and not [x for x in d.got if x.stream == p2]
    assert a.streams(since) <= {p3}
    row = next(r for r in Api(management_url).get("stream-groups/%2F").json()
               if r["queue"] == p2)
    assert row["handing_over"] is True and row["active_consumers"] == [d.tags[p2]]
    a.ack_all()
    a.acking = True
    pump(members, lambda: sum(len(m.got) for m in members) >= total)
    moved = [x for x in d.got if x.stream == p2]
    assert moved and moved[0].offset == max(held) + 1 and not moved[0].redelivered
    processed_in_order(members, topic.sent)

    # b stops acking, then goes away: p1 moves on, its unacked are redelivered first.
    b.acking = False
    since = next(clock)
    total += topic.publish(keys=40, per_key=2)
    pump(members, lambda: sum(len(m.got) for m in members) >= total)
    held = [(d.stream, d.offset) for d in b.unacked]
    assert held and {stream for stream, _ in held} == {p1}
    b.connection.close()
    members.remove(b)
    b.got = [d for d in b.got if d not in b.unacked]  # never processed
    b.unacked = []
    processed_before = sum(len(m.got) for m in members) + len(b.got)
    pump(members, lambda: sum(len(m.got) for m in members) + len(b.got)
         >= processed_before + len(held))
    settle(members)
    again = [(d.stream, d.offset) for m in members for d in m.got if d.redelivered]
    assert sorted(again) == sorted(held)
    owner_of_p1 = next(m for m in members if any(d.stream == p1 and d.turn > since
                                                 for d in m.got))
    first_after = [d for d in owner_of_p1.got if d.stream == p1 and d.turn > since]
    assert [(d.offset, d.redelivered) for d in first_after[:len(held)]] == \
        [(offset, True) for _, offset in held]
    processed_in_order([*members, b], topic.sent)


@pytest.mark.anyio
async def test_aio_pika_members_split_the_partitions(
    aio_connect: Any, names: Any, pika_connect: Any,
) -> None:
    topic = Partitioned(pika_connect, names, 2)
    connections = [await aio_connect(), await aio_connect()]
    got: list[list[tuple[str, str]]] = [[], []]  # per member: (stream, body) in order
    try:
        for index, connection in enumerate(connections):
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=20)
            for stream in topic.streams:
                queue = await channel.get_queue(stream, ensure=False)

                async def on_message(message: aio_pika.abc.AbstractIncomingMessage,
                                     index: int = index, stream: str = stream) -> None:
                    got[index].append((stream, message.body.decode()))
                    await message.ack()

                await queue.consume(on_message, arguments={
                    "x-stream-group": "aio", "x-stream-offset": "first"})
        total = topic.publish(keys=30, per_key=2)  # both members are in: one partition each
        for _ in range(400):
            if sum(map(len, got)) >= total:
                break
            await asyncio.sleep(0.025)
        await asyncio.sleep(0.2)  # nothing more may come
    finally:
        for connection in connections:
            await connection.close()
    # The second member consumes p0 first and takes it; the first keeps p1 (sticky).
    assert [{stream for stream, _ in member} for member in got] == [
        {topic.streams[1]}, {topic.streams[0]}]
    per_key: dict[str, list[int]] = {}
    for member in got:
        for _, body in member:
            key, _, seq = body.partition(":")
            per_key.setdefault(key, []).append(int(seq))
    assert per_key == {key: list(range(count)) for key, count in topic.sent.items()}
