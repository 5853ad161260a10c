"""Wire-level behaviour on a plain socket (pamqp for framing).

Every error case asserts the exact reply code the server closes with, that the
reply text is non-empty, and that a fresh connection still works afterwards.
The expected values are RabbitMQ 3.10's; comments mark where RabbitMQ is odd.
"""

from __future__ import annotations

import concurrent.futures
import socket
import struct
import time

import pika
import pytest
from pamqp import body as pbody
from pamqp import commands as cmds
from pamqp import header as pheader
from pamqp import heartbeat as pheartbeat

pytestmark = pytest.mark.timeout(30)

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"


@pytest.fixture
def server_alive(raw):
    """Call it at the end of a test: a fresh connection must still work."""

    def check():
        client = raw(handshake=True)
        client.open_channel(1)
        client.send_frame(cmds.Queue.Declare(queue="", exclusive=True), 1)
        ok = client.expect(cmds.Queue.DeclareOk, 1)
        assert ok.queue.startswith("amq.gen-")
        client.send_frame(cmds.Connection.Close(reply_code=200, reply_text="bye",
                                             class_id=0, method_id=0))
        client.expect(cmds.Connection.CloseOk, 0)
        client.close()

    return check


def assert_connection_close(client, code, text_prefix=None, class_id=None, method_id=None,
                            wait_closed=True):
    got = client.until_close()
    assert got is not None, "server closed the socket without sending connection.close"
    channel, frame = got
    assert isinstance(frame, cmds.Connection.Close), frame
    assert channel == 0
    assert frame.reply_code == code, frame.reply_text
    assert frame.reply_text
    if text_prefix is not None:
        assert frame.reply_text.startswith(text_prefix), frame.reply_text
    if class_id is not None:
        assert (frame.class_id, frame.method_id) == (class_id, method_id)
    # complete the closing handshake; the server then drops the connection.
    # RabbitMQ: right after close-ok (or after 30 s without one); but after a 501
    # FRAME_ERROR it stops reading and drops the socket 3 s later regardless.
    client.send_frame(cmds.Connection.CloseOk())
    if wait_closed:
        assert client.wait_closed(5)
    return frame


def publish_frames(channel, exchange, routing_key, payload, props=None, **kw):
    return [
        (cmds.Basic.Publish(exchange=exchange, routing_key=routing_key, **kw), channel),
        (pheader.ContentHeader(0, len(payload), props or cmds.Basic.Properties()), channel),
        (pbody.ContentBody(payload), channel),
    ]


# --------------------------------------------------------------------------
# handshake
# --------------------------------------------------------------------------


def test_handshake_start_and_tune(raw):
    client = raw()
    start = client.read_start()
    assert (start.version_major, start.version_minor) == (0, 9)
    assert "PLAIN" in start.mechanisms.split()
    assert "en_US" in start.locales.split()
    props = start.server_properties
    for key in ("product", "version", "platform"):
        assert props[key]
    for cap in ("publisher_confirms", "basic.nack", "consumer_cancel_notify",
                "connection.blocked", "authentication_failure_close", "per_consumer_qos",
                "exchange_exchange_bindings"):
        assert props["capabilities"][cap] is True, cap
    client.send_frame(cmds.Connection.StartOk(client_properties={}, response="\0guest\0guest"))
    tune = client.expect(cmds.Connection.Tune, 0)
    assert (tune.channel_max, tune.frame_max, tune.heartbeat) == (2047, 131072, 60)


def test_full_handshake_and_client_close(raw, server_alive):
    client = raw(handshake=True)
    client.open_channel(1)
    client.send_frame(cmds.Connection.Close(reply_code=200, reply_text="Normal shutdown",
                                         class_id=0, method_id=0))
    client.expect(cmds.Connection.CloseOk, 0)
    # RabbitMQ leaves closing the socket to the client after close-ok (it does not
    # close within seconds), so that is not asserted here.
    server_alive()


def test_channel_close_and_reopen(raw):
    client = raw(handshake=True)
    client.open_channel(1)
    client.send_frame(cmds.Channel.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0),
                      1)
    client.expect(cmds.Channel.CloseOk, 1)
    client.open_channel(1)


