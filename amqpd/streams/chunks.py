"""The chunked record format of stream segment files (:mod:`amqpd.streams.log`).

A segment file starts with ``FILE_MAGIC`` and holds chunks. A chunk is a ``CHUNK_HEADER``
(magic, CRC-32, length of its records, record count, first offset, first timestamp) and its
records, each of them four parts:

- varint: its timestamp minus the chunk's first timestamp (timestamps never go backwards);
- varint: how many leading bytes its payload shares with the previous record's payload in the
  chunk (0 for the first record, and for payloads of ``SHARE_MAX`` bytes or more, which stay
  one slice of the read: no copy of a large body);
- varint: the length of the rest of the payload;
- the rest.

The stored payload of a stream message begins with its exchange, routing key and content
header (:mod:`amqpd.streams.content`), so consecutive messages of one publisher share all
that: a record costs about 4 bytes more than its body, where a header of its own per record
and the repeated metadata cost about 80. The CRC covers the header after its own field and
the records: recovery keeps the complete chunks before the first bad one (nothing in a chunk
that never reached the disk whole was confirmed: confirms wait for the fsync of every chunk
before them).

Pure and synchronous, nothing from amqpd: the log and the converter of the older format
(:mod:`amqpd.streams.legacy`) both use it.
"""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

# Read as the length field of a record of the first format (little endian), the fourth byte
# 0xff makes a record of more than 4 GB: no segment of that format begins with these bytes.
FILE_MAGIC = b"AQS\xff\x02\r\n\x00"
CHUNK_MAGIC = 0xC4A7
# magic, crc32, length of the records, record count, first offset, first timestamp ms
CHUNK_HEADER = struct.Struct("<HIIIqq")
_CRC = struct.Struct("<I")
_CRC_FROM = 6  # the CRC covers the header from its length field on, and the records
_BLANK_HEADER = bytes(CHUNK_HEADER.size)
# A chunk closes once its records reach this many bytes (or at a flush or a segment roll):
# bigger chunks hardly save more (a header is 30 bytes) but every read of one offset in the
# middle of a chunk decodes the records before it.
CHUNK_BYTES = 64 * 1024
SHARE_MAX = 64 * 1024  # payloads this large share no prefix (== log.RECENT_RECORD_MAX)


class Record(NamedTuple):
    """One record read back from the log."""

    offset: int
    timestamp_ms: int
    payload: bytes


def varint_size(value: int) -> int:
    """Bytes of ``value`` (>= 0) as a varint."""
    size = 1
    while value >= 0x80:
        value >>= 7
        size += 1
    return size


def put_varint(out: bytearray, value: int) -> None:
    """Append ``value`` (>= 0) as a varint: 7 bits a byte, low first, high bit = more."""
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _varint(data: bytes, position: int) -> tuple[int, int]:
    """The varint at ``position`` and the position after it."""
    value = 0
    shift = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7


