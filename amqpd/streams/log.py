"""An append-only segment log: the storage of one stream.

Theory of operation:
- Records get consecutive offsets from 0. Each record is ``length, crc32, offset,
  timestamp_ms`` (24 bytes) and the payload; the CRC covers offset, timestamp and payload,
  so a torn or garbled tail is recognised after a crash and cut off (nothing after the first
  bad record was ever confirmed: confirms wait for the fsync of everything before them).
- Records go to segment files ``<first offset, 20 digits>.seg`` of at most
  ``max_segment_bytes`` (a record larger than that gets a segment of its own). Each segment
  has a sparse index ``.idx`` -- ``offset, position, timestamp_ms`` every ``INDEX_EVERY``
  bytes and for its first record -- so a read from any offset or timestamp seeks to the
  nearest entry and scans at most that many bytes. Timestamps never go backwards, so the
  same index answers "first offset at or after time T".
- Appends are buffered and written with one ``os.write`` per flush (``flush`` runs before
  every read, when the buffer is large, and before each sync); ``sync_handles`` returns
  duplicated descriptors to fsync in a worker thread, so retention closing a segment never
  races with an fsync in flight.
- Retention drops whole closed segments only (the active one is never dropped): the oldest
  while the log is larger than ``max_bytes``, and those whose newest record is older than
  ``max_age_ms``. Readers positioned in a dropped segment continue at the new first offset.
- Memory per log: one small object per segment plus its sparse index (24 bytes per
  ``INDEX_EVERY`` bytes of data). Readers hold a position, never records.
- While several cursors take turns reading a log, the records they read stay in memory in
  :class:`RecentRecords` (one budget of ``RECENT_BYTES`` for every log of the process):
  consumers reading the same part of a stream (all of them tailing it, several replaying
  it) read each record once, not once each -- and the same payload object lets
  :mod:`amqpd.streams.content` reuse its decoding too. A lone reader keeps nothing: holding
  records it never reads again would only cost it time (measured: about 3 us a record).

Pure and synchronous: no asyncio, nothing from amqpd.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import struct
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

RECORD_HEADER = struct.Struct("<IIqq")  # payload length, crc32, offset, timestamp ms
INDEX_ENTRY = struct.Struct("<qqq")  # offset, position in the segment, timestamp ms
INDEX_EVERY = 64 * 1024
READ_CHUNK = 256 * 1024
FLUSH_AT = 256 * 1024
RECENT_BYTES = 4 * 1024 * 1024  # payload bytes of recent records, all logs together
RECENT_RECORD_MAX = 64 * 1024  # larger records are read by each cursor on its own
SHARE_WINDOW = 4096  # records kept after another cursor was seen reading the log
DEFAULT_SEGMENT_BYTES = 500_000_000  # RabbitMQ's default x-stream-max-segment-size-bytes


class Record(NamedTuple):
    """One record read back from the log."""

    offset: int
    timestamp_ms: int
    payload: bytes


def _crc(offset: int, timestamp_ms: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(struct.pack("<qq", offset, timestamp_ms)))


class Segment:
    """One segment file and its sparse index."""

    def __init__(self, directory: Path, first_offset: int):
        self.first_offset = first_offset
        self.path = directory / f"{first_offset:020d}.seg"
        self.index_path = directory / f"{first_offset:020d}.idx"
        self.size = 0  # bytes of complete records (buffered ones included)
        self.next_offset = first_offset  # the offset after its last record
        self.first_ts = 0
        self.last_ts = 0
        self.index_offsets: list[int] = []
        self.index_positions: list[int] = []
        self.index_timestamps: list[int] = []
        self.fd = -1
        self.index_fd = -1

    @property
    def count(self) -> int:
        """Records in the segment."""
        return self.next_offset - self.first_offset

    def open(self) -> None:
        """Open the files for reading and appending (created when missing)."""
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        # O_APPEND: index entries always go to the end, whatever was truncated before.
        self.index_fd = os.open(self.index_path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)

    def close(self) -> None:
        """Close both files."""
        for fd in (self.fd, self.index_fd):
            if fd >= 0:
                os.close(fd)
        self.fd = self.index_fd = -1

    def add_index(self, offset: int, position: int, timestamp_ms: int) -> bytes:
        """Remember an index entry; returns its bytes for the index file."""
        self.index_offsets.append(offset)
        self.index_positions.append(position)
        self.index_timestamps.append(timestamp_ms)
        return INDEX_ENTRY.pack(offset, position, timestamp_ms)

    def seek(self, offset: int) -> int:
        """The file position of the index entry at or before ``offset``."""
        at = bisect.bisect_right(self.index_offsets, offset) - 1
        return self.index_positions[at] if at >= 0 else 0

    def seek_time(self, timestamp_ms: int) -> int:
        """The file position of the last index entry older than ``timestamp_ms``."""
        at = bisect.bisect_left(self.index_timestamps, timestamp_ms) - 1
        return self.index_positions[at] if at >= 0 else 0


def _scan(data: bytes, start: int, expected_offset: int) -> tuple[list[tuple[int, int, int]], int]:
    """Validate records from ``start``: returns (offset, position, timestamp) of each valid
    record and the position after the last one (where a torn tail begins)."""
    found = []
    position = start
    end = len(data)
    offset = expected_offset
    while position + RECORD_HEADER.size <= end:
        length, crc, record_offset, timestamp = RECORD_HEADER.unpack_from(data, position)
        payload_end = position + RECORD_HEADER.size + length
        if record_offset != offset or payload_end > end:
            break
        payload = data[position + RECORD_HEADER.size:payload_end]
        if _crc(record_offset, timestamp, payload) != crc:
            break
        found.append((record_offset, position, timestamp))
        offset += 1
        position = payload_end
    return found, position


class RecentRecords:
    """Records cursors recently read, of every log, for the cursors that come next:
    ``(id(log), offset) -> (log, record, its segment, file position after it)``, the oldest
    dropped past ``budget`` bytes of payload. An entry holds its log, so the id in its key
    cannot be reused while the entry lives."""

    def __init__(self, budget: int):
        self.budget = budget
        self.size = 0
        # An OrderedDict: popping the oldest of a plain dict again and again makes finding
        # the next oldest slower and slower, as it skips the deleted slots.
        self.entries: OrderedDict[tuple[int, int], tuple[SegmentLog, Record, Segment, int]] = \
            OrderedDict()
        # ids of the payloads held: the decoding cache keeps only what cursors will share.
        self.payload_ids: set[int] = set()

    def put(self, log: SegmentLog, record: Record, segment: Segment, end: int) -> None:
        """Keep a record (not when it is larger than ``RECENT_RECORD_MAX``)."""
        size = len(record.payload)
        key = (id(log), record.offset)
        entries = self.entries
        if size > RECENT_RECORD_MAX or key in entries:
            return
        entries[key] = (log, record, segment, end)
        self.payload_ids.add(id(record.payload))
        self.size += size
        while self.size > self.budget:
            self._dropped(entries.popitem(last=False)[1][1])

    def _dropped(self, record: Record) -> None:
        self.size -= len(record.payload)
        self.payload_ids.discard(id(record.payload))

    def forget(self, log: SegmentLog) -> None:
        """Drop every entry of ``log`` (a segment dropped or the log closed: rare)."""
        entries = self.entries
        for key in [k for k, entry in entries.items() if entry[0] is log]:
            self._dropped(entries.pop(key)[1])


SHARED_RECENT = RecentRecords(RECENT_BYTES)


class SegmentLog:
    """The log of one stream in ``directory`` (created when missing, recovered when not)."""

    def __init__(
        self,
        directory: Path,
        max_segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        max_bytes: int | None = None,
        max_age_ms: int | None = None,
        clock: Callable[[], float] = time.time,
        recent: RecentRecords = SHARED_RECENT,
    ):
        self.directory = directory
        self.max_segment_bytes = max_segment_bytes
        self.max_bytes = max_bytes
        self.max_age_ms = max_age_ms
        self.clock = clock
        self.segments: list[Segment] = []
        self._firsts: list[int] = []  # first offsets of the segments, for bisect
        self._pending = bytearray()
        self._pending_index = bytearray()
        self._written = 0  # bytes of the active segment already handed to os.write
        self._dirty: set[Segment] = set()
        self.total_bytes = 0
        self.dropped_segments = 0
        self.recent = recent
        self.last_reader = 0  # id() of the cursor that read last (no reference held)
        self.share_left = 0  # records still to keep for other cursors
        directory.mkdir(parents=True, exist_ok=True)
        self._recover()

    # -- opening -----------------------------------------------------------------------

    def _recover(self) -> None:
        firsts = sorted(int(p.stem) for p in self.directory.glob("*.seg") if p.stem.isdigit())
        if not firsts:
            self._new_segment(0)
            return
        for number, first in enumerate(firsts):
            segment = Segment(self.directory, first)
            segment.open()
            self._load(segment, last=number == len(firsts) - 1)
            if self.segments and segment.first_offset != self.segments[-1].next_offset:
                # A gap (a segment deleted by hand): everything before it is unreachable.
                for old in self.segments:
                    old.close()
                self.segments.clear()
                self.total_bytes = 0
            self.segments.append(segment)
            self.total_bytes += segment.size
        self._firsts = [s.first_offset for s in self.segments]
        self._written = self.active.size

    def _load(self, segment: Segment, last: bool) -> None:
        """Rebuild a segment's metadata; the active (last) one is validated record by
        record and its torn tail cut off."""
        raw_index = os.pread(segment.index_fd, os.fstat(segment.index_fd).st_size, 0)
        entries = [INDEX_ENTRY.unpack_from(raw_index, at)
                   for at in range(0, len(raw_index) - INDEX_ENTRY.size + 1, INDEX_ENTRY.size)]
        size = os.fstat(segment.fd).st_size
        if last or not entries or entries[0][0] != segment.first_offset:
            data = os.pread(segment.fd, size, 0)
            records, valid_end = _scan(data, 0, segment.first_offset)
            if valid_end < size:
                os.ftruncate(segment.fd, valid_end)
            entries = []
            indexed = -INDEX_EVERY
            for offset, position, timestamp in records:
                if position - indexed >= INDEX_EVERY:
                    entries.append((offset, position, timestamp))
                    indexed = position
            os.ftruncate(segment.index_fd, 0)
            os.pwrite(segment.index_fd, b"".join(INDEX_ENTRY.pack(*e) for e in entries), 0)
            segment.size = valid_end
            segment.next_offset = segment.first_offset + len(records)
            segment.last_ts = records[-1][2] if records else 0
        else:
            # A closed segment: trust its index, scan only from the last entry to its end.
            offset, position, _ = entries[-1]
            data = os.pread(segment.fd, size - position, position)
            records, valid_end = _scan(data, 0, offset)
            segment.size = position + valid_end
            segment.next_offset = offset + len(records)
            segment.last_ts = records[-1][2] if records else entries[-1][2]
        for offset, position, timestamp in entries:
            segment.add_index(offset, position, timestamp)
        segment.first_ts = entries[0][2] if entries else 0

    def _new_segment(self, first_offset: int) -> None:
        segment = Segment(self.directory, first_offset)
        segment.open()
        os.ftruncate(segment.fd, 0)
        os.ftruncate(segment.index_fd, 0)
        self.segments.append(segment)
        self._firsts.append(first_offset)
        self._written = 0
        _sync_directory(self.directory)

    # -- state -------------------------------------------------------------------------

    @property
    def active(self) -> Segment:
        """The segment appends go to."""
        return self.segments[-1]

    @property
    def first_offset(self) -> int:
        """The oldest offset still in the log (== next_offset when it is empty)."""
        return self.segments[0].first_offset

    @property
    def next_offset(self) -> int:
        """The offset the next append gets."""
        return self.active.next_offset

    def __len__(self) -> int:
        return self.next_offset - self.first_offset

    # -- appending ---------------------------------------------------------------------

    def append(self, payload: bytes, timestamp_ms: int | None = None) -> int:
        """Append one record; returns its offset. Durable after the next sync."""
        active = self.active
        if timestamp_ms is None:
            timestamp_ms = int(self.clock() * 1000)
        timestamp_ms = max(timestamp_ms, active.last_ts)  # the time index needs order
        size = RECORD_HEADER.size + len(payload)
        if active.count and active.size + size > self.max_segment_bytes:
            self._roll()
            active = self.active
        offset = active.next_offset
        position = active.size
        if not active.count:
            active.first_ts = timestamp_ms
        if not active.index_positions or position - active.index_positions[-1] >= INDEX_EVERY:
            self._pending_index += active.add_index(offset, position, timestamp_ms)
        pending = self._pending
        pending += RECORD_HEADER.pack(len(payload), _crc(offset, timestamp_ms, payload),
                                      offset, timestamp_ms)
        pending += payload
        active.size += size
        active.next_offset = offset + 1
        active.last_ts = timestamp_ms
        self.total_bytes += size
        if len(pending) >= FLUSH_AT:
            self.flush()
        return offset

    def flush(self) -> None:
        """Hand buffered appends to the operating system (they survive a kill -9 from here
        on; an fsync makes them survive a power cut)."""
        if not self._pending:
            return
        active = self.active
        os.pwrite(active.fd, self._pending, self._written)
        self._written += len(self._pending)
        if self._pending_index:
            os.write(active.index_fd, self._pending_index)
            self._pending_index = bytearray()
        self._pending = bytearray()
        self._dirty.add(active)

    def _roll(self) -> None:
        self.flush()
        self._new_segment(self.active.next_offset)
        self.apply_retention()

    def sync_handles(self) -> list[int]:
        """Flush, then duplicated descriptors of every file written since the last call:
        the caller fsyncs and closes them (in a worker thread)."""
        self.flush()
        handles = []
        for segment in self._dirty:
            if segment.fd >= 0:
                handles.append(os.dup(segment.fd))
                handles.append(os.dup(segment.index_fd))
        self._dirty.clear()
        return handles

    def sync(self) -> None:
        """Flush and fsync now (tests, shutdown)."""
        for handle in self.sync_handles():
            try:
                os.fsync(handle)
            finally:
                os.close(handle)

    # -- retention ---------------------------------------------------------------------

    def apply_retention(self, now_ms: int | None = None) -> int:
        """Drop closed segments past max_bytes / max_age; returns how many were dropped."""
        if now_ms is None:
            now_ms = int(self.clock() * 1000)
        dropped = 0
        while len(self.segments) > 1:
            oldest = self.segments[0]
            too_big = self.max_bytes is not None and self.total_bytes > self.max_bytes
            too_old = self.max_age_ms is not None and oldest.last_ts < now_ms - self.max_age_ms
            if not (too_big or too_old):
                break
            self._drop_oldest()
            dropped += 1
        return dropped

    def _drop_oldest(self) -> None:
        segment = self.segments.pop(0)
        self._firsts.pop(0)
        self.total_bytes -= segment.size
        self.dropped_segments += 1
        self._dirty.discard(segment)
        self.recent.forget(self)  # no entry may point into a closed segment
        segment.close()
        for path in (segment.path, segment.index_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    # -- reading -----------------------------------------------------------------------

    def clamp(self, offset: int) -> int:
        """``offset`` moved into [first_offset, next_offset]."""
        return min(max(offset, self.first_offset), self.next_offset)

    def offset_at_time(self, timestamp_ms: int) -> int:
        """The first offset whose record is at or after ``timestamp_ms`` (next_offset when
        none is)."""
        for segment in self.segments:
            if segment.count and segment.last_ts >= timestamp_ms:
                at = bisect.bisect_left(segment.index_timestamps, timestamp_ms) - 1
                start = segment.index_offsets[at] if at >= 0 else segment.first_offset
                cursor = Cursor(self, start)
                while records := cursor.read(256):
                    for record in records:
                        if record.timestamp_ms >= timestamp_ms:
                            return record.offset
        return self.next_offset

    def read(self, offset: int, max_records: int) -> list[Record]:
        """Up to ``max_records`` records from ``offset`` (moved into the log first)."""
        return Cursor(self, offset).read(max_records)

    def segment_for(self, offset: int) -> Segment:
        """The segment that holds ``offset`` (the first one for older offsets)."""
        at = bisect.bisect_right(self._firsts, offset) - 1
        return self.segments[max(at, 0)]

    def close(self) -> None:
        """Flush and close every file (no fsync: call sync first when that matters)."""
        self.flush()
        self.recent.forget(self)
        for segment in self.segments:
            segment.close()


class Cursor:
    """A reader's position in a log: the next offset, the file position of its record and a
    read-ahead buffer of at most ``READ_CHUNK`` bytes, dropped whenever it is used up -- a
    consumer that has caught up holds no data at all."""

    __slots__ = ("_buffer", "_buffer_at", "_position", "_segment", "log", "offset")

    def __init__(self, log: SegmentLog, offset: int):
        self.log = log
        self.offset = log.clamp(offset)
        self._segment: Segment | None = None
        self._position = 0
        self._buffer = b""
        self._buffer_at = 0  # file position of the buffer's first byte

    def seek(self, offset: int) -> None:
        """Move to ``offset`` (moved into the log)."""
        self.offset = self.log.clamp(offset)
        self._segment = None
        self._buffer = b""

    @property
    def at_end(self) -> bool:
        """True when every record has been read (asked before every delivery: no
        property chain)."""
        return self.offset >= self.log.segments[-1].next_offset

    def _locate(self) -> Segment:
        segment = self.log.segment_for(self.offset)
        self._segment = segment
        self._position = segment.seek(self.offset)
        self._buffer = b""
        return segment

    def _next_record(self, segment: Segment) -> Record | None:
        """The record at the cursor's file position in ``segment`` (None at its end)."""
        header = RECORD_HEADER
        position = self._position
        if position >= segment.size:
            return None
        at = position - self._buffer_at
        buffer = self._buffer
        if at < 0 or at + header.size > len(buffer) or \
                at + header.size + header.unpack_from(buffer, at)[0] > len(buffer):
            buffer = os.pread(segment.fd, READ_CHUNK, position)
            length = header.unpack_from(buffer, 0)[0]
            if header.size + length > len(buffer):  # a record larger than a chunk
                buffer = os.pread(segment.fd, header.size + length, position)
            self._buffer, self._buffer_at, at = buffer, position, 0
        length, _, offset, timestamp = header.unpack_from(buffer, at)
        end = at + header.size + length
        self._position = position + header.size + length
        if end >= len(buffer):
            self._buffer = b""  # used up: hold nothing while waiting
        return Record(offset, timestamp, buffer[at + header.size:end])

    def read(self, max_records: int) -> list[Record]:
        """Up to ``max_records`` records from the cursor, which moves past them."""
        log = self.log
        if self.offset < log.segments[0].first_offset:  # retention dropped our segment
            self.seek(log.segments[0].first_offset)
        offset = self.offset
        end_offset = log.segments[-1].next_offset
        if log.last_reader != id(self):  # cursors take turns: keep what they read
            log.last_reader = id(self)
            log.share_left = SHARE_WINDOW
        records: list[Record] = []
        recent = log.recent.entries
        log_id = id(log)
        segment = self._segment
        flushed = False
        while len(records) < max_records and offset < end_offset:
            hit = recent.get((log_id, offset))
            if hit is not None:  # another cursor read it: no read, no decode
                _, record, segment_of, end = hit
                if segment_of is not segment:
                    segment = self._segment = segment_of
                    self._buffer = b""
                self._position = end
                records.append(record)
                offset += 1
                continue
            if not flushed:
                log.flush()
                flushed = True
            if segment is None or segment.fd < 0 or offset >= segment.next_offset:
                self.offset = offset
                segment = self._locate()
            read = self._next_record(segment)
            if read is None:
                break
            if read.offset < offset:
                continue  # scanning forward from the index entry
            record = read
            if log.share_left > 0:
                log.share_left -= 1
                log.recent.put(log, record, segment, self._position)
            records.append(record)
            offset = record.offset + 1
        self.offset = offset
        return records


def _sync_directory(directory: Path) -> None:
    """fsync a directory so a new or removed file name survives a power cut."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
