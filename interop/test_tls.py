"""amqps: pika and aio-pika over TLS, client certificates, SASL EXTERNAL (certificate CN)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import warnings
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import pika
import pytest
from config_broker import Certificates, ConfigBroker, make_certificates

pytestmark = pytest.mark.amqpd_only


def tls_config(certs: Certificates, *, fail_if_no_peer_cert: bool = False) -> str:
    return f"""
listeners:
  tls:
    port: 0
    certfile: {certs.server_cert}
    keyfile: {certs.server_key}
    cafile: {certs.ca}
    verify_peer: true
    fail_if_no_peer_cert: {'true' if fail_if_no_peer_cert else 'false'}
users:
  - {{name: {certs.client_cn}, password_hash: "", tags: []}}
permissions:
  - {{user: {certs.client_cn}, vhost: /, configure: ".*", write: ".*", read: ".*"}}
"""


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, certs: Certificates) -> Iterator[
    ConfigBroker
]:
    process = ConfigBroker(tmp_path_factory.mktemp("tls"), tls_config(certs), tls=True,
                           log_level="warning")
    yield process
    assert process.stop() == 0


def client_context(certs: Certificates, with_certificate: bool = True) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs.ca))
    if with_certificate:
        context.load_cert_chain(str(certs.client_cert), str(certs.client_key))
    return context


def tls_params(broker: ConfigBroker, context: ssl.SSLContext,
               credentials: pika.credentials.PlainCredentials | None = None,
               ) -> pika.ConnectionParameters:
    assert broker.tls_port is not None
    return pika.ConnectionParameters(
        "localhost", broker.tls_port, "/",
        credentials or pika.PlainCredentials("guest", "guest"),
        ssl_options=pika.SSLOptions(context, "localhost"),
        connection_attempts=1, socket_timeout=5,
    )


def round_trip(connection: pika.BlockingConnection, queue: str) -> bytes:
    channel = connection.channel()
    channel.queue_declare(queue, auto_delete=True)
    channel.confirm_delivery()
    channel.basic_publish("", queue, b"over tls")
    method, _, body = channel.basic_get(queue, auto_ack=True)
    assert method is not None
    return body


def test_two_listeners(broker: ConfigBroker) -> None:
    assert broker.tls_port and broker.tls_port != broker.port
    # One line per address (localhost is 127.0.0.1 and ::1); the first names IPv4.
    lines = broker.stdout_lines
    assert lines[0] == f"amqpd listening on {broker.host}:{broker.port}\n"
    assert f"amqpd listening on {broker.host}:{broker.tls_port} (tls)\n" in lines


def test_pika_over_tls_with_plain_auth(broker: ConfigBroker, certs: Certificates) -> None:
    connection = pika.BlockingConnection(tls_params(broker, client_context(certs, False)))
    try:
        assert round_trip(connection, "tls-pika") == b"over tls"
    finally:
        connection.close()


def test_tls_is_1_2_or_newer(broker: ConfigBroker, certs: Certificates) -> None:
    context = client_context(certs, False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.maximum_version = ssl.TLSVersion.TLSv1_1
        context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    assert broker.tls_port is not None
    with socket.create_connection(("127.0.0.1", broker.tls_port), timeout=5) as raw, \
            pytest.raises(ssl.SSLError):
        context.wrap_socket(raw, server_hostname="localhost")


def test_aio_pika_over_tls(broker: ConfigBroker, certs: Certificates) -> None:
    async def scenario() -> bytes:
        connection = await aio_pika.connect(
            f"amqps://guest:guest@localhost:{broker.tls_port}/%2F",
            ssl_context=client_context(certs),
        )
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue("tls-aio", auto_delete=True)
            await channel.default_exchange.publish(aio_pika.Message(b"aio over tls"),
                                                   routing_key="tls-aio")
            message = await queue.get(timeout=5)
            assert message is not None
            await message.ack()
            return message.body

    assert asyncio.run(scenario()) == b"aio over tls"


def test_plain_amqp_on_the_tls_port_fails_cleanly(broker: ConfigBroker) -> None:
    assert broker.tls_port is not None
    with socket.create_connection(("127.0.0.1", broker.tls_port), timeout=5) as raw:
        raw.sendall(b"AMQP\x00\x00\x09\x01")
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := raw.recv(100):
                answer += chunk
    assert not answer.startswith(b"AMQP")  # a TLS alert at most, then the socket closes
    # and the broker is still fine
    connection = pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port))
    connection.close()


def test_untrusted_client_certificate_is_refused(
    broker: ConfigBroker, tmp_path: Path
) -> None:
    stranger = make_certificates(tmp_path / "other-ca", "stranger")
    context = ssl.create_default_context(cafile=str(stranger.ca))
    context.load_cert_chain(str(stranger.client_cert), str(stranger.client_key))
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # we only care about the server refusing us
    assert broker.tls_port is not None
    with socket.create_connection(("127.0.0.1", broker.tls_port), timeout=5) as raw, \
            pytest.raises((ssl.SSLError, ConnectionResetError, OSError)), \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(b"AMQP\x00\x00\x09\x01")
        if not tls.recv(100):
            raise ConnectionResetError("closed")


def test_external_auth_with_a_client_certificate(broker: ConfigBroker,
                                                 certs: Certificates) -> None:
    params = tls_params(broker, client_context(certs))
    params.credentials = pika.credentials.ExternalCredentials()
    connection = pika.BlockingConnection(params)
    try:
        assert round_trip(connection, "tls-external") == b"over tls"
    finally:
        connection.close()


def test_external_is_not_offered_without_a_certificate(broker: ConfigBroker,
                                                       certs: Certificates) -> None:
    params = tls_params(broker, client_context(certs, with_certificate=False))
    params.credentials = pika.credentials.ExternalCredentials()
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(params)


def test_aio_pika_external(broker: ConfigBroker, certs: Certificates) -> None:
    async def scenario() -> None:
        connection = await aio_pika.connect(
            f"amqps://localhost:{broker.tls_port}/%2F?auth=external",
            ssl_context=client_context(certs),
        )
        await connection.close()

    asyncio.run(scenario())


def test_fail_if_no_peer_cert(tmp_path: Path, certs: Certificates) -> None:
    process = ConfigBroker(tmp_path, tls_config(certs, fail_if_no_peer_cert=True), tls=True,
                           log_level="warning")
    try:
        with pytest.raises(pika.exceptions.AMQPConnectionError):
            pika.BlockingConnection(tls_params(process, client_context(certs, False)))
        connection = pika.BlockingConnection(tls_params(process, client_context(certs)))
        assert round_trip(connection, "with-cert") == b"over tls"
        connection.close()
    finally:
        assert process.stop() == 0
