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
    return method


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
    return _HEADER_FIXED.pack(60, 0, body_size) + properties.marshal()


def method_name(method: Any) -> str:
    """A spec-style name (``basic.publish``) for error texts."""
    name: str = getattr(method, "name", type(method).__name__)
    return name.lower()
