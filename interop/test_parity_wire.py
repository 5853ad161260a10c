"""Wire details where amqpd must answer as RabbitMQ does (issue #12), through pika, aio-pika,
py-amqp (kombu's and Celery's transport) and a raw socket.

Every test here passes against amqpd and against RabbitMQ 3.10 (``AMQP_URL=...``):
- exchange.declare of the default exchange, passive or not: 403 ACCESS_REFUSED;
- the owning connection redeclaring its exclusive queue with another exclusive flag: 405;
- exchange.unbind / queue.unbind with a missing source, destination or binding: unbind-ok;
- queue.delete of a queue the channel consumes itself: delete-ok first, its basic.cancel
  after; consumers elsewhere get basic.cancel as before;
- frames that follow connection.close are dropped and the socket is not reset.
"""

from __future__ import annotations

import contextlib
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import unquote, urlparse

import aio_pika
import aiormq.exceptions as amqx
import amqp
import amqp.exceptions
import pika
import pika.exceptions as pex
import pytest
from conftest import Names, RawAMQP
from pamqp import body as pbody
from pamqp import commands
from pamqp import frame as pframe
from pamqp import header as pheader

pytestmark = pytest.mark.timeout(60)

DEFAULT_EXCHANGE_TEXT = "ACCESS_REFUSED - operation not permitted on the default exchange"
LOCKED_TEXT = (
    "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{name}' in vhost "
    "'{vhost}'. It could be originally declared on another connection or the exclusive "
    "property value does not match that of the original declaration."
)


@pytest.fixture
def amqp_connect(amqp_url: str) -> Iterator[Callable[[], amqp.Connection]]:
    """Factory for py-amqp connections (the transport of kombu and Celery)."""
    opened: list[amqp.Connection] = []
    parsed = urlparse(amqp_url)
    path = unquote(parsed.path[1:]) if len(parsed.path) > 1 else "/"

    def connect() -> amqp.Connection:
        connection = amqp.Connection(
            host=f"{parsed.hostname}:{parsed.port or 5672}", userid=parsed.username or "guest",
            password=parsed.password or "guest", virtual_host=path, connect_timeout=5,
        )
        connection.connect()
        opened.append(connection)
        return connection

    yield connect
    for connection in opened:
        with contextlib.suppress(Exception):
            connection.close()


def short_queue(names: Names) -> str:
    """A queue name short enough for the 405 text to fit a shortstr (255 bytes) whole."""
    name = f"wire.{uuid.uuid4().hex[:8]}"
    names.queues.append(name)
    return name


def pika_channel_error(connection: pika.BlockingConnection,
                       action: Callable[[Any], object]) -> pex.ChannelClosedByBroker:
    channel = connection.channel()
    with pytest.raises(pex.ChannelClosedByBroker) as caught:
        action(channel)
    assert connection.is_open
    return caught.value


# -- exchange.declare of the default exchange ---------------------------------------------


@pytest.mark.parametrize("passive", [False, True])
def test_declare_default_exchange_is_403_pika(pika_conn: Any, passive: bool) -> None:
    error = pika_channel_error(
        pika_conn, lambda ch: ch.exchange_declare("", "direct", passive=passive))
    assert (error.reply_code, error.reply_text) == (403, DEFAULT_EXCHANGE_TEXT)


@pytest.mark.parametrize("passive", [False, True])
def test_declare_default_exchange_is_403_py_amqp(amqp_connect: Any, passive: bool) -> None:
    channel = amqp_connect().channel()
    with pytest.raises(amqp.exceptions.AccessRefused) as caught:
        channel.exchange_declare("", "direct", passive=passive)
    assert caught.value.reply_text == DEFAULT_EXCHANGE_TEXT


@pytest.mark.anyio
async def test_declare_default_exchange_is_403_aio_pika(aio_connect: Any) -> None:
    connection = await aio_connect()
    async with connection:
        channel = await connection.channel()
        with pytest.raises(amqx.ChannelAccessRefused) as caught:
            await channel.declare_exchange("", passive=True)
        assert DEFAULT_EXCHANGE_TEXT in str(caught.value)


# -- an exclusive queue redeclared with another exclusive flag ----------------------------


def test_owner_redeclares_exclusive_queue_as_shared_is_405_pika(
    pika_conn: Any, names: Names, vhost: str
) -> None:
    name = short_queue(names)
    pika_conn.channel().queue_declare(name, exclusive=True)
    error = pika_channel_error(pika_conn, lambda ch: ch.queue_declare(name, exclusive=False))
    assert error.reply_code == 405
    assert error.reply_text == LOCKED_TEXT.format(name=name, vhost=vhost)


