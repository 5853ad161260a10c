"""Error replies (reply codes) as seen through pika and aio-pika.

Channel errors close the channel only; connection errors (5xx hard errors and
command_invalid) close the whole connection.
"""

from __future__ import annotations

from urllib.parse import urlparse, urlunparse

import aio_pika
import aio_pika.exceptions as aex
import aiormq.exceptions as amqx
import pika
import pika.exceptions as pex
import pytest

pytestmark = pytest.mark.timeout(30)


def with_credentials(url, user, password, vhost=None):
    p = urlparse(url)
    netloc = f"{user}:{password}@{p.hostname}:{p.port}"
    path = p.path if vhost is None else "/" + vhost
    return urlunparse(p._replace(netloc=netloc, path=path))


def channel_error(pika_conn, fn):
    """Run ``fn(channel)`` on a fresh channel; return the ChannelClosedByBroker raised."""
    ch = pika_conn.channel()
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        fn(ch)
    assert ch.is_closed
    assert pika_conn.is_open, "a channel error must not close the connection"
    # the connection stays usable
    pika_conn.channel().close()
    return ei.value


def connection_error(pika_connect, fn):
    conn = pika_connect()
    ch = conn.channel()
    with pytest.raises(pex.ConnectionClosedByBroker) as ei:
        fn(ch)
    assert conn.is_closed
    return ei.value


def assert_reply(exc, code, text_prefix):
    assert exc.reply_code == code, exc
    assert exc.reply_text.startswith(text_prefix), exc.reply_text


# --------------------------------------------------------------------------
# connection establishment
# --------------------------------------------------------------------------


@pytest.mark.parametrize(("user", "password"), [("guest", "wrong"), ("nosuchuser", "guest")])
def test_bad_credentials_pika(amqp_url, user, password):
    params = pika.URLParameters(with_credentials(amqp_url, user, password))
    params.connection_attempts = 1
    with pytest.raises(pex.ProbableAuthenticationError) as ei:
        pika.BlockingConnection(params)
    # pika advertises authentication_failure_close, so the broker sends
    # connection.close 403 ACCESS_REFUSED instead of just dropping the socket.
    assert "(403)" in str(ei.value)
    assert "ACCESS_REFUSED" in str(ei.value)


@pytest.mark.anyio
async def test_bad_credentials_aiopika(amqp_url):
    with pytest.raises(aex.ProbableAuthenticationError) as ei:
        await aio_pika.connect(with_credentials(amqp_url, "guest", "wrong"), timeout=10)
    assert "ACCESS_REFUSED" in str(ei.value)


def test_unknown_vhost_pika(amqp_url):
    params = pika.URLParameters(with_credentials(amqp_url, "guest", "guest", "no-such-vhost"))
    params.connection_attempts = 1
    with pytest.raises(pex.ProbableAccessDeniedError) as ei:
        pika.BlockingConnection(params)
    assert "(530)" in str(ei.value)
    assert "NOT_ALLOWED - vhost no-such-vhost not found" in str(ei.value)


@pytest.mark.anyio
async def test_unknown_vhost_aiopika(amqp_url):
    # aiormq doesn't map a connection.close in reply to connection.open; it reports
    # the unexpected frame.
    with pytest.raises((aex.AMQPConnectionError, aex.AMQPError, ConnectionError)):
        await aio_pika.connect(
            with_credentials(amqp_url, "guest", "guest", "no-such-vhost"), timeout=10)


# --------------------------------------------------------------------------
# queue.declare / bind / delete errors
# --------------------------------------------------------------------------


def test_passive_declare_missing_queue_404(pika_conn, names):
    q = names.queue()
    exc = channel_error(pika_conn, lambda ch: ch.queue_declare(q, passive=True))
    assert exc.reply_code == 404
    assert exc.reply_text == f"NOT_FOUND - no queue '{q}' in vhost '/'"


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"durable": True}, {"durable": False}),
        ({"auto_delete": False}, {"auto_delete": True}),
        ({"arguments": {"x-message-ttl": 1000}}, {"arguments": {"x-message-ttl": 2000}}),
        ({"arguments": {"x-max-length": 5}}, {}),
    ],
    ids=["durable", "auto_delete", "arg-value", "arg-missing"],
)
def test_queue_redeclare_different_406(pika_conn, names, first, second):
    q = names.queue()
    pika_conn.channel().queue_declare(q, **first)
    exc = channel_error(pika_conn, lambda ch: ch.queue_declare(q, **second))
    assert_reply(exc, 406, "PRECONDITION_FAILED - inequivalent arg")
    assert q in exc.reply_text


