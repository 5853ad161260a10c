"""A connection's output with large bodies by reference (session/output.py): the bytes on the
wire are those pamqp would marshal, and the watermarks count every queued byte."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import commands, frame
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from amqpd.session.output import LARGE_BODY

from .amqp_client import Peer, decode_all

FRAME_MAX = 131072
CHUNK = FRAME_MAX - 8


def publish_frames(body: bytes, routing_key: str = "q") -> bytes:
    """basic.publish, the header and the body in frames of at most FRAME_MAX."""
    frames: list[Any] = [
        commands.Basic.Publish(exchange="", routing_key=routing_key),
        ContentHeader(0, len(body), commands.Basic.Properties(content_type="x")),
    ]
    frames += [ContentBody(body[start : start + CHUNK]) for start in range(0, len(body), CHUNK)]
    return b"".join(frame.marshal(f, 1) for f in frames)


def consuming_peer() -> Peer:
    peer = Peer()
    peer.handshake()
    peer.open_channel()
    peer.send(1, commands.Queue.Declare(queue="q"))
    peer.send(1, commands.Basic.Consume(queue="q", consumer_tag="c", no_ack=True))
    return peer


def expected_delivery(body: bytes, delivery_tag: int) -> bytes:
    frames: list[Any] = [
        commands.Basic.Deliver("c", delivery_tag, False, "", "q"),
        ContentHeader(0, len(body), commands.Basic.Properties(content_type="x")),
    ]
    frames += [ContentBody(body[start : start + CHUNK]) for start in range(0, len(body), CHUNK)]
    return b"".join(frame.marshal(f, 1) for f in frames)


SIZES = [1, LARGE_BODY - 1, LARGE_BODY, 65536, CHUNK, CHUNK + 1, 3 * CHUNK + 5, 1024 * 1024]


@pytest.mark.parametrize("size", SIZES)
def test_large_and_small_bodies_leave_as_pamqp_marshals_them(size: int) -> None:
    peer = consuming_peer()
    peer.connection.high_watermark = 1 << 30  # all three at once, none held back
    bodies = [bytes([index]) * size for index in range(1, 4)]
    peer.connection.data_received(b"".join(publish_frames(body) for body in bodies))
    sent = peer.connection.data_to_send()
    assert sent == b"".join(expected_delivery(body, tag)
                            for tag, body in enumerate(bodies, start=1))


def test_a_large_body_is_a_buffer_of_its_own_and_small_frames_share_one() -> None:
    peer = consuming_peer()
    body = b"\x07" * 65536
    peer.connection.data_received(publish_frames(body) + publish_frames(b"small"))
    buffers, size = peer.connection.buffers_to_send()
    assert size == sum(len(buffer) for buffer in buffers)
    # deliver + header + body-frame start | the body | frame-end, second delivery
    assert len(buffers) == 3
    assert isinstance(buffers[1], bytes) and buffers[1] == body
    assert decode_all(b"".join(buffers))[-1][1].value == b"small"
    assert peer.connection.buffers_to_send() == ([], 0)
    assert not peer.connection.has_output


def test_the_watermarks_count_queued_large_bodies_and_bytes_in_flight() -> None:
    peer = consuming_peer()
    connection = peer.connection
    connection.high_watermark = 3 * 65536
    connection.low_watermark = 65536
    for _ in range(3):
        connection.data_received(publish_frames(b"\x01" * 65536))
    assert connection.queued > 3 * 65536
    assert connection.congested
    buffers, connection.in_flight = connection.buffers_to_send()
    assert connection.queued == 0
    assert connection.congested  # taken by the shell, not written yet
    connection.in_flight = 0
    assert connection.below_low_watermark
    assert b"".join(buffers).count(b"\x01" * 65536) == 3


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 3 * CHUNK), max_size=12))
def test_a_large_publish_read_in_any_pieces_is_delivered_whole(cuts: list[int]) -> None:
    peer = consuming_peer()
    body = bytes(range(256)) * 1000 + b"tail"
    stream = publish_frames(body) + publish_frames(b"after")
    points = sorted({min(cut, len(stream)) for cut in cuts})
    for start, end in zip([0, *points], [*points, len(stream)], strict=True):
        peer.connection.data_received(stream[start:end])
    assert peer.connection.data_to_send() == (
        expected_delivery(body, 1) + expected_delivery(b"after", 2)
    )
