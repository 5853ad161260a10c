"""A topology file applied at start (seen by pika and aio-pika) and on SIGHUP."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import pika
import pytest
from config_broker import ConfigBroker, start_failure
from pika.exceptions import ChannelClosedByBroker

pytestmark = pytest.mark.amqpd_only

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "topology.example.yaml"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConfigBroker]:
    process = ConfigBroker(tmp_path_factory.mktemp("topology"), "{}\n", "--topology",
                           str(EXAMPLE), log_level="warning")
    yield process
    assert process.stop() == 0


@pytest.fixture
def channel(broker: ConfigBroker) -> Iterator[pika.adapters.blocking_connection.BlockingChannel]:
    connection = pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port))
    channel = connection.channel()
    channel.confirm_delivery()
    yield channel
    with contextlib.suppress(Exception):
        connection.close()


def get(channel: pika.adapters.blocking_connection.BlockingChannel, queue: str) -> bytes | None:
    method, _, body = channel.basic_get(queue, auto_ack=True)
    return None if method is None else body


def test_everything_is_declared_at_start(
    channel: pika.adapters.blocking_connection.BlockingChannel,
) -> None:
    for name, kind in (("orders", "topic"), ("orders.dlx", "fanout"),
                       ("video.uploaded", "fanout"), ("tickets", "x-rules")):
        channel.exchange_declare(name, kind, passive=True)
        channel.exchange_declare(name, kind, durable=True)  # equivalent: accepted
    for name in ("order-emails", "order-emails.failed", "transcode", "captions",
                 "tickets.eu-urgent", "tickets.other"):
        channel.queue_declare(name, passive=True)
    channel.queue_declare("order-emails", durable=True, arguments={
        "x-dead-letter-exchange": "orders.dlx", "x-delivery-limit": 5})


def test_declared_differently_by_a_client_is_406(
    channel: pika.adapters.blocking_connection.BlockingChannel,
) -> None:
    with pytest.raises(ChannelClosedByBroker) as info:
        channel.queue_declare("order-emails", durable=True)
    assert info.value.reply_code == 406


def test_routing_through_the_declared_topology(
    channel: pika.adapters.blocking_connection.BlockingChannel,
) -> None:
    channel.basic_publish("orders", "order.placed", b"order 1")
    channel.basic_publish("orders", "invoice.sent", b"not for e-mails")
    assert get(channel, "order-emails") == b"order 1"
    assert get(channel, "order-emails") is None
    channel.basic_publish("video.uploaded", "", b"video 7")
    assert get(channel, "transcode") == b"video 7"
    assert get(channel, "captions") == b"video 7"


def test_x_rules_bindings(channel: pika.adapters.blocking_connection.BlockingChannel) -> None:
    def ticket(region: str, priority: int) -> None:
        channel.basic_publish("tickets", "", f"{region}/{priority}".encode(),
                              pika.BasicProperties(headers={"region": region,
                                                            "priority": priority}))

    ticket("eu", 7)
    ticket("eu", 2)
    ticket("us", 9)
    assert get(channel, "tickets.eu-urgent") == b"eu/7"
    assert get(channel, "tickets.eu-urgent") is None
    assert get(channel, "tickets.other") == b"eu/2"
    assert get(channel, "tickets.other") == b"us/9"


def test_users_and_vhosts_of_the_topology(broker: ConfigBroker) -> None:
    credentials = pika.PlainCredentials("reporter", "reporter-secret")
    connection = pika.BlockingConnection(pika.ConnectionParameters(
        broker.host, broker.port, "reporting", credentials))
    channel = connection.channel()
    channel.queue_declare("daily-report", passive=True)
    assert get(channel, "daily-report") is None
    connection.close()
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError):
        pika.BlockingConnection(pika.ConnectionParameters(
            broker.host, broker.port, "/", credentials, connection_attempts=1))


def test_aio_pika_consumes_from_the_topology(broker: ConfigBroker) -> None:
    async def scenario() -> bytes:
        connection = await aio_pika.connect(f"amqp://guest:guest@{broker.host}:{broker.port}/")
        async with connection:
            channel = await connection.channel()
            exchange = await channel.get_exchange("video.uploaded")
            queue = await channel.get_queue("captions")
            await exchange.publish(aio_pika.Message(b"aio video"), routing_key="")
            async with queue.iterator() as messages:
                async for message in messages:
                    await message.ack()
                    return message.body
        raise AssertionError("no message")

    assert asyncio.run(asyncio.wait_for(scenario(), 10)) == b"aio video"


def test_a_topology_error_stops_start_up(tmp_path: Path) -> None:
    topology = tmp_path / "topology.yaml"
    topology.write_text("vhosts:\n  /:\n    bindings:\n      - {source: nope, destination: q}\n")
    code, stderr = start_failure(tmp_path, "{}\n", "--topology", str(topology))
    assert code == 1
    assert stderr.startswith(
        f"{topology}:4:9: binding of queue 'q' to exchange 'nope' in vhost '/': no exchange "
        "'nope'"
    )


GOOD = """
vhosts:
  /:
    exchanges:
      jobs: {type: direct}
    queues:
      work: {arguments: {x-message-ttl: 60000}}
    bindings:
      - {source: jobs, destination: work, routing_key: run}
