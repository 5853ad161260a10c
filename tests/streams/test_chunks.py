"""The chunked segment format (amqpd.streams.chunks) through the log that writes it.

Hypothesis: any sequence of appends, flushes, segment rolls and reopenings reads back equal
from every offset and every timestamp; a file cut at any byte recovers exactly the records of
the complete chunks before the cut; a garbled byte inside a chunk cuts from that chunk on.
Segments written by the first format (a 24-byte header per record) open and are converted.
"""

from __future__ import annotations

import os
import struct
import tempfile
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import commands

from amqpd.broker.message import Message, route_for
from amqpd.protocol import codec
from amqpd.streams import content, legacy
from amqpd.streams.chunks import FILE_MAGIC, scan, shared_prefix
from amqpd.streams.log import FLUSH_AT, INDEX_ENTRY, Cursor, RecentRecords, SegmentLog

START_MS = 1_000_000_000

# Payloads that often share a prefix (as stream messages with the same metadata do).
payloads = st.tuples(
    st.sampled_from([b"", b"meta-a|", b"meta-bb|", b"meta-a|\x00\x01"]),
    st.binary(max_size=40),
).map(lambda parts: parts[0] + parts[1])

steps = st.lists(
    st.one_of(
        st.tuples(st.just("append"), payloads, st.integers(0, 300_000)),
        st.tuples(st.just("flush"), st.just(b""), st.just(0)),
        st.tuples(st.just("reopen"), st.just(b""), st.just(0)),
    ),
    max_size=50,
)


def _build(path: Path, ops: list[tuple[str, bytes, int]], segment_bytes: int,
           ) -> tuple[SegmentLog, list[bytes], list[int]]:
    """Run ``ops`` on a log in ``path``; the log, and the payloads and timestamps appended."""
    log = SegmentLog(path, max_segment_bytes=segment_bytes, recent=RecentRecords(0))
    model: list[bytes] = []
    times: list[int] = []
    now = START_MS
    for op, payload, delta in ops:
        if op == "append":
            now += delta
            assert log.append(payload, now) == len(model)
            model.append(payload)
            times.append(now)
        elif op == "flush":
            log.flush()
        else:
            log.close()
            log = SegmentLog(path, max_segment_bytes=segment_bytes, recent=RecentRecords(0))
    return log, model, times


