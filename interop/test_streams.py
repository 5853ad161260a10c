"""Streams (``x-queue-type: stream``) with pika and aio-pika, against amqpd and RabbitMQ.

The RabbitMQ-compatible part runs against both brokers; amqpd's extensions (consumer groups
with committed offsets, exact filters, restarts of the broker under test) are ``amqpd_only``,
and where RabbitMQ 3.10 answers otherwise on purpose the test says so.
"""

from __future__ import annotations

import datetime
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aio_pika
import pika
import pytest
from pika.exceptions import ChannelClosedByBroker, ConnectionClosedByBroker

from interop.config_broker import ConfigBroker

STREAM = {"x-queue-type": "stream"}


def declare_stream(channel: Any, name: str, **arguments: Any) -> None:
    channel.queue_declare(name, durable=True, arguments={**STREAM, **arguments})


def publish(channel: Any, name: str, bodies: list[bytes], **properties: Any) -> None:
    """Publish with confirms (one call waits for all of them)."""
    channel.confirm_delivery()
    for body in bodies:
        channel.basic_publish("", name, body, pika.BasicProperties(**properties))


def read(
    channel: Any, name: str, count: int, arguments: dict[str, Any] | None = None,
    prefetch: int = 100, timeout: float = 3.0,
) -> list[tuple[int, bytes]]:
    """Consume until ``count`` messages (or ``timeout`` s of silence); (offset, body) each."""
    channel.basic_qos(prefetch_count=prefetch)
    got: list[tuple[int, bytes]] = []
    if count:
        for method, properties, body in channel.consume(
                name, arguments=arguments, inactivity_timeout=timeout):
            if method is None:
                break
            got.append((properties.headers["x-stream-offset"], body))
            channel.basic_ack(method.delivery_tag)
            if len(got) >= count:
                break
    else:
        for method, _, _ in channel.consume(name, arguments=arguments, inactivity_timeout=0.3):
            if method is None:
                break
            got.append((-1, b""))
    channel.cancel()
    return got