def test_passive_declare_ignores_differences(pika_conn, names):
    q = names.queue()
    pika_conn.channel().queue_declare(q, durable=True)
    ok = pika_conn.channel().queue_declare(q, passive=True, durable=False)
    assert ok.method.queue == q


def test_exclusive_queue_other_connection_405(pika_conn, pika_connect, names):
    q = names.queue()
    owner = pika_connect()
    owner.channel().queue_declare(q, exclusive=True)
    exc = channel_error(pika_conn, lambda ch: ch.queue_declare(q))
    assert_reply(exc, 405, "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue")
    exc = channel_error(pika_conn, lambda ch: ch.queue_declare(q, passive=True))
    assert exc.reply_code == 405
    exc = channel_error(pika_conn, lambda ch: ch.basic_consume(q, lambda *a: None))
    assert exc.reply_code == 405
    exc = channel_error(pika_conn, lambda ch: ch.queue_delete(q))
    assert exc.reply_code == 405
    exc = channel_error(pika_conn, lambda ch: ch.queue_purge(q))
    assert exc.reply_code == 405
    exc = channel_error(pika_conn, lambda ch: ch.basic_get(q))
    assert exc.reply_code == 405
    # publishing to it from another connection is allowed
    ch = pika_conn.channel()
    ch.confirm_delivery()
    ch.basic_publish("", q, b"x")
    assert owner.channel().queue_declare(q, passive=True).method.message_count == 1


def test_amq_prefixed_queue_403(pika_conn):
    exc = channel_error(pika_conn, lambda ch: ch.queue_declare("amq.interop-test"))
    assert exc.reply_code == 403
    assert exc.reply_text == (
        "ACCESS_REFUSED - queue name 'amq.interop-test' contains reserved prefix 'amq.*'")


def test_passive_amq_prefixed_missing_queue_404(pika_conn):
    # passive declares skip the reserved-prefix check
    exc = channel_error(pika_conn, lambda ch: ch.queue_declare("amq.interop-nope", passive=True))
    assert exc.reply_code == 404


def test_delete_if_unused_with_consumer_406(pika_conn, names):
    q = names.queue()
    ch = pika_conn.channel()
    ch.queue_declare(q)
    ch.basic_consume(q, lambda *a: None)
    exc = channel_error(pika_conn, lambda c: c.queue_delete(q, if_unused=True))
    assert_reply(exc, 406, "PRECONDITION_FAILED")
    assert "in use" in exc.reply_text


def test_delete_if_empty_with_messages_406(pika_conn, names):
    q = names.queue()
    ch = pika_conn.channel()
    ch.queue_declare(q)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"x")
    exc = channel_error(pika_conn, lambda c: c.queue_delete(q, if_empty=True))
    assert_reply(exc, 406, "PRECONDITION_FAILED")
    assert "not empty" in exc.reply_text


def test_bind_to_missing_exchange_404(pika_conn, names):
    q, x = names.queue(), names.exchange()
    pika_conn.channel().queue_declare(q)
    exc = channel_error(pika_conn, lambda ch: ch.queue_bind(q, x, "k"))
    assert exc.reply_code == 404
    assert exc.reply_text == f"NOT_FOUND - no exchange '{x}' in vhost '/'"


def test_bind_missing_queue_404(pika_conn, names):
    q = names.queue()
    exc = channel_error(pika_conn, lambda ch: ch.queue_bind(q, "amq.direct", "k"))
    assert exc.reply_code == 404
    assert exc.reply_text == f"NOT_FOUND - no queue '{q}' in vhost '/'"


def test_bind_to_default_exchange_403(pika_conn, names):
    q = names.queue()
    pika_conn.channel().queue_declare(q)
    exc = channel_error(pika_conn, lambda ch: ch.queue_bind(q, "", "k"))
    assert exc.reply_code == 403
    assert exc.reply_text == "ACCESS_REFUSED - operation not permitted on the default exchange"


def test_unbind_from_default_exchange_403(pika_conn, names):
    q = names.queue()
    pika_conn.channel().queue_declare(q)
    exc = channel_error(pika_conn, lambda ch: ch.queue_unbind(q, "", q))
    assert exc.reply_code == 403