@settings(max_examples=60, deadline=None)
@given(steps, st.integers(60, 600), st.integers(1, 7))
def test_reads_back_from_any_offset_and_time(
    ops: list[tuple[str, bytes, int]], segment_bytes: int, step: int,
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        log, model, times = _build(Path(directory), ops, segment_bytes)
        assert log.next_offset == len(model)
        for start in range(len(model) + 1):
            got = log.read(start, len(model))
            assert [r.offset for r in got] == list(range(start, len(model)))
            assert [r.payload for r in got] == model[start:]
            assert [r.timestamp_ms for r in got] == times[start:]
            cursor = Cursor(log, start)  # a cursor reading a few at a time
            stepped = []
            while records := cursor.read(step):
                stepped += [r.payload for r in records]
            assert stepped == model[start:]
        for moment in {START_MS - 1, *times, *(t + 1 for t in times)}:
            expected = next((i for i, t in enumerate(times) if t >= moment), len(model))
            assert log.offset_at_time(moment) == expected
        log.close()


def _chunk_ends(data: bytes) -> list[tuple[int, int]]:
    """(end position, records up to there) of each chunk of a complete segment file."""
    chunks, end = scan(data, len(FILE_MAGIC), 0)
    assert end == len(data)
    ends = []
    for number, (first, _, _, count) in enumerate(chunks):
        chunk_end = chunks[number + 1][1] if number + 1 < len(chunks) else end
        ends.append((chunk_end, first + count))
    return ends


one_segment = st.lists(
    st.one_of(
        st.tuples(st.just("append"), payloads, st.integers(0, 300_000)),
        st.tuples(st.just("flush"), st.just(b""), st.just(0)),
    ),
    min_size=1, max_size=40,
)


def _one_segment_file(path: Path, ops: list[tuple[str, bytes, int]],
                      ) -> tuple[list[bytes], list[int], Path]:
    """Run ``ops`` on a log of one segment and close it: the payloads and timestamps
    appended, and the segment file."""
    log, model, times = _build(path, ops, 1 << 30)
    log.close()
    return model, times, path / f"{0:020d}.seg"


@settings(max_examples=80, deadline=None)
@given(one_segment, st.data())
def test_a_cut_at_any_byte_keeps_the_complete_chunks_before_it(
    ops: list[tuple[str, bytes, int]], data: st.DataObject,
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory)
        model, times, segment = _one_segment_file(path, ops)
        whole = segment.read_bytes()
        cut = data.draw(st.integers(0, len(whole)), label="cut")
        segment.write_bytes(whole[:cut])
        kept = max([records for end, records in _chunk_ends(whole) if end <= cut], default=0)
        log = SegmentLog(path, recent=RecentRecords(0))
        assert log.next_offset == kept
        assert [r.payload for r in log.read(0, len(model))] == model[:kept]
        assert [r.timestamp_ms for r in log.read(0, len(model))] == times[:kept]
        # Appends go on at the cut.
        assert log.append(b"after", times[-1] if times else START_MS) == kept
        log.close()
        log = SegmentLog(path, recent=RecentRecords(0))
        assert [r.payload for r in log.read(0, kept + 1)] == [*model[:kept], b"after"]
        log.close()


@settings(max_examples=80, deadline=None)
@given(one_segment, st.data())
def test_a_garbled_byte_cuts_from_its_chunk_on(
    ops: list[tuple[str, bytes, int]], data: st.DataObject,
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory)
        model, _, segment = _one_segment_file(path, ops)
        whole = bytearray(segment.read_bytes())
        if len(whole) == len(FILE_MAGIC):
            return  # no chunk to garble
        at = data.draw(st.integers(len(FILE_MAGIC), len(whole) - 1), label="at")
        whole[at] ^= data.draw(st.integers(1, 255), label="xor")
        ends = _chunk_ends(bytes(segment.read_bytes()))
        kept = max([records for end, records in ends if end <= at], default=0)
        segment.write_bytes(bytes(whole))
        log = SegmentLog(path, recent=RecentRecords(0))
        assert log.next_offset == kept
        assert [r.payload for r in log.read(0, len(model))] == model[:kept]
        assert os.path.getsize(segment) == max([e for e, _ in ends if e <= at],
                                               default=len(FILE_MAGIC))
        log.close()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=30), st.binary(max_size=30), st.integers(0, 40))
def test_shared_prefix_is_the_longest_common_prefix(a: bytes, b: bytes, guess: int) -> None:
    expected = 0
    while expected < min(len(a), len(b)) and a[expected] == b[expected]:
        expected += 1
    assert shared_prefix(a, b, guess) == expected


def test_records_with_the_same_metadata_cost_a_few_bytes(tmp_path: Path) -> None:
    """The footprint goal: 256-byte bodies of different content (and some of other sizes)
    with the same exchange, routing key and properties, flushed every 100 records."""
    log = SegmentLog(tmp_path)
    properties = commands.Basic.Properties(delivery_mode=2, headers={"source": "orders"})
    bodies = [os.urandom(256 if i % 10 else 200) for i in range(2000)]
    for number, body in enumerate(bodies):
        header = codec.encode_header_payload(len(body), properties)
        log.append(content.encode(Message(route_for("", "orders.events"), header, body)))
        if number % 100 == 99:
            log.flush()
    log.close()
    on_disk = sum(f.stat().st_size for f in tmp_path.iterdir())
    assert on_disk / sum(map(len, bodies)) < 1.03
    records = SegmentLog(tmp_path).read(0, 2000)
    for record, body in zip(records, bodies, strict=True):
        message = content.StoredMessage(record.payload).message
        assert message.body == body
        assert message.header_payload == codec.encode_header_payload(len(body), properties)