def shared_prefix(previous: bytes, payload: bytes, guess: int) -> int:
    """How many leading bytes ``payload`` shares with ``previous``. ``guess`` (the answer for
    the record before) is usually right -- the same metadata, another body -- and then costs
    one comparison; otherwise a binary search of comparisons of slices (done in C)."""
    limit = min(len(previous), len(payload))
    guess = min(guess, limit)
    if previous[:guess] == payload[:guess]:
        if guess == limit or previous[guess] != payload[guess]:
            return guess
        if previous[:limit] == payload[:limit]:
            return limit
        low, high = guess + 1, limit - 1
    else:
        low, high = 0, guess - 1
    # The first ``low`` bytes are shared, the first ``high + 1`` are not.
    while low < high:
        middle = (low + high + 1) // 2
        if previous[:middle] == payload[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


class ChunkWriter:
    """Encodes appended records into chunks, in one buffer (``pending``) that the log writes
    with one ``os.write``: the open chunk is the tail of the buffer, its header filled in
    when it closes."""

    def __init__(self) -> None:
        self.pending = bytearray()
        self.count = 0  # records in the open chunk (0: no chunk is open)
        self.start = 0  # where the open chunk's header is in ``pending``
        self.first_offset = 0
        self.first_ts = 0
        self.previous = b""  # the payload of the open chunk's last record
        self.guess = 0  # the shared prefix of the last record: the next one's first guess

    def shared_with(self, payload: bytes) -> int:
        """How much of ``payload`` the next record shares with the one before it."""
        previous = self.previous
        if not self.count or len(payload) >= SHARE_MAX or len(previous) >= SHARE_MAX:
            return 0
        return shared_prefix(previous, payload, self.guess)

    def encoded_size(self, payload: bytes, timestamp_ms: int, shared: int) -> int:
        """The bytes :meth:`add` would add to the file (a chunk header with the first record
        of a chunk)."""
        rest = len(payload) - shared
        if not self.count:
            return CHUNK_HEADER.size + 2 + varint_size(rest) + rest
        return (varint_size(timestamp_ms - self.first_ts) + varint_size(shared)
                + varint_size(rest) + rest)

    def add(self, payload: bytes, offset: int, timestamp_ms: int, shared: int) -> None:
        """Append a record (``shared`` from :meth:`shared_with`); opens a chunk when none is
        open, closes it once it holds ``CHUNK_BYTES``."""
        pending = self.pending
        if not self.count:
            self.start = len(pending)
            pending += _BLANK_HEADER
            self.first_offset = offset
            self.first_ts = timestamp_ms
            pending.append(0)
            pending.append(0)
        else:
            put_varint(pending, timestamp_ms - self.first_ts)
            put_varint(pending, shared)
            self.guess = shared
        put_varint(pending, len(payload) - shared)
        pending += payload[shared:] if shared else payload
        self.count += 1
        self.previous = payload
        if len(pending) - self.start >= CHUNK_BYTES:
            self.close()

    def close(self) -> None:
        """Close the open chunk (when there is one): fill in its header."""
        if not self.count:
            return
        pending = self.pending
        start = self.start
        length = len(pending) - start - CHUNK_HEADER.size
        CHUNK_HEADER.pack_into(pending, start, CHUNK_MAGIC, 0, length, self.count,
                               self.first_offset, self.first_ts)
        _CRC.pack_into(pending, start + 2, zlib.crc32(pending[start + _CRC_FROM:]))
        self.count = 0
        self.previous = b""

    def take(self) -> bytearray:
        """Close the open chunk; the encoded chunks, handed over (the buffer starts anew)."""
        self.close()
        pending = self.pending
        self.pending = bytearray()
        return pending


def decode(data: bytes, at: int) -> tuple[list[Record], int]:
    """The records of the chunk at ``at`` in ``data`` (validated by :func:`scan` when it was
    recovered, written whole by this process otherwise) and the position after it."""
    _, _, length, _, offset, first_ts = CHUNK_HEADER.unpack_from(data, at)
    position = at + CHUNK_HEADER.size
    end = position + length
    records: list[Record] = []
    previous = b""
    head = b""  # a prefix of ``previous``: records sharing as much as the last reuse it
    while position < end:
        delta = data[position]
        position += 1
        if delta >= 0x80:
            delta, position = _varint(data, position - 1)
        shared = data[position]
        position += 1
        if shared >= 0x80:
            shared, position = _varint(data, position - 1)
        size = data[position]
        position += 1
        if size >= 0x80:
            size, position = _varint(data, position - 1)
        rest_end = position + size
        rest = data[position:rest_end]
        if shared:
            if shared != len(head):
                head = previous[:shared]
            payload = head + rest
        else:
            head = b""
            payload = rest
        position = rest_end
        records.append(Record(offset, first_ts + delta, payload))
        previous = payload
        offset += 1
    return records, end


def chunk_bounds(data: bytes, at: int) -> tuple[int, int, int]:
    """(first offset, record count, position after it) of the chunk at ``at``."""
    _, _, length, count, first_offset, _ = CHUNK_HEADER.unpack_from(data, at)
    return first_offset, count, at + CHUNK_HEADER.size + length


def scan(data: bytes, start: int, expected_offset: int) -> tuple[list[tuple[int, int, int, int]],
                                                                  int]:
    """Validate the chunks from ``start`` on: (first offset, position, first timestamp, record
    count) of each complete chunk with a good CRC and the expected offsets, and the position
    after the last of them (where a torn or garbled tail begins)."""
    found = []
    position = start
    end = len(data)
    view = memoryview(data)
    while position + CHUNK_HEADER.size <= end:
        magic, crc, length, count, first_offset, first_ts = \
            CHUNK_HEADER.unpack_from(data, position)
        chunk_end = position + CHUNK_HEADER.size + length
        if magic != CHUNK_MAGIC or first_offset != expected_offset or not count \
                or chunk_end > end:
            break
        if zlib.crc32(view[position + _CRC_FROM:chunk_end]) != crc:
            break
        found.append((first_offset, position, first_ts, count))
        expected_offset += count
        position = chunk_end
    view.release()
    return found, position

