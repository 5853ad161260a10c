"""Direct reply-to (``amq.rabbitmq.reply-to``) with pika, aio-pika and py-amqp.

Every test passes against RabbitMQ 3.10 too (``AMQP_URL=...``); the reply texts and codes
asserted here are the ones RabbitMQ 3.10.8 gave. Where RabbitMQ answers differently on
purpose the test is marked ``rabbitmq_differs`` and asserts each broker's answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import aio_pika
import amqp
import pika
import pytest
from conftest import Names
from pika.exceptions import ChannelClosedByBroker

pytestmark = pytest.mark.timeout(30)

REPLY_TO = "amq.rabbitmq.reply-to"


def fib(n: int) -> int:
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def wait_for(predicate: Callable[[], bool], connection: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        connection.process_data_events(0.05)
    return predicate()


def get_one(channel: Any, queue: str) -> tuple[Any, Any, bytes]:
    """basic.get until a message is there (a publish on another channel is asynchronous)."""
    deadline = time.monotonic() + 5
    while True:
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        if method is not None or time.monotonic() > deadline:
            assert method is not None, f"nothing in {queue}"
            return method, properties, body
        time.sleep(0.02)


def serve_rpc(params: pika.URLParameters, queue: str, ready: threading.Event,
              stop: threading.Event) -> None:
    """The RPC server of pika's tutorial six, on its own connection and thread."""
    connection = pika.BlockingConnection(params)
    channel = connection.channel()
    channel.queue_declare(queue, auto_delete=True)
    channel.basic_qos(prefetch_count=1)

    def on_request(ch: Any, method: Any, properties: Any, body: bytes) -> None:
        response = fib(int(body))
        ch.basic_publish("", properties.reply_to, str(response).encode(),
                         pika.BasicProperties(correlation_id=properties.correlation_id))
        ch.basic_ack(method.delivery_tag)

    channel.basic_consume(queue, on_request)
    ready.set()
    while not stop.is_set():
        connection.process_data_events(0.05)
    connection.close()


@pytest.fixture
def rpc_server(pika_params: pika.URLParameters, names: Names) -> Any:
    queue = names.queue()
    ready, stop = threading.Event(), threading.Event()
    thread = threading.Thread(target=serve_rpc, args=(pika_params, queue, ready, stop),
                              daemon=True)
    thread.start()
    assert ready.wait(10)
    yield queue
    stop.set()
    thread.join(10)


def test_capability_is_announced(server_properties: dict[str, Any]) -> None:
    assert server_properties["capabilities"]["direct_reply_to"] is True


def test_pika_tutorial_six_with_direct_reply_to(pika_conn: Any, rpc_server: str,
                                               server_product: str) -> None:
    channel = pika_conn.channel()
    responses: dict[str, bytes] = {}
    seen: list[tuple[Any, Any]] = []

    def on_response(ch: Any, method: Any, properties: Any, body: bytes) -> None:
        responses[properties.correlation_id] = body
        seen.append((method, properties))

    channel.basic_consume(REPLY_TO, on_response, auto_ack=True)
    for n in (10, 20, 25):
        channel.basic_publish("", rpc_server, str(n).encode(), pika.BasicProperties(
            reply_to=REPLY_TO, correlation_id=f"c{n}"))
    assert wait_for(lambda: len(responses) == 3, pika_conn)
    assert responses == {"c10": b"55", "c20": b"6765", "c25": b"75025"}
    method, _ = seen[0]
    # Delivered from the default exchange with the rewritten name as routing key.
    assert method.exchange == ""
    assert method.routing_key.startswith(REPLY_TO + ".")
    assert method.redelivered is False
    # amqpd numbers them like any delivery on the channel; RabbitMQ 3.10 sends tag 1 each
    # time (no-ack: nobody acks them, so clients do not mind either way).
    tags = [m.delivery_tag for m, _ in seen]
    assert tags == ([1, 2, 3] if server_product == "amqpd" else [1, 1, 1])


