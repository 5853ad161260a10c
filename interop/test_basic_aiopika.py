"""Core scenarios through aio-pika (asyncio), run with the anyio pytest plugin."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from decimal import Decimal

import aio_pika
import aiormq
import aiormq.exceptions as amqx
import pytest

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


@pytest.fixture
async def conn(aio_connect):
    connection = await aio_connect()
    try:
        yield connection
    finally:
        with contextlib.suppress(Exception):
            await connection.close()


async def noop(message):
    pass


async def wait_for(predicate, seconds=5.0):
    async with asyncio.timeout(seconds):
        while not predicate():  # noqa: ASYNC110 - polling plain client-side state
            await asyncio.sleep(0.01)


async def test_connect_properties_and_tune(conn):
    amqp = conn.transport.connection
    props = amqp.server_properties
    for key in ("product", "version", "platform"):
        assert props[key]
    caps = props["capabilities"]
    for cap in ("publisher_confirms", "basic.nack", "consumer_cancel_notify",
                "connection.blocked", "authentication_failure_close", "per_consumer_qos",
                "exchange_exchange_bindings"):
        assert caps[cap] is True, cap
    tune = amqp.connection_tune  # the server's connection.tune proposal
    assert (tune.channel_max, tune.frame_max, tune.heartbeat) == (2047, 131072, 60)


async def test_declare_publish_get(conn, names):
    ch = await conn.channel()
    q = await ch.declare_queue(names.queue())
    assert q.declaration_result.message_count == 0
    assert q.declaration_result.consumer_count == 0
    for i in range(3):
        await ch.default_exchange.publish(aio_pika.Message(str(i).encode()), routing_key=q.name)
    again = await ch.declare_queue(q.name, passive=True)
    assert again.declaration_result.message_count == 3
    msg = await q.get(no_ack=True)
    assert msg.body == b"0"
    assert msg.message_count == 2  # get-ok message_count: messages left after this one
    assert (await q.get(no_ack=True)).body == b"1"
    assert (await q.get(no_ack=True)).body == b"2"
    assert await q.get(fail=False) is None


async def test_server_named_queue(conn):
    ch = await conn.channel()
    q = await ch.declare_queue(exclusive=True)
    assert q.name.startswith("amq.gen-")


async def test_properties_round_trip(conn, names):
    ch = await conn.channel()
    q = await ch.declare_queue(names.queue())
    headers = {
        "s": "text", "i": 7, "neg": -3, "big": 2**40, "t": True, "f": False,
        "dec": Decimal("1.5"),  # (pamqp can't encode bytes values in tables)
        "nested": {"x": [1, "y", {"z": None}]},
    }
    ts = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    sent = aio_pika.Message(
        b"body",
        headers=headers,
        content_type="application/octet-stream",
        content_encoding="identity",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        priority=4,
        correlation_id="corr",
        reply_to="rq",
        expiration=3600,  # seconds in aio-pika; sent as "3600000" ms
        message_id="mid",
        timestamp=ts,
        type="kind",
        user_id="guest",
        app_id="aio",
    )
    await ch.default_exchange.publish(sent, routing_key=q.name)
    got = await q.get(no_ack=True)
    assert got.body == b"body"
    assert got.headers == headers
    assert got.content_type == "application/octet-stream"
    assert got.content_encoding == "identity"
    assert got.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert got.priority == 4
    assert got.correlation_id == "corr"
    assert got.reply_to == "rq"
    assert got.expiration == 3600
    assert got.message_id == "mid"
    assert got.timestamp == ts
    assert got.type == "kind"
    assert got.user_id == "guest"
    assert got.app_id == "aio"
    assert got.redelivered is False


@pytest.mark.parametrize("size", [0, 131064, 10 * 1024 * 1024])
async def test_body_sizes(conn, size):
    ch = await conn.channel()
    q = await ch.declare_queue(exclusive=True)
    payload = (b"0123456789abcdef" * (size // 16 + 1))[:size]
    await ch.default_exchange.publish(aio_pika.Message(payload), routing_key=q.name)
    got = await q.get(no_ack=True)
    assert got.body == payload


async def test_consume_iterator_ack_and_prefetch(conn):
    ch = await conn.channel()
    await ch.set_qos(prefetch_count=3)
    q = await ch.declare_queue(exclusive=True)
    for i in range(20):
        await ch.default_exchange.publish(aio_pika.Message(str(i).encode()), routing_key=q.name)
    seen = []
    async with q.iterator() as it:
        async for msg in it:
            seen.append(msg.body)
            await msg.ack()
            if len(seen) == 20:
                break
    assert seen == [str(i).encode() for i in range(20)]


async def test_prefetch_limits_unacked(conn):
    ch = await conn.channel()
    await ch.set_qos(prefetch_count=2)
    q = await ch.declare_queue(exclusive=True)
    for i in range(6):
        await ch.default_exchange.publish(aio_pika.Message(str(i).encode()), routing_key=q.name)
    got: list[aio_pika.abc.AbstractIncomingMessage] = []

    async def on_message(msg):
        got.append(msg)

    await q.consume(on_message)
    await wait_for(lambda: len(got) == 2)
    await asyncio.sleep(0.3)
    assert len(got) == 2
    await got[0].ack()
    await wait_for(lambda: len(got) == 3)
    await asyncio.sleep(0.2)
    assert len(got) == 3


async def test_round_robin_between_consumers(conn):
    ch = await conn.channel()
    q = await ch.declare_queue(exclusive=True)
    order = []

    def recorder(name):
        async def on_message(message):
            order.append(name)

        return on_message

    await q.consume(recorder("a"), no_ack=True)
    await q.consume(recorder("b"), no_ack=True)
    for i in range(10):
        await ch.default_exchange.publish(aio_pika.Message(str(i).encode()), routing_key=q.name)
    await wait_for(lambda: len(order) == 10)
    assert order.count("a") == order.count("b") == 5
    assert all(order[i] != order[i + 1] for i in range(9)), order


async def test_nack_requeue_and_reject(conn):
    ch = await conn.channel()
    q = await ch.declare_queue(exclusive=True)
    for body in (b"1", b"2"):
        await ch.default_exchange.publish(aio_pika.Message(body), routing_key=q.name)
    m1 = await q.get()
    m2 = await q.get()
    await m1.nack(requeue=True)
    await m2.reject(requeue=False)
    again = await q.get()
    assert (again.body, again.redelivered) == (b"1", True)
    await again.ack()
    assert await q.get(fail=False) is None


async def test_unacked_requeued_when_channel_closes(conn):
    ch = await conn.channel()
    q = await ch.declare_queue(exclusive=True)
    for i in range(1, 6):
        await ch.default_exchange.publish(aio_pika.Message(str(i).encode()), routing_key=q.name)
    cons_ch = await conn.channel()
    cons_q = await cons_ch.get_queue(q.name, ensure=False)
    for _ in range(5):
        await cons_q.get()
    await cons_ch.close()
    got = []
    for _ in range(5):
        m = await q.get(no_ack=True)
        got.append((m.body, m.redelivered))
    assert got == [(str(i).encode(), True) for i in range(1, 6)]


async def test_publisher_confirms_default_channel(conn):
    ch = await conn.channel()  # publisher_confirms=True is aio-pika's default
    assert ch.publisher_confirms
    q = await ch.declare_queue(exclusive=True)
    confirm = await ch.default_exchange.publish(aio_pika.Message(b"x"), routing_key=q.name)
    assert isinstance(confirm, aiormq.spec.Basic.Ack)


async def test_thousand_confirmed_publishes(conn):
    ch = await conn.channel()
    q = await ch.declare_queue(exclusive=True)
    for i in range(1000):
        confirm = await ch.default_exchange.publish(
            aio_pika.Message(str(i).encode()), routing_key=q.name)
        assert isinstance(confirm, aiormq.spec.Basic.Ack)
    # and 1,000 more in flight at once
    results = await asyncio.gather(*(
        ch.default_exchange.publish(aio_pika.Message(b"p"), routing_key=q.name)
        for _ in range(1000)))
    assert all(isinstance(r, aiormq.spec.Basic.Ack) for r in results)
    declared = await ch.declare_queue(q.name, passive=True)
    assert declared.declaration_result.message_count == 2000


async def test_mandatory_unroutable_returned(conn, names):
    ch = await conn.channel()
    rk = names.queue()
    # default channel: the confirm future resolves to the basic.return
    result = await ch.default_exchange.publish(aio_pika.Message(b"lost"), routing_key=rk,
                                               mandatory=True)
    assert isinstance(result.delivery, aiormq.spec.Basic.Return)
    assert (result.delivery.reply_code, result.delivery.reply_text) == (312, "NO_ROUTE")
    assert result.delivery.routing_key == rk
    assert result.body == b"lost"
    # on_return_raises=True: publish raises
    ch2 = await conn.channel(on_return_raises=True)
    with pytest.raises(amqx.PublishError) as ei:
        await ch2.default_exchange.publish(aio_pika.Message(b"lost"), routing_key=rk,
                                           mandatory=True)
    assert "NO_ROUTE" in str(ei.value)


async def test_direct_exchange_and_bindings(conn, names):
    ch = await conn.channel()
    x = await ch.declare_exchange(names.exchange(), aio_pika.ExchangeType.DIRECT,
                                  auto_delete=False)
    q = await ch.declare_queue(exclusive=True)
    await q.bind(x, routing_key="k")
    await x.publish(aio_pika.Message(b"routed"), routing_key="k")
    await x.publish(aio_pika.Message(b"dropped"), routing_key="other")
    assert (await q.get(no_ack=True)).body == b"routed"
    assert await q.get(fail=False) is None
    await q.unbind(x, routing_key="k")
    await x.delete()


async def test_server_cancel_on_queue_delete(conn, names):
    ch = await conn.channel()
    q = await ch.declare_queue(names.queue())
    cancelled = asyncio.get_running_loop().create_future()
    underlay = await ch.get_underlay_channel()
    underlay.on_consumer_cancel_callbacks.add(
        lambda frame: cancelled.done() or cancelled.set_result(frame))
    tag = await q.consume(noop)
    other = await conn.channel()
    await other.queue_delete(q.name)
    async with asyncio.timeout(5):
        frame = await cancelled
    assert frame.consumer_tag == tag
    assert tag not in underlay.consumers
    assert not ch.is_closed


async def test_exclusive_consume_refused_403(conn, names):
    ch = await conn.channel()
    q = await ch.declare_queue(names.queue())
    await q.consume(noop)
    ch2 = await conn.channel()
    q2 = await ch2.get_queue(q.name, ensure=False)
    with pytest.raises(amqx.ChannelAccessRefused):
        await q2.consume(noop, exclusive=True)


async def test_heartbeat_connection_stays_open(aio_connect):
    connection = await aio_connect(heartbeat=1)
    try:
        await asyncio.sleep(3)
        assert not connection.is_closed
        ch = await connection.channel()
        await ch.declare_queue(exclusive=True)
    finally:
        await connection.close()

