"""Users and RabbitMQ permissions from the configuration, seen by pika and aio-pika:
403 ACCESS_REFUSED naming the resource, 530 for a vhost without permissions."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import aio_pika
import aiormq
import pika
import pytest
from config_broker import ConfigBroker
from pika.exceptions import ChannelClosedByBroker

from amqpd.access.auth import hash_password

pytestmark = pytest.mark.amqpd_only


CONFIG = f"""
vhosts: [other]
users:
  - {{name: alice, password_hash: "{hash_password('alice-pw')}", tags: [management]}}
  - {{name: bob, password_hash: "{hash_password('bob-pw')}"}}
permissions:
  - user: alice
    vhost: /
    configure: "^alice-"
    write: "^(alice-.*|amq\\\\.default)$"
    read: "^(alice-.*|amq\\\\.topic)$"
  - {{user: bob, vhost: other, configure: ".*", write: ".*", read: ".*"}}
topology:
  vhosts:
    /:
      exchanges:
        locked: {{type: fanout}}
      queues:
        locked-q: {{}}
"""


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConfigBroker]:
    process = ConfigBroker(tmp_path_factory.mktemp("permissions"), CONFIG,
                           log_level="warning")
    yield process
    assert process.stop() == 0


def connect(broker: ConfigBroker, user: str = "alice", password: str = "alice-pw",
            vhost: str = "/") -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.ConnectionParameters(
        broker.host, broker.port, vhost, pika.PlainCredentials(user, password),
        connection_attempts=1, socket_timeout=5,
    ))


@pytest.fixture
def alice(broker: ConfigBroker) -> Iterator[pika.BlockingConnection]:
    connection = connect(broker)
    yield connection
    with contextlib.suppress(Exception):
        connection.close()


def test_vhost_without_permissions_is_530(broker: ConfigBroker) -> None:
    # pika reports a close during connection.open as a probable access denial
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as info:
        connect(broker, "bob", "bob-pw", "/")
    assert "(530) \"NOT_ALLOWED - access to vhost '/' refused for user 'bob'\"" in \
        str(info.value)
    connect(broker, "bob", "bob-pw", "other").close()


def test_wrong_password_is_403(broker: ConfigBroker) -> None:
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        connect(broker, "alice", "wrong")


def test_aio_pika_vhost_refused(broker: ConfigBroker) -> None:
    async def scenario() -> None:
        # aiormq does not expect connection.close in answer to connection.open (the same
        # against RabbitMQ): it fails the connect with an AMQPError.
        with pytest.raises(aiormq.exceptions.AMQPError):
            await aio_pika.connect(f"amqp://bob:bob-pw@{broker.host}:{broker.port}/%2F")
        connection = await aio_pika.connect(
            f"amqp://bob:bob-pw@{broker.host}:{broker.port}/other")
        await connection.close()

    asyncio.run(scenario())


def test_declare_needs_configure(alice: pika.BlockingConnection) -> None:
    channel = alice.channel()
    channel.queue_declare("alice-tasks")
    channel.queue_declare("locked-q", passive=True)  # passive needs no permission
    with pytest.raises(ChannelClosedByBroker) as info:
        channel.queue_declare("bob-tasks")
    assert (info.value.reply_code, info.value.reply_text) == (
        403, "ACCESS_REFUSED - access to queue 'bob-tasks' in vhost '/' refused for user "
             "'alice'")
    channel = alice.channel()
    with pytest.raises(ChannelClosedByBroker) as info:
        channel.exchange_declare("bob-events", "topic")
    assert info.value.reply_text == (
        "ACCESS_REFUSED - access to exchange 'bob-events' in vhost '/' refused for user "
        "'alice'")


def test_publish_needs_write_on_the_exchange(alice: pika.BlockingConnection) -> None:
    channel = alice.channel()
    channel.queue_declare("alice-inbox")
    channel.basic_publish("", "alice-inbox", b"via amq.default")  # write on amq.default
    channel.basic_publish("locked", "", b"no")
    with pytest.raises(ChannelClosedByBroker) as info:
        channel.queue_declare("alice-inbox", passive=True)  # the close arrives first
    assert info.value.reply_text == (
        "ACCESS_REFUSED - access to exchange 'locked' in vhost '/' refused for user 'alice'")


def test_get_and_consume_need_read_on_the_queue(alice: pika.BlockingConnection) -> None:
    channel = alice.channel()
    with pytest.raises(ChannelClosedByBroker) as info:
        channel.basic_get("locked-q")
    assert info.value.reply_text == (
        "ACCESS_REFUSED - access to queue 'locked-q' in vhost '/' refused for user 'alice'")
    channel = alice.channel()
    with pytest.raises(ChannelClosedByBroker) as info:
        channel.basic_consume("locked-q", lambda *args: None)
    assert info.value.reply_code == 403


def test_bind_needs_write_on_queue_and_read_on_exchange(alice: pika.BlockingConnection) -> None:
    channel = alice.channel()
    channel.queue_declare("alice-news")
    channel.queue_bind("alice-news", "amq.topic", "news.#")  # read on amq.topic: allowed
    with pytest.raises(ChannelClosedByBroker) as info:
        channel.queue_bind("alice-news", "locked", "")
    assert info.value.reply_text == (
        "ACCESS_REFUSED - access to exchange 'locked' in vhost '/' refused for user 'alice'")
    channel = alice.channel()
    with pytest.raises(ChannelClosedByBroker) as info:
        channel.queue_bind("locked-q", "amq.topic", "x")
    assert info.value.reply_text == (
        "ACCESS_REFUSED - access to queue 'locked-q' in vhost '/' refused for user 'alice'")


def test_aio_pika_sees_the_same_refusal(broker: ConfigBroker) -> None:
    async def scenario() -> None:
        connection = await aio_pika.connect(
            f"amqp://alice:alice-pw@{broker.host}:{broker.port}/%2F")
        async with connection:
            channel = await connection.channel()
            await channel.declare_queue("alice-aio")
            with pytest.raises(aiormq.exceptions.ChannelAccessRefused) as info:
                await channel.declare_queue("not-alices")
            assert "access to queue 'not-alices' in vhost '/' refused for user 'alice'" in \
                str(info.value)

    asyncio.run(scenario())
