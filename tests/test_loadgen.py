"""The benchmark generator's own encoders (interop/loadgen.py) against pamqp's decoder:
a benchmark that sent malformed frames would measure the broker's error path."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from pamqp import commands, frame

from interop import loadgen


@given(size=st.integers(min_value=0, max_value=3 * loadgen.BODY_FRAME_MAX + 7))
def test_encode_publish_splits_large_bodies_into_valid_frames(size: int) -> None:
    body = bytes(i % 251 for i in range(size))
    data = loadgen.encode_publish("ex", "rk", body)
    decoded = []
    while data:
        consumed, channel, value = frame.unmarshal(data)
        assert channel == 1
        decoded.append(value)
        data = data[consumed:]
    assert isinstance(decoded[0], commands.Basic.Publish)
    assert decoded[1].body_size == size
    bodies = decoded[2:]
    assert all(len(b.value) <= loadgen.BODY_FRAME_MAX for b in bodies)
    assert b"".join(b.value for b in bodies) == body
