"""The ``x-delayed-message`` exchange (RabbitMQ's delayed-message plugin) with pika, aio-pika,
py-amqp and kombu.

amqpd only: Debian's RabbitMQ does not ship the plugin. The behaviour follows the plugin's
source and README: ``x-delayed-type`` names the routing type, ``x-delay`` (ms) holds a
message until it is due, routing happens then, a mandatory publish comes back at once (the
plugin routes nothing at publish time), and the delivered message carries ``x-delay``
negated.
"""

from __future__ import annotations

import json
import time
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

import aio_pika
import amqp
import kombu
import pika
import pytest
from config_broker import ConfigBroker
from conftest import Names
from pika.exceptions import ChannelClosedByBroker

pytestmark = [pytest.mark.amqpd_only, pytest.mark.timeout(60)]


def declare_delayed(channel: Any, name: str, inner: str = "direct", durable: bool = False) -> None:
    channel.exchange_declare(name, "x-delayed-message", durable=durable,
                             arguments={"x-delayed-type": inner})


def bound_queue(channel: Any, names: Names, exchange: str, key: str = "k",
                durable: bool = False) -> str:
    queue = names.queue()
    channel.queue_declare(queue, durable=durable)
    channel.queue_bind(queue, exchange, key)
    return queue


def publish(channel: Any, exchange: str, body: str, delay: object = None, key: str = "k",
            persistent: bool = False, mandatory: bool = False) -> None:
    headers = None if delay is None else {"x-delay": delay}
    channel.basic_publish(exchange, key, body.encode(), pika.BasicProperties(
        headers=headers, delivery_mode=2 if persistent else None), mandatory=mandatory)


def collect(connection: Any, channel: Any, queue: str, count: int,
            timeout: float = 10.0) -> list[tuple[str, float, Any]]:
    """(body, arrival time, headers) of ``count`` messages, consumed with no-ack."""
    got: list[tuple[str, float, Any]] = []
    tag = channel.basic_consume(queue, lambda ch, m, p, b: got.append(
        (b.decode(), time.monotonic(), p.headers)), auto_ack=True)
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        connection.process_data_events(0.02)
    channel.basic_cancel(tag)
    return got


def test_declare_needs_an_existing_delayed_type(pika_conn: Any, names: Names) -> None:
    for arguments in ({}, {"x-delayed-type": "nope"}, {"x-delayed-type": "x-delayed-message"}):
        channel = pika_conn.channel()
        with pytest.raises(ChannelClosedByBroker) as info:
            channel.exchange_declare(names.exchange(), "x-delayed-message", arguments=arguments)
        assert info.value.reply_code == 406
        assert "'x-delayed-type' must be an existing exchange type" in info.value.reply_text


def test_messages_arrive_in_due_order_not_publish_order(pika_conn: Any, names: Names) -> None:
    channel = pika_conn.channel()
    exchange = names.exchange()
    declare_delayed(channel, exchange)
    queue = bound_queue(channel, names, exchange)
    start = time.monotonic()
    for body, delay in (("c", 900), ("a", 300), ("b", 600), ("a2", 300)):
        publish(channel, exchange, body, delay)
    assert channel.queue_declare(queue, passive=True).method.message_count == 0
    got = collect(pika_conn, channel, queue, 4)
    assert [body for body, _, _ in got] == ["a", "a2", "b", "c"]
    for (body, arrived, headers), delay in zip(got, (300, 300, 600, 900), strict=True):
        assert arrived - start >= delay / 1000 - 0.02, body  # never early
        assert arrived - start < delay / 1000 + 1.0, body  # the ticker's 0.1 s, plus slack
        assert headers == {"x-delay": -delay}  # as the plugin: negated once spent


@pytest.mark.parametrize("delay", [None, 0, -500, "abc", True])
def test_no_delay_routes_at_once(pika_conn: Any, names: Names, delay: object) -> None:
    channel = pika_conn.channel()
    exchange = names.exchange()
    declare_delayed(channel, exchange)
    queue = bound_queue(channel, names, exchange)
    publish(channel, exchange, "now", delay)
    _method, properties, body = channel.basic_get(queue, auto_ack=True)
    assert body == b"now"
    # The header is delivered untouched when the message was not delayed.
    assert properties.headers == (None if delay is None else {"x-delay": delay})


def test_string_and_decimal_delays_count(pika_conn: Any, names: Names) -> None:
    channel = pika_conn.channel()
    exchange = names.exchange()
    declare_delayed(channel, exchange)
    queue = bound_queue(channel, names, exchange)
    publish(channel, exchange, "float", Decimal("400.9"))  # pika has no float
    publish(channel, exchange, "string", "200")
    assert channel.queue_declare(queue, passive=True).method.message_count == 0
    got = collect(pika_conn, channel, queue, 2)
    assert [(b, h) for b, _, h in got] == [("string", {"x-delay": -200}),
                                           ("float", {"x-delay": -400})]