def test_reply_to_is_rewritten_per_consume(pika_conn: Any, names: Names) -> None:
    """The server sees amq.rabbitmq.reply-to.<token>; a new consume gives a new token and
    the old one leads nowhere."""
    channel = pika_conn.channel()
    queue = names.queue()
    channel.queue_declare(queue)
    tag = channel.basic_consume(REPLY_TO, lambda *a: None, auto_ack=True)
    channel.basic_publish("", queue, b"1", pika.BasicProperties(reply_to=REPLY_TO))
    channel.basic_publish("", queue, b"2", pika.BasicProperties(reply_to=REPLY_TO))
    channel.basic_cancel(tag)
    channel.basic_consume(REPLY_TO, lambda *a: None, auto_ack=True)
    channel.basic_publish("", queue, b"3", pika.BasicProperties(reply_to=REPLY_TO))
    seen = []
    for _ in range(3):
        _, properties, _ = get_one(channel, queue)
        seen.append(properties.reply_to)
    assert seen[0] == seen[1] != seen[2]
    assert all(name.startswith(REPLY_TO + ".") and len(name) > len(REPLY_TO) + 16
               for name in seen)


def test_reply_from_the_same_channel_and_confirms(pika_conn: Any) -> None:
    channel = pika_conn.channel()
    got: list[bytes] = []
    names: list[str] = []
    channel.basic_consume(REPLY_TO, lambda ch, m, p, b: (got.append(b), names.append(p.reply_to)),
                          auto_ack=True)
    probe = pika_conn.channel()
    name = probe.queue_declare("", exclusive=True).method.queue
    channel.basic_publish("", name, b"", pika.BasicProperties(reply_to=REPLY_TO))
    _, properties, _ = get_one(probe, name)
    token = properties.reply_to
    replier = pika_conn.channel()
    replier.confirm_delivery()
    replier.basic_publish("", token, b"confirmed", pika.BasicProperties(delivery_mode=2))
    channel.basic_publish("", token, b"self", pika.BasicProperties(reply_to=REPLY_TO))
    assert wait_for(lambda: len(got) == 2, pika_conn)
    assert got == [b"confirmed", b"self"]
    assert names[1] == token  # rewritten on the reply too


def closed_with(channel: Any, connection: Any, action: Callable[[], Any]) -> tuple[int, str]:
    """The channel.close the broker answers ``action`` with."""
    reasons: list[Any] = []
    channel._impl.add_on_close_callback(lambda ch, reason: reasons.append(reason))
    with contextlib.suppress(ChannelClosedByBroker):
        action()
    assert wait_for(lambda: bool(reasons), connection)
    reason = reasons[0]
    assert isinstance(reason, ChannelClosedByBroker), reason
    return reason.reply_code, reason.reply_text


def test_publish_without_the_consumer_is_406(pika_conn: Any) -> None:
    channel = pika_conn.channel()
    code, text = closed_with(channel, pika_conn, lambda: channel.basic_publish(
        "", "nowhere", b"x", pika.BasicProperties(reply_to=REPLY_TO)))
    assert (code, text) == (406, "PRECONDITION_FAILED - fast reply consumer does not exist")


def test_publish_after_cancel_and_from_another_channel_is_406(pika_conn: Any) -> None:
    channel = pika_conn.channel()
    tag = channel.basic_consume(REPLY_TO, lambda *a: None, auto_ack=True)
    other = pika_conn.channel()
    code, text = closed_with(other, pika_conn, lambda: other.basic_publish(
        "", "nowhere", b"x", pika.BasicProperties(reply_to=REPLY_TO)))
    assert (code, text) == (406, "PRECONDITION_FAILED - fast reply consumer does not exist")
    channel.basic_cancel(tag)
    code, text = closed_with(channel, pika_conn, lambda: channel.basic_publish(
        "", "nowhere", b"x", pika.BasicProperties(reply_to=REPLY_TO)))
    assert (code, text) == (406, "PRECONDITION_FAILED - fast reply consumer does not exist")


def test_consume_with_manual_acks_is_406(pika_conn: Any) -> None:
    channel = pika_conn.channel()
    code, text = closed_with(channel, pika_conn, lambda: channel.basic_consume(
        REPLY_TO, lambda *a: None, auto_ack=False))
    assert (code, text) == (406, "PRECONDITION_FAILED - reply consumer cannot acknowledge")


def test_second_consumer_on_a_channel_is_406(pika_conn: Any) -> None:
    channel = pika_conn.channel()
    channel.basic_consume(REPLY_TO, lambda *a: None, auto_ack=True)
    code, text = closed_with(channel, pika_conn, lambda: channel.basic_consume(
        REPLY_TO, lambda *a: None, auto_ack=True))
    assert (code, text) == (406, "PRECONDITION_FAILED - reply consumer already set")


def test_exclusive_consume_and_consume_again_after_cancel(pika_conn: Any) -> None:
    channel = pika_conn.channel()
    tag = channel.basic_consume(REPLY_TO, lambda *a: None, auto_ack=True, exclusive=True)
    channel.basic_cancel(tag)
    second = channel.basic_consume(REPLY_TO, lambda *a: None, auto_ack=True)
    assert second != tag


