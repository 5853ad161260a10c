"""Frame fuzzing of the sans-IO connection: valid sessions built with pamqp, mutated (bit
flips, truncation, length lies, unknown methods, bad field tables, huge sizes, frames on
closed channels, content out of order), fed in arbitrary reads to a fresh Connection over
a real Broker. The oracle is in ``harness.py``; ``make fuzz`` runs the long version."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pamqp import commands
from pamqp.body import ContentBody

from tests.amqp_client import Peer, decode_all

from . import mutations
from .harness import run_case

mutation = st.tuples(
    st.integers(0, mutations.KINDS - 1), st.integers(0, 63),
    st.integers(0, 1 << 24), st.integers(0, 1 << 24),
)


def test_the_valid_sessions_pass_untouched() -> None:
    for number in range(len(mutations.SCENARIOS) * 3):
        outcome = run_case(mutations.session(number), cuts=[7, 100, 1000])
        assert outcome.problems == [], (number, outcome.problems)
        assert outcome.connection_closes == []  # the client closes them


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    number=st.integers(0, len(mutations.SCENARIOS) * 3 - 1),
    changes=st.lists(mutation, min_size=1, max_size=4),
    cuts=st.lists(st.integers(0, 1 << 20), max_size=4),
)
def test_mutated_sessions_never_break_the_broker(
    number: int, changes: list[mutations.Mutation], cuts: list[int]
) -> None:
    elements = mutations.session(number)
    for change in changes:
        elements = mutations.mutate(elements, change)
    outcome = run_case(elements, cuts)
    assert outcome.problems == []


# -- regressions the fuzzer found -------------------------------------------------------------


def _declare(name: bytes) -> bytes:
    # queue.declare built by hand: pamqp's client side refuses such names before sending.
    return mutations.raw_frame(1, 1, b"\x00\x32\x00\x0a\x00\x00" + bytes((len(name),)) + name
                               + b"\x00\x00\x00\x00\x00")


def test_any_utf8_queue_name_gets_its_declare_ok() -> None:
    """pamqp's constructor checked the name of queue.declare-ok against an ASCII pattern:
    a pika client declaring ``очередь`` got 541 INTERNAL_ERROR (RabbitMQ accepts it)."""
    peer = Peer()
    peer.handshake()
    peer.open_channel()
    for name in ("очередь", "jobs[1]", "a\x01b"):
        ((_, declare_ok),) = peer.send_raw(_declare(name.encode()))
        assert isinstance(declare_ok, commands.Queue.DeclareOk)
        assert declare_ok.queue == name


def test_a_return_from_an_exchange_with_any_utf8_name() -> None:
    peer = Peer()
    peer.handshake()
    peer.open_channel()
    name = "обмен".encode()
    peer.send_raw(mutations.raw_frame(1, 1, b"\x00\x28\x00\x0a\x00\x00" + bytes((len(name),))
                                      + name + b"\x06direct\x00\x00\x00\x00\x00"))
    publish = (b"\x00\x3c\x00\x28\x00\x00" + bytes((len(name),)) + name + b"\x07nowhere"
               + b"\x01")  # mandatory
    frames = peer.send_raw(mutations.raw_frame(1, 1, publish)
                           + b"".join(mutations.publish(1, "", "", b"x")[1:]))
    assert isinstance(frames[0][1], commands.Basic.Return)
    assert frames[0][1].exchange == "обмен"


def _header(flags: int, properties: bytes, body_size: int = 3) -> bytes:
    return (b"\x00\x3c\x00\x00" + body_size.to_bytes(8, "big") + flags.to_bytes(2, "big")
            + properties)


BAD_PROPERTIES = [
    # (flags, property bytes): each decoded lazily by pamqp -- and raised 541 -- before
    (0x0100, b"\x05600"),  # expiration: a short string cut short
    (0x0010, b"\x02\xff\xfe"),  # user-id: not UTF-8
    (0x2000, b"\x00\x00\x00\x06\x01kZ\x00\x00\x00"),  # headers: unknown value type Z
    (0x2000, b"\x00\x00\x00\xff\x01k"),  # headers: table longer than the header
    (0x2000, b"\x00\x00\x00\x02\x09k"),  # headers: key longer than the table
    (0x0040, b"\xff\xff\xff\xff\xff\xff\xff\xff"),  # timestamp: past the year 9999
    (0x1000, b""),  # delivery-mode missing: forwarded verbatim, no consumer could read it
    (0x8001, b"\x00"),  # continuation flag with the next flag word missing
]


def test_a_malformed_property_list_is_502_on_the_publisher_only() -> None:
    for flags, properties in BAD_PROPERTIES:
        publisher = Peer()
        consumer = Peer(publisher.broker)
        for peer in (publisher, consumer):
            peer.handshake()
            peer.open_channel()
        consumer.send(1, commands.Queue.Declare(queue="q"),
                      commands.Basic.Consume(queue="q", no_ack=True))
        frames = publisher.send_raw(
            mutations.method(1, commands.Basic.Publish(exchange="", routing_key="q"))
            + mutations.raw_frame(2, 1, _header(flags, properties))
            + mutations.method(1, ContentBody(b"abc"))
        )
        closes = [value for _, value in frames if isinstance(value, commands.Connection.Close)]
        assert [close.reply_code for close in closes] == [502], (flags, properties, frames)
        assert decode_all(consumer.connection.data_to_send()) == []  # nothing was delivered


def test_a_headers_table_nested_too_deep_is_refused() -> None:
    inner = b""
    for _ in range(150):
        entry = b"\x01n" + b"F" + len(inner).to_bytes(4, "big") + inner
        inner = entry
    table = len(inner).to_bytes(4, "big") + inner
    peer = Peer()
    peer.handshake()
    peer.open_channel()
    frames = peer.send_raw(
        mutations.method(1, commands.Basic.Publish(exchange="", routing_key="q"))
        + mutations.raw_frame(2, 1, _header(0x2000, table, body_size=0))
    )
    assert [value.reply_code for _, value in frames
            if isinstance(value, commands.Connection.Close)] == [502]


def _binary_headers() -> bytes:
    """A headers table with long strings that are not UTF-8 (RabbitMQ: binary-safe)."""
    cc = b"A" + (7).to_bytes(4, "big") + b"S" + (2).to_bytes(4, "big") + b"\xff\xfe"
    binary = b"S" + (1).to_bytes(4, "big") + b"\xff"
    entries = b"\x02CC" + cc + b"\x03bin" + binary
    return len(entries).to_bytes(4, "big") + entries


def test_binary_long_strings_in_headers_route_and_redeliver() -> None:
    """Two 541s: a CC entry that is not UTF-8 was decoded (UnicodeDecodeError), and headers
    holding one could not be encoded again (x-delivery-count on a redelivery)."""
    peer = Peer()
    peer.handshake()
    peer.open_channel()
    peer.send(1, commands.Queue.Declare(queue="q", arguments={"x-delivery-limit": 5}))
    frames = peer.send_raw(
        mutations.method(1, commands.Basic.Publish(exchange="", routing_key="q"))
        + mutations.raw_frame(2, 1, _header(0x2000, _binary_headers()))
        + mutations.method(1, ContentBody(b"abc"))
    )
    assert frames == []
    ok, header, _ = (value for _, value in peer.send(1, commands.Basic.Get(queue="q")))
    assert header.properties.headers["bin"] == b"\xff"
    peer.send(1, commands.Basic.Nack(delivery_tag=ok.delivery_tag, requeue=True))
    ok, header, body = (value for _, value in peer.send(1, commands.Basic.Get(queue="q")))
    assert ok.redelivered and body.value == b"abc"
    assert header.properties.headers["x-delivery-count"] == 1
    assert header.properties.headers["bin"] == b"\xff"  # now a byte array ("x")


def _nested(depth: int) -> bytes:
    inner = b""
    for _ in range(depth):
        inner = b"\x01n" + b"F" + len(inner).to_bytes(4, "big") + inner
    return len(inner).to_bytes(4, "big") + inner


def test_deeply_nested_binding_arguments_are_502() -> None:
    """pamqp decoded 250 levels of nested tables in queue.bind's arguments; the binding's
    identity (exchanges/values.py, recursive) then raised RecursionError: 541."""
    peer = Peer()
    peer.handshake()
    peer.open_channel()
    peer.send(1, commands.Queue.Declare(queue="q"))
    bind = (b"\x00\x32\x00\x14\x00\x00" + b"\x01q" + b"\x0bamq.headers" + b"\x00" + b"\x00"
            + _nested(250))
    frames = peer.send_raw(mutations.raw_frame(1, 1, bind))
    assert [value.reply_code for _, value in frames
            if isinstance(value, commands.Connection.Close)] == [502]
    peer = Peer()
    peer.handshake()
    peer.open_channel()
    peer.send(1, commands.Queue.Declare(queue="q"))
    ((_, bind_ok),) = peer.send_raw(mutations.raw_frame(1, 1, bind[: -len(_nested(250))]
                                                        + _nested(100)))
    assert isinstance(bind_ok, commands.Queue.BindOk)  # 100 levels are still fine


def test_a_start_ok_response_that_is_not_utf8_is_a_refused_login() -> None:
    """pamqp hands a long string that is not UTF-8 over as bytes although it types it str;
    the mypyc-compiled connection checked the declared type on access: 541."""
    peer = Peer()
    peer.send_raw(mutations.PROTOCOL_HEADER)
    client_properties = b"\x00\x00\x00\x00"  # an empty table: no authentication_failure_close
    response = b"\x00guest\x00\xff\xfe"
    start_ok = (b"\x00\x0a\x00\x0b" + client_properties + b"\x05PLAIN"
                + len(response).to_bytes(4, "big") + response + b"\x05en_US")
    assert peer.send_raw(mutations.raw_frame(1, 0, start_ok)) == []  # refused: just closed
    assert peer.connection.finished
