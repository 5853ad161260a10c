"""The hand-written hot-path codec is byte-identical to pamqp."""

from __future__ import annotations

import datetime
import struct

from hypothesis import given
from hypothesis import strategies as st
from pamqp import commands, frame
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from amqpd.protocol import codec

shortstr = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40
).filter(lambda s: len(s.encode()) <= 255)
names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.:", max_size=40)


@given(
    channel=st.integers(1, 65535),
    consumer_tag=shortstr,
    delivery_tag=st.integers(1, 2**63 - 1),
    redelivered=st.booleans(),
    exchange=names,
    routing_key=shortstr,
)
def test_encode_deliver_matches_pamqp(
    channel: int, consumer_tag: str, delivery_tag: int, redelivered: bool, exchange: str,
    routing_key: str,
) -> None:
    ours = codec.encode_deliver(
        channel, consumer_tag.encode(), delivery_tag, redelivered, exchange.encode(),
        routing_key.encode(),
    )
    theirs = frame.marshal(
        commands.Basic.Deliver(consumer_tag, delivery_tag, redelivered, exchange, routing_key),
        channel,
    )
    assert ours == theirs


@given(
    channel=st.integers(1, 65535),
    delivery_tag=st.integers(1, 2**63 - 1),
    redelivered=st.booleans(),
    exchange=names,
    routing_key=shortstr,
    message_count=st.integers(0, 2**32 - 1),
)
def test_encode_get_ok_matches_pamqp(
    channel: int, delivery_tag: int, redelivered: bool, exchange: str, routing_key: str,
    message_count: int,
) -> None:
    ours = codec.encode_get_ok(
        channel, delivery_tag, redelivered, exchange.encode(), routing_key.encode(),
        message_count,
    )
    theirs = frame.marshal(
        commands.Basic.GetOk(delivery_tag, redelivered, exchange, routing_key, message_count),
        channel,
    )
    assert ours == theirs


@given(
    exchange=names, routing_key=shortstr, mandatory=st.booleans(), immediate=st.booleans()
)
def test_decode_publish_matches_pamqp(
    exchange: str, routing_key: str, mandatory: bool, immediate: bool
) -> None:
    raw = frame.marshal(
        commands.Basic.Publish(0, exchange, routing_key, mandatory, immediate), 1
    )
    payload = raw[7:-1]
    fields = codec.decode_publish(payload)
    assert (fields.exchange, fields.routing_key, fields.mandatory, fields.immediate) == (
        exchange, routing_key, mandatory, immediate,
    )


# pamqp leaves empty strings out when encoding, so generated property values are non-empty.
prop_names = names.filter(bool)
properties = st.builds(
    commands.Basic.Properties,
    content_type=st.none() | prop_names,
    content_encoding=st.none() | prop_names,
    headers=st.none() | st.dictionaries(names.filter(bool), st.integers(-100, 100) | prop_names,
                                        max_size=4),
    delivery_mode=st.none() | st.sampled_from([1, 2]),
    priority=st.none() | st.integers(0, 9),
    correlation_id=st.none() | prop_names,
    expiration=st.none() | st.integers(1, 10**6).map(str),
    message_id=st.none() | prop_names,
    timestamp=st.none() | st.datetimes(
        min_value=datetime.datetime(1971, 1, 1), max_value=datetime.datetime(2100, 1, 1)
    ).map(lambda d: d.replace(microsecond=0, tzinfo=datetime.UTC)),
    app_id=st.none() | prop_names,
)


@given(channel=st.integers(1, 65535), props=properties, body=st.binary(max_size=3000),
       frame_max=st.integers(4096, 8192))
def test_encode_content_matches_pamqp(
    channel: int, props: commands.Basic.Properties, body: bytes, frame_max: int
) -> None:
    header = ContentHeader(0, len(body), props)
    header_payload = header.marshal()
    ours = codec.encode_content(channel, header_payload, body, frame_max)
    chunk = frame_max - 8
    expected = [frame.marshal(header, channel)] + [
        frame.marshal(ContentBody(body[start : start + chunk]), channel)
        for start in range(0, len(body), chunk)
    ]
    assert ours == b"".join(expected)


@given(props=properties, size=st.integers(0, 2**40))
def test_delivery_mode_and_sizes_match_pamqp(props: commands.Basic.Properties, size: int) -> None:
    payload = ContentHeader(0, size, props).marshal()
    assert codec.delivery_mode(payload) == (props.delivery_mode or 1)
    assert codec.header_body_size(payload) == size
    assert codec.header_class_id(payload) == 60
    assert codec.decode_properties(payload) == props
    assert codec.encode_header_payload(size, props) == payload


def test_decode_publish_truncated_is_syntax_error() -> None:
    payload = struct.pack(">HHH", 60, 40, 0) + b"\x05ab"
    try:
        codec.decode_publish(payload)
    except codec.ConnectionLevelError as exc:
        assert exc.reply_code == 502
    else:
        raise AssertionError("expected a 502")


@given(delivery_tag=st.integers(0, 2**63 - 1), multiple=st.booleans())
def test_decode_ack_matches_pamqp(delivery_tag: int, multiple: bool) -> None:
    raw = frame.marshal(commands.Basic.Ack(delivery_tag, multiple), 1)
    payload = raw[7:-1]
    assert payload[:4] == codec.ACK_PREFIX
    assert len(payload) == 13
    assert codec.decode_ack(payload) == (delivery_tag, multiple)