def test_declares_of_the_pseudo_queue(pika_conn: Any, vhost: str) -> None:
    """queue.declare of amq.rabbitmq.reply-to answers declare-ok (one consumer, passive or
    not); a token is declare-ok passively while its consumer lives, else 404."""
    channel = pika_conn.channel()
    for passive in (True, False):
        ok = channel.queue_declare(REPLY_TO, passive=passive).method
        assert (ok.queue, ok.message_count, ok.consumer_count) == (REPLY_TO, 0, 1)
    got: list[str] = []
    channel.basic_consume(REPLY_TO, lambda *a: None, auto_ack=True)
    probe = pika_conn.channel()
    name = probe.queue_declare("", exclusive=True).method.queue
    channel.basic_publish("", name, b"", pika.BasicProperties(reply_to=REPLY_TO))
    _, properties, _ = get_one(probe, name)
    token = properties.reply_to
    got.append(probe.queue_declare(token, passive=True).method.queue)
    assert got == [token]
    code, text = closed_with(probe, pika_conn, lambda: probe.queue_declare(
        REPLY_TO + ".nope", passive=True))
    assert (code, text) == (404, f"NOT_FOUND - no queue '{REPLY_TO}.nope' in vhost '{vhost}'")


@pytest.mark.parametrize("action", ["get", "bind", "purge"])
def test_queue_methods_on_the_pseudo_queue_are_404(pika_conn: Any, vhost: str,
                                                   action: str) -> None:
    channel = pika_conn.channel()
    calls = {
        "get": lambda: channel.basic_get(REPLY_TO, auto_ack=True),
        "bind": lambda: channel.queue_bind(REPLY_TO, "amq.direct", "x"),
        "purge": lambda: channel.queue_purge(REPLY_TO),
    }
    code, text = closed_with(channel, pika_conn, calls[action])
    assert (code, text) == (404, f"NOT_FOUND - no queue '{REPLY_TO}' in vhost '{vhost}'")


def test_unroutable_replies_are_returned(pika_conn: Any, pika_connect: Any) -> None:
    """Mandatory replies to unknown, edited, gone tokens, to the bare pseudo-queue name or
    through another exchange come back with 312 NO_ROUTE; without mandatory they are
    dropped and the channel stays open."""
    channel = pika_conn.channel()
    got: list[bytes] = []
    tag = channel.basic_consume(REPLY_TO, lambda ch, m, p, b: got.append(b), auto_ack=True)
    probe = pika_conn.channel()
    name = probe.queue_declare("", exclusive=True).method.queue
    channel.basic_publish("", name, b"", pika.BasicProperties(reply_to=REPLY_TO))
    _, properties, _ = get_one(probe, name)
    token = properties.reply_to

    replier_connection = pika_connect()
    replier = replier_connection.channel()
    returns: list[tuple[int, str, str, str, bytes]] = []
    replier.add_on_return_callback(lambda ch, m, p, b: returns.append(
        (m.reply_code, m.reply_text, m.exchange, m.routing_key, b)))
    edited = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    cases = [("", REPLY_TO + ".bogus"), ("", edited), ("", REPLY_TO), ("amq.direct", token)]
    for exchange, key in cases:
        replier.basic_publish(exchange, key, key.encode(), mandatory=True)
    replier.basic_publish("", REPLY_TO + ".bogus", b"dropped")
    assert wait_for(lambda: len(returns) == len(cases), replier_connection)
    assert returns == [(312, "NO_ROUTE", exchange, key, key.encode())
                       for exchange, key in cases]
    channel.basic_cancel(tag)
    replier.basic_publish("", token, b"gone", mandatory=True)
    assert wait_for(lambda: len(returns) == len(cases) + 1, replier_connection)
    assert returns[-1][:2] == (312, "NO_ROUTE")
    pika_conn.process_data_events(0.2)
    assert got == []
    assert replier.is_open


@pytest.mark.rabbitmq_differs(reason="RabbitMQ 3.10 delivers a mandatory reply to a live "
                              "token and also returns it with 312 NO_ROUTE")
