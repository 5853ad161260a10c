"""A tiny sans-IO AMQP client for unit tests: pamqp-encoded frames in, decoded frames out."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pamqp import commands, frame
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from amqpd.broker.broker import Broker
from amqpd.config.settings import Settings
from amqpd.session.connection import Connection

PLAIN_GUEST = "\x00guest\x00guest"
CLIENT_PROPERTIES = {
    "product": "unit-test",
    "capabilities": {
        "authentication_failure_close": True,
        "consumer_cancel_notify": True,
        "publisher_confirms": True,
        "basic.nack": True,
    },
}


def decode_all(data: bytes) -> list[tuple[int, Any]]:
    """Split bytes the server sent into (channel, pamqp frame) pairs."""
    frames = []
    while data:
        consumed, channel, value = frame.unmarshal(data)
        frames.append((channel, value))
        data = data[consumed:]
    return frames


class Peer:
    """Drives one sans-IO Connection like a client would."""

    def __init__(self, broker: Broker | None = None, host: str = "127.0.0.1") -> None:
        self.broker = broker or Broker(Settings())
        self.now = 0.0
        self.connection = Connection(self.broker, (host, 40000), clock=lambda: self.now)

    def send_raw(self, data: bytes) -> list[tuple[int, Any]]:
        self.connection.data_received(data)
        return decode_all(self.connection.data_to_send())

    def send(self, channel: int, *frames: Any) -> list[tuple[int, Any]]:
        return self.send_raw(b"".join(frame.marshal(f, channel) for f in frames))

    def read(self) -> list[tuple[int, Any]]:
        return decode_all(self.connection.data_to_send())

    def handshake(self, vhost: str = "/", heartbeat: int = 0) -> None:
        start = self.send_raw(b"AMQP\x00\x00\x09\x01")
        assert isinstance(start[0][1], commands.Connection.Start)
        tune = self.send(
            0, commands.Connection.StartOk(CLIENT_PROPERTIES, "PLAIN", PLAIN_GUEST, "en_US")
        )
        assert isinstance(tune[0][1], commands.Connection.Tune), tune
        opened = self.send(
            0,
            commands.Connection.TuneOk(2047, 131072, heartbeat),
            commands.Connection.Open(vhost),
        )
        assert isinstance(opened[0][1], commands.Connection.OpenOk), opened

    def open_channel(self, channel: int = 1) -> None:
        reply = self.send(channel, commands.Channel.Open())
        assert isinstance(reply[0][1], commands.Channel.OpenOk), reply

    def publish(
        self, channel: int, exchange: str, routing_key: str, body: bytes,
        properties: commands.Basic.Properties | None = None, mandatory: bool = False,
    ) -> list[tuple[int, Any]]:
        frames: list[Any] = [
            commands.Basic.Publish(exchange=exchange, routing_key=routing_key,
                                   mandatory=mandatory),
            ContentHeader(0, len(body), properties or commands.Basic.Properties()),
        ]
        if body:
            frames.append(ContentBody(body))
        return self.send(channel, *frames)


def methods(frames: list[tuple[int, Any]]) -> Iterator[Any]:
    """Just the frame objects."""
    return (value for _, value in frames)
