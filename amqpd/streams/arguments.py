"""The arguments of streams: queue.declare (retention, segment size) and basic.consume
(offset, filters, group, x-single-active-consumer), parsed once and checked with RabbitMQ's
reply codes and texts.

RabbitMQ's texts are kept where clients or operators may match on them; where RabbitMQ
prints an Erlang term (``{invalid_stream_offset_arg,{longstr,<<"1x">>}}``) amqpd says in
words what it expected.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from amqpd.protocol.errors import ChannelError, ConnectionLevelError
from exchanges import ExchangeError
from exchanges.rulelang import CompiledRule, compile_rule

# RabbitMQ's limit for x-stream-max-segment-size-bytes.
MAX_SEGMENT_BYTES = 3_000_000_000
DEFAULT_SEGMENT_BYTES = 500_000_000
# Declare arguments a stream accepts; the cluster ones are accepted and ignored (one node).
DECLARE_ARGUMENTS = frozenset({
    "x-queue-type", "x-max-length-bytes", "x-max-age", "x-stream-max-segment-size-bytes",
    "x-stream-filter-size-bytes", "x-initial-cluster-size", "x-queue-leader-locator",
})
CONSUME_ARGUMENTS = frozenset({
    "x-stream-offset", "x-stream-filter", "x-stream-match-unfiltered", "x-stream-group",
    "x-stream-filter-rule", "x-cancel-on-ha-failover", "x-credit", "x-single-active-consumer",
})
_UNITS_MS = {"Y": 365 * 86_400_000, "M": 30 * 86_400_000, "D": 86_400_000,
             "h": 3_600_000, "m": 60_000, "s": 1000}
_AGE = re.compile(r"([0-9]+)([YMDhms])")


def parse_age_ms(value: str) -> int | None:
    """``7D``, ``12h``, ``30m``, ``10s``... in milliseconds (RabbitMQ: Y = 365 days,
    M = 30 days, case-sensitive); None when the text is not such an age."""
    match = _AGE.fullmatch(value)
    if match is None:
        return None
    return int(match.group(1)) * _UNITS_MS[match.group(2)]


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """Retention and segment size of one stream."""

    max_bytes: int | None = None
    max_age_ms: int | None = None
    segment_bytes: int = DEFAULT_SEGMENT_BYTES


def _integer(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def parse_declare(
    describe: str, durable: bool, exclusive: bool, auto_delete: bool,
    arguments: Mapping[str, object],
) -> StreamSettings:
    """Check a stream's queue.declare; ``describe`` is "queue 'q' in vhost '/'".

    Raises:
        ChannelError: 406 with RabbitMQ's text for what a stream cannot be.
    """
    for flag, wrong in (("non-durable", not durable), ("exclusive-owner", exclusive),
                        ("auto-delete", auto_delete)):
        if wrong:
            raise ChannelError(406, f"invalid property '{flag}' for {describe}")
    for name in sorted(arguments):
        if name not in DECLARE_ARGUMENTS:
            raise ChannelError(
                406, f"invalid arg '{name}' for {describe} of queue type rabbit_stream_queue")

    def invalid(name: str, expected: str) -> ChannelError:
        return ChannelError(406, f"invalid arg '{name}' for {describe}: {expected}, "
                                 f"got {arguments[name]!r}")

    max_bytes = None
    if "x-max-length-bytes" in arguments:
        max_bytes = _integer(arguments["x-max-length-bytes"])
        if max_bytes is None or max_bytes < 0:
            raise invalid("x-max-length-bytes", "expected a non-negative integer")
    max_age_ms = None
    if "x-max-age" in arguments:
        text = _text(arguments["x-max-age"])
        max_age_ms = parse_age_ms(text) if text is not None else None
        if not max_age_ms:
            raise invalid("x-max-age", "invalid_max_age: expected a positive age such as "
                                       "'7D', '12h', '30m' or '10s'")
    segment_bytes = DEFAULT_SEGMENT_BYTES
    if "x-stream-max-segment-size-bytes" in arguments:
        size = _integer(arguments["x-stream-max-segment-size-bytes"])
        if size is None or size <= 0:
            raise invalid("x-stream-max-segment-size-bytes", "expected a positive integer")
        if size > MAX_SEGMENT_BYTES:
            raise ChannelError(406, "Exceeded max value for x-stream-max-segment-size-bytes")
        segment_bytes = size
    if "x-stream-filter-size-bytes" in arguments:
        # RabbitMQ sizes its Bloom filter with it; amqpd filters exactly, so only the
        # range is checked (the same declarations work on both brokers).
        size = _integer(arguments["x-stream-filter-size-bytes"])
        if size is None or not 16 <= size <= 255:
            raise invalid("x-stream-filter-size-bytes", "expected an integer from 16 to 255")
    return StreamSettings(max_bytes, max_age_ms, segment_bytes)


@dataclass(frozen=True, slots=True)
class OffsetSpec:
    """Where a consumer starts: ``kind`` is first, last, next, offset, timestamp (value in
    ms since the epoch) or age (value in ms before now)."""

    kind: str
    value: int = 0


NEXT = OffsetSpec("next")


def parse_offset(value: object, describe: str) -> OffsetSpec:
    """The ``x-stream-offset`` argument of basic.consume.

    Raises:
        ChannelError: 406 for anything that is not an offset specification.
    """
    number = _integer(value)
    if number is not None:
        return OffsetSpec("offset", number)
    if isinstance(value, datetime):  # an AMQP timestamp (seconds; pika and pamqp: datetime)
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return OffsetSpec("timestamp", int(moment.timestamp() * 1000))
    text = _text(value)
    if text in ("first", "last", "next"):
        return OffsetSpec(text)
    if text is not None:
        age = parse_age_ms(text)
        if age is not None:
            return OffsetSpec("age", age)
    raise ChannelError(
        406,
        f"invalid arg 'x-stream-offset' for {describe}: invalid_stream_offset_arg {value!r}: "
        "expected first, last, next, an offset, a timestamp or an interval such as '1h'",
    )


@dataclass(slots=True)
class ConsumeSpec:
    """What a stream consumer asked for in its basic.consume arguments."""

    offset: OffsetSpec | None = None  # None: not given (``next``, or the group's commit)
    filters: frozenset[str] | None = None
    match_unfiltered: bool = False
    rule: CompiledRule | None = None
    group: str | None = None
    exclusive: bool = False  # x-single-active-consumer: one member of the group receives
    extra: dict[str, object] = field(default_factory=dict)


def parse_consume(
    arguments: Mapping[str, object], describe: str, no_ack: bool, prefetch_count: int
) -> ConsumeSpec:
    """Check a basic.consume on a stream (before consume-ok is sent).

    Raises:
        ConnectionLevelError: 540 for no-ack, as RabbitMQ.
        ChannelError: 406 without a prefetch, for x-priority and for invalid arguments.
    """
    if no_ack:
        raise ConnectionLevelError(
            540, f"automatic acknowledgement not supported by stream queues {describe}",
            60, 20)
    if not prefetch_count:
        raise ChannelError(406, f"consumer prefetch count is not set for '{describe}'", 60, 20)
    for name in sorted(arguments):
        if name.startswith("x-") and name not in CONSUME_ARGUMENTS:
            raise ChannelError(
                406, f"invalid arg '{name}' for {describe} of queue type rabbit_stream_queue",
                60, 20)
    spec = ConsumeSpec()
    if "x-stream-offset" in arguments:
        spec.offset = parse_offset(arguments["x-stream-offset"], describe)
    if "x-stream-filter" in arguments:
        spec.filters = _filter_values(arguments["x-stream-filter"], describe)
    if "x-stream-match-unfiltered" in arguments:
        spec.match_unfiltered = _flag(arguments, "x-stream-match-unfiltered", describe)
    if "x-stream-filter-rule" in arguments:
        text = _text(arguments["x-stream-filter-rule"])
        if text is None:
            raise ChannelError(
                406, f"invalid arg 'x-stream-filter-rule' for {describe}: expected the rule "
                     "as a string", 60, 20)
        try:
            spec.rule = compile_rule(text)
        except ExchangeError as exc:
            raise ChannelError(406, f"invalid x-stream-filter-rule: {exc.text}", 60, 20) \
                from exc
    if "x-stream-group" in arguments:
        group = _text(arguments["x-stream-group"])
        if not group or len(group) > 255:
            raise ChannelError(
                406, f"invalid arg 'x-stream-group' for {describe}: expected a non-empty "
                     "name of at most 255 characters", 60, 20)
        spec.group = group
    if "x-single-active-consumer" in arguments:
        # RabbitMQ's name for "one consumer receives, the others stand by and take over in
        # order": its stream protocol sets it per subscription, with a consumer name that
        # plays the part of the group here (amqpd: the consumer side of 0-9-1).
        flag = _flag(arguments, "x-single-active-consumer", describe)
        if flag and spec.group is None:
            raise ChannelError(
                406, f"invalid arg 'x-single-active-consumer' for {describe}: it needs "
                     "x-stream-group (the group whose members take turns)", 60, 20)
        spec.exclusive = flag
    return spec


def _flag(arguments: Mapping[str, object], name: str, describe: str) -> bool:
    """A boolean consume argument; anything else is 406 naming it."""
    flag = arguments[name]
    if not isinstance(flag, bool):
        raise ChannelError(
            406, f"invalid arg '{name}' for {describe}: expected a boolean, got {flag!r}",
            60, 20)
    return flag


def _filter_values(value: object, describe: str) -> frozenset[str]:
    """``x-stream-filter``: one string or a list of strings (any of them matches)."""
    items = value if isinstance(value, list | tuple) else [value]
    values = [_text(item) for item in items]
    if not values or any(item is None for item in values):
        raise ChannelError(
            406, f"invalid arg 'x-stream-filter' for {describe}: expected a string or a list "
                 f"of strings, got {value!r}", 60, 20)
    return frozenset(item for item in values if item is not None)
