"""An append-only segment log: the storage of one stream.

Theory of operation:
- Records get consecutive offsets from 0 and are written in chunks (:mod:`amqpd.streams.
  chunks`): one header with a CRC per chunk, then per record varints (timestamp delta, the
  prefix shared with the previous payload, the rest's length) and the rest of its payload.
  A chunk closes at every flush, once it holds ``CHUNK_BYTES`` and at a segment roll, so a
  torn or garbled tail is cut at a chunk boundary after a crash (nothing in a chunk that was
  not written whole was confirmed: confirms wait for the fsync of everything before them).
- Records go to segment files ``<first offset, 20 digits>.seg`` of at most
  ``max_segment_bytes`` (a record larger than that gets a segment of its own), each starting
  with ``FILE_MAGIC``; files of the first format (a 24-byte header per record) are converted
  when the log opens (:mod:`amqpd.streams.legacy`). Each segment has a sparse index ``.idx``
  -- ``offset, position, timestamp_ms`` of a chunk start every ``INDEX_EVERY`` bytes and of
  its first chunk -- so a read from any offset or timestamp seeks to the nearest entry and
  hops over chunk headers to the chunk it wants. Timestamps never go backwards, so the same
  index answers "first offset at or after time T".
- Appends are buffered and written with one ``os.write`` per flush (``flush`` runs before
  each sync -- the broker's group commit -- and when the buffer or the payloads it holds
  reach ``FLUSH_AT``); ``sync_handles`` returns duplicated descriptors to fsync in a worker
  thread, so retention closing a segment never races with an fsync in flight. Records not
  yet written are read from memory (``SegmentLog.unwritten``), so a consumer that keeps up
  neither forces a write (a chunk per record) nor reads back what it was appended with.
- Retention drops whole closed segments only (the active one is never dropped): the oldest
  while the log is larger than ``max_bytes``, and those whose newest record is older than
  ``max_age_ms``. Readers positioned in a dropped segment continue at the new first offset.
- Memory per log: one small object per segment plus its sparse index (24 bytes per
  ``INDEX_EVERY`` bytes of data). Readers hold a position and the chunk they are reading
  (dropped when used up: a consumer that has caught up holds no records).
- While several cursors take turns reading a log, the records they read stay in memory in
  :class:`RecentRecords` (one budget of ``RECENT_BYTES`` for every log of the process):
  consumers reading the same part of a stream (all of them tailing it, several replaying
  it) read and decode each chunk once, not once each -- and the same payload object lets
  :mod:`amqpd.streams.content` reuse its decoding too. A lone reader keeps nothing: holding
  records it never reads again would only cost it time (measured: about 3 us a record).

Pure and synchronous: no asyncio, nothing from amqpd outside its own format modules.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from amqpd.streams import legacy
from amqpd.streams.chunks import (
    CHUNK_HEADER,
    FILE_MAGIC,
    ChunkWriter,
    chunk_bounds,
    decode,
    scan,
)
from amqpd.streams.chunks import (
    Record as Record,  # re-exported: readers of the log get Records
)

INDEX_ENTRY = struct.Struct("<qqq")  # offset, position in the segment, timestamp ms
INDEX_EVERY = 64 * 1024
READ_AHEAD = 256 * 1024
FLUSH_AT = 256 * 1024
RECENT_BYTES = 4 * 1024 * 1024  # payload bytes of recent records, all logs together
RECENT_RECORD_MAX = 64 * 1024  # larger records are read by each cursor on its own
SHARE_WINDOW = 4096  # records kept after another cursor was seen reading the log
DEFAULT_SEGMENT_BYTES = 500_000_000  # RabbitMQ's default x-stream-max-segment-size-bytes


class Segment:
    """One segment file and its sparse index."""

    def __init__(self, directory: Path, first_offset: int):
        self.first_offset = first_offset
        self.path = directory / f"{first_offset:020d}.seg"
        self.index_path = directory / f"{first_offset:020d}.idx"
        self.size = 0  # bytes of the file, buffered chunks included
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
        """The file position of the chunk the index names at or before ``offset``."""
        at = bisect.bisect_right(self.index_offsets, offset) - 1
        return self.index_positions[at] if at >= 0 else len(FILE_MAGIC)


class Chunk:
    """A chunk decoded by a cursor: its records, its segment and where the next chunk
    starts (cursors taking turns pass it on through :class:`RecentRecords`). The log's
    records not yet written are one such object too, with no segment (``SegmentLog.
    unwritten``): its list grows with every append until the next flush."""

    __slots__ = ("end", "first_offset", "records", "segment")

    def __init__(self, segment: Segment | None, end: int, first_offset: int,
                 records: list[Record]):
        self.segment = segment
        self.end = end
        self.first_offset = first_offset
        self.records = records


class RecentRecords:
    """Records cursors recently read, of every log, for the cursors that come next:
    ``(id(log), offset) -> (log, record, its decoded chunk)``, the oldest dropped past
    ``budget`` bytes of payload. An entry holds its log, so the id in its key cannot be reused
    while the entry lives. (The chunk of the oldest entries of a log may hold records already
    dropped: at most one chunk, ``CHUNK_BYTES``, per log beyond the budget.)"""

    def __init__(self, budget: int):
        self.budget = budget
        self.size = 0
        # An OrderedDict: popping the oldest of a plain dict again and again makes finding
        # the next oldest slower and slower, as it skips the deleted slots.
        self.entries: OrderedDict[tuple[int, int], tuple[SegmentLog, Record, Chunk]] = \
            OrderedDict()
        # ids of the payloads held: the decoding cache keeps only what cursors will share.
        self.payload_ids: set[int] = set()

    def put(self, log: SegmentLog, record: Record, chunk: Chunk) -> None:
        """Keep a record (not when it is larger than ``RECENT_RECORD_MAX``)."""
        size = len(record.payload)
        key = (id(log), record.offset)
        entries = self.entries
        if size > RECENT_RECORD_MAX or key in entries:
            return
        entries[key] = (log, record, chunk)
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
        self._writer = ChunkWriter()
        # What was appended since the last flush, readable from memory: a consumer that keeps
        # up never makes the log write early (which would close a chunk a record) and never
        # reads back or decodes what it could have been handed.
        self.unwritten = Chunk(None, 0, 0, [])
        self._unwritten_bytes = 0
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
            if legacy.is_legacy(segment.path):
                legacy.convert(segment.path, segment.index_path, first)
                _sync_directory(self.directory)  # the rename survives a power cut
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
        """Rebuild a segment's metadata; the active (last) one is validated chunk by chunk
        and its torn tail cut off, and so is one whose index does not match it."""
        raw_index = os.pread(segment.index_fd, os.fstat(segment.index_fd).st_size, 0)
        entries = [INDEX_ENTRY.unpack_from(raw_index, at)
                   for at in range(0, len(raw_index) - INDEX_ENTRY.size + 1, INDEX_ENTRY.size)]
        size = os.fstat(segment.fd).st_size
        start = len(FILE_MAGIC)
        segment.size = start
        if size < start:  # created, or torn before its first chunk reached the disk
            os.ftruncate(segment.fd, 0)
            os.pwrite(segment.fd, FILE_MAGIC, 0)
            os.ftruncate(segment.index_fd, 0)
            return
        if not last and entries and entries[0][:2] == (segment.first_offset, start):
            # A closed segment: trust its index, check only from the last entry to its end.
            offset, position, timestamp = entries[-1]
            data = os.pread(segment.fd, size - position, position)
            chunks, valid_end = scan(data, 0, offset)
            if chunks:
                self._loaded(segment, entries, data, chunks, position + valid_end)
                return
        data = os.pread(segment.fd, size, 0)
        chunks, valid_end = scan(data, start, segment.first_offset)
        if valid_end < size:
            os.ftruncate(segment.fd, valid_end)
        entries = []
        indexed = -INDEX_EVERY
        for offset, position, timestamp, _ in chunks:
            if position - indexed >= INDEX_EVERY:
                entries.append((offset, position, timestamp))
                indexed = position
        os.ftruncate(segment.index_fd, 0)
        os.pwrite(segment.index_fd, b"".join(INDEX_ENTRY.pack(*e) for e in entries), 0)
        self._loaded(segment, entries, data, chunks, valid_end)

    @staticmethod
    def _loaded(segment: Segment, entries: list[tuple[int, int, int]], data: bytes,
                chunks: list[tuple[int, int, int, int]], end: int) -> None:
        """Set a segment's metadata from its index and its validated chunks (``chunks``:
        positions relative to ``data``, which ends with the last of them)."""
        for offset, position, timestamp in entries:
            segment.add_index(offset, position, timestamp)
        segment.size = end
        segment.first_ts = entries[0][2] if entries else 0
        if chunks:
            first, position, _, count = chunks[-1]
            segment.next_offset = first + count
            segment.last_ts = decode(data, position)[0][-1].timestamp_ms

    def _new_segment(self, first_offset: int) -> None:
        segment = Segment(self.directory, first_offset)
        segment.open()
        os.ftruncate(segment.fd, 0)
        os.ftruncate(segment.index_fd, 0)
        os.pwrite(segment.fd, FILE_MAGIC, 0)
        segment.size = len(FILE_MAGIC)
        self.total_bytes += segment.size
        self.segments.append(segment)
        self._firsts.append(first_offset)
        self._written = segment.size
        self._dirty.add(segment)
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
        writer = self._writer
        shared = writer.shared_with(payload)
        size = writer.encoded_size(payload, timestamp_ms, shared)
        if active.count and active.size + size > self.max_segment_bytes:
            self._roll()
            active = self.active
            shared = 0
            size = writer.encoded_size(payload, timestamp_ms, shared)
        offset = active.next_offset
        if not writer.count:  # this record opens a chunk
            position = active.size
            if not active.count:
                active.first_ts = timestamp_ms
            if not active.index_positions or \
                    position - active.index_positions[-1] >= INDEX_EVERY:
                self._pending_index += active.add_index(offset, position, timestamp_ms)
        writer.add(payload, offset, timestamp_ms, shared)
        active.size += size
        active.next_offset = offset + 1
        active.last_ts = timestamp_ms
        self.total_bytes += size
        unwritten = self.unwritten
        if not unwritten.records:
            unwritten.first_offset = offset
        unwritten.records.append(Record(offset, timestamp_ms, payload))
        # Payloads of similar records encode to a few bytes each: the memory they hold
        # until the flush is bounded too.
        self._unwritten_bytes += len(payload)
        if len(writer.pending) >= FLUSH_AT or self._unwritten_bytes >= FLUSH_AT:
            self.flush()
        return offset

    def flush(self) -> None:
        """Close the open chunk and hand buffered chunks to the operating system (they
        survive a kill -9 from here on; an fsync makes them survive a power cut)."""
        writer = self._writer
        if not writer.pending:
            return
        active = self.active
        pending = writer.take()
        # Cursors still holding the old object keep reading its records; new ones go here.
        self.unwritten = Chunk(None, 0, 0, [])
        self._unwritten_bytes = 0
        os.pwrite(active.fd, pending, self._written)
        self._written += len(pending)
        if self._pending_index:
            os.write(active.index_fd, self._pending_index)
            self._pending_index = bytearray()
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
    """A reader's position in a log: the next offset, the chunk it is reading (dropped when
    used up -- a consumer that has caught up holds no records), where the next chunk starts,
    and a read-ahead buffer of at most ``READ_AHEAD`` bytes (dropped when used up too)."""

    __slots__ = ("_buffer", "_buffer_at", "_chunk", "_next_first", "_next_position",
                 "_segment", "log", "offset")

    def __init__(self, log: SegmentLog, offset: int):
        self.log = log
        self.offset = log.clamp(offset)
        self._chunk: Chunk | None = None
        self._segment: Segment | None = None  # of the chunk read last, and of the buffer
        self._next_position = 0  # where the chunk after the one read last starts
        self._next_first = 0  # and its first offset
        self._buffer = b""
        self._buffer_at = 0  # file position of the buffer's first byte

    def seek(self, offset: int) -> None:
        """Move to ``offset`` (moved into the log)."""
        self.offset = self.log.clamp(offset)
        self._chunk = None
        self._segment = None
        self._buffer = b""

    @property
    def at_end(self) -> bool:
        """True when every record has been read (asked before every delivery: no
        property chain)."""
        return self.offset >= self.log.segments[-1].next_offset

    def _follow(self, chunk: Chunk) -> None:
        """Continue after ``chunk`` (decoded here or by another cursor)."""
        if chunk.segment is None:  # the records not yet written: no file position to keep
            self._segment = None
            self._buffer = b""
            return
        if chunk.segment is not self._segment:
            self._segment = chunk.segment
            self._buffer = b""
        self._next_position = chunk.end
        self._next_first = chunk.first_offset + len(chunk.records)

    def _bytes(self, segment: Segment, position: int, size: int) -> tuple[bytes, int]:
        """A buffer holding ``size`` bytes of ``segment`` at ``position`` (read ahead when it
        has to be read), and where they start in it."""
        at = position - self._buffer_at
        buffer = self._buffer
        if at < 0 or at + size > len(buffer):
            buffer = os.pread(segment.fd, max(size, READ_AHEAD), position)
            self._buffer, self._buffer_at, at = buffer, position, 0
        return buffer, at

    def _find(self, offset: int) -> Chunk | None:
        """Decode the chunk that holds ``offset`` (None when it is not written)."""
        segment = self._segment
        position = self._next_position
        if segment is None or segment.fd < 0 or not \
                self._next_first <= offset < segment.next_offset:
            segment = self.log.segment_for(offset)
            position = segment.seek(offset)
            if segment is not self._segment:
                self._segment = segment
                self._buffer = b""
        header_size = CHUNK_HEADER.size
        while position < segment.size:
            buffer, at = self._bytes(segment, position, header_size)
            first, count, end = chunk_bounds(buffer, at)
            end += position - at
            if offset < first:
                return None  # not where the index says: never read what is not there
            if offset < first + count:
                buffer, at = self._bytes(segment, position, end - position)
                records = decode(buffer, at)[0]
                if at + end - position >= len(buffer):
                    self._buffer = b""  # used up: hold nothing while waiting
                chunk = Chunk(segment, end, first, records)
                self._follow(chunk)
                return chunk
            position = end  # a chunk before the offset: hop over it
        return None

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
        recent = log.recent
        entries = recent.entries
        log_id = id(log)
        chunk = self._chunk
        unwritten = log.unwritten
        while len(records) < max_records and offset < end_offset:
            if chunk is not None:
                at = offset - chunk.first_offset
                chunk_records = chunk.records
                if 0 <= at < len(chunk_records):
                    records.append(chunk_records[at])
                    offset += 1
                    continue
            hit = entries.get((log_id, offset))
            if hit is not None:  # another cursor decoded its chunk: no read, no decode
                chunk = hit[2]
                self._follow(chunk)
                continue
            if unwritten.records and offset >= unwritten.first_offset:
                chunk = unwritten  # appended since the last flush: read from memory
                self._follow(chunk)
            else:
                chunk = self._find(offset)
            if chunk is None:
                break
            if log.share_left > 0:
                # The whole chunk at once: a cursor that gets ahead of this one inside it
                # takes it too, instead of decoding its own copy (and then not sharing).
                # Of the unwritten records, those from here on: the others were offered
                # when they were read (the list grows with every append).
                start = offset - chunk.first_offset if chunk.segment is None else 0
                kept = chunk.records[start:start + log.share_left]
                log.share_left -= len(kept)
                for record in kept:
                    recent.put(log, record, chunk)
        if chunk is not None and offset - chunk.first_offset >= len(chunk.records):
            chunk = None  # used up: a cursor that has caught up holds no records
        self._chunk = chunk
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
