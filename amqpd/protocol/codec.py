"""Encoding and decoding of frames: pamqp for everything, hand-written for the hot frames.

pamqp encodes by reflection (a loop over ``__slots__``), about ten times slower than packing
the few fields of basic.deliver by hand. The hot frames -- basic.publish in, basic.deliver
and content out -- are therefore coded here with ``struct``; property tests in
``tests/test_codec.py`` prove them byte-identical to pamqp. Every other method goes
through pamqp.
"""

from __future__ import annotations

import struct
from typing import Any

from pamqp import commands
from pamqp import decode as pamqp_decode
from pamqp.base import Frame as Method
from pamqp.common import Struct as PamqpStruct
from pamqp.header import ContentHeader

from amqpd.protocol.constants import (
    FRAME_BODY,
    FRAME_END_BYTE,
    FRAME_HEADER,
    FRAME_METHOD,
    FRAME_OVERHEAD,
)
from amqpd.protocol.errors import ConnectionLevelError

_FRAME_START = struct.Struct(">BHI")
_U16 = struct.Struct(">H")
_U64 = struct.Struct(">Q")
_HEADER_FIXED = struct.Struct(">HHQ")
_DELIVER_PREFIX = b"\x00\x3c\x00\x3c"  # class 60 (basic), method 60 (deliver)
_GET_OK_PREFIX = b"\x00\x3c\x00\x47"  # class 60, method 71 (get-ok)
_METHOD_INDEX = struct.Struct(">I")

PUBLISH_INDEX = 0x003C0028

# Bits of the first property-flags word (AMQP 0-9-1 §4.2.6.1, basic class properties).
FLAG_CONTENT_TYPE = 0x8000
FLAG_CONTENT_ENCODING = 0x4000
FLAG_HEADERS = 0x2000
FLAG_DELIVERY_MODE = 0x1000
FLAG_PRIORITY = 0x0800
FLAG_EXPIRATION = 0x0100


class PublishFields:
    """Decoded basic.publish arguments (the hot path builds these instead of pamqp objects).

    Immutable, so one object can stand for every publish with the same arguments
    (:func:`decode_publish_cached`)."""

    __slots__ = ("exchange", "immediate", "mandatory", "route", "routing_key")

    def __init__(self, exchange: str, routing_key: str, mandatory: bool, immediate: bool):
        self.exchange = exchange
        self.routing_key = routing_key
        self.mandatory = mandatory
        self.immediate = immediate
        # Filled by the broker (a shared amqpd.broker.message.Route); the codec does not know it.
        self.route: object = None


def decode_publish(payload: bytes) -> PublishFields:
    """Decode a basic.publish method payload (class and method ids included).

    Raises:
        ConnectionLevelError: 502 SYNTAX_ERROR when the arguments are truncated or not UTF-8.
    """
    try:
        # 4 bytes class/method, 2 bytes ticket, then two shortstrs and one bit octet.
        length = payload[6]
        end = 7 + length
        exchange = payload[7:end].decode("utf-8")
        length = payload[end]
        start = end + 1
        end = start + length
        routing_key = payload[start:end].decode("utf-8")
        bits = payload[end]
    except (IndexError, UnicodeDecodeError) as exc:
        raise ConnectionLevelError(
            502, f"malformed basic.publish arguments: {exc}", 60, 40
        ) from exc
    return PublishFields(exchange, routing_key, bool(bits & 1), bool(bits & 2))


_PUBLISH_CACHE: dict[bytes, PublishFields] = {}
_PUBLISH_CACHE_MAX = 4096


def decode_publish_cached(payload: bytes) -> PublishFields:
    """:func:`decode_publish` through a bounded cache keyed by the payload bytes: most
    publishers repeat a few exchange/routing-key pairs, and a dict lookup is cheaper than
    decoding two strings."""
    fields = _PUBLISH_CACHE.get(payload)
    if fields is None:
        fields = decode_publish(payload)
        if len(_PUBLISH_CACHE) >= _PUBLISH_CACHE_MAX:
            _PUBLISH_CACHE.clear()
        _PUBLISH_CACHE[payload] = fields
    return fields


