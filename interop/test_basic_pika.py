"""Happy-path behaviour through pika's BlockingConnection."""

from __future__ import annotations

import datetime as dt
import time
from decimal import Decimal

import pika
import pika.exceptions as pex
import pytest

pytestmark = pytest.mark.timeout(30)

CAPABILITIES = (
    "publisher_confirms",
    "basic.nack",
    "consumer_cancel_notify",
    "connection.blocked",
    "authentication_failure_close",
    "per_consumer_qos",
    "exchange_exchange_bindings",
)


def pump(conn, until, timeout=5.0, step=0.05):
    """Run pika's I/O until ``until()`` is true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        conn.process_data_events(time_limit=step)


def settle(conn, seconds=0.3):
    """Let in-flight deliveries arrive (used before asserting that nothing more comes)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)


def ready_count(conn, queue):
    ch = conn.channel()
    count = ch.queue_declare(queue, passive=True).method.message_count
    ch.close()
    return count


def publish_n(ch, queue, n, start=1):
    for i in range(start, start + n):
        ch.basic_publish("", queue, str(i).encode())


# --------------------------------------------------------------------------
# connection
# --------------------------------------------------------------------------


def test_connect_and_close(pika_params):
    conn = pika.BlockingConnection(pika_params)
    assert conn.is_open
    ch = conn.channel()
    assert ch.is_open
    ch.close()
    conn.close()
    assert conn.is_closed


def test_server_properties(pika_conn):
    props = pika_conn._impl.server_properties
    for key in ("product", "version", "platform"):
        assert isinstance(props[key], str) and props[key], key
    caps = props["capabilities"]
    for cap in CAPABILITIES:
        assert caps.get(cap) is True, cap


def test_tune_defaults(pika_params):
    # pika's own defaults (channel_max 65535, frame_max 131072, heartbeat: accept
    # the server's) make the negotiated values equal to the server's proposal.
    conn = pika.BlockingConnection(pika_params)
    try:
        params = conn._impl.params
        assert params.channel_max == 2047
        assert params.frame_max == 131072
        assert params.heartbeat == 60
    finally:
        conn.close()


def test_many_channels(pika_conn):
    chans = [pika_conn.channel() for _ in range(50)]
    assert len({c.channel_number for c in chans}) == 50
    for c in chans:
        c.close()


# --------------------------------------------------------------------------
# queues
# --------------------------------------------------------------------------


def test_server_named_queue(channel):
    ok = channel.queue_declare("", exclusive=True)
    assert ok.method.queue.startswith("amq.gen-")
    assert ok.method.message_count == 0
    assert ok.method.consumer_count == 0
    # it is usable by the name the server gave
    channel.basic_publish("", ok.method.queue, b"x")
    _, _, body = channel.basic_get(ok.method.queue, auto_ack=True)
    assert body == b"x"


def test_declare_ok_counts(pika_conn, names):
    q = names.queue()
    ch = pika_conn.channel()
    ch.confirm_delivery()
    ok = ch.queue_declare(q)
    assert ok.method.queue == q
    assert (ok.method.message_count, ok.method.consumer_count) == (0, 0)
    publish_n(ch, q, 3)
    ok = ch.queue_declare(q)  # non-passive redeclare with same args reports counts too
    assert (ok.method.message_count, ok.method.consumer_count) == (3, 0)

    cons = pika_conn.channel()
    cons.basic_qos(prefetch_count=1)
    got = []
    cons.basic_consume(q, lambda c, m, p, b: got.append(m.delivery_tag))
    pump(pika_conn, lambda: got)
    settle(pika_conn, 0.1)
    ok = ch.queue_declare(q, passive=True)
    # message_count counts ready messages only; the unacked one is not included
    assert (ok.method.message_count, ok.method.consumer_count) == (2, 1)


def test_queue_redeclare_same_is_ok(channel, names):
    q = names.queue()
    args = {"x-message-ttl": 60000, "x-max-length": 10}
    channel.queue_declare(q, durable=True, arguments=args)
    ok = channel.queue_declare(q, durable=True, arguments=args)
    assert ok.method.queue == q