@pytest.mark.parametrize(
    "header",
    [b"AMQP\x00\x00\x08\x00", b"AMQP\x01\x01\x00\x0a", b"AMQP\x00\x01\x00\x00",
     b"HTTP/1.1", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"],
    ids=["0-8-0", "1-0-10", "amqp-1.0", "http-8", "http-request"],
)
def test_wrong_protocol_header(raw, server_alive, header):
    client = raw()
    client.send(header)
    reply = b""
    while len(reply) < 8:
        data = client.recv_bytes(5)
        if not data:
            break
        reply += data
    assert reply == PROTOCOL_HEADER
    assert client.wait_closed(5)
    server_alive()


def test_garbage_before_start_ok(raw, server_alive):
    client = raw()
    client.read_start()
    client.send(bytes(range(256)) * 4)
    t0 = time.monotonic()
    # RabbitMQ closes silently (no connection.close before the connection is open),
    # after a fixed 3 s delay.
    assert client.until_close(8) is None
    assert time.monotonic() - t0 < 6
    server_alive()


def test_bad_credentials_close_403(raw, server_alive):
    client = raw()
    client.read_start()
    client.send_frame(cmds.Connection.StartOk(
        client_properties={"capabilities": {"authentication_failure_close": True}},
        response="\0guest\0wrong"))
    frame = assert_connection_close(
        client, 403, "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN")
    assert (frame.class_id, frame.method_id) == (0, 0)
    server_alive()


def test_unknown_vhost_close_530(raw, server_alive):
    client = raw()
    client.read_start()
    client.send_frame(cmds.Connection.StartOk(client_properties={}, response="\0guest\0guest"))
    tune = client.expect(cmds.Connection.Tune, 0)
    client.send_frame(cmds.Connection.TuneOk(channel_max=tune.channel_max,
                                          frame_max=tune.frame_max, heartbeat=0))
    client.send_frame(cmds.Connection.Open(virtual_host="no-such-vhost"))
    assert_connection_close(client, 530, "NOT_ALLOWED - vhost no-such-vhost not found",
                            class_id=10, method_id=40)
    server_alive()


def test_bad_tune_ok_closes_silently(raw, server_alive):
    # RabbitMQ rejects a tune-ok outside its limits by closing the socket without
    # connection.close (pre-open errors are silent), after its 3 s delay.
    cases = [
        {"channel_max": 2047, "frame_max": 1 << 20},  # above the server's frame_max
        {"channel_max": 2047, "frame_max": 1000},  # below the 4096 minimum
        {"channel_max": 0, "frame_max": 131072},  # 0 = "no limit" > server's 2047
    ]
    clients = []
    for tune_ok in cases:
        client = raw()
        client.read_start()
        client.send_frame(cmds.Connection.StartOk(client_properties={},
                                               response="\0guest\0guest"))
        client.expect(cmds.Connection.Tune, 0)
        client.send_frame(cmds.Connection.TuneOk(heartbeat=0, **tune_ok))
        client.send_frame(cmds.Connection.Open(virtual_host="/"))
        clients.append(client)
    for client in clients:
        assert client.until_close(15) is None
    server_alive()


# --------------------------------------------------------------------------
# framing errors after open
# --------------------------------------------------------------------------


def frame_error_text(product, rabbitmq_text, amqpd_words):
    """RabbitMQ's frame-error texts are Erlang terms; amqpd deliberately says in words what
    was wrong (same reply code, same ``FRAME_ERROR - `` prefix)."""
    if product == "amqpd":
        return lambda text: text.startswith("FRAME_ERROR - ") and amqpd_words in text
    return lambda text: text == rabbitmq_text


def test_bad_frame_end_501(raw, server_alive, server_product):
    client = raw(handshake=True)
    frame = cmds.Channel.Open()
    data = client.raw_frame(1, 1, struct.pack(">HH", 20, 10) + frame.marshal(), end=0x00)
    client.send(data)
    frame = assert_connection_close(client, 501, "FRAME_ERROR", 0, 0, wait_closed=False)
    assert frame_error_text(
        server_product,
        "FRAME_ERROR - type 1, all octets = <<0,20,0,10,1,48>>: {invalid_frame_end_marker,0}",
        "frame-end octet is 0x00",
    )(frame.reply_text), frame.reply_text
    server_alive()


def test_bad_frame_end_501_then_socket_closed(raw):
    # After a FRAME_ERROR RabbitMQ no longer parses input: it drops the socket
    # (3 s later) whether or not the client answers with close-ok.
    client = raw(handshake=True)
    client.send(client.raw_frame(1, 1, struct.pack(">HH", 20, 10) + cmds.Channel.Open().marshal(),
                                 end=0x00))
    got = client.until_close()
    assert got is not None
    assert got[1].reply_code == 501
    t0 = time.monotonic()
    assert client.wait_closed(6)
    assert time.monotonic() - t0 < 5


@pytest.mark.parametrize("frame_max", [4096, None])
def test_frame_larger_than_frame_max_501(raw, server_alive, frame_max, server_product):
    client = raw(handshake=True, frame_max=frame_max)
    negotiated = frame_max or client.tune.frame_max
    client.open_channel(1)
    # RabbitMQ only rejects payloads larger than frame_max (see the next test)
    payload = b"x" * (negotiated + 1)
    for f, ch in publish_frames(1, "", "nowhere", payload):
        client.send_frame(f, ch)
    frame = assert_connection_close(client, 501, "FRAME_ERROR", 0, 0, wait_closed=False)
    assert frame_error_text(
        server_product,
        f"FRAME_ERROR - type 3, all octets = <<>>: "
        f"{{frame_too_large,{negotiated + 1},{negotiated - 8}}}",
        f"exceeds the negotiated frame_max of {negotiated}",
    )(frame.reply_text), frame.reply_text
    server_alive()


def test_frame_of_frame_max_plus_8_is_tolerated(raw):
    # RabbitMQ quirk: frame_max bounds the whole frame (payload + 8), yet RabbitMQ
    # allows 8 bytes of slack ("FRAME_SIZE_FUDGE") and only rejects payloads
    # larger than frame_max.
    client = raw(handshake=True, frame_max=4096)
    client.open_channel(1)
    client.send_frame(cmds.Queue.Declare(queue="", exclusive=True), 1)
    q = client.expect(cmds.Queue.DeclareOk, 1).queue
    payload = b"z" * 4096
    for f, ch in publish_frames(1, "", q, payload):
        client.send_frame(f, ch)
    client.send_frame(cmds.Basic.Get(queue=q, no_ack=True), 1)
    client.expect(cmds.Basic.GetOk, 1)
    assert client.expect(pheader.ContentHeader, 1).body_size == 4096
    got = client.expect(pbody.ContentBody, 1).value + client.expect(pbody.ContentBody, 1).value
    assert got == payload  # re-framed by the server as 4088 + 8


def test_unknown_frame_type_501(raw, server_alive, server_product):
    client = raw(handshake=True)
    client.send(client.raw_frame(9, 0, b"abcd"))
    frame = assert_connection_close(client, 501, "FRAME_ERROR", 0, 0, wait_closed=False)
    assert frame_error_text(
        server_product,
        'FRAME_ERROR - type 9, all octets = <<"abcd">>: unknown_frame',
        "unknown frame type 9",
    )(frame.reply_text), frame.reply_text

    server_alive()


def test_method_on_unopened_channel_504(raw, server_alive):
    client = raw(handshake=True)
    client.send_frame(cmds.Queue.Declare(queue="", exclusive=True), 3)
    assert_connection_close(client, 504, "CHANNEL_ERROR - expected 'channel.open'", 50, 10)
    server_alive()


def test_second_channel_open_504(raw, server_alive):
    client = raw(handshake=True)
    client.open_channel(1)
    client.send_frame(cmds.Channel.Open(), 1)
    assert_connection_close(client, 504, "CHANNEL_ERROR - second 'channel.open' seen", 20, 10)
    server_alive()


def test_non_connection_method_on_channel_zero_504(raw, server_alive):
    client = raw(handshake=True)
    client.send_frame(cmds.Queue.Declare(queue="", exclusive=True), 0)
    assert_connection_close(client, 504, "CHANNEL_ERROR", 50, 10)
    server_alive()


@pytest.mark.parametrize("kind", ["header", "body"])
def test_content_without_publish_505(raw, server_alive, kind):
    client = raw(handshake=True)
    client.open_channel(1)
    if kind == "header":
        client.send_frame(pheader.ContentHeader(0, 3, cmds.Basic.Properties()), 1)
    else:
        client.send_frame(pbody.ContentBody(b"abc"), 1)
    assert_connection_close(client, 505, "UNEXPECTED_FRAME", 0, 0)
    server_alive()


def test_content_header_on_channel_zero_505(raw, server_alive):
    client = raw(handshake=True)
    client.send_frame(pheader.ContentHeader(0, 3, cmds.Basic.Properties()), 0)
    assert_connection_close(client, 505, "UNEXPECTED_FRAME", 0, 0)
    server_alive()


def test_method_instead_of_content_header_505(raw, server_alive):
    client = raw(handshake=True)
    client.open_channel(1)
    client.send_frame(cmds.Basic.Publish(exchange="", routing_key="x"), 1)
    client.send_frame(cmds.Basic.Qos(prefetch_count=1), 1)
    # class/method of the interrupted command: basic.publish
    assert_connection_close(client, 505, "UNEXPECTED_FRAME", 60, 40)
    server_alive()


def test_heartbeat_on_nonzero_channel_505(raw, server_alive):
    # RabbitMQ answers 505 UNEXPECTED_FRAME (not 501 FRAME_ERROR) here.
    client = raw(handshake=True)
    client.open_channel(1)
    client.send(client.raw_frame(8, 1, b""))
    assert_connection_close(client, 505, "UNEXPECTED_FRAME", 0, 0)
    server_alive()


@pytest.mark.rabbitmq_differs(
    reason="RabbitMQ 3.10 crashes the connection process and resets the socket with no "
    "connection.close; amqpd answers 540 NOT_IMPLEMENTED naming the class and method, so "
    "the client learns why"
)
@pytest.mark.parametrize(("class_id", "method_id"), [(60, 999), (99, 10), (10, 99)])
def test_unknown_method_is_refused(raw, server_alive, class_id, method_id, server_product):
    client = raw(handshake=True)
    client.open_channel(1)
    channel = 0 if class_id == 10 else 1
    client.send(client.raw_frame(1, channel, struct.pack(">HH", class_id, method_id)))
    if server_product == "amqpd":
        frame = assert_connection_close(client, 540, "NOT_IMPLEMENTED", class_id, method_id,
                                        wait_closed=False)
        assert f"class {class_id}, method {method_id}" in frame.reply_text
    else:
        assert client.until_close(5) is None
    server_alive()


def test_publish_immediate_540(raw, server_alive):
    client = raw(handshake=True)
    client.open_channel(1)
    for f, ch in publish_frames(1, "", "nowhere", b"abc", immediate=True):
        client.send_frame(f, ch)
    assert_connection_close(client, 540, "NOT_IMPLEMENTED - immediate=true", 60, 40)
    server_alive()


def test_channel_max_limits_open_channels_530(raw, server_alive):
    # RabbitMQ enforces channel_max on the NUMBER of open channels, not on the
    # channel id: ids above channel_max are accepted while the count is below it.
    client = raw(handshake=True, channel_max=2)
    client.open_channel(5)
    client.open_channel(2047)
    client.send_frame(cmds.Channel.Open(), 1)
    assert_connection_close(
        client, 530,
        "NOT_ALLOWED - number of channels opened (2) has reached the negotiated channel_max (2)",
        0, 0)
    server_alive()


def test_duplicate_consumer_tag_530(raw, server_alive):
    client = raw(handshake=True)
    client.open_channel(1)
    client.send_frame(cmds.Queue.Declare(queue="", exclusive=True), 1)
    q = client.expect(cmds.Queue.DeclareOk, 1).queue
    client.send_frame(cmds.Basic.Consume(queue=q, consumer_tag="dup"), 1)
    client.expect(cmds.Basic.ConsumeOk, 1)
    client.send_frame(cmds.Basic.Consume(queue=q, consumer_tag="dup"), 1)
    assert_connection_close(client, 530, "NOT_ALLOWED - attempt to reuse consumer tag 'dup'",
                            60, 20)
    server_alive()


def test_client_disconnects_mid_frame(raw, server_alive):
    for cut in (1, 5, 7, 10):
        client = raw(handshake=True)
        client.open_channel(1)
        data = b"".join(client.raw_frame(1, 1, struct.pack(">HH", 50, 10)
                                         + cmds.Queue.Declare(queue="x").marshal())
                        for _ in range(1))
        client.send(data[:cut])
        client.close()
    client = raw()
    client.send(PROTOCOL_HEADER[:4])
    client.close()
    server_alive()


# --------------------------------------------------------------------------
# channel semantics visible on the wire
# --------------------------------------------------------------------------


def test_server_generated_consumer_tag(raw):
    client = raw(handshake=True)
    client.open_channel(1)
    client.send_frame(cmds.Queue.Declare(queue="", exclusive=True), 1)
    q = client.expect(cmds.Queue.DeclareOk, 1).queue
    client.send_frame(cmds.Basic.Consume(queue=q, consumer_tag=""), 1)
    ok = client.expect(cmds.Basic.ConsumeOk, 1)
    assert ok.consumer_tag.startswith("amq.ctag-")


def test_frames_after_channel_close_are_ignored(raw):
    # After the server sends channel.close it discards everything on that channel
    # until the client's channel.close-ok.
    client = raw(handshake=True)
    client.open_channel(1)
    client.send_frame(cmds.Queue.Declare(queue="interop.no-such-queue", passive=True), 1)
    _, close = client.until_close()
    assert isinstance(close, cmds.Channel.Close)
    assert (close.reply_code, close.class_id, close.method_id) == (404, 50, 10)
    client.send_frame(cmds.Queue.Declare(queue="interop.no-such-queue-2", passive=True), 1)
    client.send_frame(cmds.Channel.CloseOk(), 1)
    client.open_channel(1)
    client.send_frame(cmds.Queue.Declare(queue="", exclusive=True), 1)
    client.expect(cmds.Queue.DeclareOk, 1)


def test_content_header_bytes_round_trip(raw):
    # The broker passes the encoded properties through unchanged: every AMQP field
    # type, as sent, comes back byte for byte.
    client = raw(handshake=True)
    client.open_channel(1)
    client.send_frame(cmds.Queue.Declare(queue="", exclusive=True), 1)
    q = client.expect(cmds.Queue.DeclareOk, 1).queue

    def field(kind, data):
        return kind + data

    table = b"".join(
        bytes([len(k)]) + k.encode() + v
        for k, v in [
            ("t", field(b"t", b"\x01")),
            ("b", field(b"b", b"\xfe")),
            ("B", field(b"B", b"\xfe")),
            ("s", field(b"s", b"\xff\xfe")),
            ("u", field(b"u", b"\xff\xfe")),
            ("I", field(b"I", b"\xff\xff\xff\xfe")),
            ("i", field(b"i", b"\xff\xff\xff\xfe")),
            ("l", field(b"l", b"\x80" + b"\x00" * 7)),
            ("f", field(b"f", struct.pack(">f", 1.5))),
            ("d", field(b"d", struct.pack(">d", -2.25))),
            ("D", field(b"D", b"\x02" + struct.pack(">i", 314))),
            ("S", field(b"S", struct.pack(">I", 3) + b"abc")),
            ("x", field(b"x", struct.pack(">I", 2) + b"\x00\xff")),
            ("T", field(b"T", struct.pack(">Q", 1_700_000_000))),
            ("V", b"V"),
            ("A", field(b"A", struct.pack(">I", 7) + b"I\x00\x00\x00\x01" + b"t\x00")),
            ("F", field(b"F", struct.pack(">I", 4) + b"\x01kt\x01")),
        ]
    )
    # property flags: content-type, headers, delivery-mode, priority, message-id, timestamp
    flags = (1 << 15) | (1 << 13) | (1 << 12) | (1 << 11) | (1 << 7) | (1 << 6)
    props = (
        struct.pack(">H", flags)
        + b"\x0atext/plain"
        + struct.pack(">I", len(table)) + table
        + b"\x02" + b"\x05"
        + b"\x03m-1"
        + struct.pack(">Q", 1_600_000_000)
    )
    body = b"payload"
    header_payload = struct.pack(">HHQ", 60, 0, len(body)) + props
    client.send_frame(cmds.Basic.Publish(exchange="", routing_key=q), 1)
    client.send(client.raw_frame(2, 1, header_payload))
    client.send_frame(pbody.ContentBody(body), 1)
    client.send_frame(cmds.Basic.Get(queue=q, no_ack=True), 1)
    client.expect(cmds.Basic.GetOk, 1)
    # read the raw header frame straight off the buffer
    deadline = time.monotonic() + 5
    while len(client.buf) < 7 or len(client.buf) < 8 + struct.unpack(">I", client.buf[3:7])[0]:
        assert time.monotonic() < deadline
        client.buf += client.sock.recv(65536)
    size = struct.unpack(">I", client.buf[3:7])[0]
    frame_type, channel = client.buf[0], struct.unpack(">H", client.buf[1:3])[0]
    got_payload = client.buf[7:7 + size]
    client.buf = client.buf[8 + size:]
    assert (frame_type, channel) == (2, 1)
    assert got_payload == header_payload
    assert client.expect(pbody.ContentBody, 1).value == body


def test_multi_frame_body_reassembled(raw):
    client = raw(handshake=True, frame_max=4096)
    client.open_channel(1)
    client.send_frame(cmds.Queue.Declare(queue="", exclusive=True), 1)
    q = client.expect(cmds.Queue.DeclareOk, 1).queue
    payload = bytes(range(256)) * 40  # 10240 bytes: 3 body frames at frame_max 4096
    client.send_frame(cmds.Basic.Publish(exchange="", routing_key=q), 1)
    client.send_frame(pheader.ContentHeader(0, len(payload), cmds.Basic.Properties()), 1)
    for i in range(0, len(payload), 1000):
        client.send_frame(pbody.ContentBody(payload[i:i + 1000]), 1)
    client.send_frame(cmds.Basic.Get(queue=q, no_ack=True), 1)
    client.expect(cmds.Basic.GetOk, 1)
    assert client.expect(pheader.ContentHeader, 1).body_size == len(payload)
    got = b""
    sizes = []
    while len(got) < len(payload):
        part = client.expect(pbody.ContentBody, 1).value
        sizes.append(len(part))
        got += part
    assert got == payload
    # the server re-frames the body to the negotiated frame_max
    assert sizes == [4088, 4088, 2064]


def test_zero_length_body_has_no_body_frame(raw):
    client = raw(handshake=True)
    client.open_channel(1)
    client.send_frame(cmds.Queue.Declare(queue="", exclusive=True), 1)
    q = client.expect(cmds.Queue.DeclareOk, 1).queue
    client.send_frame(cmds.Basic.Publish(exchange="", routing_key=q), 1)
    client.send_frame(pheader.ContentHeader(0, 0, cmds.Basic.Properties()), 1)
    client.send_frame(cmds.Basic.Get(queue=q, no_ack=True), 1)
    client.expect(cmds.Basic.GetOk, 1)
    assert client.expect(pheader.ContentHeader, 1).body_size == 0
    client.send_frame(cmds.Basic.Get(queue=q, no_ack=True), 1)
    client.expect(cmds.Basic.GetEmpty, 1)


# --------------------------------------------------------------------------
# heartbeats
# --------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_silent_client_disconnected_after_missed_heartbeats(raw, server_alive):
    client = raw(handshake=True, heartbeat=1)
    t0 = time.monotonic()
    heartbeats = 0
    while True:
        got = client.recv_frame(8)
        if got is None:
            break
        channel, frame = got
        # RabbitMQ sends no connection.close here, just heartbeats, then drops the socket
        assert isinstance(frame, pheartbeat.Heartbeat), frame
        assert channel == 0
        heartbeats += 1
    elapsed = time.monotonic() - t0
    # RabbitMQ (heartbeat=1): heartbeats every 0.5 s, socket dropped after ~3 s.
    assert 1.5 < elapsed < 6, elapsed
    assert heartbeats >= 2
    server_alive()


@pytest.mark.timeout(20)
def test_client_heartbeats_keep_connection_open(raw):
    client = raw(handshake=True, heartbeat=1)
    deadline = time.monotonic() + 3.5
    next_beat = time.monotonic()
    while time.monotonic() < deadline:
        if time.monotonic() >= next_beat:
            client.send_frame(pheartbeat.Heartbeat(), 0)
            next_beat += 0.25
        try:
            got = client.recv_frame(0.1)
        except TimeoutError:
            continue
        assert got is not None, "server dropped a connection that sent heartbeats"
        assert isinstance(got[1], pheartbeat.Heartbeat)
    client.open_channel(1)


def test_heartbeat_zero_disables(raw):
    client = raw(handshake=True, heartbeat=0)
    with pytest.raises(TimeoutError):
        client.recv_frame(1.5)
    client.open_channel(1)


# --------------------------------------------------------------------------
# many connections
# --------------------------------------------------------------------------


def _rst_close(sock):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.mark.timeout(60)
def test_thousand_connections_dropped_abruptly(raw, broker_addr, amqp_url, server_alive):
    def handshaken(_):
        client = raw(handshake=True)
        return client.sock

    batch = 100
    # 100 full handshakes (concurrently), the rest TCP-only (+ protocol header for some)
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        socks = list(pool.map(handshaken, range(batch)))
    for s in socks:
        _rst_close(s)
    for round_ in range(9):
        socks = []
        for i in range(batch):
            s = socket.create_connection(broker_addr, timeout=5)
            if i % 2:
                s.sendall(PROTOCOL_HEADER)
            socks.append(s)
        for s in socks:
            if round_ % 2:
                _rst_close(s)
            else:
                s.close()
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        ch = conn.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", q, b"after the storm")
        deadline = time.monotonic() + 5
        while True:
            _, _, body = ch.basic_get(q, auto_ack=True)
            if body is not None:
                break
            assert time.monotonic() < deadline
        assert body == b"after the storm"
    finally:
        conn.close()
    server_alive()