def test_topic_inner_type_routes_when_due(pika_conn: Any, names: Names) -> None:
    """Bindings made while a message waits count: routing happens when it is due."""
    channel = pika_conn.channel()
    exchange = names.exchange()
    declare_delayed(channel, exchange, "topic")
    early = bound_queue(channel, names, exchange, "orders.*")
    publish(channel, exchange, "o1", 300, key="orders.created")
    publish(channel, exchange, "x1", 300, key="other.thing")
    late = bound_queue(channel, names, exchange, "#")
    assert collect(pika_conn, channel, early, 1)[0][0] == "o1"
    assert sorted(b for b, _, _ in collect(pika_conn, channel, late, 2)) == ["o1", "x1"]


def test_mandatory_is_returned_at_once_and_still_delivered(pika_conn: Any,
                                                           names: Names) -> None:
    channel = pika_conn.channel()
    exchange = names.exchange()
    declare_delayed(channel, exchange)
    queue = bound_queue(channel, names, exchange)
    returns: list[tuple[int, str]] = []
    channel.add_on_return_callback(lambda ch, m, p, b: returns.append((m.reply_code,
                                                                       m.reply_text)))
    publish(channel, exchange, "m", 200, mandatory=True)
    publish(channel, exchange, "now", 0, mandatory=True)  # routed at once: not returned
    pika_conn.process_data_events(0.1)
    assert returns == [(312, "NO_ROUTE")]
    assert sorted(b for b, _, _ in collect(pika_conn, channel, queue, 2)) == ["m", "now"]


def test_confirms_and_deleting_the_exchange_drops_held(pika_conn: Any, names: Names,
                                                       management_url: str) -> None:
    channel = pika_conn.channel()
    channel.confirm_delivery()
    exchange = names.exchange()
    declare_delayed(channel, exchange, durable=True)
    queue = bound_queue(channel, names, exchange, durable=True)
    for index in range(5):
        publish(channel, exchange, f"p{index}", 60_000, persistent=True)  # confirmed
    publish(channel, exchange, "t", 60_000)
    info = management_get(management_url, f"exchanges/%2F/{quote(exchange, safe='')}")
    assert info["messages_delayed"] == 6
    assert info["type"] == "x-delayed-message"
    channel.exchange_delete(exchange)
    channel.exchange_declare(exchange, "x-delayed-message", durable=True,
                             arguments={"x-delayed-type": "direct"})
    info = management_get(management_url, f"exchanges/%2F/{quote(exchange, safe='')}")
    assert info["messages_delayed"] == 0
    assert channel.queue_declare(queue, passive=True).method.message_count == 0