def test_auto_delete_queue_deleted_when_last_consumer_cancels(pika_conn, names):
    q = names.queue()
    ch = pika_conn.channel()
    ch.queue_declare(q, auto_delete=True)
    t1 = ch.basic_consume(q, lambda *a: None)
    t2 = ch.basic_consume(q, lambda *a: None)
    ch.basic_cancel(t1)
    assert pika_conn.channel().queue_declare(q, passive=True).method.consumer_count == 1
    ch.basic_cancel(t2)
    deadline = time.monotonic() + 5
    while True:
        probe = pika_conn.channel()
        try:
            probe.queue_declare(q, passive=True)
        except pex.ChannelClosedByBroker as e:
            assert e.reply_code == 404
            break
        probe.close()
        assert time.monotonic() < deadline, "auto-delete queue still exists"
        time.sleep(0.05)


def test_auto_delete_queue_without_consumers_stays(pika_conn, names):
    q = names.queue()
    ch = pika_conn.channel()
    ch.queue_declare(q, auto_delete=True)
    ch.basic_publish("", q, b"x")
    ch.close()
    assert ready_count(pika_conn, q) == 1


def test_exclusive_queue_deleted_with_connection(pika_connect, pika_conn, names):
    q = names.queue()
    other = pika_connect()
    other.channel().queue_declare(q, exclusive=True)
    other.close()
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        pika_conn.channel().queue_declare(q, passive=True)
    assert ei.value.reply_code == 404


def test_queue_purge_returns_count(channel, names):
    q = names.queue()
    channel.queue_declare(q)
    channel.confirm_delivery()
    publish_n(channel, q, 7)
    assert channel.queue_purge(q).method.message_count == 7
    assert channel.queue_purge(q).method.message_count == 0
    assert channel.basic_get(q) == (None, None, None)


def test_queue_delete_returns_count(channel, names):
    q = names.queue()
    channel.queue_declare(q)
    channel.confirm_delivery()
    publish_n(channel, q, 4)
    assert channel.queue_delete(q).method.message_count == 4


def test_queue_delete_if_unused_and_if_empty_when_ok(channel, names):
    q = names.queue()
    channel.queue_declare(q)
    assert channel.queue_delete(q, if_unused=True, if_empty=True).method.message_count == 0


def test_queue_delete_missing_is_ok(channel, names):
    # RabbitMQ: deleting a queue that does not exist succeeds (delete-ok, 0 messages).
    ok = channel.queue_delete(names.queue())
    assert ok.method.message_count == 0
    assert channel.is_open


def test_queue_unbind(channel, names):
    q, x = names.queue(), names.exchange()
    channel.exchange_declare(x, "direct")
    channel.queue_declare(q)
    channel.queue_bind(q, x, "k")
    channel.confirm_delivery()
    channel.basic_publish(x, "k", b"1")
    channel.queue_unbind(q, x, "k")
    with pytest.raises(pex.UnroutableError):
        channel.basic_publish(x, "k", b"2", mandatory=True)
    assert ready_count(channel.connection, q) == 1
    # unbinding something that is not bound is fine
    channel.queue_unbind(q, x, "nope")


# --------------------------------------------------------------------------
# exchanges
# --------------------------------------------------------------------------


def test_direct_exchange_routing(channel, names):
    x, q1, q2 = names.exchange(), names.queue(), names.queue()
    channel.exchange_declare(x, "direct")
    channel.exchange_declare(x, "direct")  # idempotent
    channel.queue_declare(q1)
    channel.queue_declare(q2)
    channel.queue_bind(q1, x, "a")
    channel.queue_bind(q2, x, "b")
    channel.queue_bind(q2, x, "a")
    channel.confirm_delivery()
    channel.basic_publish(x, "a", b"A")
    channel.basic_publish(x, "b", b"B")
    assert [channel.basic_get(q1, auto_ack=True)[2] for _ in range(2)] == [b"A", None]
    assert [channel.basic_get(q2, auto_ack=True)[2] for _ in range(3)] == [b"A", b"B", None]


def test_exchange_delete(channel, names):
    x = names.exchange()
    channel.exchange_declare(x, "fanout")
    channel.exchange_declare(x, "fanout", passive=True)
    channel.exchange_delete(x)
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        channel.exchange_declare(x, "fanout", passive=True)
    assert ei.value.reply_code == 404


