"""Valid AMQP 0-9-1 client sessions and the mutations that break them, for the frame fuzzers.

Everything here is plain bytes built with pamqp (the reference codec), no amqpd import, so
the same sessions and mutations drive the in-process fuzzer (``tests/fuzz/harness.py``) and
the one over real sockets (``tests/fuzz/test_fuzz_sockets.py``).

A session is a list of *elements*: the 8-byte protocol header, then one encoded frame per
element. A mutation is a tuple of small integers ``(kind, index, a, b)``, so hypothesis can
draw and shrink it and a seeded ``random.Random`` can replay it: the integers select the
element and the parameters, and :func:`mutate` reduces them modulo whatever they index.
"""

from __future__ import annotations

import random
import struct
import warnings
from collections.abc import Callable, Sequence

from pamqp import commands
from pamqp import frame as pframe
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
FRAME_END = 0xCE
_START = struct.Struct(">BHI")

Mutation = tuple[int, int, int, int]
Session = list[bytes]

CLIENT_PROPERTIES = {
    "product": "amqpd-fuzz",
    "capabilities": {
        "authentication_failure_close": True,
        "consumer_cancel_notify": True,
        "publisher_confirms": True,
        "basic.nack": True,
        "connection.blocked": True,
    },
}


def method(channel: int, value: object) -> bytes:
    return bytes(pframe.marshal(value, channel))  # type: ignore[arg-type]


def raw_frame(frame_type: int, channel: int, payload: bytes, end: int = FRAME_END) -> bytes:
    return _START.pack(frame_type, channel & 0xFFFF, len(payload)) + payload + bytes((end,))


def publish(channel: int, exchange: str, routing_key: str, body: bytes,
            properties: commands.Basic.Properties | None = None, frame_size: int = 4096,
            mandatory: bool = False) -> list[bytes]:
    """basic.publish, its content header and body frames of at most ``frame_size`` bytes."""
    frames = [
        method(channel, commands.Basic.Publish(exchange=exchange, routing_key=routing_key,
                                               mandatory=mandatory)),
        method(channel, ContentHeader(0, len(body),
                                      properties or commands.Basic.Properties())),
    ]
    frames += [method(channel, ContentBody(body[i:i + frame_size]))
               for i in range(0, len(body), frame_size)]
    return frames


def handshake(heartbeat: int = 0, frame_max: int = 131072) -> Session:
    return [
        PROTOCOL_HEADER,
        method(0, commands.Connection.StartOk(CLIENT_PROPERTIES, "PLAIN", "\0guest\0guest",
                                              "en_US")),
        method(0, commands.Connection.TuneOk(2047, frame_max, heartbeat)),
        method(0, commands.Connection.Open("/")),
    ]


RICH_PROPERTIES = commands.Basic.Properties(
    content_type="application/json", content_encoding="gzip",
    headers={"region": "eu", "priority": 7, "nested": {"a": [1, 2.5, "x", True]},
             "x-delivery-tag": 1, "x-extend-ms": 1000, "CC": ["fuzz.q2"]},
    delivery_mode=2, priority=5, correlation_id="c-1", reply_to="fuzz.q1",
    expiration="60000", message_id="m-1", timestamp=None, message_type="t",
    user_id="guest", app_id="fuzz",
)


def _queues_and_routing() -> Session:
    return [
        method(1, commands.Channel.Open()),
        method(1, commands.Exchange.Declare(exchange="fuzz.topic", exchange_type="topic")),
        method(1, commands.Exchange.Declare(exchange="fuzz.headers",
                                            exchange_type="headers")),
        method(1, commands.Exchange.Declare(exchange="fuzz.rules", exchange_type="x-rules")),
        method(1, commands.Queue.Declare(queue="fuzz.q1", arguments={
            "x-message-ttl": 60000, "x-max-length": 5, "x-overflow": "reject-publish",
            "x-dead-letter-exchange": "fuzz.topic", "x-delivery-limit": 2})),
        method(1, commands.Queue.Declare(queue="fuzz.q2", arguments={"x-max-priority": 9})),
        method(1, commands.Queue.Declare(queue="", exclusive=True)),
        method(1, commands.Queue.Bind(queue="fuzz.q1", exchange="fuzz.topic",
                                      routing_key="a.*.#")),
        method(1, commands.Queue.Bind(queue="fuzz.q2", exchange="fuzz.headers", arguments={
            "x-match": "any", "region": "eu", "priority": 7})),
        method(1, commands.Queue.Bind(queue="fuzz.q2", exchange="fuzz.rules", arguments={
            "x-rule": "headers.priority >= 5 and routing_key ~ 'a.#'"})),
        method(1, commands.Exchange.Bind(destination="fuzz.headers", source="fuzz.topic",
                                         routing_key="#")),
        *publish(1, "fuzz.topic", "a.b.c", b"x" * 5000, RICH_PROPERTIES),
        *publish(1, "fuzz.headers", "", b"", RICH_PROPERTIES),
        *publish(1, "fuzz.rules", "a.b", b"hello", RICH_PROPERTIES, mandatory=True),
        method(1, commands.Queue.Unbind(queue="fuzz.q1", exchange="fuzz.topic",
                                        routing_key="a.*.#")),
        method(1, commands.Queue.Purge(queue="fuzz.q1")),
        method(1, commands.Exchange.Unbind(destination="fuzz.headers", source="fuzz.topic",
                                           routing_key="#")),
        method(1, commands.Queue.Delete(queue="fuzz.q2")),
        method(1, commands.Exchange.Delete(exchange="fuzz.rules")),
        method(1, commands.Channel.Close(200, "bye", 0, 0)),
        method(0, commands.Connection.Close(200, "bye", 0, 0)),
    ]