def management_get(base: str, path: str) -> Any:
    parsed = urlparse(base)
    request = urllib.request.Request(f"{parsed.scheme}://{parsed.hostname}:{parsed.port}"
                                     f"{parsed.path}{path}")
    request.add_header("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")  # guest:guest
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def test_many_pending_messages(pika_conn: Any, names: Names, management_url: str) -> None:
    """10,000 held at once (the figure for 100,000 is in the README), all released in due
    order once due."""
    channel = pika_conn.channel()
    exchange = names.exchange()
    declare_delayed(channel, exchange)
    queue = bound_queue(channel, names, exchange)
    count = 10_000
    for index in range(count):
        # Due times interleave with publish order: 1.0 s .. 1.999 s, ten per millisecond.
        publish(channel, exchange, str(index), 1000 + (index * 7919) % 1000)
    info = management_get(management_url, f"exchanges/%2F/{quote(exchange, safe='')}")
    assert 0 < info["messages_delayed"] <= count
    got = collect(pika_conn, channel, queue, count, timeout=20)
    assert len(got) == count
    delays = [-headers["x-delay"] for _, _, headers in got]
    # Due order across ticks: a later tick never releases an earlier due time.
    assert delays[0] <= 1100 and delays[-1] >= 1900
    ticks: dict[int, list[int]] = {}
    for delay in delays:
        ticks.setdefault(delay // 100, []).append(delay)
    assert sorted(ticks) == list(ticks)


@pytest.mark.anyio
async def test_aio_pika_publish_with_x_delay(aio_connect: Any, names: Names) -> None:
    async with await aio_connect() as connection:
        channel = await connection.channel()  # publisher confirms on: acked when held
        exchange = await channel.declare_exchange(
            names.exchange(), "x-delayed-message", arguments={"x-delayed-type": "fanout"})
        queue = await channel.declare_queue(names.queue())
        await queue.bind(exchange)
        started = time.monotonic()
        await exchange.publish(aio_pika.Message(b"later", headers={"x-delay": 400}), "")
        await exchange.publish(aio_pika.Message(b"sooner", headers={"x-delay": 100}), "")
        bodies = []
        async with queue.iterator() as messages:
            async for message in messages:
                async with message.process():
                    bodies.append(message.body if isinstance(message.body, bytes) else
                          message.body.encode())
                if len(bodies) == 2:
                    break
        assert bodies == [b"sooner", b"later"]
        assert time.monotonic() - started >= 0.38


def test_py_amqp_and_kombu(amqp_url: str, names: Names) -> None:
    parsed = urlparse(amqp_url)
    exchange_name, queue_name = names.exchange(), names.queue()
    connection = amqp.Connection(f"{parsed.hostname}:{parsed.port}", userid="guest",
                                 password="guest")
    connection.connect()
    try:
        channel = connection.channel()
        channel.exchange_declare(exchange_name, "x-delayed-message", durable=True,
                                 auto_delete=False,
                                 arguments={"x-delayed-type": "direct"})
        channel.queue_declare(queue_name, durable=True, auto_delete=False)
        channel.queue_bind(queue_name, exchange_name, "k")
        channel.basic_publish(amqp.Message(b"py-amqp", application_headers={"x-delay": 300}),
                              exchange=exchange_name, routing_key="k")
    finally:
        connection.close()
    with kombu.Connection(amqp_url) as connection:
        exchange = kombu.Exchange(exchange_name, type="x-delayed-message",
                                  arguments={"x-delayed-type": "direct"})
        producer = connection.Producer()
        producer.publish({"task": "kombu"}, exchange=exchange, routing_key="k",
                         headers={"x-delay": 150}, declare=[exchange])
        queue = kombu.Queue(queue_name, exchange, "k")(connection)
        assert queue.get(no_ack=True) is None  # both still held
        deadline = time.monotonic() + 5
        bodies: list[Any] = []
        while len(bodies) < 2 and time.monotonic() < deadline:
            message = queue.get(no_ack=True)
            if message is None:
                time.sleep(0.05)
                continue
            bodies.append(message.body if isinstance(message.body, bytes) else
                          message.body.encode())
        assert bodies == [b'{"task": "kombu"}', b"py-amqp"]


def test_restart_keeps_pending_persistent_messages(tmp_path: Path) -> None:
    """A durable delayed exchange's persistent held messages survive a restart and are
    released when due (in due order); transient ones are gone, as from queues."""
    broker = ConfigBroker(tmp_path, "", log_level="warning")
    url = f"amqp://guest:guest@{broker.host}:{broker.port}/%2F"
    try:
        connection = pika.BlockingConnection(pika.URLParameters(url))
        channel = connection.channel()
        channel.confirm_delivery()
        declare_delayed(channel, "delayed", durable=True)
        channel.queue_declare("due", durable=True)
        channel.queue_bind("due", "delayed", "k")
        for body, delay in (("b", 2500), ("a", 2000), ("c", 3000)):
            publish(channel, "delayed", body, delay, persistent=True)
        publish(channel, "delayed", "transient", 2000)
        connection.close()
    finally:
        assert broker.stop() == 0
    broker = ConfigBroker(tmp_path, "", log_level="warning")
    url = f"amqp://guest:guest@{broker.host}:{broker.port}/%2F"
    try:
        connection = pika.BlockingConnection(pika.URLParameters(url))
        channel = connection.channel()
        got = collect(connection, channel, "due", 3)
        assert [(b, h) for b, _, h in got] == [("a", {"x-delay": -2000}),
                                               ("b", {"x-delay": -2500}),
                                               ("c", {"x-delay": -3000})]
        connection.process_data_events(0.3)
        assert channel.queue_declare("due", passive=True).method.message_count == 0
        connection.close()
    finally:
        assert broker.stop() == 0


def test_exchange_to_exchange_arrivals_are_delayed(pika_conn: Any, names: Names,
                                                   management_url: str) -> None:
    """As the plugin (it delays in the exchange type's route callback): a message that
    reaches a delayed exchange through an exchange-to-exchange binding is held there, while
    the source's other destinations get it at once."""
    channel = pika_conn.channel()
    source, delayed = names.exchange(), names.exchange()
    channel.exchange_declare(source, "direct")
    declare_delayed(channel, delayed)
    channel.exchange_bind(delayed, source, "k")
    later = bound_queue(channel, names, delayed)
    now = bound_queue(channel, names, source)
    publish(channel, source, "m", 1000)
    _method, properties, body = channel.basic_get(now, auto_ack=True)
    assert (body, properties.headers) == (b"m", {"x-delay": 1000})  # untouched: not delayed
    assert channel.queue_declare(later, passive=True).method.message_count == 0
    info = management_get(management_url, f"exchanges/%2F/{quote(delayed, safe='')}")
    assert info["messages_delayed"] == 1
    got = collect(pika_conn, channel, later, 1)
    assert [(b, h) for b, _, h in got] == [("m", {"x-delay": -1000})]


def test_spent_delay_is_not_delayed_again_down_a_chain(pika_conn: Any, names: Names) -> None:
    """delayed-1 -> delayed-2 -> queue: the message released by delayed-1 carries x-delay
    negated, so delayed-2 routes it at once. "first" (300 ms through both) arrives before
    "direct" (450 ms, published to delayed-2 just after); delayed twice, "first" would be
    due 600 ms after its publish, after "direct"."""
    channel = pika_conn.channel()
    first, second = names.exchange(), names.exchange()
    declare_delayed(channel, first)
    declare_delayed(channel, second)
    channel.exchange_bind(second, first, "k")
    queue = bound_queue(channel, names, second)
    publish(channel, first, "first", 300)
    publish(channel, second, "direct", 450)
    got = collect(pika_conn, channel, queue, 2)
    assert [(b, h) for b, _, h in got] == [("first", {"x-delay": -300}),
                                           ("direct", {"x-delay": -450})]


def test_delayed_alternate_exchange_delays(pika_conn: Any, names: Names) -> None:
    """A delayed exchange as alternate exchange holds what the first could not route (the
    plugin's route callback runs for the alternate exchange too)."""
    channel = pika_conn.channel()
    unrouted, delayed = names.exchange(), names.exchange()
    declare_delayed(channel, delayed)
    channel.exchange_declare(unrouted, "direct", arguments={"alternate-exchange": delayed})
    queue = bound_queue(channel, names, delayed)
    publish(channel, unrouted, "m", 1000)
    assert channel.queue_declare(queue, passive=True).method.message_count == 0
    got = collect(pika_conn, channel, queue, 1)
    assert [(b, h) for b, _, h in got] == [("m", {"x-delay": -1000})]


def test_dead_letter_exchange_of_delayed_type_delays(pika_conn: Any, names: Names,
                                                      management_url: str) -> None:
    """A rejected message whose queue dead-letters into a delayed exchange is held there for
    its x-delay (the plugin delays whatever its route callback sees, dead-lettered messages
    included): the retry-after-a-pause pattern. The queue it lands in is empty until then."""
    channel = pika_conn.channel()
    delayed = names.exchange()
    declare_delayed(channel, delayed)
    retry = bound_queue(channel, names, delayed, key="work")
    work = names.queue()
    channel.queue_declare(work, arguments={"x-dead-letter-exchange": delayed,
                                           "x-dead-letter-routing-key": "work"})
    publish(channel, "", "job", 1000, key=work)
    method, _properties, body = channel.basic_get(work)
    assert body == b"job"
    channel.basic_reject(method.delivery_tag, requeue=False)
    assert channel.queue_declare(retry, passive=True).method.message_count == 0
    info = management_get(management_url, f"exchanges/%2F/{quote(delayed, safe='')}")
    assert info["messages_delayed"] == 1
    got = collect(pika_conn, channel, retry, 1)
    assert [b for b, _, _ in got] == ["job"]
    assert got[0][2]["x-delay"] == -1000
    assert got[0][2]["x-death"][0]["reason"] == "rejected"


def test_management_api_publish_is_delayed(pika_conn: Any, names: Names,
                                           management_url: str) -> None:
    """POST /api/exchanges/.../publish to a delayed exchange holds the message as a client's
    publish would; the answer is ``routed: false`` (nothing routed now, as under the plugin)."""
    channel = pika_conn.channel()
    delayed = names.exchange()
    declare_delayed(channel, delayed)
    queue = bound_queue(channel, names, delayed)
    parsed = urlparse(management_url)
    request = urllib.request.Request(
        f"{parsed.scheme}://{parsed.hostname}:{parsed.port}{parsed.path}"
        f"exchanges/%2F/{quote(delayed, safe='')}/publish",
        data=json.dumps({"routing_key": "k", "payload": "later", "payload_encoding": "string",
                         "properties": {"headers": {"x-delay": 800}}}).encode(),
        method="POST", headers={"content-type": "application/json",
                                "Authorization": "Basic Z3Vlc3Q6Z3Vlc3Q="})  # guest:guest
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.loads(response.read()) == {"routed": False}
    assert channel.queue_declare(queue, passive=True).method.message_count == 0
    got = collect(pika_conn, channel, queue, 1)
    assert [(b, h) for b, _, h in got] == [("later", {"x-delay": -800})]