ACK_PREFIX = b"\x00\x3c\x00\x50"  # class 60 (basic), method 80 (ack)
_ACK_ARGUMENTS = struct.Struct(">QB")


def decode_ack(payload: bytes) -> tuple[int, bool]:
    """Decode a basic.ack method payload (13 bytes, ids included): (delivery_tag, multiple)."""
    delivery_tag, bits = _ACK_ARGUMENTS.unpack_from(payload, 4)
    return delivery_tag, bool(bits & 1)


def decode_method(payload: bytes) -> Method:
    """Decode any method payload with pamqp.

    Raises:
        ConnectionLevelError: 540 for an unknown class/method, 502 for undecodable arguments.
    """
    if len(payload) < 4:
        raise ConnectionLevelError(502, f"method frame of {len(payload)} bytes is too short")
    (index,) = _METHOD_INDEX.unpack_from(payload, 0)
    class_id, method_id = index >> 16, index & 0xFFFF
    factory = commands.INDEX_MAPPING.get(index)
    if factory is None:
        raise ConnectionLevelError(
            540, f"unknown method: class {class_id}, method {method_id}", class_id, method_id
        )
    method: Method = factory()
    try:
        method.unmarshal(payload[4:])
    except Exception as exc:  # pamqp raises struct.error, ValueError, UnicodeDecodeError...
        raise ConnectionLevelError(
            502,
            f"could not decode the arguments of {method.name}: {exc}",
            class_id,
            method_id,
        ) from exc
    for name in getattr(method, "__slots__", ()):
        _check_nesting(getattr(method, name, None), method.name, class_id, method_id)
    return method


def _check_nesting(value: object, name: str, class_id: int, method_id: int) -> None:
    """Refuse argument tables nested deeper than MAX_TABLE_DEPTH: pamqp decodes a few
    hundred levels, but the broker's own recursive walks of arguments (binding identity,
    header matching, the store's encoder) would then hit Python's recursion limit -- a
    541 for the connection and, in a timer or another connection, worse."""
    if not isinstance(value, dict | list):
        return
    level: list[dict[str, object] | list[object]] = [value]
    for _ in range(MAX_TABLE_DEPTH + 1):
        level = [item for container in level
                 for item in (container.values() if isinstance(container, dict) else container)
                 if isinstance(item, dict | list)]
        if not level:
            return
    raise ConnectionLevelError(
        502, f"the arguments of {name} nest field tables deeper than {MAX_TABLE_DEPTH}",
        class_id, method_id,
    )


def encode_method(channel: int, method: Method) -> bytes:
    """Encode one method frame with pamqp (control methods, not the hot path)."""
    payload = PamqpStruct.integer.pack(method.index) + method.marshal()
    return _FRAME_START.pack(FRAME_METHOD, channel, len(payload)) + payload + FRAME_END_BYTE


def _shortstr(value: bytes) -> bytes:
    return bytes((len(value),)) + value


def encode_deliver(
    channel: int,
    consumer_tag: bytes,
    delivery_tag: int,
    redelivered: bool,
    exchange: bytes,
    routing_key: bytes,
) -> bytes:
    """Encode a basic.deliver method frame; the strings come already UTF-8 encoded."""
    payload = b"".join(
        (
            _DELIVER_PREFIX,
            _shortstr(consumer_tag),
            _U64.pack(delivery_tag),
            b"\x01" if redelivered else b"\x00",
            _shortstr(exchange),
            _shortstr(routing_key),
        )
    )
    return _FRAME_START.pack(FRAME_METHOD, channel, len(payload)) + payload + FRAME_END_BYTE