def _consume_and_settle() -> Session:
    return [
        method(1, commands.Channel.Open()),
        method(2, commands.Channel.Open()),
        method(1, commands.Queue.Declare(queue="fuzz.work", arguments={
            "x-single-active-consumer": True, "x-consumer-timeout": 1000})),
        method(1, commands.Basic.Qos(prefetch_count=2)),
        *publish(2, "", "fuzz.work", b"one"),
        *publish(2, "", "fuzz.work", b"two" * 3000, RICH_PROPERTIES),
        *publish(2, "", "fuzz.work", b"three", commands.Basic.Properties(priority=3)),
        method(1, commands.Basic.Consume(queue="fuzz.work", consumer_tag="c1",
                                         arguments={"x-priority": 5})),
        method(1, commands.Basic.Ack(delivery_tag=1)),
        method(1, commands.Basic.Nack(delivery_tag=2, multiple=False, requeue=True)),
        method(1, commands.Basic.Reject(delivery_tag=3, requeue=False)),
        method(2, commands.Basic.Get(queue="fuzz.work", no_ack=False)),
        method(2, commands.Basic.Recover(requeue=True)),
        *publish(1, "amq.lease", "", b"", commands.Basic.Properties(
            headers={"x-delivery-tag": 4, "x-extend-ms": 5000})),
        method(1, commands.Basic.Ack(delivery_tag=0, multiple=True)),
        method(1, commands.Basic.Cancel(consumer_tag="c1")),
        method(1, commands.Channel.Flow(active=False)),
        method(1, commands.Channel.Flow(active=True)),
        method(2, commands.Channel.Close(200, "bye", 0, 0)),
        method(2, commands.Channel.Open()),
        method(0, commands.Connection.Close(200, "bye", 0, 0)),
    ]


def _confirms_and_transactions() -> Session:
    return [
        method(1, commands.Channel.Open()),
        method(3, commands.Channel.Open()),
        method(1, commands.Confirm.Select()),
        method(1, commands.Queue.Declare(queue="fuzz.durable", durable=True)),
        *publish(1, "", "fuzz.durable", b"persistent" * 100,
                 commands.Basic.Properties(delivery_mode=2)),
        *publish(1, "", "no-such-queue", b"unroutable", mandatory=True),
        method(3, commands.Tx.Select()),
        *publish(3, "", "fuzz.durable", b"in a transaction"),
        method(3, commands.Basic.Get(queue="fuzz.durable", no_ack=False)),
        method(3, commands.Basic.Ack(delivery_tag=1)),
        method(3, commands.Tx.Commit()),
        *publish(3, "", "fuzz.durable", b"rolled back"),
        method(3, commands.Tx.Rollback()),
        method(1, commands.Queue.Declare(queue="fuzz.durable", passive=True)),
        method(1, commands.Queue.Delete(queue="fuzz.durable", if_unused=True, if_empty=True)),
        method(1, commands.Channel.Close(200, "bye", 0, 0)),
        method(1, commands.Channel.CloseOk()),
        method(0, commands.Connection.Close(200, "bye", 0, 0)),
        method(0, commands.Connection.CloseOk()),
    ]


# Every session starts with the handshake; the scenarios differ in what follows it.
SCENARIOS: tuple[Callable[[], Session], ...] = (
    _queues_and_routing, _consume_and_settle, _confirms_and_transactions,
)