"""


@pytest.fixture
def reloadable(tmp_path: Path) -> Iterator[tuple[ConfigBroker, Path]]:
    topology = tmp_path / "topology.yaml"
    topology.write_text(GOOD)
    process = ConfigBroker(tmp_path, f"topology_file: {topology}\n")
    yield process, topology
    assert process.stop() == 0


def exists(broker: ConfigBroker, queue: str) -> bool:
    connection = pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port))
    try:
        connection.channel().queue_declare(queue, passive=True)
    except ChannelClosedByBroker as exc:
        assert exc.reply_code == 404
        return False
    finally:
        with contextlib.suppress(Exception):
            connection.close()
    return True


@pytest.mark.parametrize("broken", [
    # a conflict with the running broker, next to additions (jobs2, extra)
    GOOD.replace("x-message-ttl: 60000}}", "x-message-ttl: 5}}\n      extra: {}"),
    GOOD + "      - {source: jobs, destination: nowhere}\n",  # binding to nothing
    GOOD + "  other:\n    queues: [not, a, mapping]\n",  # invalid
    "vhosts: {/: {queues: {extra: {}\n",  # not YAML
])
def test_broken_topology_at_sighup_changes_nothing(
    reloadable: tuple[ConfigBroker, Path], broken: str
) -> None:
    broker, topology = reloadable
    topology.write_text(broken.replace("jobs: {type: direct}",
                                       "jobs: {type: direct}\n      jobs2: {type: topic}"))
    broker.reload("reload failed, nothing changed")
    assert not exists(broker, "extra")
    connection = pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port))
    channel = connection.channel()
    with pytest.raises(ChannelClosedByBroker) as info:
        channel.exchange_declare("jobs2", "topic", passive=True)
    assert info.value.reply_code == 404
    channel = connection.channel()
    channel.queue_declare("work", durable=True, arguments={"x-message-ttl": 60000})
    channel.confirm_delivery()
    channel.basic_publish("jobs", "run", b"still routed")
    assert get(channel, "work") == b"still routed"
    connection.close()
    assert broker.process.poll() is None


def test_sighup_applies_additions(reloadable: tuple[ConfigBroker, Path]) -> None:
    broker, topology = reloadable
    topology.write_text(GOOD.replace("      work: {arguments: {x-message-ttl: 60000}}",
                                     "      work: {arguments: {x-message-ttl: 60000}}\n"
                                     "      later: {}")
                        + "      - {source: jobs, destination: later, routing_key: run}\n")
    broker.reload("configuration reloaded")
    connection = pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port))
    channel = connection.channel()
    channel.confirm_delivery()
    channel.basic_publish("jobs", "run", b"twice")
    assert get(channel, "work") == b"twice"
    assert get(channel, "later") == b"twice"
    connection.close()
