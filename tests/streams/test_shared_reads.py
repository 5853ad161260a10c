"""Cursors taking turns on one log share the records they read (amqpd.streams.log's
RecentRecords) and the decoding of them (amqpd.streams.content's DecodedRecords); a lone
reader keeps nothing. Hypothesis checks that any interleaving of appends, reads by several
cursors, retention and a tiny budget reads exactly what a list model says.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import commands

from amqpd.broker.message import Message, route_for
from amqpd.protocol import codec
from amqpd.streams import content
from amqpd.streams.log import SHARE_WINDOW, Cursor, RecentRecords, SegmentLog


def test_cursors_taking_turns_get_the_same_records(tmp_path: Path) -> None:
    recent = RecentRecords(1 << 20)
    log = SegmentLog(tmp_path, max_segment_bytes=500, recent=recent)
    for i in range(100):
        log.append(b"r%03d" % i * 5)
    first, second = Cursor(log, 0), Cursor(log, 0)
    for _ in range(10):
        ours, theirs = first.read(10), second.read(10)
        assert [r.payload for r in ours] == [r.payload for r in theirs]
        assert all(a is b for a, b in zip(ours, theirs, strict=True))  # read once, shared
    assert second.at_end
    assert recent.size == sum(len(b"r%03d" % i * 5) for i in range(100))


def test_a_lone_reader_keeps_at_most_a_window(tmp_path: Path) -> None:
    recent = RecentRecords(1 << 30)
    log = SegmentLog(tmp_path, recent=recent)
    for _ in range(SHARE_WINDOW + 500):
        log.append(b"x" * 10)
    cursor = Cursor(log, 0)
    while cursor.read(100):
        pass
    assert len(recent.entries) == SHARE_WINDOW
    log.close()
    assert not recent.entries and not recent.payload_ids and recent.size == 0


def test_budget_and_dropped_segments(tmp_path: Path) -> None:
    recent = RecentRecords(1000)
    log = SegmentLog(tmp_path, max_segment_bytes=400, max_bytes=800, recent=recent)
    cursors = [Cursor(log, 0), Cursor(log, 0)]
    for i in range(40):
        log.append(bytes([i]) * 50)
        for cursor in cursors:
            assert [r.payload for r in cursor.read(5)] == [bytes([i]) * 50]
        assert recent.size <= 1000
    assert log.dropped_segments
    assert all(offset >= log.first_offset for _, offset in recent.entries)


def _payload(body: bytes) -> bytes:
    header = codec.encode_header_payload(len(body), commands.Basic.Properties(headers={"k": "v"}))
    return content.encode(Message(route_for("", "orders"), header, body))


def test_shared_payloads_are_decoded_once(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path)
    for i in range(3):
        log.append(_payload(b"body%d" % i))
    first, second = Cursor(log, 0), Cursor(log, 0)
    ours, theirs = first.read(3), second.read(3)
    for mine, other in zip(ours, theirs, strict=True):
        a, b = content.StoredMessage(mine.payload), content.StoredMessage(other.payload)
        assert a.message is b.message
        delivered = content.with_offset(a.message, mine.offset)
        assert content.with_offset(b.message, mine.offset) is delivered
        assert codec.decode_properties(delivered.header_payload).headers == {
            "k": "v", "x-stream-offset": mine.offset}
        assert delivered.body == b"body%d" % mine.offset
    # The same message at another offset (a cache entry is per message): spliced afresh.
    other = content.with_offset(content.StoredMessage(ours[0].payload).message, 7)
    assert codec.decode_properties(other.header_payload).headers["x-stream-offset"] == 7


def test_unshared_payloads_are_not_kept() -> None:
    before = len(content.DECODED.by_payload)
    stored = content.StoredMessage(_payload(b"alone"))
    assert len(content.DECODED.by_payload) == before
    assert content.with_offset(stored.message, 3).body == b"alone"


steps = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(0, 3), st.binary(max_size=60)),
        st.tuples(st.just("read"), st.integers(0, 3), st.integers(0, 9)),
        st.tuples(st.just("retain"), st.just(0), st.just(0)),
    ),
    max_size=80,
)


@settings(max_examples=80, deadline=None)
@given(steps, st.integers(60, 300), st.integers(0, 400))
def test_any_interleaving_reads_what_a_list_model_says(
    ops: list[tuple[str, int, object]], segment_bytes: int, budget: int,
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        log = SegmentLog(Path(directory), max_segment_bytes=segment_bytes,
                         max_bytes=segment_bytes * 2, recent=RecentRecords(budget))
        model: list[bytes] = []
        cursors = [Cursor(log, 0) for _ in range(4)]
        positions = [0] * 4
        for op, which, argument in ops:
            if op == "append":
                assert isinstance(argument, bytes)
                log.append(argument * (which + 1))
                model.append(argument * (which + 1))
            elif op == "read":
                assert isinstance(argument, int)
                start = max(positions[which], log.first_offset)
                got = cursors[which].read(argument)
                expected = list(range(start, min(start + argument, len(model))))
                assert [r.offset for r in got] == expected
                assert [r.payload for r in got] == [model[o] for o in expected]
                positions[which] = expected[-1] + 1 if expected else start
            else:
                log.apply_retention()
        log.close()
