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
    frames = []
    for chunk in chunks:
        reader.feed(chunk)
        frames.extend(reader.frames())
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