def test_large_records_are_stored_whole(tmp_path: Path) -> None:
    """A payload of 64 KiB or more shares no prefix: it is one slice of the read."""
    log = SegmentLog(tmp_path)
    small = b"prefix" + b"s" * 100
    big = b"prefix" + os.urandom(1 << 20)
    for payload in (small, big, small, big + b"!", small):
        log.append(payload)
    log.close()
    data = (tmp_path / f"{0:020d}.seg").read_bytes()
    assert big in data and big + b"!" in data
    log = SegmentLog(tmp_path)
    assert [r.payload for r in log.read(0, 5)] == [small, big, small, big + b"!", small]
    assert [r.payload for r in log.read(3, 1)] == [big + b"!"]


def test_a_caught_up_cursor_holds_no_records(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path, recent=RecentRecords(0))
    for i in range(500):
        log.append(b"record %d" % i)
    cursor = Cursor(log, 0)
    assert len(cursor.read(100)) == 100
    held = [cursor._chunk]  # in the middle of a chunk: it keeps it
    while cursor.read(100):
        pass
    held.append(cursor._chunk)
    assert held[0] is not None and held[1] is None
    assert cursor._buffer == b""


# -- the first format --------------------------------------------------------------------


def _first_format(records: list[tuple[int, bytes]], first_offset: int) -> tuple[bytes, bytes]:
    """A segment file and its index as the first format wrote them (an index entry for the
    first record only)."""
    out = bytearray()
    for number, (timestamp, payload) in enumerate(records):
        offset = first_offset + number
        crc = zlib.crc32(payload, zlib.crc32(struct.pack("<qq", offset, timestamp)))
        out += struct.pack("<IIqq", len(payload), crc, offset, timestamp) + payload
    index = INDEX_ENTRY.pack(first_offset, 0, records[0][0]) if records else b""
    return bytes(out), index


def test_first_format_segments_are_converted(tmp_path: Path) -> None:
    first = [(START_MS + i, b"old %d" % i) for i in range(5)]
    second = [(START_MS + 10 + i, b"older %d" % i) for i in range(4)]
    for records, offset, torn in ((first, 0, b""), (second, 5, b"\x10\x00\x00")):
        data, index = _first_format(records, offset)
        (tmp_path / f"{offset:020d}.seg").write_bytes(data + torn)  # the last one torn
        (tmp_path / f"{offset:020d}.idx").write_bytes(index)
    # A conversion interrupted before its rename left its new file behind.
    (tmp_path / f"{5:020d}.seg.converting").write_bytes(b"half written")
    log = SegmentLog(tmp_path, recent=RecentRecords(0))
    expected = first + second
    got = log.read(0, 20)
    assert [(r.timestamp_ms, r.payload) for r in got] == expected
    assert [r.offset for r in got] == list(range(9))
    assert log.offset_at_time(START_MS + 11) == 6
    assert len(log.segments) == 2
    for segment in tmp_path.glob("*.seg"):
        assert segment.read_bytes().startswith(FILE_MAGIC)
    assert not list(tmp_path.glob("*.converting"))
    assert log.append(b"new", START_MS + 20) == 9
    log.close()
    log = SegmentLog(tmp_path, recent=RecentRecords(0))
    assert [r.payload for r in log.read(3, 10)] == [p for _, p in expected[3:]] + [b"new"]
    log.close()