def test_delete_default_exchange_403(pika_conn):
    exc = channel_error(pika_conn, lambda ch: ch.exchange_delete(""))
    assert exc.reply_code == 403
    assert exc.reply_text == "ACCESS_REFUSED - operation not permitted on the default exchange"


def test_delete_amq_exchange_403(pika_conn):
    exc = channel_error(pika_conn, lambda ch: ch.exchange_delete("amq.direct"))
    assert exc.reply_code == 403
    pika_conn.channel().exchange_declare("amq.direct", "direct", passive=True)


# --------------------------------------------------------------------------
# exchange.declare errors
# --------------------------------------------------------------------------


def test_passive_declare_missing_exchange_404(pika_conn, names):
    x = names.exchange()
    exc = channel_error(pika_conn, lambda ch: ch.exchange_declare(x, "direct", passive=True))
    assert exc.reply_text == f"NOT_FOUND - no exchange '{x}' in vhost '/'"
    assert exc.reply_code == 404


def test_exchange_redeclare_different_type_406(pika_conn, names):
    x = names.exchange()
    pika_conn.channel().exchange_declare(x, "direct")
    exc = channel_error(pika_conn, lambda ch: ch.exchange_declare(x, "fanout"))
    assert_reply(exc, 406, "PRECONDITION_FAILED - inequivalent arg 'type'")


def test_exchange_redeclare_different_durable_406(pika_conn, names):
    x = names.exchange()
    pika_conn.channel().exchange_declare(x, "direct", durable=False)
    exc = channel_error(pika_conn, lambda ch: ch.exchange_declare(x, "direct", durable=True))
    assert_reply(exc, 406, "PRECONDITION_FAILED - inequivalent arg 'durable'")


def test_amq_prefixed_exchange_403(pika_conn):
    exc = channel_error(pika_conn, lambda ch: ch.exchange_declare("amq.interop-x", "direct"))
    assert exc.reply_code == 403
    assert exc.reply_text == (
        "ACCESS_REFUSED - exchange name 'amq.interop-x' contains reserved prefix 'amq.*'")


def test_unknown_exchange_type_503(pika_connect, names):
    x = names.exchange()
    exc = connection_error(pika_connect, lambda ch: ch.exchange_declare(x, "no-such-type"))
    # a connection error, not a channel error
    assert exc.reply_code == 503
    assert exc.reply_text == "COMMAND_INVALID - unknown exchange type 'no-such-type'"


def test_amq_direct_redeclare_as_other_type_406(pika_conn):
    # the reserved-prefix check comes after the equivalence check for existing exchanges
    exc = channel_error(pika_conn, lambda ch: ch.exchange_declare("amq.direct", "fanout"))
    assert exc.reply_code == 406


# --------------------------------------------------------------------------
# publish / consume / ack errors
# --------------------------------------------------------------------------


def test_publish_to_missing_exchange_closes_channel_404(pika_conn, names):
    x = names.exchange()
    ch = pika_conn.channel()
    ch.basic_publish(x, "k", b"x")  # asynchronous: the error arrives later
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.queue_declare("", exclusive=True)
    assert ei.value.reply_code == 404
    assert ei.value.reply_text == f"NOT_FOUND - no exchange '{x}' in vhost '/'"
    assert pika_conn.is_open


def test_publish_to_missing_exchange_under_confirms(pika_conn, names):
    x = names.exchange()
    ch = pika_conn.channel()
    ch.confirm_delivery()
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.basic_publish(x, "k", b"x")
    assert ei.value.reply_code == 404


@pytest.mark.parametrize("op", ["ack", "double-ack", "nack", "reject", "ack-multiple"])
def test_unknown_delivery_tag_406(pika_conn, names, op):
    q = names.queue()
    ch = pika_conn.channel()
    ch.queue_declare(q)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"x")
    tag = ch.basic_get(q)[0].delivery_tag
    assert tag == 1
    if op == "ack":
        ch.basic_ack(99)
    elif op == "double-ack":
        ch.basic_ack(tag)
        ch.basic_ack(tag)
    elif op == "nack":
        ch.basic_nack(99)
    elif op == "reject":
        ch.basic_reject(99)
    else:
        ch.basic_ack(99, multiple=True)
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.queue_declare(q, passive=True)
    bad = tag if op == "double-ack" else 99
    assert ei.value.reply_code == 406
    assert ei.value.reply_text == f"PRECONDITION_FAILED - unknown delivery tag {bad}"
    assert pika_conn.is_open


