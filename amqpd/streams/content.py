"""How a published message is stored in a stream's log, and how it is delivered.

A record's payload is the message exactly as published -- exchange, routing key, the raw
content header and the body -- plus the ``x-stream-filter-value`` taken out once at publish
time, so filtering a record never decodes its headers. The content header is stored without
its body-size field (it is the length of the body; a flag in the header length says so, and
payloads written before, with the field, still decode): messages of different sizes then
still share their whole metadata, which the log stores once per chunk
(:mod:`amqpd.streams.chunks`). Deliveries get the ``x-stream-offset``
header spliced into the stored content header bytes: the other properties and headers go
out byte for byte as they came in (array and table headers included, which RabbitMQ drops).

Consumers reading the same part of a stream get the same record payload objects from the
log's recent records (:mod:`amqpd.streams.log`), so the decoded message and the delivery with
its offset are kept for those payloads (:class:`DecodedRecords`): the second and every
further consumer of a record reuses them instead of decoding and splicing again.
"""

from __future__ import annotations

import struct
from collections import OrderedDict

from amqpd.broker.message import Message, route_for
from amqpd.protocol import codec
from amqpd.streams.log import SHARED_RECENT

_PREFIX = struct.Struct(">BBHI")  # exchange len, routing key len, filter len, header len
_NO_FILTER = 0xFFFF
_SIZE_OMITTED = 0x80000000  # in the header length: the header is stored without its body size
_BODY_SIZE = struct.Struct(">Q")
_BODY_SIZE_AT = 4  # after class id and weight
_FLAG_CONTENT_TYPE = 0x8000
_FLAG_CONTENT_ENCODING = 0x4000
_OFFSET_FIELD = b"\x0fx-stream-offset"
FILTER_HEADER = "x-stream-filter-value"
CACHE_BYTES = 4 * 1024 * 1024  # of payloads kept decoded, all streams together


class Decoded:
    """A decoded record payload, and its delivery (with ``x-stream-offset``) once made."""

    __slots__ = ("delivery", "filter", "message", "offset", "payload")

    def __init__(self, payload: bytes, filter_: str | None, message: Message):
        self.payload = payload
        self.filter = filter_
        self.message = message
        self.offset = -1
        self.delivery: Message | None = None


class DecodedRecords:
    """Decoded payloads looked up by the payload object's identity (no hashing or comparing
    of bytes), and by their message's identity for :func:`with_offset`. Each entry holds
    both objects, so their ids cannot be reused while it lives; the oldest go past
    ``budget`` bytes of payload."""

    __slots__ = ("budget", "by_message", "by_payload", "size")

    def __init__(self, budget: int):
        self.budget = budget
        self.size = 0
        # An OrderedDict: dropping the oldest entry of a plain dict over and over gets slower
        # and slower (finding the next oldest skips every deleted slot).
        self.by_payload: OrderedDict[int, Decoded] = OrderedDict()
        self.by_message: dict[int, Decoded] = {}

    def of_payload(self, payload: bytes) -> Decoded | None:
        """The entry of this very payload object, or None."""
        entry = self.by_payload.get(id(payload))
        return entry if entry is not None and entry.payload is payload else None

    def of_message(self, message: Message) -> Decoded | None:
        """The entry whose message is this very object, or None."""
        entry = self.by_message.get(id(message))
        return entry if entry is not None and entry.message is message else None

    def keep(self, entry: Decoded) -> None:
        """Add a new entry (its payload and message are in no entry yet)."""
        size = len(entry.payload)
        self.by_payload[id(entry.payload)] = entry
        self.by_message[id(entry.message)] = entry
        self.size += size
        while self.size > self.budget:
            old = self.by_payload.popitem(last=False)[1]
            del self.by_message[id(old.message)]
            self.size -= len(old.payload)


DECODED = DecodedRecords(CACHE_BYTES)