def test_a_large_first_format_segment_is_converted_piece_by_piece(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The conversion streams: new chunks go to the file every WRITE_EVERY bytes."""
    monkeypatch.setattr(legacy, "WRITE_EVERY", 4096)
    records = [(START_MS + i // 10, os.urandom(100 + i % 50)) for i in range(3000)]
    data, index = _first_format(records, 0)
    (tmp_path / f"{0:020d}.seg").write_bytes(data)
    (tmp_path / f"{0:020d}.idx").write_bytes(index)
    log = SegmentLog(tmp_path, recent=RecentRecords(0))
    assert [(r.timestamp_ms, r.payload) for r in log.read(0, 5000)] == records
    assert [r.offset for r in log.read(2990, 20)] == list(range(2990, 3000))
    log.close()


def test_first_format_payloads_still_decode() -> None:
    """Payloads written before the body size was left out of the stored content header."""
    body = b"an old body"
    header = codec.encode_header_payload(len(body), commands.Basic.Properties(
        content_type="text/plain", headers={"k": "v"}))
    old = struct.pack(">BBHI", 0, 6, 0xFFFF, len(header)) + b"orders" + header + body
    message = content.StoredMessage(old).message
    assert (message.routing_key, message.header_payload, message.body) == \
        ("orders", header, body)
    new = content.encode(Message(route_for("", "orders"), header, body))
    assert len(new) == len(old) - 8
    assert content.StoredMessage(new).message.header_payload == header


def test_messages_of_other_sizes_share_their_metadata() -> None:
    properties = commands.Basic.Properties(content_type="application/json", priority=3)

    def encoded(body: bytes) -> bytes:
        header = codec.encode_header_payload(len(body), properties)
        return content.encode(Message(route_for("amq.topic", "eu.orders"), header, body))

    short, long = encoded(b"[1]"), encoded(b"{\"id\": 12345}")
    assert shared_prefix(short, long, 0) == len(short) - 3  # everything but the body


tail_steps = st.lists(
    st.one_of(
        st.tuples(st.just("append"), payloads, st.integers(0, 2)),
        st.tuples(st.just("flush"), st.just(b""), st.just(0)),
        st.tuples(st.just("read"), st.just(b""), st.integers(0, 1)),  # which cursor
    ),
    max_size=60,
)


@settings(max_examples=80, deadline=None)
@given(tail_steps, st.integers(60, 400), st.integers(1, 5), st.sampled_from([0, 1 << 20]))
def test_cursors_reading_as_records_arrive(
    ops: list[tuple[str, bytes, int]], segment_bytes: int, step: int, recent_budget: int,
) -> None:
    """Cursors that keep up read what was appended since the last flush from memory, share
    it (or not) through the recent records, and continue in the file after flushes and
    segment rolls: each reads every record once, in order."""
    with tempfile.TemporaryDirectory() as directory:
        log = SegmentLog(Path(directory), max_segment_bytes=segment_bytes,
                         recent=RecentRecords(recent_budget))
        model: list[bytes] = []
        cursors = [Cursor(log, 0), Cursor(log, 0)]
        seen: list[list[bytes]] = [[], []]
        now = START_MS
        for op, payload, value in ops:
            if op == "append":
                now += value
                log.append(payload, now)
                model.append(payload)
            elif op == "flush":
                log.flush()
            else:
                seen[value] += [r.payload for r in cursors[value].read(step)]
        for number, cursor in enumerate(cursors):
            while records := cursor.read(step):
                seen[number] += [r.payload for r in records]
            assert seen[number] == model
        log.close()


def test_a_reader_that_keeps_up_leaves_chunks_to_the_flush(tmp_path: Path) -> None:
    """Reading each record as it is appended writes nothing early: the records of a flush
    interval are one chunk, not a chunk each."""
    log = SegmentLog(tmp_path, recent=RecentRecords(0))
    cursor = Cursor(log, 0)
    for number in range(100):
        log.append(b"same metadata|" + number.to_bytes(2, "big"), START_MS + number)
        assert [r.offset for r in cursor.read(10)] == [number]
    assert (tmp_path / f"{0:020d}.seg").stat().st_size == len(FILE_MAGIC)  # nothing written
    log.flush()
    data = (tmp_path / f"{0:020d}.seg").read_bytes()
    chunks, end = scan(data, len(FILE_MAGIC), 0)
    assert [count for _, _, _, count in chunks] == [100] and end == len(data)
    log.close()


def test_unwritten_records_are_bounded_in_memory(tmp_path: Path) -> None:
    """Payloads that encode to a few bytes each (identical ones) are still written once
    they hold FLUSH_AT bytes of memory."""
    log = SegmentLog(tmp_path, recent=RecentRecords(0))
    payload = bytes(4096)
    for _ in range(1000):
        log.append(payload, START_MS)
        assert len(log.unwritten.records) * len(payload) <= FLUSH_AT
    log.close()
