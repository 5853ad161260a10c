"""FrameReader: splitting, re-chunking and every framing error."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pamqp import commands, frame

from amqpd.protocol.errors import FrameError
from amqpd.protocol.framing import FrameReader

STREAM = b"".join(
    [
        frame.marshal(commands.Channel.Open(), 1),
        frame.marshal(commands.Basic.Publish(exchange="x", routing_key="k"), 1),
        b"\x08\x00\x00\x00\x00\x00\x00\xce",
        frame.marshal(commands.Queue.Declare(queue="q"), 2),
    ]
)


def split_all(reader: FrameReader, chunks: list[bytes]) -> list[tuple[int, int, bytes]]:
    """The frames, with the pieces of a body frame spread over reads joined back (adjacent
    body frames of one channel are joined too: the test streams have none)."""
    frames: list[tuple[int, int, bytes]] = []
    for chunk in chunks:
        reader.feed(chunk)
        for frame_type, channel, payload in reader.frames():
            if frame_type == 3 and frames and frames[-1][:2] == (3, channel):
                frames[-1] = (3, channel, frames[-1][2] + bytes(payload))
            else:
                frames.append((frame_type, channel, bytes(payload)))
    return frames


def test_whole_stream() -> None:
    frames = split_all(FrameReader(131072), [STREAM])
    assert [(t, c) for t, c, _ in frames] == [(1, 1), (1, 1), (8, 0), (1, 2)]


def test_byte_at_a_time_gives_the_same_frames() -> None:
    whole = split_all(FrameReader(131072), [STREAM])
    one_by_one = split_all(FrameReader(131072), [bytes([b]) for b in STREAM])
    assert whole == one_by_one


@given(st.lists(st.integers(0, len(STREAM)), max_size=10))
def test_any_rechunking_gives_the_same_frames(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    chunks = [STREAM[a:b] for a, b in zip([0, *points], [*points, len(STREAM)], strict=True)]
    assert split_all(FrameReader(131072), chunks) == split_all(FrameReader(131072), [STREAM])


def test_bad_frame_end() -> None:
    data = bytearray(frame.marshal(commands.Channel.Open(), 1))
    data[-1] = 0x00
    reader = FrameReader(131072)
    reader.feed(bytes(data))
    with pytest.raises(FrameError) as info:
        list(reader.frames())
    assert info.value.reply_code == 501
    assert "frame-end" in info.value.detail


def test_seven_byte_heartbeat_waits_for_the_end_octet() -> None:
    reader = FrameReader(131072)
    reader.feed(b"\x08\x00\x00\x00\x00\x00\x00")
    assert list(reader.frames()) == []
    reader.feed(b"\xce")
    assert list(reader.frames()) == [(8, 0, b"")]


def test_oversize_frame() -> None:
    reader = FrameReader(4096)
    reader.feed(b"\x03\x00\x01\x00\x00\x10\x01")
    with pytest.raises(FrameError) as info:
        list(reader.frames())
    assert "frame_max" in info.value.detail


def test_unknown_frame_type() -> None:
    reader = FrameReader(4096)
    reader.feed(b"\x05\x00\x01\x00\x00\x00\x00\xce")
    with pytest.raises(FrameError):
        list(reader.frames())


@given(st.binary(max_size=2000))
def test_garbage_raises_only_frame_errors(data: bytes) -> None:
    reader = FrameReader(4096)
    reader.feed(data)
    with contextlib.suppress(FrameError):
        list(reader.frames())


BIG_STREAM = b"".join(
    [
        frame.marshal(commands.Basic.Publish(exchange="", routing_key="q"), 1),
        b"\x03\x00\x01\x00\x00\x13\x88" + bytes(range(256)) * 19 + bytes(136) + b"\xce",
        b"\x08\x00\x00\x00\x00\x00\x00\xce",
        b"\x03\x00\x02\x00\x00\x00\x05hello\xce",
        b"\x03\x00\x01\x00\x00\x0f\xa0" + b"\xab" * 4000 + b"\xce",
    ]
)


@given(st.lists(st.integers(0, len(BIG_STREAM)), max_size=30))
def test_frames_larger_than_a_read_come_out_whole(cuts: list[int]) -> None:
    """Frames split over many reads (collected, then joined once, or handed out in pieces
    if they are body frames) equal the unsplit ones."""
    points = sorted(set(cuts))
    chunks = [BIG_STREAM[a:b] for a, b in zip([0, *points], [*points, len(BIG_STREAM)],
                                              strict=True)]
    reader = FrameReader(131072)
    assert split_all(reader, chunks) == split_all(FrameReader(131072), [BIG_STREAM])
    assert reader.buffered == 0
    assert [len(payload) for _, _, payload in split_all(FrameReader(131072), chunks)] == [
        len(frame.marshal(commands.Basic.Publish(exchange="", routing_key="q"), 1)) - 8,
        5000, 0, 5, 4000,
    ]


@given(st.integers(1, 5007), st.integers(0, 5007))
def test_buffered_counts_a_frame_being_collected(first_cut: int, second_cut: int) -> None:
    body_frame = b"\x03\x00\x01\x00\x00\x13\x88" + b"\x01" * 5000 + b"\xce"
    cuts = sorted({first_cut, max(first_cut, second_cut)})
    reader = FrameReader(131072)
    fed = 0
    for end in cuts:
        reader.feed(body_frame[fed:end])
        fed = end
        assert list(reader.frames()) == []
        assert reader.buffered == fed
        # once its header is in, the frame's size is known (the shell reads more at once)
        assert reader.pending_frame_size == (len(body_frame) if fed >= 7 else 0)
    reader.feed(body_frame[fed:])
    assert b"".join(payload for _, _, payload in reader.frames()) == b"\x01" * 5000


def test_bad_frame_end_of_a_frame_spread_over_reads() -> None:
    reader = FrameReader(131072)
    reader.feed(b"\x03\x00\x01\x00\x00\x03\xe8" + b"x" * 500)
    assert list(reader.frames()) == []
    reader.feed(b"y" * 500)
    reader.feed(b"\x00\x08\x00\x00\x00\x00\x00\x00\xce")
    with pytest.raises(FrameError) as info:
        list(reader.frames())
    assert "frame-end" in info.value.detail


def test_a_large_body_frame_in_one_read_is_a_view_of_it() -> None:
    body = bytes(range(256)) * 256
    read = b"\x03\x00\x01" + len(body).to_bytes(4, "big") + body + b"\xce"
    reader = FrameReader(131072)
    reader.feed(read)
    [(frame_type, channel, payload)] = reader.frames()
    assert (frame_type, channel) == (3, 1)
    assert isinstance(payload, memoryview) and payload.obj is read
    assert payload == body


def test_small_frames_are_bytes() -> None:
    reader = FrameReader(131072)
    reader.feed(b"\x03\x00\x01\x00\x00\x00\x05hello\xce" + STREAM)
    assert all(type(payload) is bytes for _, _, payload in reader.frames())


def test_a_body_frame_over_reads_comes_out_in_pieces_of_the_reads_without_a_copy() -> None:
    body = b"a" * 50000 + b"b" * 50000 + b"c" * 50000
    stream = b"\x03\x00\x01" + len(body).to_bytes(4, "big") + body + b"\xce"
    reads = [stream[:50007], stream[50007:100007], stream[100007:] + STREAM]
    reader = FrameReader(262144)
    pieces: list[tuple[int, int, bytes | memoryview]] = []
    for read in reads:
        reader.feed(read)
        pieces.extend(reader.frames())
    body_pieces = [payload for frame_type, _, payload in pieces if frame_type == 3]
    assert [bytes(piece) for piece in body_pieces] == [b"a" * 50000, b"b" * 50000, b"c" * 50000]
    # each piece is (a view of) one of the reads, kept alive by it: nothing was copied
    assert body_pieces[1] is reads[1]
    assert isinstance(body_pieces[2], memoryview) and body_pieces[2].obj is reads[2]
    assert [frame_type for frame_type, _, _ in pieces[3:]] == [1, 1, 8, 1]


def test_no_piece_of_a_body_frame_before_its_frame_end_is_checked() -> None:
    reader = FrameReader(131072)
    reader.feed(b"\x03\x00\x01\x00\x00\x4e\x20" + b"x" * 10000)
    assert list(reader.frames()) == []
    reader.feed(b"y" * 10000 + b"\x00")
    pieces = reader.frames()
    with pytest.raises(FrameError):
        next(pieces)


def test_small_pieces_of_a_body_frame_are_copied_so_they_do_not_pin_their_reads() -> None:
    body = bytes(range(100))
    first_read = (
        b"\x03\x00\x02" + (30000 - 8).to_bytes(4, "big") + bytes(30000 - 8) + b"\xce"
        + b"\x03\x00\x01\x00\x00\x00\x64" + body[:60]
    )
    reader = FrameReader(131072)
    reader.feed(first_read)
    assert [channel for _, channel, _ in reader.frames()] == [2]
    reader.feed(body[60:] + b"\xce")
    pieces = [payload for _, _, payload in reader.frames()]
    assert pieces == [body[:60], body[60:]]
    assert all(type(piece) is bytes for piece in pieces)
