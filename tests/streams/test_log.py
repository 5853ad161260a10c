"""The segment log (amqpd.streams.log): append, read, time index, roll, retention, recovery.

Hypothesis drives random operations against a list model; the file-level cases cover what a
crash leaves behind (a torn chunk, a garbled tail, a truncated index). The chunk format
itself, cuts at any byte and old-format segments are in test_chunks.py.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from amqpd.streams.chunks import CHUNK_HEADER, FILE_MAGIC
from amqpd.streams.log import INDEX_ENTRY, Cursor, SegmentLog


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_append_and_read(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path, max_segment_bytes=200)
    offsets = [log.append(b"m%d" % i * 10) for i in range(50)]
    assert offsets == list(range(50))
    assert len(log.segments) > 5
    records = log.read(0, 100)
    assert [r.payload for r in records] == [b"m%d" % i * 10 for i in range(50)]
    assert [r.offset for r in log.read(17, 3)] == [17, 18, 19]
    assert log.read(50, 10) == []
    assert [r.offset for r in log.read(-5, 1)] == [0]  # below the log: its start


def test_cursor_follows_appends_and_segments(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path, max_segment_bytes=100)
    cursor = Cursor(log, 0)
    seen = []
    for i in range(40):
        log.append(bytes([i]) * (i % 7))
        if i % 3 == 0:
            seen += [r.offset for r in cursor.read(2)]
    while records := cursor.read(5):
        seen += [r.offset for r in records]
    assert seen == list(range(40))
    assert cursor.at_end


def test_large_records_and_index(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path)
    big = os.urandom(300_000)  # larger than a read chunk
    for i in range(30):
        log.append(big if i % 10 == 5 else b"x" * 10_000)
    log.close()
    log = SegmentLog(tmp_path)
    assert log.read(5, 1)[0].payload == big
    assert [r.offset for r in log.read(21, 3)] == [21, 22, 23]
    assert len(log.segments[0].index_offsets) > 3  # sparse, not one entry per record


def test_time_index(tmp_path: Path) -> None:
    clock = Clock()
    log = SegmentLog(tmp_path, max_segment_bytes=300, clock=clock)
    for _ in range(60):
        log.append(b"y" * 20)
        clock.now += 1
    start_ms = 1_000_000_000
    assert log.offset_at_time(0) == 0
    assert log.offset_at_time(start_ms + 25_000) == 25
    assert log.offset_at_time(start_ms + 25_500) == 26
    assert log.offset_at_time(start_ms + 10**9) == 60
    log.close()
    assert SegmentLog(tmp_path, clock=clock).offset_at_time(start_ms + 41_000) == 41


def test_retention_by_bytes_keeps_whole_segments(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path, max_segment_bytes=1000, max_bytes=3000)
    for i in range(200):
        # No prefix shared with the record before: 3 varint bytes + 76, one chunk header per
        # segment (nothing flushes), so 12 records a segment: (1000 - 8 - 30) // 79.
        log.append(bytes([i % 256]) + b"z" * 75)
    # Checked when a segment rolls (as RabbitMQ): at most one active segment over the limit.
    assert log.total_bytes <= 3000 + 1000
    assert log.total_bytes - log.active.size <= 3000
    assert log.first_offset % 12 == 0 and log.first_offset > 0
    assert log.next_offset == 200
    assert [r.offset for r in log.read(0, 1)] == [log.first_offset]
    assert len(list(tmp_path.glob("*.seg"))) == len(log.segments)


def test_retention_by_age_never_drops_the_active_segment(tmp_path: Path) -> None:
    clock = Clock()
    log = SegmentLog(tmp_path, max_segment_bytes=500, max_age_ms=10_000, clock=clock)
    for _ in range(20):
        log.append(b"a" * 76)
    clock.now += 60
    log.apply_retention()
    assert len(log.segments) == 1
    assert log.next_offset == 20
    log.append(b"b")
    assert log.read(log.first_offset, 100)[-1].payload == b"b"


def test_cursor_in_dropped_segment_moves_to_first(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path, max_segment_bytes=500, max_bytes=1000)
    for i in range(5):
        log.append(bytes([i]) + b"c" * 75)  # nothing shared with the record before
    cursor = Cursor(log, 0)
    assert cursor.read(1)[0].offset == 0
    for i in range(50):
        log.append(bytes([i]) + b"c" * 75)
    assert cursor.read(1)[0].offset == log.first_offset


def test_recovery_cuts_a_torn_tail(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path)
    for i in range(10):
        log.append(b"r%d" % i)
        log.flush()  # a chunk each
    log.close()
    segment = sorted(tmp_path.glob("*.seg"))[-1]
    data = segment.read_bytes()
    segment.write_bytes(data[:-3])  # the last record half written
    log = SegmentLog(tmp_path)
    assert log.next_offset == 9
    assert log.append(b"new") == 9
    log.close()
    log = SegmentLog(tmp_path)
    assert [r.payload for r in log.read(7, 5)] == [b"r7", b"r8", b"new"]


def test_recovery_cuts_garbage_and_bad_checksums(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path)
    for i in range(5):
        log.append(b"g%d" % i)
        log.flush()  # a chunk each: 30 bytes of header, 3 of varints, 2 of payload
    log.close()
    segment = sorted(tmp_path.glob("*.seg"))[-1]
    data = bytearray(segment.read_bytes())
    chunk = CHUNK_HEADER.size + 3 + 2
    assert len(data) == len(FILE_MAGIC) + 5 * chunk
    data[len(FILE_MAGIC) + 4 * chunk - 1] ^= 0xFF  # flip the last payload byte of offset 3
    segment.write_bytes(bytes(data) + b"\x00" * 100)
    log = SegmentLog(tmp_path)
    assert log.next_offset == 3
    index = sorted(tmp_path.glob("*.idx"))[-1]
    assert index.stat().st_size % INDEX_ENTRY.size == 0


def test_recovery_rebuilds_a_missing_index(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path, max_segment_bytes=300)
    for i in range(40):
        log.append(b"i%02d" % i)
    log.close()
    for index in tmp_path.glob("*.idx"):
        index.unlink()
    log = SegmentLog(tmp_path, max_segment_bytes=300)
    assert [r.payload for r in log.read(33, 2)] == [b"i33", b"i34"]
    assert log.next_offset == 40


def test_sync_handles_are_fsyncable(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path)
    log.append(b"s")
    handles = log.sync_handles()
    assert handles
    for handle in handles:
        os.fsync(handle)
        os.close(handle)
    assert log.sync_handles() == []


operations = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.binary(max_size=120)),
        st.tuples(st.just("read"), st.integers(-3, 80), st.integers(0, 12)),
        st.tuples(st.just("reopen")),
        st.tuples(st.just("retain")),
    ),
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(operations, st.integers(60, 400))
def test_matches_a_list_model(ops: list[tuple[object, ...]], segment_bytes: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory)
        log = SegmentLog(path, max_segment_bytes=segment_bytes, max_bytes=segment_bytes * 3)
        model: list[bytes] = []
        first = 0
        for op in ops:
            if op[0] == "append":
                payload = op[1]
                assert isinstance(payload, bytes)
                assert log.append(payload) == len(model)
                model.append(payload)
            elif op[0] == "read":
                start, count = op[1], op[2]
                assert isinstance(start, int) and isinstance(count, int)
                got = log.read(start, count)
                begin = min(max(start, first), len(model))
                expected = list(range(begin, min(begin + count, len(model))))
                assert [r.offset for r in got] == expected
                assert [r.payload for r in got] == [model[o] for o in expected]
            elif op[0] == "reopen":
                log.close()
                log = SegmentLog(path, max_segment_bytes=segment_bytes,
                                 max_bytes=segment_bytes * 3)
            else:
                log.apply_retention()
            assert log.next_offset == len(model)
            assert log.first_offset >= first  # retention only moves the start forward
            first = log.first_offset
            assert log.total_bytes <= segment_bytes * 3 or len(log.segments) == 1 or \
                log.total_bytes - log.segments[0].size <= segment_bytes * 3
        log.close()