def encode_get_ok(
    channel: int,
    delivery_tag: int,
    redelivered: bool,
    exchange: bytes,
    routing_key: bytes,
    message_count: int,
) -> bytes:
    """Encode a basic.get-ok method frame."""
    payload = b"".join(
        (
            _GET_OK_PREFIX,
            _U64.pack(delivery_tag),
            b"\x01" if redelivered else b"\x00",
            _shortstr(exchange),
            _shortstr(routing_key),
            struct.pack(">I", message_count),
        )
    )
    return _FRAME_START.pack(FRAME_METHOD, channel, len(payload)) + payload + FRAME_END_BYTE


def encode_content(channel: int, header_payload: bytes, body: bytes, frame_max: int) -> bytes:
    """Encode the content header frame (payload reused verbatim) and the body frames."""
    parts: list[bytes | memoryview] = [
        _FRAME_START.pack(FRAME_HEADER, channel, len(header_payload)),
        header_payload,
        FRAME_END_BYTE,
    ]
    size = len(body)
    if size:
        chunk = frame_max - FRAME_OVERHEAD
        if size <= chunk:
            parts += (_FRAME_START.pack(FRAME_BODY, channel, size), body, FRAME_END_BYTE)
        else:
            view = memoryview(body)
            for start in range(0, size, chunk):
                piece = view[start : start + chunk]
                parts += (_FRAME_START.pack(FRAME_BODY, channel, len(piece)), piece, FRAME_END_BYTE)
    return b"".join(parts)


def header_body_size(header_payload: bytes) -> int:
    """The body size announced by a content header payload."""
    return int(_U64.unpack_from(header_payload, 4)[0])


def header_class_id(header_payload: bytes) -> int:
    """The class id of a content header payload."""
    return int(_U16.unpack_from(header_payload, 0)[0])


def header_flags(header_payload: bytes) -> int:
    """The first property-flags word of a content header payload."""
    return int(_U16.unpack_from(header_payload, 12)[0])


def delivery_mode(header_payload: bytes) -> int:
    """Read delivery-mode without decoding the other properties (it follows at most two
    shortstrs and one table, which are length-prefixed and cheap to skip)."""
    flags = header_flags(header_payload)
    if not flags & FLAG_DELIVERY_MODE:
        return 1
    offset = 14
    if flags & 1:  # more flag words follow; rare, let pamqp handle it
        return decode_properties(header_payload).delivery_mode or 1
    if flags & FLAG_CONTENT_TYPE:
        offset += 1 + header_payload[offset]
    if flags & FLAG_CONTENT_ENCODING:
        offset += 1 + header_payload[offset]
    if flags & FLAG_HEADERS:
        offset += 4 + int.from_bytes(header_payload[offset : offset + 4], "big")
    return header_payload[offset]


def priority(header_payload: bytes) -> int:
    """Read the priority property (0 when absent) without decoding the others; it follows
    delivery-mode, which is one octet."""
    flags = header_flags(header_payload)
    if not flags & FLAG_PRIORITY:
        return 0
    if flags & 1:  # more flag words follow; rare, let pamqp handle it
        return decode_properties(header_payload).priority or 0
    offset = 14
    if flags & FLAG_CONTENT_TYPE:
        offset += 1 + header_payload[offset]
    if flags & FLAG_CONTENT_ENCODING:
        offset += 1 + header_payload[offset]
    if flags & FLAG_HEADERS:
        offset += 4 + int.from_bytes(header_payload[offset : offset + 4], "big")
    if flags & FLAG_DELIVERY_MODE:
        offset += 1
    return header_payload[offset]


def decode_properties(header_payload: bytes) -> commands.Basic.Properties:
    """Decode the full property list with pamqp (done lazily, only when needed)."""
    content_header = ContentHeader()
    content_header.unmarshal(header_payload)
    properties: commands.Basic.Properties = content_header.properties
    return properties


def encode_header_payload(body_size: int, properties: commands.Basic.Properties) -> bytes:
    """Encode a content header payload for new or changed properties."""
    headers = properties.headers
    if not headers or not _has_bytes(headers):
        return _HEADER_FIXED.pack(60, 0, body_size) + properties.marshal()
    # pamqp decodes a long string that is not UTF-8 as ``bytes`` but encodes only
    # ``bytearray`` (as a byte array, "x"): without this a client's binary header made
    # every re-encoding (x-delivery-count, dead-lettering, BCC removal) a 541.
    properties.headers = _bytes_as_bytearray(headers)
    try:
        return _HEADER_FIXED.pack(60, 0, body_size) + properties.marshal()
    finally:
        properties.headers = headers