def filter_value(message: Message) -> str | None:
    """The message's ``x-stream-filter-value`` header, when it is a string."""
    if not codec.header_flags(message.header_payload) & codec.FLAG_HEADERS:
        return None
    headers = message.headers
    value = headers.get(FILTER_HEADER) if headers else None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def encode(message: Message) -> bytes:
    """The record payload of a published message."""
    exchange = message.route.exchange_bytes
    routing_key = message.route.routing_key_bytes
    value = filter_value(message)
    filter_bytes = value.encode("utf-8")[:_NO_FILTER - 1] if value is not None else b""
    header = message.header_payload
    body = message.body
    size_end = _BODY_SIZE_AT + _BODY_SIZE.size
    if header[_BODY_SIZE_AT:size_end] == _BODY_SIZE.pack(len(body)):
        return b"".join((
            _PREFIX.pack(len(exchange), len(routing_key),
                         len(filter_bytes) if value is not None else _NO_FILTER,
                         (len(header) - _BODY_SIZE.size) | _SIZE_OMITTED),
            exchange, routing_key, filter_bytes, header[:_BODY_SIZE_AT], header[size_end:],
            body,
        ))
    # A header whose size is not the body's (the broker reads bodies to their size: not
    # expected) is kept as it came.
    return b"".join((
        _PREFIX.pack(len(exchange), len(routing_key),
                     len(filter_bytes) if value is not None else _NO_FILTER, len(header)),
        exchange, routing_key, filter_bytes, header, body,
    ))


class StoredMessage:
    """A record payload taken apart (no copies of the body until it is delivered)."""

    __slots__ = ("filter", "message")

    filter: str | None
    message: Message

    def __init__(self, payload: bytes):
        shared = id(payload) in SHARED_RECENT.payload_ids  # other cursors get this object
        if shared:
            decoded = DECODED.of_payload(payload)
            if decoded is not None:
                self.filter = decoded.filter
                self.message = decoded.message
                return
        exchange_len, key_len, filter_len, header_len = _PREFIX.unpack_from(payload, 0)
        at = _PREFIX.size
        exchange = payload[at:at + exchange_len].decode("utf-8")
        at += exchange_len
        routing_key = payload[at:at + key_len].decode("utf-8")
        at += key_len
        self.filter = None
        if filter_len != _NO_FILTER:
            self.filter = payload[at:at + filter_len].decode("utf-8", "replace")
            at += filter_len
        if header_len & _SIZE_OMITTED:
            header_len &= ~_SIZE_OMITTED
            body = payload[at + header_len:]
            header = b"".join((payload[at:at + _BODY_SIZE_AT], _BODY_SIZE.pack(len(body)),
                               payload[at + _BODY_SIZE_AT:at + header_len]))
        else:  # written before the body size was left out
            header = payload[at:at + header_len]
            body = payload[at + header_len:]
        self.message = Message(route_for(exchange, routing_key), header, body)
        if shared:
            DECODED.keep(Decoded(payload, self.filter, self.message))


def with_offset(message: Message, offset: int) -> Message:
    """The message to deliver: its content header with ``x-stream-offset`` (a signed 64-bit
    integer, as RabbitMQ sends it) added to the headers table."""
    decoded = DECODED.of_message(message)
    if decoded is None:
        return _with_offset(message, offset)
    if decoded.delivery is None or decoded.offset != offset:
        decoded.delivery = _with_offset(message, offset)
        decoded.offset = offset
    return decoded.delivery


def _with_offset(message: Message, offset: int) -> Message:
    header = message.header_payload
    flags = codec.header_flags(header)
    at = 14  # class id, weight, body size, property flags
    if flags & _FLAG_CONTENT_TYPE:
        at += 1 + header[at]
    if flags & _FLAG_CONTENT_ENCODING:
        at += 1 + header[at]
    field = _OFFSET_FIELD + b"l" + struct.pack(">q", offset)
    if flags & codec.FLAG_HEADERS:
        (table_len,) = struct.unpack_from(">I", header, at)
        table = header[at + 4:at + 4 + table_len]
        if _OFFSET_FIELD in table:  # the publisher set one itself: replace it properly
            properties = codec.decode_properties(header)
            properties.headers = {**(properties.headers or {}), "x-stream-offset": offset}
            return Message(message.route, codec.encode_header_payload(
                len(message.body), properties), message.body)
        spliced = b"".join((header[:at], struct.pack(">I", table_len + len(field)), table,
                            field, header[at + 4 + table_len:]))
    else:
        spliced = b"".join((header[:12], struct.pack(">H", flags | codec.FLAG_HEADERS),
                            header[14:at], struct.pack(">I", len(field)), field, header[at:]))
    return Message(message.route, spliced, message.body)
