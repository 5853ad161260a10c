"""Stream arguments, the stored record format and the x-stream-offset header splice."""

from __future__ import annotations

import datetime

import pytest
from pamqp import commands

from amqpd.broker.message import Message, route_for
from amqpd.protocol import codec
from amqpd.protocol.errors import ChannelError, ConnectionLevelError
from amqpd.streams import content
from amqpd.streams.arguments import (
    OffsetSpec,
    parse_age_ms,
    parse_consume,
    parse_declare,
    parse_offset,
)

Q = "queue 's' in vhost '/'"


def message(body: bytes = b"body", **properties: object) -> Message:
    header = codec.encode_header_payload(len(body), commands.Basic.Properties(**properties))
    return Message(route_for("ex", "rk"), header, body)


def test_ages() -> None:
    assert parse_age_ms("7D") == 7 * 86_400_000
    assert parse_age_ms("12h") == 12 * 3_600_000
    assert parse_age_ms("1Y") == 365 * 86_400_000
    assert parse_age_ms("7d") is None and parse_age_ms("1w") is None
    assert parse_age_ms(" 1h") is None


def test_declare_settings() -> None:
    settings = parse_declare(Q, True, False, False, {
        "x-queue-type": "stream", "x-max-age": "30m", "x-max-length-bytes": 10,
        "x-stream-max-segment-size-bytes": 5000, "x-initial-cluster-size": 3})
    assert (settings.max_age_ms, settings.max_bytes, settings.segment_bytes) == \
        (1_800_000, 10, 5000)
    for bad in ({"x-stream-filter-size-bytes": 15}, {"x-max-age": 7},
                {"x-dead-letter-exchange": "dlx"}, {"x-max-length-bytes": "10"}):
        with pytest.raises(ChannelError) as info:
            parse_declare(Q, True, False, False, bad)
        assert info.value.reply_code == 406


def test_offsets() -> None:
    assert parse_offset("first", Q) == OffsetSpec("first")
    assert parse_offset(17, Q) == OffsetSpec("offset", 17)
    assert parse_offset("1h", Q) == OffsetSpec("age", 3_600_000)
    moment = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    assert parse_offset(moment, Q) == OffsetSpec("timestamp", int(moment.timestamp()) * 1000)
    assert parse_offset(moment.replace(tzinfo=None), Q).value == int(moment.timestamp()) * 1000
    for bad in (True, 1.5, "5000", {"a": 1}, None):
        with pytest.raises(ChannelError):
            parse_offset(bad, Q)


def test_consume_guards() -> None:
    with pytest.raises(ConnectionLevelError) as hard:
        parse_consume({}, Q, True, 10)
    assert hard.value.reply_code == 540
    with pytest.raises(ChannelError) as soft:
        parse_consume({}, Q, False, 0)
    assert soft.value.reply_code == 406
    spec = parse_consume({"x-stream-filter": ["a", "b"], "x-stream-match-unfiltered": True,
                          "x-stream-group": "g"}, Q, False, 1)
    assert (spec.filters, spec.match_unfiltered, spec.group, spec.offset) == \
        (frozenset({"a", "b"}), True, "g", None)
    for bad in ({"x-stream-filter": []}, {"x-stream-match-unfiltered": "yes"},
                {"x-stream-group": ""}, {"x-stream-filter-rule": "headers.a >"},
                {"x-priority": 1}):
        with pytest.raises(ChannelError):
            parse_consume(bad, Q, False, 1)


def test_record_round_trip_keeps_the_header_bytes() -> None:
    original = message(b"payload", headers={"x-stream-filter-value": "eu", "n": [1, 2]},
                       content_type="text/plain")
    stored = content.StoredMessage(content.encode(original))
    assert stored.filter == "eu"
    assert stored.message.header_payload == original.header_payload
    assert stored.message.body == b"payload"
    assert (stored.message.exchange, stored.message.routing_key) == ("ex", "rk")
    assert content.StoredMessage(content.encode(message())).filter is None


@pytest.mark.parametrize("properties", [
    {},
    {"content_type": "a/b", "content_encoding": "gzip", "delivery_mode": 2},
    {"headers": {"k": "v"}, "content_type": "x", "priority": 3, "message_id": "m"},
    {"headers": {"x-stream-offset": 99, "z": 1}},  # the publisher's own header is replaced
])
def test_offset_header_splice(properties: dict[str, object]) -> None:
    original = message(**properties)
    delivered = content.with_offset(original, 2**40)
    decoded = codec.decode_properties(delivered.header_payload)
    expected = dict(properties.get("headers") or {})  # type: ignore[call-overload]
    expected["x-stream-offset"] = 2**40
    assert decoded.headers == expected
    for name, value in properties.items():
        if name != "headers":
            assert getattr(decoded, name) == value
    assert codec.header_body_size(delivered.header_payload) == len(original.body)