def session(number: int) -> Session:
    """A valid session: the handshake (heartbeat and frame_max vary) and one scenario."""
    heartbeat = (0, 1, 60)[number // len(SCENARIOS) % 3]
    return handshake(heartbeat=heartbeat) + SCENARIOS[number % len(SCENARIOS)]()


# -- malformed building blocks --------------------------------------------------------------

# Field-table value types of AMQP 0-9-1 and RabbitMQ's errata, plus bytes that are neither.
_TABLE_TYPES = b"tbBsuUiIlLfdDSAxTFVZ?!\x00\xff"


def bad_table(a: int, b: int) -> bytes:
    """A field table that lies: a bad type octet, a length past the end, a deep nesting, a
    string longer than the table, or plain noise -- selected by ``a``, shaped by ``b``."""
    choice = a % 7
    if choice == 0:  # one entry whose type octet is not a type (or one of the rarer ones)
        entry = b"\x03key" + bytes((_TABLE_TYPES[b % len(_TABLE_TYPES)],)) + b"\x00" * (b % 9)
    elif choice == 1:  # the table says it is longer than what follows
        entry = b"\x03key" + b"t\x01"
        return struct.pack(">I", len(entry) + 1 + b % 100_000) + entry
    elif choice == 2:  # a long string whose length runs past the table
        entry = b"\x03key" + b"S" + struct.pack(">I", 0xFFFFFFF0 - b % 1000) + b"abc"
    elif choice == 3:  # deeply nested tables (a recursive decoder's stack)
        depth = 50 + b % 2000
        entry = b""
        for _ in range(depth):
            inner = entry
            entry = b"\x01n" + b"F" + struct.pack(">I", len(inner)) + inner
    elif choice == 4:  # an array whose length is wrong
        entry = b"\x03arr" + b"A" + struct.pack(">I", b % 50) + b"I\x00\x00"
    elif choice == 5:  # a key length past the end of the table
        entry = bytes((200 + b % 56,)) + b"k"
    else:  # noise
        rng = random.Random(b)
        entry = bytes(rng.getrandbits(8) for _ in range(b % 64))
    return struct.pack(">I", len(entry)) + entry


def _table_carrier(kind: int, table: bytes, channel: int) -> list[bytes]:
    """A frame that carries ``table`` where a field table belongs."""
    sub = kind % 6
    if sub == 0:  # queue.declare arguments
        payload = (b"\x00\x32\x00\x0a" + b"\x00\x00" + b"\x07fuzz.tq" + b"\x00" + table)
    elif sub == 1:  # exchange.declare arguments
        payload = (b"\x00\x28\x00\x0a" + b"\x00\x00" + b"\x07fuzz.tx" + b"\x05topic" + b"\x00"
                   + table)
    elif sub == 2:  # basic.consume arguments
        payload = (b"\x00\x3c\x00\x14" + b"\x00\x00" + b"\x07fuzz.q1" + b"\x02ct" + b"\x00"
                   + table)
    elif sub == 3:  # queue.bind arguments
        payload = (b"\x00\x32\x00\x14" + b"\x00\x00" + b"\x07fuzz.q2" + b"\x0cfuzz.headers"
                   + b"\x00" + b"\x00" + table)
    elif sub == 4:  # the headers property of a published message
        header = struct.pack(">HHQH", 60, 0, 3, 0x2000) + table
        return [
            method(channel, commands.Basic.Publish(exchange="fuzz.headers", routing_key="")),
            raw_frame(2, channel, header),
            raw_frame(3, channel, b"abc"),
        ]
    else:  # connection.start-ok client properties
        payload = b"\x00\x0a\x00\x0b" + table + b"\x05PLAIN" + struct.pack(">I", 12) + \
            b"\0guest\0guest" + b"\x05en_US"
        return [raw_frame(1, 0, payload)]
    return [raw_frame(1, channel, payload)]


def _any_method(a: int, channel: int) -> bytes:
    """Some method of the spec with default arguments: the right frame in the wrong place."""
    indexes = sorted(commands.INDEX_MAPPING)
    factory = commands.INDEX_MAPPING[indexes[a % len(indexes)]]
    try:
        with warnings.catch_warnings():  # pamqp warns about the deprecated ones; sent anyway
            warnings.simplefilter("ignore", DeprecationWarning)
            value = factory()
        return method(channel, value)
    except Exception:  # some pamqp classes cannot encode their defaults; send the ids alone
        return raw_frame(1, channel, struct.pack(">I", indexes[a % len(indexes)]))


def _channel_of(element: bytes) -> int:
    return int.from_bytes(element[1:3], "big") if len(element) >= 3 else 0


def _with_channel(element: bytes, channel: int) -> bytes:
    if len(element) < 7 or element == PROTOCOL_HEADER:
        return element
    return element[:1] + struct.pack(">H", channel & 0xFFFF) + element[3:]


def _with_size(element: bytes, size: int) -> bytes:
    if len(element) < 7 or element == PROTOCOL_HEADER:
        return element
    return element[:3] + struct.pack(">I", size & 0xFFFFFFFF) + element[7:]


_SIZE_LIES = (0, 1, 3, 7, 13, 4095, 4096, 131064, 131072, 131073, 1 << 20, 0x7FFFFFFF,
              0xFFFFFFFF)
_CHANNELS = (0, 1, 2, 3, 4, 9, 2047, 2048, 65535)
_HUGE = (0, 1, 1 << 31, 1 << 32, (1 << 63) - 1, 1 << 63, (1 << 64) - 1)

KINDS = 16


def mutate(elements: Sequence[bytes], mutation: Mutation) -> Session:
    """One mutation of a session (a new list; ``elements`` is not changed)."""
    kind, index, a, b = mutation
    out = list(elements)
    if not out:
        return out
    i = index % len(out)
    element = out[i]
    kind %= KINDS
    if kind == 0 and element:  # flip one bit
        bit = a % (len(element) * 8)
        flipped = bytearray(element)
        flipped[bit // 8] ^= 1 << (bit % 8)
        out[i] = bytes(flipped)
    elif kind == 1:  # cut the stream short inside a frame: everything after it is lost
        out[i] = element[: a % max(1, len(element))]
        del out[i + 1:]
    elif kind == 2 and len(element) > 8:  # shorter payload, consistent length and frame end
        payload = element[7:-1]
        out[i] = raw_frame(element[0], _channel_of(element), payload[: a % len(payload)])
    elif kind == 3:  # a frame size that lies
        out[i] = _with_size(element, _SIZE_LIES[a % len(_SIZE_LIES)] if b % 2 else a)
    elif kind == 4:  # an unknown method (near a real one, or anywhere)
        ids = (struct.pack(">HH", element[8] if len(element) > 8 else 60, 200 + a % 56)
               if b % 2 else struct.pack(">HH", a & 0xFFFF, b & 0xFFFF))
        out.insert(i, raw_frame(1, _channel_of(element), ids + b"\x00" * (a % 12)))
    elif kind == 5:  # a field table that lies, where a table belongs
        out[i:i] = _table_carrier(a, bad_table(b, a // 7), max(1, _channel_of(element)))
    elif kind == 6:  # huge sizes: a content header announcing an enormous body
        header = struct.pack(">HHQH", 60, 0, _HUGE[a % len(_HUGE)], 0)
        channel = max(1, _channel_of(element))
        out[i:i] = [method(channel, commands.Basic.Publish(routing_key="fuzz.q1")),
                    raw_frame(2, channel, header), raw_frame(3, channel, b"x" * (b % 300))]
    elif kind == 7:  # the frame moves to another channel (closed, never opened, or 0)
        out[i] = _with_channel(element, _CHANNELS[a % len(_CHANNELS)])
    elif kind == 8:  # a channel is closed (or its close-ok arrives) before this frame
        closer = (commands.Channel.Close(200, "", 0, 0) if a % 2 else commands.Channel.CloseOk())
        out.insert(i, method(max(1, _channel_of(element)), closer))
    elif kind == 9:  # content frames out of order: swap with a neighbour
        j = (i + 1 + a % 3) % len(out)
        out[i], out[j] = out[j], out[i]
    elif kind == 10:  # a frame twice, or not at all
        if a % 2:
            out.insert(i, element)
        else:
            del out[i]
    elif kind == 11:  # a frame of any type on any channel with a random payload
        rng = random.Random(b)
        payload = bytes(rng.getrandbits(8) for _ in range(a % 40))
        out.insert(i, raw_frame(a % 10 if b % 3 else (a % 256), b % 5, payload))
    elif kind == 12:  # a heartbeat, on channel 0 or not, with or without a payload
        out.insert(i, raw_frame(8, b % 3, b"" if a % 4 else b"\x00"))
    elif kind == 13:  # a real method in the wrong state or on the wrong channel
        out.insert(i, _any_method(a, _CHANNELS[b % len(_CHANNELS)]))
    elif kind == 14 and len(element) > 8:  # a bad frame-end octet
        out[i] = element[:-1] + bytes((a & 0xFF if a & 0xFF != FRAME_END else 0,))
    elif kind == 15 and len(element) > 8:  # overwrite a byte inside the payload
        payload = bytearray(element[7:-1])
        if payload:
            payload[a % len(payload)] = b & 0xFF
        out[i] = element[:7] + bytes(payload) + element[-1:]
    return out


def random_mutations(rng: random.Random, count: int) -> list[Mutation]:
    return [(rng.randrange(KINDS), rng.randrange(64), rng.getrandbits(24), rng.getrandbits(24))
            for _ in range(count)]


def split_points(total: int, cuts: Sequence[int]) -> list[int]:
    """Where to cut a byte stream of ``total`` bytes into reads (sorted, inside it)."""
    return sorted({cut % total for cut in cuts if total and cut % total})
