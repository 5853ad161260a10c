"""Segments of the first stream file format, converted to chunks when a log opens.

That format had no file magic: records one after the other, each ``length, crc32, offset,
timestamp_ms`` (24 bytes, little endian) and the payload, the CRC over offset, timestamp and
payload. A segment that does not begin with :data:`~amqpd.streams.chunks.FILE_MAGIC` (nor
with a torn piece of it) is of that format: its valid records -- up to the first torn or
garbled one, as recovery always cut -- are rewritten as chunks with the same offsets and
timestamps, a record at a time from a memory map of the old file (a segment of 500 MB
must not need a gigabyte of memory at startup). Crash-safe: the new file is written beside
the old one and fsync'd, the old
index is removed (it points into the old layout; the log rebuilds a missing index), then
the new file is renamed over the old one. A crash before the rename leaves the old segment,
converted again at the next start.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

from amqpd.streams.chunks import FILE_MAGIC, ChunkWriter

WRITE_EVERY = 1024 * 1024  # bytes of new chunks buffered between writes

RECORD_HEADER = struct.Struct("<IIqq")  # payload length, crc32, offset, timestamp ms
_CRC_PREFIX = struct.Struct("<qq")


def is_legacy(path: Path) -> bool:
    """True when the segment file at ``path`` is of the first format."""
    with path.open("rb") as file:
        head = file.read(len(FILE_MAGIC))
    return head != FILE_MAGIC[:len(head)]


def read_records(data: bytes | mmap.mmap, first_offset: int) -> Iterator[tuple[int, bytes]]:
    """(timestamp ms, payload) of the valid records of a first-format segment, in order."""
    position = 0
    offset = first_offset
    while position + RECORD_HEADER.size <= len(data):
        length, crc, record_offset, timestamp = RECORD_HEADER.unpack_from(data, position)
        payload_end = position + RECORD_HEADER.size + length
        if record_offset != offset or payload_end > len(data):
            break
        payload = data[position + RECORD_HEADER.size:payload_end]
        if zlib.crc32(payload, zlib.crc32(_CRC_PREFIX.pack(offset, timestamp))) != crc:
            break
        yield timestamp, payload
        offset += 1
        position = payload_end


def convert(path: Path, index_path: Path, first_offset: int) -> int:
    """Rewrite the first-format segment at ``path`` (its first offset ``first_offset``) as
    chunks; returns how many records it kept."""
    temporary = path.with_name(path.name + ".converting")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    kept = 0
    try:
        writer = ChunkWriter()
        writer.pending += FILE_MAGIC
        with path.open("rb") as old:
            size = os.fstat(old.fileno()).st_size
            mapped = mmap.mmap(old.fileno(), size, access=mmap.ACCESS_READ) if size else None
            try:
                for timestamp, payload in read_records(mapped or b"", first_offset):
                    writer.add(payload, first_offset + kept, timestamp,
                               writer.shared_with(payload))
                    kept += 1
                    if len(writer.pending) >= WRITE_EVERY:
                        _write_all(fd, writer.take())
            finally:
                if mapped is not None:
                    mapped.close()
        _write_all(fd, writer.take())
        os.fsync(fd)
    finally:
        os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        index_path.unlink()
    os.replace(temporary, path)  # the caller fsyncs the directory (the log, once for all)
    return kept


def _write_all(fd: int, data: bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]

