"""Core scenarios through pika's asynchronous SelectConnection (callback style)."""

from __future__ import annotations

import functools
from urllib.parse import urlparse, urlunparse

import pika
import pika.exceptions as pex
import pytest

pytestmark = pytest.mark.timeout(30)


class Flow:
    """Runs one SelectConnection until ``finish()``/``fail()`` or a deadline.

    ``on_channel(flow, channel)`` starts the scenario once a channel is open.
    Exceptions raised in callbacks are caught and re-raised from ``run()``.
    """

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.params = pika.URLParameters(url)
        self.timeout = timeout
        self.error: BaseException | None = None
        self.open_error: BaseException | None = None
        self.finished = False
        self.conn: pika.SelectConnection | None = None
        self.data: dict = {}

    def guard(self, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if self.error is not None:
                return None
            try:
                return fn(*args, **kwargs)
            except BaseException as e:  # surfaced by run()
                self.fail(e)
                return None

        return wrapper

    def fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        self._stop()

    def finish(self) -> None:
        self.finished = True
        self._stop()

    def _stop(self) -> None:
        if self.conn is None:
            return
        if self.conn.is_open:
            self.conn.close()
        elif self.conn.is_closed:
            self.conn.ioloop.stop()

    def run(self, on_channel=None, on_open=None) -> None:
        def opened(conn):
            if on_open is not None:
                self.guard(on_open)(self, conn)
            if on_channel is not None:
                conn.channel(on_open_callback=self.guard(lambda ch: on_channel(self, ch)))

        def open_failed(conn, err):
            self.open_error = err
            conn.ioloop.stop()

        def closed(conn, reason):
            conn.ioloop.stop()

        self.conn = pika.SelectConnection(
            self.params,
            on_open_callback=self.guard(opened),
            on_open_error_callback=open_failed,
            on_close_callback=closed,
        )

        def timed_out():
            self.fail(TimeoutError("scenario did not finish in time"))

        self.conn.ioloop.call_later(self.timeout, timed_out)
        self.conn.ioloop.start()
        if self.error is not None:
            raise self.error
        if self.open_error is None:
            assert self.finished, "connection closed before the scenario finished"


def test_connect_properties_and_tune(amqp_url):
    flow = Flow(amqp_url)

    def on_open(flow, conn):
        props = conn.server_properties
        assert props["product"] and props["version"] and props["platform"]
        assert props["capabilities"]["publisher_confirms"] is True
        assert (conn.params.channel_max, conn.params.frame_max, conn.params.heartbeat) == (
            2047, 131072, 60)
        flow.finish()

    flow.run(on_open=on_open)


def test_auth_failure(amqp_url):
    p = urlparse(amqp_url)
    bad = urlunparse(p._replace(netloc=f"guest:wrong@{p.hostname}:{p.port}"))
    flow = Flow(bad)
    flow.run(on_open=lambda f, c: pytest.fail("should not open"))
    assert isinstance(flow.open_error, pex.ProbableAuthenticationError)


def test_publish_get_round_trip(amqp_url):
    flow = Flow(amqp_url)
    props = pika.BasicProperties(content_type="text/plain", headers={"a": [1, {"b": "c"}]},
                                 delivery_mode=2, priority=3, message_id="m-1",
                                 correlation_id="c-1", timestamp=1_700_000_000)

    def on_channel(flow, ch):
        def declared(frame):
            q = frame.method.queue
            assert q.startswith("amq.gen-")
            ch.basic_publish("", q, b"hello select", props)
            ch.basic_get(q, flow.guard(got), auto_ack=True)

        def got(ch, method, properties, body):
            assert body == b"hello select"
            assert method.message_count == 0
            for attr in ("content_type", "headers", "delivery_mode", "priority", "message_id",
                         "correlation_id", "timestamp"):
                assert getattr(properties, attr) == getattr(props, attr), attr
            flow.finish()

        ch.queue_declare("", exclusive=True, callback=flow.guard(declared))

    flow.run(on_channel)


def test_consume_with_prefetch_and_ack(amqp_url):
    flow = Flow(amqp_url)
    n, prefetch = 30, 5

    def on_channel(flow, ch):
        unacked: list[int] = []
        seen: list[bytes] = []
        state = {"max": 0}

        def declared(frame):
            q = frame.method.queue
            for i in range(n):
                ch.basic_publish("", q, str(i).encode())
            ch.basic_qos(prefetch_count=prefetch,
                         callback=flow.guard(lambda _f: ch.basic_consume(q, flow.guard(deliver))))

        def deliver(ch, method, properties, body):
            unacked.append(method.delivery_tag)
            seen.append(body)
            state["max"] = max(state["max"], len(unacked))
            # ack a little later so the prefetch window actually fills up
            flow.conn.ioloop.call_later(0.005, flow.guard(ack_one))

        def ack_one():
            ch.basic_ack(unacked.pop(0))
            if len(seen) == n and not unacked:
                assert seen == [str(i).encode() for i in range(n)]
                assert state["max"] <= prefetch
                flow.finish()

        ch.queue_declare("", exclusive=True, callback=flow.guard(declared))

    flow.run(on_channel)


def test_publisher_confirms(amqp_url):
    flow = Flow(amqp_url)
    n = 200

    def on_channel(flow, ch):
        acked: set[int] = set()

        def on_confirm(frame):
            method = frame.method
            assert isinstance(method, pika.spec.Basic.Ack), method
            if method.multiple:
                acked.update(t for t in range(1, method.delivery_tag + 1))
            else:
                acked.add(method.delivery_tag)
            if len(acked) == n:
                assert acked == set(range(1, n + 1))
                flow.finish()

        def declared(frame):
            for i in range(n):
                ch.basic_publish("", frame.method.queue, str(i).encode())

        ch.confirm_delivery(flow.guard(on_confirm),
                            callback=flow.guard(lambda _f: ch.queue_declare(
                                "", exclusive=True, callback=flow.guard(declared))))

    flow.run(on_channel)


def test_mandatory_return(amqp_url, names):
    flow = Flow(amqp_url)
    rk = names.queue()

    def on_channel(flow, ch):
        def returned(ch, method, properties, body):
            assert (method.reply_code, method.reply_text) == (312, "NO_ROUTE")
            assert method.routing_key == rk
            assert body == b"bounce"
            flow.finish()

        ch.add_on_return_callback(flow.guard(returned))
        ch.basic_publish("", rk, b"bounce", mandatory=True)

    flow.run(on_channel)


def test_channel_error_404_keeps_connection(amqp_url, names):
    flow = Flow(amqp_url)

    def on_channel(flow, ch):
        def ch_closed(ch, reason):
            assert isinstance(reason, pex.ChannelClosedByBroker)
            assert reason.reply_code == 404
            assert flow.conn.is_open
            flow.conn.channel(on_open_callback=flow.guard(lambda ch2: flow.finish()))

        ch.add_on_close_callback(flow.guard(ch_closed))
        ch.queue_declare(names.queue(), passive=True)

    flow.run(on_channel)


def test_server_cancel_on_queue_delete(amqp_url, names):
    flow = Flow(amqp_url)
    q = names.queue()

    def on_channel(flow, ch):
        tags = []

        def declared(_f):
            tags.append(ch.basic_consume(q, lambda *a: None,
                                         callback=flow.guard(consuming)))

        def consuming(_f):
            flow.conn.channel(on_open_callback=flow.guard(lambda ch2: ch2.queue_delete(q)))

        def cancelled(frame):
            assert frame.method.consumer_tag == tags[0]
            assert ch.is_open
            flow.finish()

        ch.add_on_cancel_callback(flow.guard(cancelled))
        ch.queue_declare(q, callback=flow.guard(declared))

    flow.run(on_channel)


def test_redelivery_after_channel_close(amqp_url, names):
    flow = Flow(amqp_url)
    q = names.queue()

    def on_channel(flow, ch):
        def declared(_f):
            for i in range(1, 4):
                ch.basic_publish("", q, str(i).encode())
            ch.basic_consume(q, flow.guard(first))

        got: list[bytes] = []

        def first(ch, method, properties, body):
            got.append(body)
            if len(got) == 3:
                ch.close()
                flow.conn.channel(on_open_callback=flow.guard(second_channel))

        again: list[tuple[bytes, bool]] = []

        def second_channel(ch2):
            def deliver(c, method, properties, body):
                again.append((body, method.redelivered))
                c.basic_ack(method.delivery_tag)
                if len(again) == 3:
                    assert again == [(b"1", True), (b"2", True), (b"3", True)]
                    c.queue_delete(q, callback=flow.guard(lambda _f: flow.finish()))

            ch2.basic_consume(q, flow.guard(deliver))

        ch.queue_declare(q, auto_delete=False, callback=flow.guard(declared))

    flow.run(on_channel)
