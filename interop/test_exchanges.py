"""Every exchange type with real clients: work queues, pub/sub, topics, headers,
exchange-to-exchange bindings, alternate exchanges, CC/BCC, the rules exchange and the
consistent-hash exchange."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from typing import Any

import aio_pika
import pika
import pytest

pytestmark = pytest.mark.timeout(60)


def drain(channel: Any, queue: str) -> list[bytes]:
    bodies = []
    while True:
        method, _, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return bodies
        bodies.append(body)


def declare_queues(channel: Any, names: Any, count: int) -> list[str]:
    queues = [names.queue() for _ in range(count)]
    for queue in queues:
        channel.queue_declare(queue)
    return queues


def test_work_queue_round_robin(pika_connect: Any, names: Any) -> None:
    publisher = pika_connect().channel()
    q = names.queue()
    publisher.queue_declare(q, durable=True)
    connections = [pika_connect(), pika_connect()]
    received: list[list[bytes]] = [[], []]
    for index, connection in enumerate(connections):
        channel = connection.channel()
        channel.basic_qos(prefetch_count=1)
        channel.basic_consume(
            q, lambda ch, m, p, b, i=index: (received[i].append(b), ch.basic_ack(m.delivery_tag))
        )
    publisher.confirm_delivery()
    for number in range(10):
        publisher.basic_publish("", q, str(number).encode())
    deadline = time.monotonic() + 10
    while sum(map(len, received)) < 10 and time.monotonic() < deadline:
        for connection in connections:
            connection.process_data_events(0.02)
    assert sorted(received[0] + received[1], key=int) == [str(n).encode() for n in range(10)]
    assert len(received[0]) == len(received[1]) == 5


def test_fanout_pub_sub_with_exclusive_server_named_queues(pika_conn: Any, names: Any) -> None:
    channel = pika_conn.channel()
    exchange = names.exchange()
    channel.exchange_declare(exchange, "fanout")
    queues = []
    for _ in range(3):
        queue = channel.queue_declare("", exclusive=True).method.queue
        assert queue.startswith("amq.gen-")
        channel.queue_bind(queue, exchange)
        queues.append(queue)
    channel.confirm_delivery()
    channel.basic_publish(exchange, "ignored", b"news")
    assert [drain(channel, q) for q in queues] == [[b"news"]] * 3


def test_topic_subscriptions(channel: Any, names: Any) -> None:
    exchange = names.exchange()
    channel.exchange_declare(exchange, "topic")
    patterns = {"a": "orders.*.paid", "b": "orders.#", "c": "#.eu", "d": "*"}
    queues = {key: names.queue() for key in patterns}
    for key, pattern in patterns.items():
        channel.queue_declare(queues[key])
        channel.queue_bind(queues[key], exchange, pattern)
    channel.confirm_delivery()
    for routing_key in ("orders.42.paid", "orders.eu", "orders", "x.y.eu", "single", ""):
        channel.basic_publish(exchange, routing_key, routing_key.encode())
    assert drain(channel, queues["a"]) == [b"orders.42.paid"]
    assert drain(channel, queues["b"]) == [b"orders.42.paid", b"orders.eu", b"orders"]
    assert drain(channel, queues["c"]) == [b"orders.eu", b"x.y.eu"]
    assert drain(channel, queues["d"]) == [b"orders", b"single"]


def test_headers_any_and_all(channel: Any, names: Any) -> None:
    exchange = names.exchange()
    channel.exchange_declare(exchange, "headers")
    q_all, q_any = declare_queues(channel, names, 2)
    channel.queue_bind(q_all, exchange, arguments={"x-match": "all", "format": "pdf",
                                                  "type": "report"})
    channel.queue_bind(q_any, exchange, arguments={"x-match": "any", "format": "pdf",
                                                  "type": "log"})
    channel.confirm_delivery()
    for body, headers in ((b"1", {"format": "pdf", "type": "report"}),
                          (b"2", {"format": "pdf"}), (b"3", {"type": "log"}), (b"4", {})):
        channel.basic_publish(exchange, "", body, pika.BasicProperties(headers=headers))
    assert drain(channel, q_all) == [b"1"]
    assert drain(channel, q_any) == [b"1", b"2", b"3"]


def test_invalid_x_match_is_406(pika_conn: Any, names: Any) -> None:
    channel = pika_conn.channel()
    q = names.queue()
    channel.queue_declare(q)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        channel.queue_bind(q, "amq.headers", arguments={"x-match": "some"})
    assert info.value.reply_code == 406


def test_exchange_to_exchange_diamond_and_cycle_deliver_once(channel: Any, names: Any) -> None:
    top, left, right = names.exchange(), names.exchange(), names.exchange()
    for exchange in (top, left, right):
        channel.exchange_declare(exchange, "fanout")
    channel.exchange_bind(left, top)
    channel.exchange_bind(right, top)
    channel.exchange_bind(top, left)  # a cycle back to the top
    q = names.queue()
    channel.queue_declare(q)
    channel.queue_bind(q, left)
    channel.queue_bind(q, right)
    channel.confirm_delivery()
    channel.basic_publish(top, "", b"once")
    assert drain(channel, q) == [b"once"]


def test_alternate_exchange_and_mandatory(channel: Any, names: Any) -> None:
    main, alternate = names.exchange(), names.exchange()
    channel.exchange_declare(alternate, "fanout")
    channel.exchange_declare(main, "direct", arguments={"alternate-exchange": alternate})
    unrouted = names.queue()
    channel.queue_declare(unrouted)
    channel.queue_bind(unrouted, alternate)
    channel.confirm_delivery()
    channel.basic_publish(main, "no-binding", b"lost?", mandatory=True)
    assert drain(channel, unrouted) == [b"lost?"]
    channel.queue_unbind(unrouted, alternate)
    with pytest.raises(pika.exceptions.UnroutableError):
        channel.basic_publish(main, "no-binding", b"returned", mandatory=True)


def test_internal_exchange_refuses_publishes(pika_conn: Any, names: Any) -> None:
    channel = pika_conn.channel()
    exchange = names.exchange()
    channel.exchange_declare(exchange, "fanout", internal=True)
    channel.basic_publish(exchange, "", b"x")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        channel.queue_declare("", exclusive=True)
    assert info.value.reply_code == 403


def test_auto_delete_exchange_goes_with_its_last_binding(pika_conn: Any, names: Any) -> None:
    channel = pika_conn.channel()
    exchange = names.exchange()
    channel.exchange_declare(exchange, "fanout", auto_delete=True)
    q = names.queue()
    channel.queue_declare(q)
    channel.queue_bind(q, exchange)
    channel.queue_unbind(q, exchange)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        channel.exchange_declare(exchange, "fanout", passive=True)
    assert info.value.reply_code == 404


def test_cc_and_bcc(channel: Any, names: Any) -> None:
    exchange = names.exchange()
    channel.exchange_declare(exchange, "direct")
    queues = declare_queues(channel, names, 3)
    for key, queue in zip(("to", "cc", "bcc"), queues, strict=True):
        channel.queue_bind(queue, exchange, key)
    channel.confirm_delivery()
    channel.basic_publish(exchange, "to", b"memo", pika.BasicProperties(
        headers={"CC": ["cc"], "BCC": ["bcc"]}))
    for queue in queues:
        _, properties, body = channel.basic_get(queue, auto_ack=True)
        assert body == b"memo"
        assert "BCC" not in (properties.headers or {})
        assert properties.headers["CC"] == ["cc"]


def test_declare_errors(pika_conn: Any, names: Any) -> None:
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        pika_conn.channel().exchange_declare("amq.mine", "direct")
    assert info.value.reply_code == 403
    exchange = names.exchange()
    pika_conn.channel().exchange_declare(exchange, "direct")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        pika_conn.channel().exchange_declare(exchange, "topic")
    assert info.value.reply_code == 406


def test_predeclared_exchanges(channel: Any) -> None:
    for name in ("amq.direct", "amq.fanout", "amq.topic", "amq.headers", "amq.match"):
        channel.exchange_declare(name, passive=True)


@pytest.mark.amqpd_only
def test_rules_exchange(channel: Any, names: Any) -> None:
    exchange = names.exchange()
    channel.exchange_declare(exchange, "x-rules")
    eu_urgent, paid = declare_queues(channel, names, 2)
    channel.queue_bind(eu_urgent, exchange, arguments={
        "x-rule": "headers.region == 'eu' and headers.priority >= 5"})
    channel.queue_bind(paid, exchange, arguments={"x-rule": "routing_key ~ 'orders.*.paid'"})
    channel.confirm_delivery()
    for body, key, headers in ((b"1", "orders.7.paid", {"region": "eu", "priority": 9}),
                               (b"2", "orders.7.new", {"region": "eu", "priority": 1}),
                               (b"3", "x", {"region": "us", "priority": 9})):
        channel.basic_publish(exchange, key, body, pika.BasicProperties(headers=headers))
    assert drain(channel, eu_urgent) == [b"1"]
    assert drain(channel, paid) == [b"1"]


@pytest.mark.amqpd_only
def test_bad_rule_is_406_with_the_column(pika_conn: Any, names: Any) -> None:
    channel = pika_conn.channel()
    exchange = names.exchange()
    channel.exchange_declare(exchange, "x-rules")
    q = names.queue()
    channel.queue_declare(q)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        channel.queue_bind(q, exchange, arguments={"x-rule": "headers.priority >= and x"})
    assert info.value.reply_code == 406
    assert "column" in info.value.reply_text


def test_consistent_hash_distribution_follows_weights(channel: Any, names: Any) -> None:
    exchange = names.exchange()
    channel.exchange_declare(exchange, "x-consistent-hash")
    weights = {names.queue(): weight for weight in (1, 2, 3)}
    for queue, weight in weights.items():
        channel.queue_declare(queue)
        channel.queue_bind(queue, exchange, str(weight))
    channel.confirm_delivery()
    keys = [uuid.uuid4().hex for _ in range(10_000)]
    for key in keys:
        channel.basic_publish(exchange, key, b"")
    counts = {queue: channel.queue_declare(queue, passive=True).method.message_count
              for queue in weights}
    assert sum(counts.values()) == len(keys)
    total_weight = sum(weights.values())
    for queue, weight in weights.items():
        expected = len(keys) * weight / total_weight
        assert abs(counts[queue] - expected) <= 0.1 * expected, (counts, weights)
    # The same key always lands in the same queue.
    channel.basic_publish(exchange, keys[0], b"again")
    channel.basic_publish(exchange, keys[0], b"again")
    after = Counter({q: channel.queue_declare(q, passive=True).method.message_count - counts[q]
                     for q in weights})
    assert sorted(after.values()) == [0, 0, 2]


@pytest.mark.anyio
async def test_topic_and_fanout_with_aio_pika(aio_connect: Any, names: Any) -> None:
    connection = await aio_connect()
    async with connection:
        channel = await connection.channel()
        topic = await channel.declare_exchange(names.exchange(), aio_pika.ExchangeType.TOPIC)
        fanout = await channel.declare_exchange(names.exchange(), aio_pika.ExchangeType.FANOUT)
        await fanout.bind(topic, routing_key="video.#")  # exchange-to-exchange
        subscriber = await channel.declare_queue(exclusive=True)
        await subscriber.bind(fanout)
        await topic.publish(aio_pika.Message(b"uploaded"), routing_key="video.uploaded")
        await topic.publish(aio_pika.Message(b"other"), routing_key="audio.uploaded")
        message = await subscriber.get(timeout=5)
        assert message.body == b"uploaded"
        await message.ack()
        await asyncio.sleep(0.1)
        assert await subscriber.get(fail=False) is None


@pytest.mark.anyio
async def test_headers_exchange_with_aio_pika(aio_connect: Any, names: Any) -> None:
    connection = await aio_connect()
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(names.exchange(),
                                                  aio_pika.ExchangeType.HEADERS)
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(exchange, arguments={"x-match": "any", "region": "eu", "vip": True})
        await exchange.publish(aio_pika.Message(b"eu", headers={"region": "eu"}), "")
        await exchange.publish(aio_pika.Message(b"us", headers={"region": "us"}), "")
        message = await queue.get(timeout=5)
        assert message.body == b"eu"
        await message.ack()
        await asyncio.sleep(0.1)
        assert await queue.get(fail=False) is None