def test_mandatory_reply_to_a_live_token(pika_conn: Any, pika_connect: Any,
                                         server_product: str) -> None:
    channel = pika_conn.channel()
    got: list[bytes] = []
    channel.basic_consume(REPLY_TO, lambda ch, m, p, b: got.append(b), auto_ack=True)
    probe = pika_conn.channel()
    name = probe.queue_declare("", exclusive=True).method.queue
    channel.basic_publish("", name, b"", pika.BasicProperties(reply_to=REPLY_TO))
    _, properties, _ = get_one(probe, name)
    replier_connection = pika_connect()
    replier = replier_connection.channel()
    returns: list[int] = []
    replier.add_on_return_callback(lambda ch, m, p, b: returns.append(m.reply_code))
    replier.basic_publish("", properties.reply_to, b"reply", mandatory=True)
    assert wait_for(lambda: bool(got), pika_conn)
    replier_connection.process_data_events(0.3)
    assert got == [b"reply"]
    assert returns == ([] if server_product == "amqpd" else [312])


def test_closed_channel_token_leads_nowhere(pika_conn: Any, pika_connect: Any) -> None:
    channel = pika_conn.channel()
    channel.basic_consume(REPLY_TO, lambda *a: None, auto_ack=True)
    probe = pika_conn.channel()
    name = probe.queue_declare("", exclusive=True).method.queue
    channel.basic_publish("", name, b"", pika.BasicProperties(reply_to=REPLY_TO))
    _, properties, _ = get_one(probe, name)
    channel.close()
    replier_connection = pika_connect()
    replier = replier_connection.channel()
    returns: list[int] = []
    replier.add_on_return_callback(lambda ch, m, p, b: returns.append(m.reply_code))
    replier.basic_publish("", properties.reply_to, b"late", mandatory=True)
    assert wait_for(lambda: returns == [312], replier_connection)


# -- aio-pika ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_aio_pika_rpc_with_direct_reply_to(aio_connect: Any, names: Names) -> None:
    server_queue = names.queue()
    async with await aio_connect() as server, await aio_connect() as client:
        server_channel = await server.channel()
        requests = await server_channel.declare_queue(server_queue, auto_delete=True)

        async def on_request(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            async with message.process():
                await server_channel.default_exchange.publish(
                    aio_pika.Message(str(fib(int(message.body))).encode(),
                                     correlation_id=message.correlation_id),
                    routing_key=message.reply_to or "")

        await requests.consume(on_request)
        client_channel = await client.channel()
        futures: dict[str, asyncio.Future[bytes]] = {}

        async def on_response(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            futures.pop(message.correlation_id or "").set_result(message.body)

        replies = await client_channel.get_queue(REPLY_TO)  # a passive declare
        await replies.consume(on_response, no_ack=True)
        loop = asyncio.get_running_loop()
        for n in (7, 15):
            futures[str(n)] = future = loop.create_future()
            await client_channel.default_exchange.publish(
                aio_pika.Message(str(n).encode(), correlation_id=str(n), reply_to=REPLY_TO),
                routing_key=server_queue)
            assert await asyncio.wait_for(future, 5) == str(fib(n)).encode()


@pytest.mark.anyio
async def test_aio_pika_rpc_pattern(aio_connect: Any, names: Names) -> None:
    """aio_pika.patterns.RPC replies through a server-named queue of its own, not direct
    reply-to; it works unchanged."""
    from aio_pika.patterns import RPC

    async with await aio_connect() as connection:
        channel = await connection.channel()
        rpc = await RPC.create(channel)

        async def multiply(*, x: int, y: int) -> int:
            return x * y

        method = names.queue()
        await rpc.register(method, multiply, auto_delete=True)
        assert await asyncio.wait_for(rpc.call(method, kwargs={"x": 6, "y": 7}), 5) == 42
        await rpc.close()


# -- py-amqp ----------------------------------------------------------------------------


def test_py_amqp_rpc_with_direct_reply_to(amqp_url: str, rpc_server: str) -> None:
    parsed = urlparse(amqp_url)
    connection = amqp.Connection(f"{parsed.hostname}:{parsed.port}", userid="guest",
                                 password="guest", virtual_host="/")
    connection.connect()
    try:
        channel = connection.channel()
        replies: list[tuple[str, bytes]] = []
        channel.basic_consume(REPLY_TO, no_ack=True, callback=lambda message: replies.append(
            (message.properties["correlation_id"], message.body)))
        channel.basic_publish(amqp.Message(b"12", correlation_id="py-amqp", reply_to=REPLY_TO),
                              exchange="", routing_key=rpc_server)
        deadline = time.monotonic() + 5
        while not replies and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                connection.drain_events(timeout=0.2)
        assert replies == [("py-amqp", b"144")]
    finally:
        connection.close()