def test_shared_queue_redeclared_exclusive_is_405_pika(
    pika_conn: Any, names: Names, vhost: str
) -> None:
    name = short_queue(names)
    pika_conn.channel().queue_declare(name)
    error = pika_channel_error(pika_conn, lambda ch: ch.queue_declare(name, exclusive=True))
    assert (error.reply_code, error.reply_text) == (
        405, LOCKED_TEXT.format(name=name, vhost=vhost))


def test_exclusive_queue_is_never_durable(pika_conn: Any, names: Names) -> None:
    # RabbitMQ declares an exclusive queue transient whatever durable says, so a redeclare
    # with another durable flag is no inequivalence.
    name = names.queue()
    channel = pika_conn.channel()
    channel.queue_declare(name, exclusive=True, durable=True)
    channel.queue_declare(name, exclusive=True, durable=False)
    channel.queue_declare(name, exclusive=True, durable=True)


def test_owner_redeclares_exclusive_queue_as_shared_is_405_py_amqp(
    amqp_connect: Any, names: Names
) -> None:
    connection = amqp_connect()
    name = names.queue()
    connection.channel().queue_declare(name, exclusive=True)
    with pytest.raises(amqp.exceptions.ResourceLocked):
        connection.channel().queue_declare(name, exclusive=False)


@pytest.mark.anyio
async def test_owner_redeclares_exclusive_queue_as_shared_is_405_aio_pika(
    aio_connect: Any, names: Names
) -> None:
    name = names.queue()
    connection = await aio_connect()
    async with connection:
        await (await connection.channel()).declare_queue(name, exclusive=True)
        channel = await connection.channel()
        with pytest.raises(amqx.ChannelLockedResource):
            await channel.declare_queue(name, exclusive=False)


# -- unbind of something already gone: idempotent -----------------------------------------


def test_exchange_unbind_is_idempotent_pika(pika_conn: Any, names: Names) -> None:
    channel = pika_conn.channel()
    source, destination, missing = names.exchange(), names.exchange(), names.exchange()
    channel.exchange_declare(source, "fanout")
    channel.exchange_declare(destination, "fanout")
    channel.exchange_unbind(destination, source, "k")  # no such binding
    channel.exchange_unbind(destination, missing, "k")  # no source
    channel.exchange_unbind(missing, source, "k")  # no destination
    channel.exchange_unbind(missing, names.exchange(), "k")  # neither
    assert channel.is_open


def test_exchange_unbind_after_auto_delete_pika(pika_conn: Any, names: Names) -> None:
    # The case from the issue: the source was auto-deleted when its last binding went away
    # (here: when the destination it was bound to was deleted).
    channel = pika_conn.channel()
    source, destination = names.exchange(), names.exchange()
    channel.exchange_declare(source, "fanout", auto_delete=True)
    channel.exchange_declare(destination, "fanout")
    channel.exchange_bind(destination, source, "k")
    channel.exchange_delete(destination)
    with pytest.raises(pex.ChannelClosedByBroker) as caught:
        pika_conn.channel().exchange_declare(source, passive=True)
    assert caught.value.reply_code == 404  # auto-deleted
    channel.exchange_unbind(destination, source, "k")
    assert channel.is_open


def test_queue_unbind_is_idempotent_pika(pika_conn: Any, names: Names) -> None:
    channel = pika_conn.channel()
    queue, exchange = names.queue(), names.exchange()
    channel.queue_declare(queue)
    channel.exchange_declare(exchange, "direct")
    channel.queue_unbind(queue, exchange, "no-binding")
    channel.queue_unbind(queue, names.exchange(), "k")  # no exchange
    channel.queue_unbind(names.queue(), exchange, "k")  # no queue
    channel.queue_unbind(names.queue(), names.exchange(), "k")  # neither
    assert channel.is_open


@pytest.mark.parametrize(
    "unbind",
    [
        lambda ch, other: ch.exchange_unbind("", other, "k"),
        lambda ch, other: ch.exchange_unbind(other, "", "k"),
        lambda ch, other: ch.queue_unbind(other, "", "k"),
    ],
    ids=["exchange-destination", "exchange-source", "queue-source"],
)
def test_unbind_of_the_default_exchange_is_403_even_when_the_rest_is_missing(
    pika_conn: Any, names: Names, unbind: Callable[[Any, str], object]
) -> None:
    error = pika_channel_error(pika_conn, lambda ch: unbind(ch, names.exchange()))
    assert (error.reply_code, error.reply_text) == (403, DEFAULT_EXCHANGE_TEXT)