def test_ack_of_auto_ack_delivery_406(pika_conn, names):
    q = names.queue()
    ch = pika_conn.channel()
    ch.queue_declare(q)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"x")
    tag = ch.basic_get(q, auto_ack=True)[0].delivery_tag
    ch.basic_ack(tag)
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.queue_declare(q, passive=True)
    assert ei.value.reply_code == 406


def test_exclusive_consume_with_other_consumer_403(pika_conn, names):
    q = names.queue()
    ch = pika_conn.channel()
    ch.queue_declare(q)
    ch.basic_consume(q, lambda *a: None)
    exc = channel_error(pika_conn, lambda c: c.basic_consume(q, lambda *a: None, exclusive=True))
    assert exc.reply_code == 403
    assert exc.reply_text == (
        f"ACCESS_REFUSED - queue '{q}' in vhost '/' in exclusive use")


def test_consume_when_exclusive_consumer_present_403(pika_conn, names):
    q = names.queue()
    ch = pika_conn.channel()
    ch.queue_declare(q)
    ch.basic_consume(q, lambda *a: None, exclusive=True)
    exc = channel_error(pika_conn, lambda c: c.basic_consume(q, lambda *a: None))
    assert exc.reply_code == 403
    assert exc.reply_text == (
        f"ACCESS_REFUSED - queue '{q}' in vhost '/' in exclusive use")


def test_consume_missing_queue_404(pika_conn, names):
    q = names.queue()
    exc = channel_error(pika_conn, lambda c: c.basic_consume(q, lambda *a: None))
    assert exc.reply_code == 404
    assert exc.reply_text == f"NOT_FOUND - no queue '{q}' in vhost '/'"


def test_get_missing_queue_404(pika_conn, names):
    q = names.queue()
    exc = channel_error(pika_conn, lambda c: c.basic_get(q))
    assert exc.reply_code == 404


def test_purge_missing_queue_404(pika_conn, names):
    q = names.queue()
    exc = channel_error(pika_conn, lambda c: c.queue_purge(q))
    assert exc.reply_code == 404


def test_user_id_mismatch_406(pika_conn, names):
    q = names.queue()
    pika_conn.channel().queue_declare(q)
    ch = pika_conn.channel()
    ch.confirm_delivery()
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.basic_publish("", q, b"x", pika.BasicProperties(user_id="not-guest"))
    assert ei.value.reply_code == 406
    assert ei.value.reply_text == (
        "PRECONDITION_FAILED - user_id property set to 'not-guest' but authenticated "
        "user was 'guest'")


def test_channel_error_does_not_affect_other_channels(pika_conn, names):
    q = names.queue()
    good = pika_conn.channel()
    good.queue_declare(q)
    channel_error(pika_conn, lambda ch: ch.queue_declare(names.queue(), passive=True))
    good.confirm_delivery()
    good.basic_publish("", q, b"still fine")
    assert good.basic_get(q, auto_ack=True)[2] == b"still fine"


# --------------------------------------------------------------------------
# aio-pika exception mapping
# --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_aiopika_channel_errors(aio_connect, names):
    conn = await aio_connect()
    try:
        ch = await conn.channel()
        with pytest.raises(aex.ChannelNotFoundEntity):
            await ch.declare_queue(names.queue(), passive=True)

        ch = await conn.channel()
        q = names.queue()
        await ch.declare_queue(q, durable=True)
        with pytest.raises(aex.ChannelPreconditionFailed):
            await ch.declare_queue(q, durable=False)

        ch = await conn.channel()
        with pytest.raises(amqx.ChannelAccessRefused):
            await ch.declare_queue("amq.interop-aio")

        other = await aio_connect()
        try:
            och = await other.channel()
            ql = names.queue()
            await och.declare_queue(ql, exclusive=True)
            ch = await conn.channel()
            with pytest.raises(amqx.ChannelLockedResource):
                await ch.declare_queue(ql)
        finally:
            await other.close()

        # the connection survived all of that
        ch = await conn.channel()
        await ch.declare_queue(exclusive=True)
    finally:
        await conn.close()


@pytest.mark.anyio
async def test_aiopika_unknown_exchange_type_closes_connection(aio_connect, names):
    conn = await aio_connect()
    try:
        ch = await conn.channel()
        with pytest.raises(amqx.ConnectionCommandInvalid) as ei:
            await ch.declare_exchange(names.exchange(), type="no-such-type")
        assert "COMMAND_INVALID - unknown exchange type 'no-such-type'" in str(ei.value)
    finally:
        await conn.close()
