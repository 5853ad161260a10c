"""``codec.check_properties`` (the hand-written walk of a published content header) against
pamqp: what it accepts, pamqp decodes -- the broker decodes properties lazily, anywhere, and
relies on that -- and it accepts every property list pamqp itself encodes."""

from __future__ import annotations

import datetime

from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import commands
from pamqp.header import ContentHeader

from amqpd.protocol import codec
from amqpd.protocol.errors import ConnectionLevelError

text = st.text(max_size=20)
scalars = st.one_of(
    st.booleans(), st.integers(-(1 << 63), (1 << 63) - 1),
    st.floats(width=32, allow_nan=False, allow_infinity=False),
    text, st.binary(max_size=10).map(bytearray), st.none(),
    st.datetimes(min_value=datetime.datetime(1970, 1, 2), max_value=datetime.datetime(2100, 1, 1),
                 timezones=st.just(datetime.UTC)),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)
properties = st.builds(
    commands.Basic.Properties,
    content_type=st.none() | text, content_encoding=st.none() | text,
    headers=st.none() | st.dictionaries(st.text(max_size=12), values, max_size=6),
    delivery_mode=st.none() | st.sampled_from([1, 2]), priority=st.none() | st.integers(0, 9),
    correlation_id=st.none() | text, reply_to=st.none() | text,
    expiration=st.none() | st.integers(0, 10**9).map(str), message_id=st.none() | text,
    message_type=st.none() | text, user_id=st.none() | text, app_id=st.none() | text,
)


def _accepted(payload: bytes) -> bool:
    try:
        codec.check_properties(payload)
    except ConnectionLevelError as exc:
        assert exc.reply_code == 502
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(properties=properties,
       edits=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=4),
       cut=st.none() | st.integers(0, 1 << 16))
def test_what_the_walk_accepts_pamqp_decodes(
    properties: commands.Basic.Properties, edits: list[tuple[int, int]], cut: int | None
) -> None:
    payload = bytearray(ContentHeader(0, 3, properties).marshal())
    assert _accepted(bytes(payload))  # everything pamqp encodes
    for position, value in edits:  # then break it: flags and lengths included
        payload[12 + position % (len(payload) - 12)] = value
    if cut is not None:
        del payload[14 + cut % max(1, len(payload) - 14):]
    if _accepted(bytes(payload)):
        codec.decode_properties(bytes(payload))  # must not raise
