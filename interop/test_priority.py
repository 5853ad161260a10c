"""Priority queues (x-max-priority) and consumer priorities (x-priority) with real clients:
pika, aio-pika, py-amqp and kombu (the way Celery publishes ``priority=`` tasks).

Runs against amqpd by default and against any broker with AMQP_URL; every test here
passes against RabbitMQ 3.10 as well, and the expected orders and reply texts are the ones
RabbitMQ gave.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import urlparse

import aio_pika
import amqp
import kombu
import pika
import pytest

pytestmark = pytest.mark.timeout(30)

# (body, priority) in publish order; None is no priority property at all.
MIXED = [("a0", None), ("b5", 5), ("c1", 1), ("d5", 5), ("e0", 0), ("f9", 9), ("g1", 1),
         ("h12", 12), ("i3", 3)]


def expected_order(messages: list[tuple[str, int | None]], max_priority: int) -> list[str]:
    """The reference: higher (clamped) priority first, publish order within a priority."""
    ranked = sorted(enumerate(messages),
                    key=lambda item: (-min(item[1][1] or 0, max_priority), item[0]))
    return [body for _, (body, _) in ranked]


def publish_all(channel: Any, queue: str, messages: list[tuple[str, int | None]]) -> None:
    for body, priority in messages:
        channel.basic_publish("", queue, body.encode(), pika.BasicProperties(priority=priority))


def drain(channel: Any, queue: str) -> list[str]:
    bodies = []
    while True:
        method, _, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return bodies
        bodies.append(body.decode())


def wait_until(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def message_count(channel: Any, queue: str) -> int:
    return int(channel.queue_declare(queue, passive=True).method.message_count)


# -- ordering ------------------------------------------------------------------------


def test_higher_priority_first_fifo_within_priority(channel: Any, names: Any) -> None:
    q = names.queue()
    channel.queue_declare(q, arguments={"x-max-priority": 10})
    channel.confirm_delivery()
    publish_all(channel, q, MIXED)
    assert message_count(channel, q) == len(MIXED)
    # h12 is above the maximum: it counts as 10 (and keeps its property).
    assert drain(channel, q) == ["h12", "f9", "b5", "d5", "i3", "c1", "g1", "a0", "e0"]
    assert expected_order(MIXED, 10) == ["h12", "f9", "b5", "d5", "i3", "c1", "g1", "a0", "e0"]


def test_priority_above_max_counts_as_max_and_property_is_kept(channel: Any,
                                                               names: Any) -> None:
    q = names.queue()
    channel.queue_declare(q, arguments={"x-max-priority": 3})
    channel.confirm_delivery()
    publish_all(channel, q, [("none", None), ("p9", 9), ("p3", 3), ("p0", 0), ("p1", 1)])
    got = []
    while True:
        method, properties, body = channel.basic_get(q, auto_ack=True)
        if method is None:
            break
        got.append((body.decode(), properties.priority))
    assert got == [("p9", 9), ("p3", 3), ("p1", 1), ("none", None), ("p0", 0)]


def test_consumer_receives_in_priority_order(pika_conn: Any, names: Any) -> None:
    q = names.queue()
    channel = pika_conn.channel()
    channel.queue_declare(q, arguments={"x-max-priority": 10})
    channel.confirm_delivery()
    publish_all(channel, q, MIXED)
    got: list[str] = []
    channel.basic_qos(prefetch_count=1)

    def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
        got.append(body.decode())
        ch.basic_ack(method.delivery_tag)

    channel.basic_consume(q, on_message)
    assert wait_until(lambda: (pika_conn.process_data_events(0.05), len(got) == len(MIXED))[1])
    assert got == expected_order(MIXED, 10)


def test_max_priority_zero_is_accepted_as_fifo(channel: Any, names: Any) -> None:
    q = names.queue()
    channel.queue_declare(q, arguments={"x-max-priority": 0})
    channel.confirm_delivery()
    publish_all(channel, q, MIXED)
    assert drain(channel, q) == [body for body, _ in MIXED]


# -- requeue -------------------------------------------------------------------------


def test_nack_requeue_puts_messages_back_in_priority_order(channel: Any, names: Any) -> None:
    q = names.queue()
    channel.queue_declare(q, arguments={"x-max-priority": 10})
    channel.confirm_delivery()
    publish_all(channel, q, MIXED)
    order = expected_order(MIXED, 10)
    last_tag = 0
    for body in order[:4]:
        method, _, got = channel.basic_get(q)
        assert got.decode() == body
        last_tag = method.delivery_tag
    channel.basic_nack(last_tag, multiple=True, requeue=True)
    redelivered = []
    while True:
        method, _, body = channel.basic_get(q, auto_ack=True)
        if method is None:
            break
        redelivered.append((body.decode(), method.redelivered))
    assert [body for body, _ in redelivered] == order
    assert [flag for _, flag in redelivered] == [True] * 4 + [False] * (len(order) - 4)


def test_reject_requeue_of_one_goes_back_to_its_place(channel: Any, names: Any) -> None:
    q = names.queue()
    channel.queue_declare(q, arguments={"x-max-priority": 10})
    channel.confirm_delivery()
    publish_all(channel, q, MIXED)
    order = expected_order(MIXED, 10)
    tags = [channel.basic_get(q)[0].delivery_tag for _ in range(3)]  # h12, f9, b5
    # Meanwhile a new message of the same priority as b5 arrives: b5 still comes first.
    channel.basic_publish("", q, b"j5", pika.BasicProperties(priority=5))
    channel.basic_reject(tags[2], requeue=True)
    channel.basic_ack(tags[1], multiple=True)
    assert drain(channel, q) == [order[2], "d5", "j5", *order[4:]]


def test_close_with_unacked_requeues_in_priority_order(pika_connect: Any, channel: Any,
                                                       names: Any) -> None:
    q = names.queue()
    channel.queue_declare(q, arguments={"x-max-priority": 10})
    channel.confirm_delivery()
    publish_all(channel, q, MIXED)
    consumer_conn = pika_connect()
    consumer_channel = consumer_conn.channel()
    consumer_channel.basic_qos(prefetch_count=3)
    got: list[str] = []
    consumer_channel.basic_consume(q, lambda ch, m, p, b: got.append(b.decode()))
    assert wait_until(lambda: (consumer_conn.process_data_events(0.05), len(got) == 3)[1])
    consumer_conn.close()
    assert wait_until(lambda: message_count(channel, q) == len(MIXED))
    assert drain(channel, q) == expected_order(MIXED, 10)


# -- TTL, dead-lettering, max-length ---------------------------------------------------


@pytest.mark.anyio
async def test_ttl_expiry_dead_letters_a_priority_queue(aio_connect: Any, names: Any) -> None:
    q, dlq = names.queue(), names.queue()
    connection = await aio_connect()
    async with connection:
        channel = await connection.channel()
        dead = await channel.declare_queue(dlq)
        queue = await channel.declare_queue(q, arguments={
            "x-max-priority": 10, "x-message-ttl": 300,
            "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq})
        for body, priority in MIXED[:5]:
            await channel.default_exchange.publish(
                aio_pika.Message(body.encode(), priority=priority), routing_key=q)
        first = await queue.get(no_ack=True, fail=False)
        assert first is not None and first.body == b"b5"
        deadline = time.monotonic() + 5
        reasons: dict[bytes, str] = {}
        while len(reasons) < 4 and time.monotonic() < deadline:
            message = await dead.get(no_ack=True, fail=False)
            if message is None:
                await asyncio.sleep(0.05)
                continue
            death = message.headers["x-death"][0]  # type: ignore[index]
            assert death["queue"] == q  # type: ignore[index]
            reasons[message.body] = str(death["reason"])  # type: ignore[index]
        assert reasons == {b"a0": "expired", b"c1": "expired", b"d5": "expired",
                           b"e0": "expired"}
        assert await queue.get(no_ack=True, fail=False) is None


@pytest.mark.rabbitmq_differs(
    reason="RabbitMQ 3.10 still delivers an expired high-priority message here (checked: "
    "priority 9 with expiration 50 ms, fetched 300 ms later, is delivered)")
@pytest.mark.amqpd_only
def test_expired_high_priority_message_is_not_delivered(channel: Any, names: Any) -> None:
    q = names.queue()
    channel.queue_declare(q, arguments={"x-max-priority": 10})
    channel.basic_publish("", q, b"p5", pika.BasicProperties(priority=5))
    channel.basic_publish("", q, b"p9", pika.BasicProperties(priority=9, expiration="50"))
    time.sleep(0.3)
    assert drain(channel, q) == ["p5"]


def test_reject_without_requeue_dead_letters(channel: Any, names: Any) -> None:
    q, dlq = names.queue(), names.queue()
    channel.queue_declare(dlq)
    channel.queue_declare(q, arguments={"x-max-priority": 5, "x-dead-letter-exchange": "",
                                        "x-dead-letter-routing-key": dlq})
    channel.confirm_delivery()
    publish_all(channel, q, [("low", 1), ("high", 4)])
    method, properties, body = channel.basic_get(q)
    assert body == b"high"
    channel.basic_reject(method.delivery_tag, requeue=False)
    assert wait_until(lambda: message_count(channel, dlq) == 1)
    _, properties, body = channel.basic_get(dlq, auto_ack=True)
    assert body == b"high" and properties.priority == 4
    assert properties.headers["x-death"][0]["reason"] == "rejected"


def test_max_length_drop_head_drops_the_highest_priority(channel: Any, names: Any) -> None:
    # RabbitMQ's "head" of a priority queue is its next delivery: the highest priority.
    q = names.queue()
    channel.queue_declare(q, arguments={"x-max-priority": 10, "x-max-length": 3})
    channel.confirm_delivery()
    publish_all(channel, q, [("m0p1", 1), ("m1p5", 5), ("m2p3", 3), ("m3p5", 5), ("m4p0", 0)])
    assert drain(channel, q) == ["m2p3", "m0p1", "m4p0"]


def test_max_length_reject_publish(channel: Any, names: Any) -> None:
    q = names.queue()
    channel.queue_declare(q, arguments={"x-max-priority": 10, "x-max-length": 2,
                                        "x-overflow": "reject-publish"})
    channel.confirm_delivery()
    publish_all(channel, q, [("low", 1), ("mid", 5)])
    with pytest.raises(pika.exceptions.NackError):
        channel.basic_publish("", q, b"high", pika.BasicProperties(priority=9))
    assert drain(channel, q) == ["mid", "low"]


# -- arguments -----------------------------------------------------------------------


@pytest.mark.parametrize(("value", "detail"), [
    (256, "{max_value_exceeded,256}"),
    (-1, "{value_negative,-1}"),
    ("5", '"expected integer, got longstr"'),
    (True, '"expected integer, got bool"'),
])
def test_invalid_max_priority(pika_conn: Any, names: Any, value: Any, detail: str) -> None:
    q = names.queue()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        pika_conn.channel().queue_declare(q, arguments={"x-max-priority": value})
    assert info.value.reply_code == 406
    assert info.value.reply_text == (
        f"PRECONDITION_FAILED - invalid arg 'x-max-priority' for queue '{q}' in vhost '/': "
        f"{detail}")


def test_max_priority_as_double_with_py_amqp(amqp_url: str, names: Any) -> None:
    q = names.queue()
    connection = _py_amqp(amqp_url)
    try:
        with pytest.raises(amqp.exceptions.PreconditionFailed) as info:
            connection.channel().queue_declare(q, arguments={"x-max-priority": 5.0})
        assert info.value.reply_text == (
            f"PRECONDITION_FAILED - invalid arg 'x-max-priority' for queue '{q}' in vhost "
            "'/': \"expected integer, got double\"")
    finally:
        connection.collect()


def test_redeclare_with_other_max_priority_is_406(pika_conn: Any, names: Any) -> None:
    q = names.queue()
    pika_conn.channel().queue_declare(q, arguments={"x-max-priority": 3})
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        pika_conn.channel().queue_declare(q, arguments={"x-max-priority": 4})
    assert info.value.reply_code == 406
    # RabbitMQ: "inequivalent arg 'x-max-priority' for queue 'q' in vhost '/': received '4'
    # but current is '3'"; amqpd names the queue at the end of the text (for every argument).
    assert "inequivalent arg 'x-max-priority'" in info.value.reply_text
    assert "received '4' but current is '3'" in info.value.reply_text


@pytest.mark.parametrize(("value", "type_name"), [
    ("5", "longstr"), (True, "bool"), (None, "void")])
def test_invalid_consumer_priority(pika_conn: Any, names: Any, value: Any,
                                   type_name: str) -> None:
    q = names.queue()
    channel = pika_conn.channel()
    channel.queue_declare(q)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        channel.basic_consume(q, lambda *_: None, arguments={"x-priority": value})
    assert info.value.reply_code == 406
    assert info.value.reply_text == (
        f"PRECONDITION_FAILED - invalid arg 'x-priority' for queue '{q}' in vhost '/': "
        f'"expected integer, got {type_name}"')


def test_consumer_priorities_capability(server_properties: dict[str, Any]) -> None:
    assert server_properties["capabilities"]["consumer_priorities"] is True


# -- consumer priorities -------------------------------------------------------------


class Counting:
    """Consumers on their own channels of one connection, counting what each receives."""

    def __init__(self, connection: Any, queue: str) -> None:
        self.connection = connection
        self.queue = queue
        self.got: dict[str, list[str]] = {}

    def consume(self, name: str, priority: int | None, prefetch: int = 0) -> Any:
        channel = self.connection.channel()
        if prefetch:
            channel.basic_qos(prefetch_count=prefetch)
        self.got[name] = []
        arguments = {} if priority is None else {"x-priority": priority}
        channel.basic_consume(self.queue, lambda ch, m, p, b: self.got[name].append(b.decode()),
                              arguments=arguments)
        return channel

    def total(self) -> int:
        return sum(len(bodies) for bodies in self.got.values())

    def wait_for(self, count: int) -> None:
        assert wait_until(lambda: (self.connection.process_data_events(0.05),
                                   self.total() >= count)[1])
        self.connection.process_data_events(0.2)  # nothing more may arrive


def _publish(pika_connect: Any, queue: str, count: int) -> None:
    connection = pika_connect()
    channel = connection.channel()
    channel.confirm_delivery()
    for index in range(count):
        channel.basic_publish("", queue, str(index).encode())
    connection.close()


def test_high_priority_consumer_with_credit_gets_everything(pika_connect: Any,
                                                            names: Any) -> None:
    q = names.queue()
    connection = pika_connect()
    connection.channel().queue_declare(q)
    counting = Counting(connection, q)
    counting.consume("default", None)
    counting.consume("high", 10)
    counting.consume("negative", -5)
    _publish(pika_connect, q, 20)
    counting.wait_for(20)
    assert {name: len(bodies) for name, bodies in counting.got.items()} == {
        "default": 0, "high": 20, "negative": 0}


def test_lower_priority_consumers_get_messages_when_prefetch_is_full(pika_connect: Any,
                                                                    names: Any) -> None:
    q = names.queue()
    connection = pika_connect()
    connection.channel().queue_declare(q)
    counting = Counting(connection, q)
    high = counting.consume("high", 10, prefetch=3)
    counting.consume("low", 1, prefetch=4)
    counting.consume("lowest", -1)
    _publish(pika_connect, q, 20)
    counting.wait_for(20)
    assert counting.got["high"] == ["0", "1", "2"]
    assert counting.got["low"] == ["3", "4", "5", "6"]
    assert len(counting.got["lowest"]) == 13
    # Credit comes back to the high-priority consumer: the next message is its.
    high.basic_ack(0, multiple=True)
    _publish(pika_connect, q, 1)
    counting.wait_for(21)
    assert counting.got["high"][-1] == "0"


def test_equal_priority_consumers_round_robin(pika_connect: Any, names: Any) -> None:
    q = names.queue()
    connection = pika_connect()
    connection.channel().queue_declare(q, arguments={"x-max-priority": 5})
    counting = Counting(connection, q)
    counting.consume("a", 7)
    counting.consume("b", 7)
    counting.consume("low", 0)
    _publish(pika_connect, q, 10)
    counting.wait_for(10)
    assert sorted(counting.got["a"] + counting.got["b"], key=int) == [str(i) for i in range(10)]
    assert len(counting.got["a"]) == len(counting.got["b"]) == 5
    assert counting.got["low"] == []


def test_cancelled_high_priority_consumer_hands_over(pika_connect: Any, names: Any) -> None:
    q = names.queue()
    connection = pika_connect()
    connection.channel().queue_declare(q)
    counting = Counting(connection, q)
    high = counting.consume("high", 3)
    counting.consume("low", 0)
    _publish(pika_connect, q, 2)
    counting.wait_for(2)
    high.basic_ack(0, multiple=True)
    high.close()
    _publish(pika_connect, q, 2)
    counting.wait_for(4)
    assert counting.got == {"high": ["0", "1"], "low": ["0", "1"]}


@pytest.mark.anyio
async def test_consumer_priority_with_aio_pika(aio_connect: Any, names: Any) -> None:
    q = names.queue()
    connection = await aio_connect()
    async with connection:
        high_channel = await connection.channel()
        low_channel = await connection.channel()
        await high_channel.set_qos(prefetch_count=2)
        high_queue = await high_channel.declare_queue(q, arguments={"x-max-priority": 9})
        low_queue = await low_channel.declare_queue(q, arguments={"x-max-priority": 9})
        got: dict[str, list[bytes]] = {"high": [], "low": []}
        all_in = asyncio.Event()

        def count() -> None:
            if len(got["high"]) + len(got["low"]) == len(MIXED):
                all_in.set()

        async def high(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            got["high"].append(message.body)
            count()

        async def low(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            got["low"].append(message.body)
            count()
            await message.ack()

        await high_queue.consume(high, arguments={"x-priority": 5})
        await low_queue.consume(low)
        for body, priority in MIXED:
            await high_channel.default_exchange.publish(
                aio_pika.Message(body.encode(), priority=priority), routing_key=q)
        await asyncio.wait_for(all_in.wait(), 5)
        await asyncio.sleep(0.1)  # nothing more may arrive
        assert len(got["high"]) == 2
        assert sorted(got["high"] + got["low"]) == sorted(b.encode() for b, _ in MIXED)


# -- kombu / Celery ------------------------------------------------------------------


def _kombu_url(amqp_url: str) -> str:
    parsed = urlparse(amqp_url)
    return f"pyamqp://guest:guest@{parsed.hostname}:{parsed.port or 5672}//"


def _py_amqp(amqp_url: str) -> amqp.Connection:
    parsed = urlparse(amqp_url)
    connection = amqp.Connection(f"{parsed.hostname}:{parsed.port or 5672}",
                                 userid="guest", password="guest")
    connection.connect()
    return connection


def test_kombu_priority_queue_like_celery(amqp_url: str, names: Any) -> None:
    q, x = names.queue(), names.exchange()
    # Celery's task_queues entry for a priority queue, and apply_async(priority=...).
    queue = kombu.Queue(q, kombu.Exchange(x, type="direct"), routing_key=q, max_priority=10)
    tasks = [("task-a", 0), ("task-b", 9), ("task-c", 4), ("task-d", 9), ("task-e", 4)]
    with kombu.Connection(_kombu_url(amqp_url)) as connection:
        producer = connection.Producer(serializer="json")
        for name, priority in tasks:
            producer.publish({"task": name}, exchange=queue.exchange, routing_key=q,
                             priority=priority, declare=[queue], delivery_mode=2)
        bound = queue(connection.default_channel)
        got = []
        while (message := bound.get()) is not None:
            got.append((message.payload["task"], message.properties["priority"]))
            message.ack()
    assert got == [("task-b", 9), ("task-d", 9), ("task-c", 4), ("task-e", 4), ("task-a", 0)]


def test_kombu_consumer_with_priority(amqp_url: str, names: Any) -> None:
    q = names.queue()
    queue = kombu.Queue(q, routing_key=q, max_priority=3)
    received: list[tuple[str, int]] = []
    with kombu.Connection(_kombu_url(amqp_url)) as connection:
        producer = connection.Producer(serializer="json")
        for index, priority in enumerate([1, 3, 2, 3, 0]):
            producer.publish({"n": index}, exchange="", routing_key=q, priority=priority,
                             declare=[queue])

        def on_message(body: Any, message: Any) -> None:
            received.append((body["n"], message.properties["priority"]))
            message.ack()

        with connection.Consumer(queue, callbacks=[on_message], prefetch_count=1):
            deadline = time.monotonic() + 5
            while len(received) < 5 and time.monotonic() < deadline:
                connection.drain_events(timeout=1)
    assert received == [(1, 3), (3, 3), (2, 2), (0, 1), (4, 0)]


def test_py_amqp_basic_consume_with_x_priority(amqp_url: str, names: Any) -> None:
    q = names.queue()
    connection = _py_amqp(amqp_url)
    try:
        channel = connection.channel()
        channel.queue_declare(q, auto_delete=False)
        got: dict[str, int] = {"high": 0, "low": 0}

        def counter(name: str) -> Any:
            def callback(message: Any) -> None:
                got[name] += 1
                message.channel.basic_ack(message.delivery_tag)
            return callback

        channel.basic_consume(q, callback=counter("low"), arguments={"x-priority": 1})
        channel.basic_consume(q, callback=counter("high"), arguments={"x-priority": 2**40})
        for _ in range(5):
            channel.basic_publish(amqp.Message(b"x"), exchange="", routing_key=q)
        deadline = time.monotonic() + 5
        while sum(got.values()) < 5 and time.monotonic() < deadline:
            connection.drain_events(timeout=1)
        assert got == {"high": 5, "low": 0}
    finally:
        connection.collect()


def test_single_active_consumer_ignores_x_priority(pika_conn: Any, names: Any) -> None:
    q = names.queue()
    channel = pika_conn.channel()
    channel.queue_declare(q, arguments={"x-single-active-consumer": True})
    got: list[str] = []
    channel.basic_consume(q, lambda *_: got.append("first"), auto_ack=True)
    channel.basic_consume(q, lambda *_: got.append("urgent"), auto_ack=True,
                          arguments={"x-priority": 9})
    for _ in range(3):
        channel.basic_publish("", q, b"x")
    assert wait_until(lambda: (pika_conn.process_data_events(0.05), len(got) == 3)[1])
    assert got == ["first"] * 3