def test_unbind_is_idempotent_py_amqp(amqp_connect: Any, names: Names) -> None:
    channel = amqp_connect().channel()
    queue, exchange = names.queue(), names.exchange()
    channel.queue_declare(queue)
    channel.exchange_declare(exchange, "fanout", auto_delete=True)
    channel.queue_bind(queue, exchange, "k")
    channel.queue_unbind(queue, exchange, "k")  # last binding: the exchange auto-deletes
    channel.queue_unbind(queue, exchange, "k")
    channel.exchange_unbind(exchange, names.exchange(), "k")
    channel.exchange_unbind(names.exchange(), exchange, "k")
    assert channel.is_open


@pytest.mark.anyio
async def test_unbind_is_idempotent_aio_pika(aio_connect: Any, names: Names) -> None:
    connection = await aio_connect()
    async with connection:
        channel = await connection.channel()
        source = await channel.declare_exchange(names.exchange(), aio_pika.ExchangeType.FANOUT)
        destination = await channel.declare_exchange(names.exchange(),
                                                     aio_pika.ExchangeType.FANOUT)
        await destination.bind(source, "k")
        await source.delete()
        await destination.unbind(source, "k")  # the source is gone
        queue = await channel.declare_queue(names.queue())
        await queue.unbind(source, "k")
        assert not channel.is_closed


# -- queue.delete of a queue the deleting channel consumes ---------------------------------


def test_delete_own_consumed_queue_py_amqp(amqp_connect: Any, names: Names) -> None:
    # py-amqp raises ConsumerCancelled for a basic.cancel with no on_cancel callback; a
    # cancel before delete-ok surfaced inside queue_delete (kombu, Celery).
    connection = amqp_connect()
    channel = connection.channel()
    name = names.queue()
    channel.queue_declare(name)
    channel.basic_publish(amqp.Message(b"x"), routing_key=name)
    tag = channel.basic_consume(name, callback=lambda message: None)
    connection.drain_events(timeout=2)  # the delivery
    assert channel.queue_delete(name) == 0  # the delivery is unacked, not ready
    # The cancel still comes, after delete-ok, as from RabbitMQ.
    with pytest.raises(amqp.exceptions.ConsumerCancelled) as caught:
        connection.drain_events(timeout=2)
    assert tag in str(caught.value)


def test_delete_own_consumed_queue_with_on_cancel_py_amqp(
    amqp_connect: Any, names: Names
) -> None:
    connection = amqp_connect()
    channel = connection.channel()
    name = names.queue()
    channel.queue_declare(name)
    cancelled: list[str] = []
    tag = channel.basic_consume(name, callback=lambda message: None,
                                on_cancel=cancelled.append)
    channel.queue_delete(name)
    assert cancelled == []  # not yet: after delete-ok
    deadline = time.monotonic() + 5
    while not cancelled and time.monotonic() < deadline:
        with contextlib.suppress(socket.timeout):
            connection.drain_events(timeout=0.5)
    assert cancelled == [tag]


def test_delete_own_consumed_queue_pika(pika_conn: Any, names: Names) -> None:
    channel = pika_conn.channel()
    name = names.queue()
    channel.queue_declare(name)
    channel.basic_consume(name, lambda *args: None)
    channel.queue_delete(name)
    pika_conn.process_data_events(time_limit=0.5)
    assert channel.consumer_tags == []
    assert channel.is_open


def _frames_until_quiet(client: RawAMQP, quiet: float = 1.0) -> list[tuple[int, Any]]:
    frames = []
    while True:
        try:
            got = client.recv_frame(quiet)
        except TimeoutError:
            return frames
        assert got is not None, "the broker closed the connection"
        frames.append(got)


def test_delete_queue_cancel_order_raw(raw: Callable[..., RawAMQP], names: Names) -> None:
    name = names.queue()
    deleter = raw(handshake=True)
    deleter.open_channel(1)
    deleter.open_channel(2)
    other = raw(handshake=True)
    other.open_channel(1)
    deleter.send_frame(commands.Queue.Declare(queue=name), 1)
    deleter.expect(commands.Queue.DeclareOk, 1)
    for client, channel, tag in ((deleter, 1, "same-channel"), (deleter, 2, "other-channel"),
                                 (other, 1, "other-connection")):
        client.send_frame(commands.Basic.Consume(queue=name, consumer_tag=tag), channel)
        client.expect(commands.Basic.ConsumeOk, channel)
    deleter.send_frame(commands.Queue.Delete(queue=name), 1)
    frames = _frames_until_quiet(deleter)
    def on(channel: int) -> list[tuple[str, str]]:
        return [(type(frame).__name__, getattr(frame, "consumer_tag", ""))
                for number, frame in frames if number == channel]

    # RabbitMQ's order on the deleting channel: delete-ok, then its consumer's cancel.
    assert on(1) == [("DeleteOk", ""), ("Cancel", "same-channel")], frames
    assert on(2) == [("Cancel", "other-channel")], frames
    assert [(channel, type(frame).__name__, frame.consumer_tag)
            for channel, frame in _frames_until_quiet(other)] == \
        [(1, "Cancel", "other-connection")]