def test_exchange_delete_missing_is_ok(channel, names):
    # RabbitMQ 3.10: deleting an exchange that does not exist succeeds.
    channel.exchange_delete(names.exchange())
    assert channel.is_open


@pytest.mark.parametrize(
    ("name", "kind"),
    [("amq.direct", "direct"), ("amq.fanout", "fanout"), ("amq.topic", "topic"),
     ("amq.headers", "headers"), ("amq.match", "headers")],
)
def test_predeclared_exchanges_exist(channel, name, kind):
    channel.exchange_declare(name, kind, passive=True)
    # a non-passive redeclare with the same type and durable=True is also allowed
    channel.exchange_declare(name, kind, durable=True)


def test_amq_direct_routes(channel, names):
    q = names.queue()
    channel.queue_declare(q)
    channel.queue_bind(q, "amq.direct", q)
    channel.confirm_delivery()
    channel.basic_publish("amq.direct", q, b"via amq.direct")
    assert channel.basic_get(q, auto_ack=True)[2] == b"via amq.direct"


def test_default_exchange_routes_by_queue_name(channel, names):
    q = names.queue()
    channel.queue_declare(q)
    channel.confirm_delivery()
    channel.basic_publish("", q, b"hi")
    method, _, body = channel.basic_get(q, auto_ack=True)
    assert body == b"hi"
    assert method.exchange == ""
    assert method.routing_key == q


# --------------------------------------------------------------------------
# publish / get
# --------------------------------------------------------------------------

HEADERS = {
    "str": "hello ünïcode",
    "bytes": b"\x00\x01\xfe\xff",
    "int": 42,
    "negative": -7,
    "big": 2**40,
    "true": True,
    "false": False,
    "decimal": Decimal("3.14"),
    "timestamp": dt.datetime(2024, 2, 29, 12, 34, 56, tzinfo=dt.UTC),
    "void": None,
    "nested": {"a": {"b": [1, "two", {"three": 3}]}, "empty": {}},
    "array": [1, "s", True, [2, 3], {"k": "v"}, b"raw"],
    "empty_array": [],
    "empty_str": "",
}


def test_properties_round_trip(channel, names):
    q = names.queue()
    channel.queue_declare(q)
    props = pika.BasicProperties(
        content_type="application/json",
        content_encoding="gzip",
        headers=HEADERS,
        delivery_mode=2,
        priority=7,
        correlation_id="corr-1",
        reply_to="reply.queue",
        expiration="3600000",
        message_id="msg-1",
        timestamp=1_700_000_000,
        type="order.created",
        user_id="guest",  # RabbitMQ validates it against the connection's user
        app_id="interop",
    )
    channel.confirm_delivery()
    channel.basic_publish("", q, b"{}", properties=props)
    method, got, body = channel.basic_get(q, auto_ack=True)
    assert body == b"{}"
    assert method.redelivered is False
    for attr in ("content_type", "content_encoding", "delivery_mode", "priority",
                 "correlation_id", "reply_to", "expiration", "message_id", "timestamp",
                 "type", "user_id", "app_id"):
        assert getattr(got, attr) == getattr(props, attr), attr
    assert got.headers == HEADERS
    assert got.cluster_id is None


def test_no_properties_round_trip(channel, names):
    q = names.queue()
    channel.queue_declare(q)
    channel.confirm_delivery()
    channel.basic_publish("", q, b"bare")
    _, got, body = channel.basic_get(q, auto_ack=True)
    assert body == b"bare"
    for attr in ("content_type", "content_encoding", "headers", "delivery_mode", "priority",
                 "correlation_id", "reply_to", "expiration", "message_id", "timestamp",
                 "type", "user_id", "app_id", "cluster_id"):
        assert getattr(got, attr) is None, attr


@pytest.mark.parametrize("size", [0, 1, 131064 - 1, 131064, 131064 + 1, 3 * 131064 + 5,
                                  10 * 1024 * 1024])
