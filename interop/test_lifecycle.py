"""Message lifecycle with real clients: TTL, dead-lettering, limits, delivery limits, ack
deadlines and leases, transactions, single active consumer.

Runs against amqpd by default and against any broker with AMQP_URL; where RabbitMQ 3.10
behaves differently the test is marked and says why.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aio_pika
import pika
import pytest

pytestmark = pytest.mark.timeout(30)


def get_body(channel: Any, queue: str) -> bytes | None:
    method, _, body = channel.basic_get(queue, auto_ack=True)
    return None if method is None else body


def wait_until(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def message_count(channel: Any, queue: str) -> int:
    return int(channel.queue_declare(queue, passive=True).method.message_count)


# -- TTL -------------------------------------------------------------------------------


def test_queue_ttl_expires_without_consumers(channel: Any, names: Any) -> None:
    q = names.queue()
    channel.queue_declare(q, arguments={"x-message-ttl": 500})
    channel.confirm_delivery()
    channel.basic_publish("", q, b"x")
    assert message_count(channel, q) == 1
    assert wait_until(lambda: message_count(channel, q) == 0)


def test_per_message_expiration(channel: Any, names: Any) -> None:
    q = names.queue()
    channel.queue_declare(q)
    channel.basic_publish("", q, b"short", pika.BasicProperties(expiration="100"))
    time.sleep(0.3)
    assert get_body(channel, q) is None


@pytest.mark.rabbitmq_differs(
    reason="RabbitMQ classic queues expire messages only at the head of the queue"
)
@pytest.mark.amqpd_only
def test_expiry_not_at_head(channel: Any, names: Any) -> None:
    q = names.queue()
    channel.queue_declare(q)
    channel.basic_publish("", q, b"keep")
    channel.basic_publish("", q, b"short", pika.BasicProperties(expiration="100"))
    assert wait_until(lambda: message_count(channel, q) == 1)
    assert get_body(channel, q) == b"keep"


def test_invalid_expiration_is_406(pika_conn: Any, names: Any) -> None:
    q = names.queue()
    channel = pika_conn.channel()
    channel.queue_declare(q)
    channel.basic_publish("", q, b"x", pika.BasicProperties(expiration="soon"))
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        channel.queue_declare(q, passive=True)
    assert info.value.reply_code == 406


def test_x_expires_deletes_the_unused_queue(pika_conn: Any, names: Any) -> None:
    q = names.queue()
    pika_conn.channel().queue_declare(q, arguments={"x-expires": 300})
    # Even a passive declare renews the lease (RabbitMQ), so look only once, later.
    time.sleep(1.0)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        pika_conn.channel().queue_declare(q, passive=True)
    assert info.value.reply_code == 404


def test_invalid_queue_argument_is_406(pika_conn: Any, names: Any) -> None:
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        pika_conn.channel().queue_declare(names.queue(), arguments={"x-max-length": -1})
    assert info.value.reply_code == 406


# -- dead-lettering --------------------------------------------------------------------


def test_rejected_message_is_dead_lettered_with_x_death(channel: Any, names: Any) -> None:
    q, dlq, dlx = names.queue(), names.queue(), names.exchange()
    channel.exchange_declare(dlx, "fanout")
    channel.queue_declare(dlq)
    channel.queue_bind(dlq, dlx)
    channel.queue_declare(q, arguments={"x-dead-letter-exchange": dlx})
    channel.basic_publish("", q, b"bad", pika.BasicProperties(headers={"k": "v"}))
    method, _, _ = channel.basic_get(q)
    channel.basic_reject(method.delivery_tag, requeue=False)
    assert wait_until(lambda: message_count(channel, dlq) == 1)
    method, properties, body = channel.basic_get(dlq, auto_ack=True)
    assert body == b"bad"
    death = properties.headers["x-death"][0]
    assert death["reason"] == "rejected"
    assert death["queue"] == q
    assert death["count"] == 1
    assert death["exchange"] == ""
    assert death["routing-keys"] == [q]
    assert properties.headers["x-first-death-reason"] == "rejected"
    assert properties.headers["k"] == "v"


def test_expired_message_is_dead_lettered_with_routing_key(channel: Any, names: Any) -> None:
    q, dlq = names.queue(), names.queue()
    channel.queue_declare(dlq)
    channel.queue_declare(q, arguments={"x-message-ttl": 100, "x-dead-letter-exchange": "",
                                        "x-dead-letter-routing-key": dlq})
    channel.basic_publish("", q, b"late")
    assert wait_until(lambda: message_count(channel, dlq) == 1)
    _, properties, body = channel.basic_get(dlq, auto_ack=True)
    assert body == b"late"
    assert properties.headers["x-death"][0]["reason"] == "expired"


def test_max_length_drop_head_and_reject_publish(channel: Any, names: Any) -> None:
    q1, q2 = names.queue(), names.queue()
    channel.queue_declare(q1, arguments={"x-max-length": 2})
    channel.queue_declare(q2, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    channel.confirm_delivery()
    for body in (b"1", b"2", b"3"):
        channel.basic_publish("", q1, body)
    assert [get_body(channel, q1), get_body(channel, q1)] == [b"2", b"3"]
    channel.basic_publish("", q2, b"first")
    with pytest.raises(pika.exceptions.NackError):
        channel.basic_publish("", q2, b"second")
    assert get_body(channel, q2) == b"first"


# -- poison messages -------------------------------------------------------------------


def test_delivery_limit_dead_letters_poison_message(channel: Any, names: Any) -> None:
    # x-queue-type quorum: RabbitMQ 3.10 supports x-delivery-limit only on quorum queues;
    # amqpd supports it on every queue and accepts the argument.
    q, dlq = names.queue(), names.queue()
    channel.queue_declare(dlq)
    channel.queue_declare(q, durable=True, arguments={
        "x-queue-type": "quorum", "x-delivery-limit": 2,
        "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq})
    channel.basic_publish("", q, b"poison")
    counts = []
    for _ in range(3):
        assert wait_until(lambda: message_count(channel, q) == 1)
        method, properties, _ = channel.basic_get(q)
        counts.append((properties.headers or {}).get("x-delivery-count"))
        channel.basic_nack(method.delivery_tag, requeue=True)
    assert counts[1:] == [1, 2]
    assert wait_until(lambda: message_count(channel, dlq) == 1)
    _, properties, body = channel.basic_get(dlq, auto_ack=True)
    assert body == b"poison"
    assert properties.headers["x-death"][0]["reason"] == "delivery_limit"


# -- ack deadlines and leases ----------------------------------------------------------


@pytest.mark.rabbitmq_differs(
    reason="x-consumer-timeout as a queue argument arrived in RabbitMQ 3.12; 3.10 has only "
    "the global setting, and it closes the channel instead of cancelling the consumer"
)
@pytest.mark.amqpd_only
def test_consumer_timeout_cancels_consumer_and_requeues(pika_conn: Any, names: Any) -> None:
    q = names.queue()
    channel = pika_conn.channel()
    channel.queue_declare(q, arguments={"x-consumer-timeout": 1000})
    channel.basic_publish("", q, b"slow")
    cancelled: list[Any] = []
    channel.add_on_cancel_callback(cancelled.append)
    channel.basic_consume(q, lambda *args: None)
    deadline = time.monotonic() + 6
    while not cancelled and time.monotonic() < deadline:
        pika_conn.process_data_events(time_limit=0.2)
    assert cancelled
    other = pika_conn.channel()
    method, _, body = other.basic_get(q, auto_ack=True)
    assert body == b"slow" and method.redelivered


@pytest.mark.amqpd_only
def test_lease_extension_with_pika(pika_conn: Any, names: Any) -> None:
    q = names.queue()
    channel = pika_conn.channel()
    channel.queue_declare(q, arguments={"x-consumer-timeout": 1000})
    channel.confirm_delivery()
    channel.basic_publish("", q, b"long job")
    cancelled: list[Any] = []
    channel.add_on_cancel_callback(cancelled.append)
    tags: list[int] = []
    channel.basic_consume(q, lambda ch, method, props, body: tags.append(method.delivery_tag))
    while not tags:
        pika_conn.process_data_events(time_limit=0.1)
    # The worker needs longer than the 1 s timeout: extend the lease to 5 s.
    channel.basic_publish("amq.lease", "", b"", pika.BasicProperties(
        headers={"x-delivery-tag": tags[0], "x-extend-ms": 5000}))
    end = time.monotonic() + 2.5
    while time.monotonic() < end:
        pika_conn.process_data_events(time_limit=0.2)
    assert not cancelled
    channel.basic_ack(tags[0])


@pytest.mark.amqpd_only
@pytest.mark.anyio
async def test_lease_extension_with_aio_pika(aio_connect: Any, names: Any) -> None:
    q = names.queue()
    connection = await aio_connect()
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(q, arguments={"x-consumer-timeout": 1000})
        await channel.default_exchange.publish(aio_pika.Message(b"long job"), routing_key=q)
        lease = await channel.get_exchange("amq.lease")
        incoming: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()
        await queue.consume(incoming.put)
        message = await asyncio.wait_for(incoming.get(), 5)
        await lease.publish(
            aio_pika.Message(b"", headers={"x-delivery-tag": message.delivery_tag,
                                           "x-extend-ms": 5000}),
            routing_key="",
        )
        await asyncio.sleep(2.5)
        await message.ack()  # the channel is still open and the delivery still ours
        await channel.close()


# -- transactions ----------------------------------------------------------------------


def test_transactions(channel: Any, names: Any) -> None:
    q = names.queue()
    channel.queue_declare(q)
    channel.tx_select()
    channel.basic_publish("", q, b"rolled back")
    channel.tx_rollback()
    channel.basic_publish("", q, b"committed")
    channel.tx_commit()
    assert get_body(channel, q) == b"committed"
    assert get_body(channel, q) is None


def test_tx_then_confirm_is_406(pika_conn: Any) -> None:
    channel = pika_conn.channel()
    channel.tx_select()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        channel.confirm_delivery()
    assert info.value.reply_code == 406


# -- single active consumer ------------------------------------------------------------


def test_single_active_consumer(pika_conn: Any, names: Any) -> None:
    q = names.queue()
    channel = pika_conn.channel()
    channel.queue_declare(q, arguments={"x-single-active-consumer": True})
    got: list[str] = []
    tag_a = channel.basic_consume(q, lambda ch, m, p, b: got.append("a"), auto_ack=True)
    channel.basic_consume(q, lambda ch, m, p, b: got.append("b"), auto_ack=True)
    for _ in range(4):
        channel.basic_publish("", q, b"x")
    assert wait_until(lambda: (pika_conn.process_data_events(0.05), len(got) == 4)[1])
    assert got == ["a"] * 4
    channel.basic_cancel(tag_a)
    channel.basic_publish("", q, b"x")
    assert wait_until(lambda: (pika_conn.process_data_events(0.05), len(got) == 5)[1])
    assert got[-1] == "b"