def pump(connection: Any, done: Callable[[], bool], timeout: float = 3.0) -> None:
    """Process events until ``done()`` or ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        connection.process_data_events(0.05)


def bodies(n: int, prefix: str = "m") -> list[bytes]:
    return [f"{prefix}{i}".encode() for i in range(n)]


# -- declare -----------------------------------------------------------------------------


@pytest.mark.parametrize(("flags", "arguments", "text"), [
    ({"durable": False}, {}, "invalid property 'non-durable' for queue"),
    ({"durable": True, "exclusive": True}, {}, "invalid property 'exclusive-owner'"),
    ({"durable": True, "auto_delete": True}, {}, "invalid property 'auto-delete'"),
    ({"durable": True}, {"x-overflow": "drop-head"},
     "invalid arg 'x-overflow' for queue '{q}' in vhost '/' of queue type rabbit_stream_queue"),
    ({"durable": True}, {"x-max-length": 5}, "invalid arg 'x-max-length' for queue"),
    ({"durable": True}, {"x-max-age": "7d"}, "invalid arg 'x-max-age' for queue"),
    ({"durable": True}, {"x-max-age": "0s"}, "invalid arg 'x-max-age' for queue"),
    ({"durable": True}, {"x-stream-max-segment-size-bytes": 3_000_000_001},
     "Exceeded max value for x-stream-max-segment-size-bytes"),
])
def test_declare_refusals_are_406(
    pika_conn: Any, names: Any, flags: dict[str, bool], arguments: dict[str, Any], text: str,
) -> None:
    q = names.queue()
    with pytest.raises(ChannelClosedByBroker) as info:
        pika_conn.channel().queue_declare(q, arguments={**STREAM, **arguments}, **flags)
    assert info.value.reply_code == 406
    assert text.format(q=q) in info.value.reply_text


def test_server_named_stream_is_406(pika_conn: Any) -> None:
    with pytest.raises(ChannelClosedByBroker) as info:
        pika_conn.channel().queue_declare("", durable=True, arguments=STREAM)
    assert info.value.args == (
        406, "PRECONDITION_FAILED - Cannot declare a server-named queue for type "
             "rabbit_stream_queue")


def test_declare_with_retention_and_redeclare(pika_conn: Any, names: Any) -> None:
    q = names.queue()
    channel = pika_conn.channel()
    arguments = {"x-max-length-bytes": 10_000_000, "x-max-age": "7D",
                 "x-stream-max-segment-size-bytes": 1_000_000}
    ok = channel.queue_declare(q, durable=True, arguments={**STREAM, **arguments})
    assert (ok.method.message_count, ok.method.consumer_count) == (0, 0)
    channel.queue_declare(q, durable=True, arguments={**STREAM, **arguments})
    channel.queue_declare(q, passive=True)
    with pytest.raises(ChannelClosedByBroker) as info:
        channel.queue_declare(q, durable=True, arguments={**STREAM, "x-max-age": "1D"})
    assert info.value.reply_code == 406


# -- offsets -----------------------------------------------------------------------------


def test_offsets_first_last_next_and_integers(pika_conn: Any, names: Any) -> None:
    q = names.queue()
    channel = pika_conn.channel()
    declare_stream(channel, q)
    for body in bodies(5):  # one confirmed publish at a time: one message per chunk
        publish(channel, q, [body])
    everything = list(enumerate(bodies(5)))
    assert read(channel, q, 5, {"x-stream-offset": "first"}) == everything
    assert read(channel, q, 1, {"x-stream-offset": "last"}) == [(4, b"m4")]
    assert read(channel, q, 3, {"x-stream-offset": 2}) == everything[2:]
    assert read(channel, q, 5, {"x-stream-offset": -3}) == everything  # below: first
    assert read(channel, q, 0, {"x-stream-offset": 100}) == []  # beyond the end: next
    assert read(channel, q, 0, {"x-stream-offset": "next"}) == []
    assert read(channel, q, 0) == []  # next is the default
    assert read(channel, q, 5, {"x-stream-offset": "1h"}) == everything


def test_offset_by_timestamp(pika_conn: Any, names: Any) -> None:
    q = names.queue()
    channel = pika_conn.channel()
    declare_stream(channel, q)
    publish(channel, q, bodies(3, "old"))
    moment = math.ceil(time.time() + 0.05)
    time.sleep(max(moment - time.time(), 0) + 0.05)
    publish(channel, q, bodies(2, "new"))
    stamp = datetime.datetime.fromtimestamp(moment, datetime.UTC).replace(tzinfo=None)
    got = read(channel, q, 2, {"x-stream-offset": stamp})
    assert got == [(3, b"new0"), (4, b"new1")]


def test_next_consumer_gets_new_messages_and_every_consumer_reads_all(
    pika_connect: Callable[[], Any], names: Any,
) -> None:
    q = names.queue()
    producer = pika_connect().channel()
    declare_stream(producer, q)
    publish(producer, q, bodies(3, "before"))
    readers = []
    for _ in range(3):
        connection = pika_connect()
        channel = connection.channel()
        channel.basic_qos(prefetch_count=2)
        got: list[bytes] = []

        def on_message(ch: Any, method: Any, _p: Any, body: bytes, got: list[bytes] = got) -> None:
            got.append(body)
            ch.basic_ack(method.delivery_tag)

        channel.basic_consume(q, on_message)  # next
        readers.append((connection, got))
    for connection, _ in readers:
        connection.process_data_events(0.2)
    publish(producer, q, bodies(10, "after"))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(len(got) < 10 for _, got in readers):
        for connection, _ in readers:
            connection.process_data_events(0.05)
    for _, got in readers:
        assert got == bodies(10, "after")


def test_invalid_offsets_are_406(pika_conn: Any, names: Any) -> None:
    q = names.queue()
    declare_stream(pika_conn.channel(), q)
    for value in ("5000", "1x"):
        channel = pika_conn.channel()
        channel.basic_qos(prefetch_count=10)
        with pytest.raises(ChannelClosedByBroker) as info:
            channel.basic_consume(q, lambda *a: None, arguments={"x-stream-offset": value})
        assert info.value.reply_code == 406
        assert "invalid arg 'x-stream-offset'" in info.value.reply_text


# -- the delivery ------------------------------------------------------------------------


def test_offset_header_is_int64_and_other_headers_stay(pika_conn: Any, names: Any) -> None:
    q = names.queue()
    channel = pika_conn.channel()
    declare_stream(channel, q)
    publish(channel, q, [b"h"], headers={"k": "v", "n": 7}, content_type="text/plain",
            message_id="id-1")
    channel.basic_qos(prefetch_count=1)
    method, properties, body = next(channel.consume(
        q, arguments={"x-stream-offset": "first"}, inactivity_timeout=3))
    assert body == b"h" and not method.redelivered
    assert properties.headers == {"k": "v", "n": 7, "x-stream-offset": 0}
    assert (properties.content_type, properties.message_id) == ("text/plain", "id-1")
    channel.cancel()


@pytest.mark.amqpd_only
@pytest.mark.rabbitmq_differs(reason="RabbitMQ stores stream messages as AMQP 1.0 and drops "
                              "array and table headers")
def test_array_and_table_headers_round_trip(pika_conn: Any, names: Any) -> None:
    q = names.queue()
    channel = pika_conn.channel()
    declare_stream(channel, q)
    publish(channel, q, [b"a"], headers={"list": [1, "two"], "table": {"x": 1}})
    channel.basic_qos(prefetch_count=1)
    _, properties, _ = next(channel.consume(q, arguments={"x-stream-offset": "first"},
                                            inactivity_timeout=3))
    assert properties.headers == {"list": [1, "two"], "table": {"x": 1}, "x-stream-offset": 0}
    channel.cancel()


def test_prefetch_bounds_what_is_in_flight(pika_conn: Any, names: Any) -> None:
    q = names.queue()
    channel = pika_conn.channel()
    declare_stream(channel, q)
    publish(channel, q, bodies(10))
    channel.basic_qos(prefetch_count=3)
    got: list[Any] = []
    channel.basic_consume(q, lambda ch, m, p, b: got.append(m),
                          arguments={"x-stream-offset": "first"})
    pump(pika_conn, lambda: len(got) > 3, 0.5)
    assert len(got) == 3
    channel.basic_ack(got[-1].delivery_tag, multiple=True)  # credit only: nothing removed
    pump(pika_conn, lambda: len(got) > 6, 0.5)
    assert len(got) == 6
    assert not any(m.redelivered for m in got)


# -- RabbitMQ's refusals -------------------------------------------------------------------


def test_consume_without_prefetch_is_406(pika_conn: Any, names: Any) -> None:
    q = names.queue()
    declare_stream(pika_conn.channel(), q)
    for global_qos in (None, True):
        channel = pika_conn.channel()
        if global_qos:
            channel.basic_qos(prefetch_count=10, global_qos=True)
        with pytest.raises(ChannelClosedByBroker) as info:
            channel.basic_consume(q, lambda *a: None)
        assert info.value.args == (
            406, f"PRECONDITION_FAILED - consumer prefetch count is not set for "
                 f"'queue '{q}' in vhost '/''")


def test_consumer_priority_is_406(pika_conn: Any, names: Any) -> None:
    q = names.queue()
    declare_stream(pika_conn.channel(), q)
    channel = pika_conn.channel()
    channel.basic_qos(prefetch_count=10)
    with pytest.raises(ChannelClosedByBroker) as info:
        channel.basic_consume(q, lambda *a: None, arguments={"x-priority": 3})
    assert info.value.reply_code == 406
    assert "invalid arg 'x-priority'" in info.value.reply_text


@pytest.mark.parametrize("operation", ["no-ack", "get", "purge"])
def test_unsupported_operations_close_the_connection_with_540(
    pika_connect: Callable[[], Any], names: Any, operation: str,
) -> None:
    q = names.queue()
    declare_stream(pika_connect().channel(), q)
    connection = pika_connect()
    channel = connection.channel()
    channel.basic_qos(prefetch_count=10)
    with pytest.raises(ConnectionClosedByBroker) as info:
        if operation == "no-ack":
            channel.basic_consume(q, lambda *a: None, auto_ack=True)
            connection.process_data_events(1)
        elif operation == "get":
            channel.basic_get(q)
        else:
            channel.queue_purge(q)
    what = {"no-ack": "automatic acknowledgement", "get": "basic.get",
            "purge": "queue.purge"}[operation]
    assert info.value.args == (
        540, f"NOT_IMPLEMENTED - {what} not supported by stream queues queue '{q}' in "
             "vhost '/'")


@pytest.mark.rabbitmq_differs(reason="RabbitMQ 3.10 closes the connection with 540 on "
                              "nack/reject; 3.13+ and amqpd settle them like an ack")
def test_nack_and_reject_only_free_credit(
    pika_conn: Any, names: Any, server_product: str,
) -> None:
    q = names.queue()
    channel = pika_conn.channel()
    declare_stream(channel, q)
    publish(channel, q, bodies(4))
    channel.basic_qos(prefetch_count=2)
    got: list[Any] = []
    channel.basic_consume(q, lambda ch, m, p, b: got.append((m, b)),
                          arguments={"x-stream-offset": "first"})
    pump(pika_conn, lambda: len(got) == 2)
    if server_product != "amqpd":
        with pytest.raises(ConnectionClosedByBroker) as info:
            channel.basic_nack(got[0][0].delivery_tag, requeue=True)
            pika_conn.process_data_events(1)
        assert info.value.args == (
            540, "NOT_IMPLEMENTED - basic.nack and basic.reject not supported by stream "
                 f"queues queue '{q}' in vhost '/'")
        return
    channel.basic_nack(got[0][0].delivery_tag, requeue=True)
    channel.basic_reject(got[1][0].delivery_tag, requeue=False)
    pump(pika_conn, lambda: len(got) > 4, 0.5)
    assert [body for _, body in got] == bodies(4)  # nothing redelivered
    assert not any(m.redelivered for m, _ in got)


# -- aio-pika ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_aio_pika_publish_and_replay(aio_connect: Any, names: Any) -> None:
    q = names.queue()
    connection = await aio_connect()
    async with connection:
        channel = await connection.channel()  # publisher confirms by default
        await channel.declare_queue(q, durable=True, arguments=STREAM)
        for body in bodies(4, "aio"):
            await channel.default_exchange.publish(aio_pika.Message(body), routing_key=q)
        await channel.set_qos(prefetch_count=10)
        queue = await channel.get_queue(q, ensure=False)
        for _ in range(2):  # two independent replays from the start
            got = []
            async with queue.iterator(arguments={"x-stream-offset": "first"}) as messages:
                async for message in messages:
                    got.append((message.headers["x-stream-offset"], message.body))
                    await message.ack()
                    if len(got) == 4:
                        break
            assert got == list(enumerate(bodies(4, "aio")))


# -- amqpd: restarts -----------------------------------------------------------------------


def _connect(broker: ConfigBroker) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker.port))


@pytest.mark.amqpd_only
def test_stream_survives_restart_and_kill(tmp_path: Path) -> None:
    broker = ConfigBroker(tmp_path, "{}\n", log_level="warning")
    try:
        connection = _connect(broker)
        channel = connection.channel()
        declare_stream(channel, "events", **{"x-stream-max-segment-size-bytes": 2000})
        publish(channel, "events", bodies(100))
        connection.close()
    finally:
        broker.stop()
    broker = ConfigBroker(tmp_path, "{}\n", log_level="warning")
    try:
        connection = _connect(broker)
        channel = connection.channel()
        got = read(channel, "events", 100, {"x-stream-offset": "first"})
        assert got == list(enumerate(bodies(100)))
        publish(channel, "events", [b"confirmed"])
    finally:
        broker.kill()
    broker = ConfigBroker(tmp_path, "{}\n", log_level="warning")
    try:
        channel = _connect(broker).channel()
        assert read(channel, "events", 1, {"x-stream-offset": "last"}) == [(100, b"confirmed")]
        segments = list((tmp_path / "data" / "streams" / "%2F" / "events").glob("*.seg"))
        assert len(segments) >= 3  # 2,000-byte segments
    finally:
        broker.stop()


# -- amqpd: consumer groups ----------------------------------------------------------------


def _take(connection: Any, channel: Any, q: str, count: int, arguments: dict[str, Any],
          prefetch: int = 100) -> list[tuple[Any, int, bytes]]:
    """Start a consumer and collect ``count`` deliveries without acking them."""
    channel.basic_qos(prefetch_count=prefetch)
    got: list[tuple[Any, int, bytes]] = []
    channel.basic_consume(
        q, lambda ch, m, p, b: got.append((m, p.headers["x-stream-offset"], b)),
        arguments=arguments)
    pump(connection, lambda: len(got) >= count)
    return got


@pytest.mark.amqpd_only
def test_group_resumes_after_the_highest_contiguous_ack(pika_connect: Any, names: Any) -> None:
    q = names.queue()
    producer = pika_connect().channel()
    declare_stream(producer, q)
    publish(producer, q, bodies(10))
    first = pika_connect()
    channel = first.channel()
    got = _take(first, channel, q, 10, {"x-stream-group": "g", "x-stream-offset": "first"})
    assert [offset for _, offset, _ in got] == list(range(10))
    for method, offset, _ in got:
        if offset <= 5 or offset == 8:
            channel.basic_ack(method.delivery_tag)
    first.close()  # 6, 7 and 9 were never acked
    second = pika_connect()
    again = _take(second, second.channel(), q, 3, {"x-stream-group": "g"})
    assert [(offset, method.redelivered) for method, offset, _ in again] == \
        [(6, True), (7, True), (9, True)]
    other = pika_connect()  # another group reads everything on its own
    assert len(_take(other, other.channel(), q, 10,
                     {"x-stream-group": "h", "x-stream-offset": "first"})) == 10


@pytest.mark.amqpd_only
def test_group_members_share_the_messages(pika_connect: Any, names: Any) -> None:
    q = names.queue()
    producer = pika_connect().channel()
    declare_stream(producer, q)
    members = []
    for _ in range(3):
        connection = pika_connect()
        channel = connection.channel()
        channel.basic_qos(prefetch_count=2)
        got: list[int] = []

        def on_message(ch: Any, method: Any, properties: Any, _b: bytes,
                       got: list[int] = got) -> None:
            got.append(properties.headers["x-stream-offset"])
            ch.basic_ack(method.delivery_tag)

        channel.basic_consume(q, on_message, arguments={"x-stream-group": "workers"})
        members.append((connection, got))
    publish(producer, q, bodies(30))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and sum(len(got) for _, got in members) < 30:
        for connection, _ in members:
            connection.process_data_events(0.02)
    offsets = sorted(offset for _, got in members for offset in got)
    assert offsets == list(range(30))  # each message to exactly one member
    assert all(got for _, got in members)


@pytest.mark.amqpd_only
def test_group_commit_survives_kill_and_restart(tmp_path: Path) -> None:
    broker = ConfigBroker(tmp_path, "{}\n", log_level="warning")
    try:
        connection = _connect(broker)
        channel = connection.channel()
        declare_stream(channel, "orders")
        publish(channel, "orders", bodies(8))
        got = _take(connection, channel, "orders", 8,
                    {"x-stream-group": "billing", "x-stream-offset": "first"})
        for method, _offset, _ in got[:5]:
            channel.basic_ack(method.delivery_tag)
        channel.basic_ack(got[6][0].delivery_tag)  # 5 is still open: the commit is 5
        connection.process_data_events(0.3)
        # A group that never committed starts where x-stream-offset says.
        fresh = connection.channel()
        assert len(_take(connection, fresh, "orders", 2,
                         {"x-stream-group": "audit", "x-stream-offset": 6})) == 2
        connection.process_data_events(0.3)
    finally:
        broker.kill()
    broker = ConfigBroker(tmp_path, "{}\n", log_level="warning")
    try:
        connection = _connect(broker)
        channel = connection.channel()
        # x-stream-offset only applies to a group without a commit.
        resumed = _take(connection, channel, "orders", 3,
                        {"x-stream-group": "billing", "x-stream-offset": "first"})
        assert [offset for _, offset, _ in resumed] == [5, 6, 7]
        audit = _take(connection, connection.channel(), "orders", 2,
                      {"x-stream-group": "audit"})
        assert [offset for _, offset, _ in audit] == [6, 7]  # nothing acked: back at 6
    finally:
        broker.stop()


# -- amqpd: filters ------------------------------------------------------------------------

FILTER_DIFFERS = ("stream filters arrived in RabbitMQ 3.13 (3.10 ignores the arguments), "
                  "and its Bloom filter lets false positives through; amqpd's are exact")


@pytest.mark.amqpd_only
@pytest.mark.rabbitmq_differs(reason=FILTER_DIFFERS)
def test_filter_values_are_exact(pika_conn: Any, names: Any) -> None:
    q = names.queue()
    channel = pika_conn.channel()
    declare_stream(channel, q)
    channel.confirm_delivery()
    for index, region in enumerate(["eu", "us", None, "eu", "apac", None]):
        headers = {"x-stream-filter-value": region} if region else {}
        channel.basic_publish("", q, b"%d" % index, pika.BasicProperties(headers=headers))
    first = {"x-stream-offset": "first"}
    assert [o for o, _ in read(channel, q, 2, {**first, "x-stream-filter": "eu"})] == [0, 3]
    assert [o for o, _ in read(channel, q, 2, {**first, "x-stream-filter": ["us", "apac"]})
            ] == [1, 4]
    unfiltered = {**first, "x-stream-filter": "eu", "x-stream-match-unfiltered": True}
    assert [o for o, _ in read(channel, q, 4, unfiltered)] == [0, 2, 3, 5]


@pytest.mark.amqpd_only
def test_filter_rule(pika_conn: Any, names: Any) -> None:
    q = names.queue()
    channel = pika_conn.channel()
    declare_stream(channel, q)
    channel.confirm_delivery()
    for priority in range(6):
        channel.basic_publish("", q, b"p%d" % priority, pika.BasicProperties(
            headers={"priority": priority, "region": "eu" if priority % 2 else "us"}))
    rule = "headers.priority >= 2 and headers.region == 'eu'"
    got = read(channel, q, 2, {"x-stream-offset": "first", "x-stream-filter-rule": rule})
    assert got == [(3, b"p3"), (5, b"p5")]
    bad = pika_conn.channel()
    bad.basic_qos(prefetch_count=1)
    with pytest.raises(ChannelClosedByBroker) as info:
        bad.basic_consume(q, lambda *a: None, arguments={"x-stream-filter-rule": "headers.x >"})
    assert info.value.reply_code == 406
    assert "invalid x-stream-filter-rule" in info.value.reply_text