def test_body_sizes(channel, names, size):
    q = names.queue()
    channel.queue_declare(q)
    channel.confirm_delivery()
    payload = bytes(i % 251 for i in range(size)) if size < 1_000_000 else (
        b"0123456789abcdef" * (size // 16))
    channel.basic_publish("", q, payload)
    _, _, body = channel.basic_get(q, auto_ack=True)
    assert len(body) == size
    assert body == payload


def test_basic_get_empty(channel, names):
    q = names.queue()
    channel.queue_declare(q)
    assert channel.basic_get(q) == (None, None, None)
    assert channel.basic_get(q, auto_ack=True) == (None, None, None)


def test_get_ok_message_count_and_order(channel, names):
    q = names.queue()
    channel.queue_declare(q)
    channel.confirm_delivery()
    publish_n(channel, q, 3)
    seen = []
    for remaining in (2, 1, 0):
        method, _, body = channel.basic_get(q, auto_ack=True)
        assert method.message_count == remaining
        seen.append(body)
    assert seen == [b"1", b"2", b"3"]


def test_delivery_tags_increase_per_channel(channel, names):
    q = names.queue()
    channel.queue_declare(q)
    channel.confirm_delivery()
    publish_n(channel, q, 3)
    tags = [channel.basic_get(q)[0].delivery_tag for _ in range(3)]
    assert tags == [1, 2, 3]
    channel.basic_ack(3, multiple=True)


def test_mandatory_unroutable_on_return_callback(pika_conn, names):
    ch = pika_conn.channel()
    returned = []
    ch.add_on_return_callback(lambda c, m, p, b: returned.append((m, p, b)))
    rk = names.queue()
    ch.basic_publish("", rk, b"lost", pika.BasicProperties(message_id="m1"), mandatory=True)
    pump(pika_conn, lambda: returned)
    method, props, body = returned[0]
    assert method.reply_code == 312
    assert method.reply_text == "NO_ROUTE"
    assert method.exchange == ""
    assert method.routing_key == rk
    assert props.message_id == "m1"
    assert body == b"lost"


def test_mandatory_unroutable_under_confirms(channel, names):
    channel.confirm_delivery()
    with pytest.raises(pex.UnroutableError) as ei:
        channel.basic_publish("", names.queue(), b"lost", mandatory=True)
    (msg,) = ei.value.messages
    assert msg.method.reply_code == 312
    assert msg.body == b"lost"
    # the channel stays usable; unroutable non-mandatory publishes are just dropped (acked)
    channel.basic_publish("", names.queue(), b"dropped")
    assert channel.is_open


def test_mandatory_routed_is_not_returned(channel, names):
    q = names.queue()
    channel.queue_declare(q)
    channel.confirm_delivery()
    channel.basic_publish("", q, b"ok", mandatory=True)
    assert channel.basic_get(q, auto_ack=True)[2] == b"ok"


# --------------------------------------------------------------------------
# consumers, prefetch, work queues
# --------------------------------------------------------------------------


def test_competing_consumers_round_robin(pika_conn, names):
    q = names.queue()
    ch = pika_conn.channel()
    ch.queue_declare(q)
    order = []
    tag_a = ch.basic_consume(q, lambda c, m, p, b: order.append(("a", b)), auto_ack=True)
    tag_b = ch.basic_consume(q, lambda c, m, p, b: order.append(("b", b)), auto_ack=True)
    assert tag_a != tag_b
    pub = pika_conn.channel()
    pub.confirm_delivery()
    publish_n(pub, q, 10)
    pump(pika_conn, lambda: len(order) == 10)
    who = [w for w, _ in order]
    assert who.count("a") == who.count("b") == 5
    assert all(who[i] != who[i + 1] for i in range(9)), who
    assert [b for _, b in order] == [str(i).encode() for i in range(1, 11)]


def test_consumer_tags_and_deliver_fields(pika_conn, names):
    q = names.queue()
    ch = pika_conn.channel()
    ch.queue_declare(q)
    got = []
    tag = ch.basic_consume(q, lambda c, m, p, b: got.append(m), consumer_tag="my-tag")
    assert tag == "my-tag"
    auto_tag = ch.basic_consume(q, lambda c, m, p, b: None)
    assert auto_tag.startswith("ctag")  # pika generates its own ctag
    ch.basic_cancel(auto_tag)
    ch.basic_publish("", q, b"x")
    pump(pika_conn, lambda: got)
    m = got[0]
    assert (m.consumer_tag, m.delivery_tag, m.redelivered, m.exchange, m.routing_key) == (
        "my-tag", 1, False, "", q)
    ch.basic_ack(m.delivery_tag)


def _consume_without_ack(ch, q, sink, name):
    return ch.basic_consume(q, lambda c, m, p, b: sink.append((name, m.delivery_tag, b)))


def test_prefetch_per_consumer(pika_conn, names):
    q = names.queue()
    ch = pika_conn.channel()
    ch.queue_declare(q)
    ch.basic_qos(prefetch_count=2)  # global=False: applies to each new consumer
    got = []
    _consume_without_ack(ch, q, got, "a")
    _consume_without_ack(ch, q, got, "b")
    pub = pika_conn.channel()
    pub.confirm_delivery()
    publish_n(pub, q, 10)
    pump(pika_conn, lambda: len(got) == 4)
    settle(pika_conn)
    assert len(got) == 4
    assert sorted(n for n, _, _ in got) == ["a", "a", "b", "b"]
    # acking one of a's messages frees exactly one slot for a
    tag = next(t for n, t, _ in got if n == "a")
    ch.basic_ack(tag)
    pump(pika_conn, lambda: len(got) == 5)
    settle(pika_conn)
    assert len(got) == 5
    assert got[-1][0] == "a"
    assert ready_count(pika_conn, q) == 5


def test_prefetch_global_is_per_channel(pika_conn, names):
    q = names.queue()
    ch = pika_conn.channel()
    ch.queue_declare(q)
    ch.basic_qos(prefetch_count=3, global_qos=True)
    got = []
    _consume_without_ack(ch, q, got, "a")
    _consume_without_ack(ch, q, got, "b")
    pub = pika_conn.channel()
    pub.confirm_delivery()
    publish_n(pub, q, 10)
    pump(pika_conn, lambda: len(got) == 3)
    settle(pika_conn)
    assert len(got) == 3
    ch.basic_ack(0, multiple=True)
    pump(pika_conn, lambda: len(got) == 6)
    settle(pika_conn)
    assert len(got) == 6


def test_prefetch_zero_is_unlimited(pika_conn, names):
    q = names.queue()
    ch = pika_conn.channel()
    ch.queue_declare(q)
    pub = pika_conn.channel()
    pub.confirm_delivery()
    publish_n(pub, q, 50)
    ch.basic_qos(prefetch_count=0)
    got = []
    _consume_without_ack(ch, q, got, "a")
    pump(pika_conn, lambda: len(got) == 50)
    assert ready_count(pika_conn, q) == 0


def test_prefetch_applies_only_to_later_consumers(pika_conn, names):
    q = names.queue()
    ch = pika_conn.channel()
    ch.queue_declare(q)
    got = []
    _consume_without_ack(ch, q, got, "unlimited")
    ch.basic_qos(prefetch_count=1)
    _consume_without_ack(ch, q, got, "limited")
    pub = pika_conn.channel()
    pub.confirm_delivery()
    publish_n(pub, q, 6)
    pump(pika_conn, lambda: len(got) == 6)
    assert [n for n, _, _ in got].count("limited") == 1


def test_basic_get_ignores_prefetch(channel, names):
    q = names.queue()
    channel.queue_declare(q)
    channel.confirm_delivery()
    publish_n(channel, q, 3)
    channel.basic_qos(prefetch_count=1)
    bodies = [channel.basic_get(q)[2] for _ in range(3)]
    assert bodies == [b"1", b"2", b"3"]


# --------------------------------------------------------------------------
# acknowledgements and redelivery
# --------------------------------------------------------------------------


def _get_all(ch, q, n):
    out = []
    for _ in range(n):
        method, _, body = ch.basic_get(q)
        assert method is not None
        out.append((method.delivery_tag, body, method.redelivered))
    return out


def test_ack_multiple(pika_conn, names):
    q = names.queue()
    ch = pika_conn.channel()
    ch.queue_declare(q)
    ch.confirm_delivery()
    publish_n(ch, q, 5)
    got = _get_all(ch, q, 5)
    ch.basic_ack(got[2][0], multiple=True)  # acks 1..3
    ch.close()
    ch = pika_conn.channel()
    rest = _get_all(ch, q, 2)
    assert [(b, r) for _, b, r in rest] == [(b"4", True), (b"5", True)]
    assert ch.basic_get(q) == (None, None, None)


def test_ack_multiple_zero_acks_all(pika_conn, names):
    q = names.queue()
    ch = pika_conn.channel()
    ch.queue_declare(q)
    ch.confirm_delivery()
    publish_n(ch, q, 4)
    _get_all(ch, q, 4)
    ch.basic_ack(0, multiple=True)
    ch.close()
    assert ready_count(pika_conn, q) == 0


def test_nack_multiple_requeue(pika_conn, names):
    q = names.queue()
    ch = pika_conn.channel()
    ch.queue_declare(q)
    ch.confirm_delivery()
    publish_n(ch, q, 4)
    got = _get_all(ch, q, 4)
    ch.basic_nack(got[2][0], multiple=True, requeue=True)  # 1..3 back, 4 still unacked
    again = _get_all(ch, q, 3)
    assert [(b, r) for _, b, r in again] == [(b"1", True), (b"2", True), (b"3", True)]
    assert ch.basic_get(q) == (None, None, None)


def test_nack_multiple_discard(pika_conn, names):
    q = names.queue()
    ch = pika_conn.channel()
    ch.queue_declare(q)
    ch.confirm_delivery()
    publish_n(ch, q, 4)
    got = _get_all(ch, q, 4)
    ch.basic_nack(got[1][0], multiple=True, requeue=False)  # 1, 2 dropped
    ch.close()
    ch = pika_conn.channel()
    assert [b for _, b, _ in _get_all(ch, q, 2)] == [b"3", b"4"]
    assert ch.basic_get(q) == (None, None, None)


def test_reject_requeue_and_discard(pika_conn, names):
    q = names.queue()
    ch = pika_conn.channel()
    ch.queue_declare(q)
    ch.confirm_delivery()
    publish_n(ch, q, 2)
    (t1, b1, r1), (t2, _, _) = _get_all(ch, q, 2)
    assert (b1, r1) == (b"1", False)
    ch.basic_reject(t1, requeue=True)
    ch.basic_reject(t2, requeue=False)
    method, _, body = ch.basic_get(q, auto_ack=True)
    assert (body, method.redelivered) == (b"1", True)
    assert ch.basic_get(q) == (None, None, None)


def test_recover_requeue(pika_conn, names):
    q = names.queue()
    ch = pika_conn.channel()
    ch.queue_declare(q)
    ch.confirm_delivery()
    publish_n(ch, q, 3)
    _get_all(ch, q, 3)
    ch.basic_recover(requeue=True)
    again = _get_all(ch, q, 3)
    assert [(b, r) for _, b, r in again] == [(b"1", True), (b"2", True), (b"3", True)]
    ch.basic_ack(0, multiple=True)


def test_requeued_keep_original_order(pika_conn, names):
    q = names.queue()
    ch = pika_conn.channel()
    ch.queue_declare(q)
    ch.confirm_delivery()
    publish_n(ch, q, 5)
    _get_all(ch, q, 5)
    ch.close()
    ch = pika_conn.channel()
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append((b, m.redelivered)), auto_ack=True)
    pump(pika_conn, lambda: len(got) == 5)
    assert got == [(str(i).encode(), True) for i in range(1, 6)]


def test_requeued_go_before_newer_messages(pika_conn, names):
    q = names.queue()
    ch = pika_conn.channel()
    ch.queue_declare(q)
    ch.confirm_delivery()
    publish_n(ch, q, 3)
    (t1, _, _), _ = _get_all(ch, q, 2)
    ch.basic_nack(t1, requeue=True)
    bodies = [ch.basic_get(q, auto_ack=True)[2] for _ in range(2)]
    assert bodies == [b"1", b"3"]


def test_cancel_consumer_keeps_unacked_on_channel(pika_conn, names):
    # RabbitMQ: basic.cancel does not requeue the consumer's unacked deliveries;
    # they stay unacked on the channel (and can still be acked) until it closes.
    q = names.queue()
    ch = pika_conn.channel()
    ch.queue_declare(q)
    got = []
    tag = ch.basic_consume(q, lambda c, m, p, b: got.append(m.delivery_tag))
    pub = pika_conn.channel()
    pub.confirm_delivery()
    publish_n(pub, q, 3)
    pump(pika_conn, lambda: len(got) == 3)
    ch.basic_cancel(tag)
    assert ready_count(pika_conn, q) == 0
    ch.basic_ack(got[0])
    ch.close()
    assert ready_count(pika_conn, q) == 2


def test_unacked_requeued_on_connection_close(pika_connect, pika_conn, names):
    q = names.queue()
    pika_conn.channel().queue_declare(q)
    other = pika_connect()
    ch = other.channel()
    ch.confirm_delivery()
    publish_n(ch, q, 3)
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append(b))
    pump(other, lambda: len(got) == 3)
    assert ready_count(pika_conn, q) == 0
    other.close()
    deadline = time.monotonic() + 5
    while ready_count(pika_conn, q) != 3:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    ch = pika_conn.channel()
    assert [(b, r) for _, b, r in _get_all(ch, q, 3)] == [
        (b"1", True), (b"2", True), (b"3", True)]


