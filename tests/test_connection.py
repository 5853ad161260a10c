"""The sans-IO connection, driven with bytes: handshake, errors and the basic class."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from pamqp import commands, frame
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from amqpd.broker.broker import Broker
from amqpd.config.settings import Settings
from amqpd.session.connection import ConnectionState

from .amqp_client import CLIENT_PROPERTIES, Peer


def close_of(frames: list) -> commands.Connection.Close | commands.Channel.Close:
    for _, value in frames:
        if isinstance(value, commands.Connection.Close | commands.Channel.Close):
            return value
    raise AssertionError(f"no close in {frames}")


# -- handshake -------------------------------------------------------------------------


def test_start_advertises_capabilities_and_mechanisms() -> None:
    peer = Peer()
    ((channel, start),) = peer.send_raw(b"AMQP\x00\x00\x09\x01")
    assert channel == 0
    assert start.mechanisms == "PLAIN AMQPLAIN"
    assert start.locales == "en_US"
    props = start.server_properties
    assert props["product"] == "amqpd"
    assert {"version", "platform"} <= set(props)
    caps = props["capabilities"]
    for name in ("publisher_confirms", "basic.nack", "consumer_cancel_notify",
                 "authentication_failure_close", "per_consumer_qos",
                 "exchange_exchange_bindings"):
        assert caps[name] is True


def test_protocol_header_split_over_reads() -> None:
    peer = Peer()
    assert peer.send_raw(b"AMQ") == []
    frames = peer.send_raw(b"P\x00\x00\x09\x01")
    assert isinstance(frames[0][1], commands.Connection.Start)


@pytest.mark.parametrize(
    "header", [b"AMQP\x00\x00\x08\x00", b"GET / HTTP/1.1\r\n", b"AMQP\x01\x01\x00\x09"]
)
def test_wrong_protocol_header_gets_ours_and_close(header: bytes) -> None:
    peer = Peer()
    peer.connection.data_received(header)
    assert peer.connection.data_to_send() == b"AMQP\x00\x00\x09\x01"
    assert peer.connection.finished


def test_tune_defaults() -> None:
    peer = Peer()
    peer.send_raw(b"AMQP\x00\x00\x09\x01")
    ((_, tune),) = peer.send(
        0, commands.Connection.StartOk(CLIENT_PROPERTIES, "PLAIN", "\x00guest\x00guest", "en_US")
    )
    assert (tune.channel_max, tune.frame_max, tune.heartbeat) == (2047, 131072, 60)


def test_amqplain_login() -> None:
    peer = Peer()
    peer.send_raw(b"AMQP\x00\x00\x09\x01")
    from pamqp import encode

    response = encode.field_table({"LOGIN": "guest", "PASSWORD": "guest"})[4:]
    ((_, tune),) = peer.send(
        0, commands.Connection.StartOk(CLIENT_PROPERTIES, "AMQPLAIN", response.decode("latin-1"),
                                       "en_US")
    )
    assert isinstance(tune, commands.Connection.Tune)


def test_bad_password_is_403_when_client_asks_for_it() -> None:
    peer = Peer()
    peer.send_raw(b"AMQP\x00\x00\x09\x01")
    frames = peer.send(
        0, commands.Connection.StartOk(CLIENT_PROPERTIES, "PLAIN", "\x00guest\x00wrong", "en_US")
    )
    close = close_of(frames)
    assert close.reply_code == 403
    assert "ACCESS_REFUSED" in close.reply_text


def test_bad_password_without_capability_just_drops() -> None:
    peer = Peer()
    peer.send_raw(b"AMQP\x00\x00\x09\x01")
    frames = peer.send(
        0, commands.Connection.StartOk({}, "PLAIN", "\x00guest\x00wrong", "en_US")
    )
    assert frames == []
    assert peer.connection.finished


def test_guest_refused_from_remote_address() -> None:
    peer = Peer(host="10.1.2.3")
    peer.send_raw(b"AMQP\x00\x00\x09\x01")
    frames = peer.send(
        0, commands.Connection.StartOk(CLIENT_PROPERTIES, "PLAIN", "\x00guest\x00guest", "en_US")
    )
    close = close_of(frames)
    assert close.reply_code == 403
    assert "localhost" in close.reply_text


def test_unknown_vhost_is_530() -> None:
    peer = Peer()
    peer.send_raw(b"AMQP\x00\x00\x09\x01")
    peer.send(0, commands.Connection.StartOk(CLIENT_PROPERTIES, "PLAIN", "\x00guest\x00guest",
                                             "en_US"))
    frames = peer.send(0, commands.Connection.TuneOk(2047, 131072, 0),
                       commands.Connection.Open("nope"))
    close = close_of(frames)
    assert close.reply_code == 530
    assert "nope" in close.reply_text


def test_tune_ok_frame_max_above_server_is_refused() -> None:
    peer = Peer()
    peer.send_raw(b"AMQP\x00\x00\x09\x01")
    peer.send(0, commands.Connection.StartOk(CLIENT_PROPERTIES, "PLAIN", "\x00guest\x00guest",
                                             "en_US"))
    # RabbitMQ-compat: a bad tune-ok gets no connection.close, the socket is closed.
    assert peer.send(0, commands.Connection.TuneOk(2047, 10_000_000, 0)) == []
    assert peer.connection.finished


# -- connection errors -----------------------------------------------------------------


def test_bad_frame_end_is_501() -> None:
    peer = Peer()
    peer.handshake()
    data = bytearray(frame.marshal(commands.Channel.Open(), 1))
    data[-1] = 0
    close = close_of(peer.send_raw(bytes(data)))
    assert close.reply_code == 501
    assert peer.send(1, commands.Channel.Open()) == []  # input is dropped from now on
    peer.now += 1.5
    peer.connection.tick()
    assert peer.connection.finished


def test_frame_above_frame_max_is_501() -> None:
    peer = Peer()
    peer.handshake()
    peer.open_channel()
    close = close_of(peer.send_raw(struct.pack(">BHI", 3, 1, 200_000)))
    assert close.reply_code == 501
    assert "frame_max" in close.reply_text


def test_method_on_unopened_channel_is_504() -> None:
    peer = Peer()
    peer.handshake()
    close = close_of(peer.send(5, commands.Queue.Declare(queue="q")))
    assert close.reply_code == 504


def test_header_without_publish_is_505() -> None:
    peer = Peer()
    peer.handshake()
    peer.open_channel()
    close = close_of(peer.send(1, ContentHeader(0, 3, commands.Basic.Properties())))
    assert close.reply_code == 505


def test_body_without_header_is_505() -> None:
    peer = Peer()
    peer.handshake()
    peer.open_channel()
    close = close_of(peer.send(1, ContentBody(b"abc")))
    assert close.reply_code == 505


def test_method_while_expecting_content_is_505() -> None:
    peer = Peer()
    peer.handshake()
    peer.open_channel()
    frames = peer.send(1, commands.Basic.Publish(routing_key="q"), commands.Basic.Qos())
    assert close_of(frames).reply_code == 505


def test_heartbeat_on_channel_1_is_505() -> None:
    peer = Peer()
    peer.handshake()
    peer.open_channel()
    close = close_of(peer.send_raw(b"\x08\x00\x01\x00\x00\x00\x00\xce"))
    assert close.reply_code == 505


def test_unknown_method_is_540() -> None:
    peer = Peer()
    peer.handshake()
    peer.open_channel()
    payload = struct.pack(">HH", 60, 99)
    close = close_of(peer.send_raw(struct.pack(">BHI", 1, 1, len(payload)) + payload + b"\xce"))
    assert close.reply_code == 540


def test_truncated_arguments_are_502() -> None:
    peer = Peer()
    peer.handshake()
    peer.open_channel()
    payload = struct.pack(">HHH", 50, 10, 0) + b"\x10ab"
    close = close_of(peer.send_raw(struct.pack(">BHI", 1, 1, len(payload)) + payload + b"\xce"))
    assert close.reply_code == 502


def test_immediate_publish_is_540() -> None:
    peer = Peer()
    peer.handshake()
    peer.open_channel()
    close = close_of(peer.send(1, commands.Basic.Publish(routing_key="q", immediate=True)))
    assert close.reply_code == 540


def test_connection_close_gets_close_ok() -> None:
    peer = Peer()
    peer.handshake()
    frames = peer.send(0, commands.Connection.Close(200, "bye", 0, 0))
    assert isinstance(frames[0][1], commands.Connection.CloseOk)
    assert peer.connection.finished


def test_after_connection_error_only_close_ok_is_read() -> None:
    peer = Peer()
    peer.handshake()
    peer.send(5, commands.Queue.Declare(queue="q"))
    assert peer.connection.state is ConnectionState.CLOSING
    assert peer.send(1, commands.Channel.Open()) == []
    peer.send(0, commands.Connection.CloseOk())
    assert peer.connection.finished


def test_heartbeat_timeout_drops_connection() -> None:
    peer = Peer()
    peer.handshake(heartbeat=1)
    peer.now += 1.0
    peer.connection.tick()
    assert peer.connection.data_to_send() == b"\x08\x00\x00\x00\x00\x00\x00\xce"
    peer.now += 2.5
    peer.connection.tick()
    assert peer.connection.finished


# -- channel errors --------------------------------------------------------------------


def test_channel_error_keeps_connection() -> None:
    peer = Peer()
    peer.handshake()
    peer.open_channel()
    close = close_of(peer.send(1, commands.Queue.Declare(queue="missing", passive=True)))
    assert close.reply_code == 404
    assert (close.class_id, close.method_id) == (50, 10)
    # frames for the closing channel are dropped until close-ok
    assert peer.send(1, commands.Queue.Declare(queue="x")) == []
    peer.send(1, commands.Channel.CloseOk())
    peer.open_channel(1)
    reply = peer.send(1, commands.Queue.Declare(queue="x"))
    assert isinstance(reply[0][1], commands.Queue.DeclareOk)


def test_publish_to_missing_exchange_is_404() -> None:
    peer = Peer()
    peer.handshake()
    peer.open_channel()
    close = close_of(peer.publish(1, "nope", "k", b"x"))
    assert close.reply_code == 404
    assert "nope" in close.reply_text


def test_message_too_large_is_406() -> None:
    broker = Broker(Settings(max_message_size=10))
    peer = Peer(broker)
    peer.handshake()
    peer.open_channel()
    close = close_of(peer.publish(1, "", "q", b"x" * 11))
    assert close.reply_code == 406


def test_unknown_delivery_tag_is_406() -> None:
    peer = Peer()
    peer.handshake()
    peer.open_channel()
    close = close_of(peer.send(1, commands.Basic.Ack(delivery_tag=42)))
    assert close.reply_code == 406
    assert "42" in close.reply_text


def test_unknown_exchange_type_is_503() -> None:
    peer = Peer()
    peer.handshake()
    peer.open_channel()
    close = close_of(peer.send(1, commands.Exchange.Declare(exchange="e", exchange_type="nope")))
    assert close.reply_code == 503
    assert "nope" in close.reply_text


# -- the basic class -------------------------------------------------------------------


def test_publish_get_roundtrips_header_bytes() -> None:
    peer = Peer()
    peer.handshake()
    peer.open_channel()
    peer.send(1, commands.Queue.Declare(queue="q"))
    properties = commands.Basic.Properties(
        content_type="text/plain", headers={"a": 1, "b": {"c": [1, "x"]}}, delivery_mode=2,
        priority=3, correlation_id="c", reply_to="r", expiration="60000", message_id="m",
        message_type="t", user_id="guest", app_id="app",
    )
    peer.publish(1, "", "q", b"hello", properties)
    frames = peer.send(1, commands.Basic.Get(queue="q"))
    get_ok, header, body = (value for _, value in frames)
    assert isinstance(get_ok, commands.Basic.GetOk)
    assert header.properties == properties
    assert body.value == b"hello"


def test_confirms_are_coalesced_into_one_multiple_ack() -> None:
    peer = Peer()
    peer.handshake()
    peer.open_channel()
    peer.send(1, commands.Confirm.Select(), commands.Queue.Declare(queue="q"))
    data = b"".join(
        frame.marshal(f, 1)
        for _ in range(10)
        for f in (commands.Basic.Publish(routing_key="q"),
                  ContentHeader(0, 1, commands.Basic.Properties()), ContentBody(b"x"))
    )
    ((_, ack),) = peer.send_raw(data)
    assert isinstance(ack, commands.Basic.Ack)
    assert (ack.delivery_tag, ack.multiple) == (10, True)


def test_mandatory_unroutable_is_returned() -> None:
    peer = Peer()
    peer.handshake()
    peer.open_channel()
    frames = peer.publish(1, "", "nowhere", b"x", mandatory=True)
    returned = frames[0][1]
    assert isinstance(returned, commands.Basic.Return)
    assert returned.reply_code == 312
    assert frames[2][1].value == b"x"


def test_requeue_on_channel_close_keeps_order_and_sets_redelivered() -> None:
    peer = Peer()
    peer.handshake()
    peer.open_channel()
    peer.send(1, commands.Queue.Declare(queue="q"))
    for index in range(5):
        peer.publish(1, "", "q", str(index).encode())
    for _ in range(5):
        peer.send(1, commands.Basic.Get(queue="q"))
    peer.send(1, commands.Channel.Close(200, "", 0, 0))
    peer.open_channel(2)
    bodies = []
    for _ in range(5):
        get_ok, _, body = (value for _, value in peer.send(2, commands.Basic.Get(queue="q")))
        assert get_ok.redelivered
        bodies.append(body.value)
    assert bodies == [b"0", b"1", b"2", b"3", b"4"]


def test_prefetch_limits_unacked_deliveries() -> None:
    peer = Peer()
    peer.handshake()
    peer.open_channel()
    peer.send(1, commands.Queue.Declare(queue="q"), commands.Basic.Qos(prefetch_count=2))
    for index in range(5):
        peer.publish(1, "", "q", str(index).encode())
    frames = peer.send(1, commands.Basic.Consume(queue="q", consumer_tag="c"))
    delivers = [v for _, v in frames if isinstance(v, commands.Basic.Deliver)]
    assert len(delivers) == 2
    frames = peer.send(1, commands.Basic.Ack(delivery_tag=2, multiple=True))
    delivers = [v for _, v in frames if isinstance(v, commands.Basic.Deliver)]
    assert [d.delivery_tag for d in delivers] == [3, 4]


def test_round_robin_between_consumers() -> None:
    peer = Peer()
    peer.handshake()
    peer.open_channel()
    peer.send(1, commands.Queue.Declare(queue="q"))
    peer.send(1, commands.Basic.Consume(queue="q", consumer_tag="a", no_ack=True),
              commands.Basic.Consume(queue="q", consumer_tag="b", no_ack=True))
    tags = []
    for index in range(6):
        frames = peer.publish(1, "", "q", str(index).encode())
        tags += [v.consumer_tag for _, v in frames if isinstance(v, commands.Basic.Deliver)]
    assert tags == ["a", "b", "a", "b", "a", "b"]


def test_server_cancel_when_queue_deleted() -> None:
    peer = Peer()
    peer.handshake()
    peer.open_channel()
    peer.send(1, commands.Queue.Declare(queue="q"), commands.Basic.Consume(queue="q",
                                                                          consumer_tag="c"))
    peer.open_channel(2)
    frames = peer.send(2, commands.Queue.Delete(queue="q"))
    cancels = [(ch, v) for ch, v in frames if isinstance(v, commands.Basic.Cancel)]
    assert cancels and cancels[0][0] == 1 and cancels[0][1].consumer_tag == "c"


def test_exclusive_queue_is_locked_for_other_connections() -> None:
    broker = Broker(Settings())
    owner, other = Peer(broker), Peer(broker)
    for peer in (owner, other):
        peer.handshake()
        peer.open_channel()
    owner.send(1, commands.Queue.Declare(queue="mine", exclusive=True))
    close = close_of(other.send(1, commands.Queue.Declare(queue="mine", passive=True)))
    assert close.reply_code == 405
    owner.send(0, commands.Connection.Close(200, "", 0, 0))
    assert "mine" not in broker.vhosts["/"].queues


def test_max_channels_per_connection_is_530() -> None:
    settings = Settings()
    settings.max_channels_per_connection = 2
    peer = Peer(Broker(settings))
    peer.handshake()
    peer.open_channel(1)
    peer.open_channel(2)
    close = close_of(peer.send(3, commands.Channel.Open()))
    assert close.reply_code == 530
    assert "max_channels_per_connection" in close.reply_text


def test_flow_control_marks_publishers_outrunning_consumers() -> None:
    from amqpd.session.channel import FLOW_BACKLOG

    peer = Peer()
    peer.handshake()
    peer.open_channel()
    peer.send(1, commands.Queue.Declare(queue="q"), commands.Basic.Qos(prefetch_count=1),
              commands.Basic.Consume(queue="q", consumer_tag="slow"))
    for _ in range(FLOW_BACKLOG + 10):
        peer.publish(1, "", "q", b"x")
    assert peer.connection.flow_blocked()
    peer.send(1, commands.Queue.Purge(queue="q"))
    assert not peer.connection.flow_blocked()


def test_no_flow_control_without_consumers() -> None:
    from amqpd.session.channel import FLOW_BACKLOG

    peer = Peer()
    peer.handshake()
    peer.open_channel()
    peer.send(1, commands.Queue.Declare(queue="q"))
    for _ in range(FLOW_BACKLOG + 10):
        peer.publish(1, "", "q", b"x")
    assert not peer.connection.flow_blocked()  # buffering is the point


def test_a_bug_in_a_handler_is_541_for_that_connection_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from amqpd.session import channel as channel_module

    def broken(self: object, method: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setitem(channel_module.HANDLERS, commands.Queue.Purge, broken)
    broker = Broker(Settings())
    victim, bystander = Peer(broker), Peer(broker)
    for peer in (victim, bystander):
        peer.handshake()
        peer.open_channel()
    close = close_of(victim.send(1, commands.Queue.Purge(queue="q")))
    assert close.reply_code == 541
    reply = bystander.send(1, commands.Queue.Declare(queue="still-fine"))
    assert isinstance(reply[0][1], commands.Queue.DeclareOk)


def test_a_congested_connection_gets_no_deliveries_until_its_output_drains() -> None:
    peer = Peer()
    peer.handshake()
    peer.open_channel()
    peer.connection.high_watermark = 1000
    peer.connection.low_watermark = 100
    peer.send(1, commands.Queue.Declare(queue="q"))
    peer.connection.in_flight = 5000  # the socket is still busy with an earlier write
    for _ in range(5):
        peer.publish(1, "", "q", b"x" * 300)
    frames = peer.send(1, commands.Basic.Consume(queue="q", consumer_tag="c", no_ack=True))
    assert not [v for _, v in frames if isinstance(v, commands.Basic.Deliver)]
    assert peer.connection.held_back
    peer.connection.in_flight = 0
    assert peer.connection.below_low_watermark
    delivered: list[Any] = []
    for _ in range(10):  # each drain lets up to the high watermark out again
        peer.connection.on_drained()
        delivered += [v for _, v in peer.read() if isinstance(v, commands.Basic.Deliver)]
    assert len(delivered) == 5