def _has_bytes(value: object) -> bool:
    if isinstance(value, bytes):
        return True
    if isinstance(value, dict):
        return any(_has_bytes(item) for item in value.values())
    if isinstance(value, list):
        return any(_has_bytes(item) for item in value)
    return False


def _bytes_as_bytearray(value: Any) -> Any:
    if isinstance(value, bytes):
        return bytearray(value)
    if isinstance(value, dict):
        return {key: _bytes_as_bytearray(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_bytes_as_bytearray(item) for item in value]
    return value


def method_name(method: Any) -> str:
    """A spec-style name (``basic.publish``) for error texts."""
    name: str = getattr(method, "name", type(method).__name__)
    return name.lower()


# The basic class's properties in flag order (bit 15 down to bit 2): "s" shortstr,
# "t" field table, "o" octet, "q" 64-bit timestamp.
_PROPERTY_KINDS = "sstoossssqssss"


def check_properties(header_payload: bytes) -> None:
    """Check that a published content header's property list decodes.

    Properties are decoded lazily (a headers exchange, an expiration, a redelivery count,
    a consumer on another connection), and header bytes are forwarded verbatim, so a
    malformed list must be refused here, on the publisher's connection -- later it would
    be an unexpected exception (541) on whichever connection touched it, or bytes no
    consumer can read. The fixed fields are walked by hand (most messages have only
    those); a headers table goes through pamqp.

    Raises:
        ConnectionLevelError: 502 SYNTAX_ERROR naming what does not decode.
    """
    flags = header_flags(header_payload)
    if not flags:
        return
    if flags & 0x0003:  # more flag words (or the reserved bit): rare, let pamqp judge
        try:
            decode_properties(header_payload)
        except Exception as exc:
            raise ConnectionLevelError(
                502, f"content header properties do not decode: {exc}", 60, 40
            ) from exc
        return
    offset = 14
    size = len(header_payload)
    try:
        for bit, kind in enumerate(_PROPERTY_KINDS):
            if not flags & (0x8000 >> bit):
                continue
            if kind == "s":
                end = offset + 1 + header_payload[offset]
                if end > size:
                    raise ValueError("a short string runs past the end of the header")
                header_payload[offset + 1 : end].decode("utf-8")
            elif kind == "o":
                end = offset + 1
            elif kind == "q":
                end = offset + 8
                pamqp_decode.timestamp(header_payload[offset:end])  # a datetime must exist
            else:
                end = _skip_table(header_payload, offset, 0)
            if end > size:
                raise ValueError("the property list is truncated")
            offset = end
    # pamqp raises ValueError, struct.error, OverflowError (a timestamp past year 9999),
    # RecursionError (tables nested thousands deep)...: whatever it is, the header is bad.
    except Exception as exc:
        raise ConnectionLevelError(
            502, f"content header properties do not decode: {exc}", 60, 40
        ) from exc


# Field-value types (pamqp's TABLE_MAPPING, RabbitMQ's errata) of a fixed size in bytes.
_FIXED_SIZES = {
    ord("t"): 1, ord("b"): 1, ord("B"): 1, ord("s"): 2, ord("u"): 2, ord("I"): 4,
    ord("i"): 4, ord("l"): 8, ord("L"): 8, ord("f"): 4, ord("d"): 8, ord("D"): 5,
    ord("V"): 0, 0: 0,
}
# Deeper nesting is refused: pamqp's recursive decoder (three frames a level) would hit
# Python's recursion limit somewhere past 300 levels, depending on the caller's stack.
MAX_TABLE_DEPTH = 100


def _skip_table(data: bytes, offset: int, depth: int) -> int:
    """Walk the field table at ``offset`` without building it and return where it ends.
    It accepts what ``pamqp.decode.field_table`` accepts (``tests/test_codec.py`` checks
    this against pamqp), at a fraction of its cost, and raises ValueError otherwise."""
    if depth > MAX_TABLE_DEPTH:
        raise ValueError(f"field tables nested deeper than {MAX_TABLE_DEPTH}")
    size = len(data)
    if offset + 4 > size:
        raise ValueError("a field table length is truncated")
    start = offset + 4
    end = start + int.from_bytes(data[offset:start], "big")
    if end > size:
        raise ValueError("a field table runs past the end of its frame")
    position = start
    while position < end:
        key_end = position + 1 + data[position]
        if key_end > end:
            raise ValueError("a field table key runs past the end of the table")
        data[position + 1 : key_end].decode("utf-8")
        position = _skip_value(data, key_end, depth)
    return end


def _skip_value(data: bytes, offset: int, depth: int) -> int:
    if offset >= len(data):  # pamqp reads a missing value as void
        return offset
    kind = data[offset]
    offset += 1
    fixed = _FIXED_SIZES.get(kind)
    if fixed is not None:
        if offset + fixed > len(data):
            raise ValueError(f"a field value of type {chr(kind)!r} is truncated")
        return offset + fixed
    if kind in (0x53, 0x78):  # S long string, x byte array: pamqp does not bound the length
        if offset + 4 > len(data):
            raise ValueError("a long string length is truncated")
        return offset + 4 + int.from_bytes(data[offset : offset + 4], "big")
    if kind == 0x54:  # T timestamp: must be a date Python can represent
        pamqp_decode.timestamp(data[offset : offset + 8])
        return offset + 8
    if kind == 0x46:  # F nested table
        return _skip_table(data, offset, depth + 1)
    if kind == 0x41:  # A array: pamqp returns where its last value ended
        if offset + 4 > len(data):
            raise ValueError("a field array length is truncated")
        end = offset + 4 + int.from_bytes(data[offset : offset + 4], "big")
        if end > len(data):
            raise ValueError("a field array runs past the end of its frame")
        position = offset + 4
        while position < end:
            position = _skip_value(data, position, depth + 1)
        return position
    raise ValueError(f"unknown field value type {bytes((kind,))!r}")


def _accept() -> None:
    """A validate() that accepts: see :func:`queue_declare_ok`."""


def _unchecked(method: Method, **fields: object) -> Any:
    """``method`` with ``fields`` set and pamqp's validation switched off for this object.
    Not a subclass: this module may be compiled with mypyc, and a compiled class cannot
    derive from pamqp's."""
    for name, value in fields.items():
        setattr(method, name, value)
    setattr(method, "validate", _accept)  # noqa: B010 - an instance attribute, on purpose
    return method


def queue_declare_ok(
    queue: str, message_count: int, consumer_count: int
) -> commands.Queue.DeclareOk:
    """queue.declare-ok for any queue name the broker accepted. pamqp checks names, when it
    builds and when it encodes, against an ASCII pattern (``[a-zA-Z0-9-_.:@#,/+ ]``) meant
    for what a client sends and that RabbitMQ does not have: a client declaring
    ``очередь`` or ``jobs[1]`` would get 541 instead of its declare-ok."""
    method = commands.Queue.DeclareOk.__new__(commands.Queue.DeclareOk)
    declare_ok: commands.Queue.DeclareOk = _unchecked(
        method, queue=queue, message_count=message_count, consumer_count=consumer_count)
    return declare_ok


def basic_return(
    reply_code: int, reply_text: str, exchange: str, routing_key: str
) -> commands.Basic.Return:
    """basic.return for any exchange name (see :func:`queue_declare_ok`)."""
    method = commands.Basic.Return.__new__(commands.Basic.Return)
    returned: commands.Basic.Return = _unchecked(
        method, reply_code=reply_code, reply_text=reply_text, exchange=exchange,
        routing_key=routing_key)
    return returned