def test_auto_ack_messages_are_not_requeued(pika_conn, names):
    q = names.queue()
    ch = pika_conn.channel()
    ch.queue_declare(q)
    ch.confirm_delivery()
    publish_n(ch, q, 2)
    ch.basic_get(q, auto_ack=True)
    ch.close()
    assert ready_count(pika_conn, q) == 1


# --------------------------------------------------------------------------
# server-initiated cancel, confirms
# --------------------------------------------------------------------------


def test_server_cancel_when_queue_deleted(pika_conn, names):
    q = names.queue()
    ch = pika_conn.channel()
    ch.queue_declare(q)
    cancelled = []
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method))
    tag = ch.basic_consume(q, lambda *a: None)
    pika_conn.channel().queue_delete(q)
    pump(pika_conn, lambda: cancelled)
    assert cancelled[0].consumer_tag == tag
    assert ch.is_open
    assert tag not in ch.consumer_tags


def test_publisher_confirms(channel, names):
    q = names.queue()
    channel.queue_declare(q)
    channel.confirm_delivery()
    for i in range(200):
        channel.basic_publish("", q, str(i).encode())  # raises NackError/UnroutableError
    assert ready_count(channel.connection, q) == 200


@pytest.mark.parametrize(
    ("first", "second", "text"),
    [
        ("confirm", "tx", "PRECONDITION_FAILED - cannot switch from confirm to tx mode"),
        ("tx", "confirm", "PRECONDITION_FAILED - cannot switch from tx to confirm mode"),
        (None, "commit", "PRECONDITION_FAILED - channel is not transactional"),
    ],
)
def test_confirm_and_tx_modes_conflict_406(pika_conn, first, second, text):
    ch = pika_conn.channel()
    if first == "confirm":
        ch.confirm_delivery()
    elif first == "tx":
        ch.tx_select()
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        {"tx": ch.tx_select, "confirm": ch.confirm_delivery, "commit": ch.tx_commit}[second]()
    assert (ei.value.reply_code, ei.value.reply_text) == (406, text)


def test_transactions_commit_and_rollback(pika_conn, names):
    q = names.queue()
    ch = pika_conn.channel()
    ch.queue_declare(q)
    ch.tx_select()
    ch.basic_publish("", q, b"rolled back")
    ch.tx_rollback()
    ch.basic_publish("", q, b"committed")
    assert ready_count(pika_conn, q) == 0
    ch.tx_commit()
    assert ch.basic_get(q, auto_ack=True)[2] == b"committed"
    assert ch.basic_get(q) == (None, None, None)


# --------------------------------------------------------------------------
# heartbeats
# --------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_heartbeat_keeps_idle_connection_alive(amqp_url):
    params = pika.URLParameters(amqp_url)
    params.heartbeat = 1
    conn = pika.BlockingConnection(params)
    try:
        assert conn._impl.params.heartbeat == 1
        deadline = time.monotonic() + 3.5
        while time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.25)
        assert conn.is_open
        ch = conn.channel()
        ch.queue_declare("", exclusive=True)
    finally:
        if conn.is_open:
            conn.close()