def test_delete_queue_from_another_channel_cancels_first_raw(
    raw: Callable[..., RawAMQP], names: Names
) -> None:
    name = names.queue()
    client = raw(handshake=True)
    client.open_channel(1)
    client.open_channel(2)
    client.send_frame(commands.Queue.Declare(queue=name), 1)
    client.expect(commands.Queue.DeclareOk, 1)
    client.send_frame(commands.Basic.Consume(queue=name, consumer_tag="c"), 1)
    client.expect(commands.Basic.ConsumeOk, 1)
    client.send_frame(commands.Queue.Delete(queue=name), 2)
    frames = [(channel, type(frame).__name__) for channel, frame in _frames_until_quiet(client)]
    # amqpd cancels before delete-ok; RabbitMQ's channels are processes of their own, so
    # there either may come first.
    assert sorted(frames) == [(1, "Cancel"), (2, "DeleteOk")]


# -- frames after connection.close ----------------------------------------------------------


def _publish_frames(queue: str, count: int, size: int = 1024) -> bytes:
    one = (pframe.marshal(commands.Basic.Publish(exchange="", routing_key=queue), 1)
           + pframe.marshal(pheader.ContentHeader(0, size, commands.Basic.Properties()), 1)
           + pframe.marshal(pbody.ContentBody(b"x" * size), 1))
    return one * count


def _close_after_burst(raw: Callable[..., RawAMQP], names: Names) -> RawAMQP:
    """Publishes, connection.close and 4 MB more publishes in one write; returns the client
    once it has read close-ok.

    What Node's amqplib does: its channels' buffers are muxed onto the socket, so after a
    burst of sendToQueue, connection.close (channel 0) leaves before publishes queued earlier
    on channel 1. The broker must drop them and must not reset the socket before the client
    has read close-ok: RST makes the client's pending writes fail (EPIPE, ECONNRESET) and
    amqplib then never completes its close."""
    queue = names.queue()
    client = raw(handshake=True)
    client.open_channel(1)
    client.send_frame(commands.Queue.Declare(queue=queue), 1)
    client.expect(commands.Queue.DeclareOk, 1)
    close = pframe.marshal(commands.Connection.Close(200, "bye", 0, 0), 0)
    client.sock.settimeout(20)
    try:
        client.send(_publish_frames(queue, 100) + close + _publish_frames(queue, 4000))
    except OSError as exc:
        pytest.fail(f"the broker reset the connection after connection.close: {exc!r}")
    client.expect(commands.Connection.CloseOk, 0, timeout=10)
    return client


def test_frames_after_connection_close_no_reset_before_the_client_closes(
    raw: Callable[..., RawAMQP], names: Names
) -> None:
    client = _close_after_burst(raw, names)
    # Before the client closes: nothing (RabbitMQ waits for the client's close) or a clean
    # FIN (amqpd), never RST.
    with contextlib.suppress(TimeoutError):
        client.recv_frame(0.5)
    assert not client.reset, "the broker reset the connection before the client closed"


@pytest.mark.amqpd_only
@pytest.mark.rabbitmq_differs(
    reason="RabbitMQ sends no FIN after close-ok: it stops reading, waits (30 s at most) for "
    "the client to close and then closes with the dropped frames unread, which is a reset "
    "(harmless then: the client has close-ok). amqpd sends FIN at once and reads until the "
    "client closes, so neither side ever sees a reset.")
def test_frames_after_connection_close_fin_and_no_reset_at_all(
    raw: Callable[..., RawAMQP], names: Names
) -> None:
    client = _close_after_burst(raw, names)
    assert client.recv_frame(2) is None  # FIN right after close-ok
    assert not client.reset
    client.sock.shutdown(socket.SHUT_WR)
    time.sleep(0.2)
    assert client.recv_bytes(1) == b""
    assert not client.reset, "the broker reset the connection after the client's FIN"


def test_connection_close_in_one_write_with_publishes_pika_sees_close_ok(
    pika_params: Any, names: Names
) -> None:
    # pika's own close after a burst of publishes with nothing read in between.
    queue = names.queue()
    connection = pika.BlockingConnection(pika_params)
    channel = connection.channel()
    channel.queue_declare(queue)
    for _ in range(2000):
        channel.basic_publish("", queue, b"x" * 1024)
    connection.close()
    assert connection.is_closed
    check = pika.BlockingConnection(pika_params)
    try:
        count = check.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        check.close()
    assert count == 2000
