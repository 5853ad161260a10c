"""Parse and validate the ``x-`` arguments of queue.declare into a :class:`QueuePolicy`.

Parsed once at declare time so the hot path reads plain attributes. Invalid values are a
406 PRECONDITION_FAILED naming the argument, the queue and what is expected, as RabbitMQ
does ("invalid arg 'x-message-ttl' for queue 'q' in vhost '/': ...").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from amqpd.broker.priority import max_priority_argument
from amqpd.config.settings import QueueDefaults
from amqpd.protocol.errors import ChannelError

OVERFLOW_MODES = ("drop-head", "reject-publish", "reject-publish-dlx")
QUEUE_TYPES = ("classic", "quorum")
_MAX_TTL_MS = 2**32 - 1  # RabbitMQ's upper bound for x-message-ttl / x-expires


@dataclass(slots=True)
class QueuePolicy:
    """What a queue's arguments (and the broker defaults) ask of it."""

    message_ttl: int | None = None  # ms
    expires: int | None = None  # ms of disuse before the queue is deleted
    max_length: int | None = None
    max_length_bytes: int | None = None
    overflow: str = "drop-head"
    dead_letter_exchange: str | None = None
    dead_letter_routing_key: str | None = None
    delivery_limit: int | None = None
    consumer_timeout: int | None = None  # ms
    single_active_consumer: bool = False
    max_priority: int = 0  # x-max-priority; 0 is a plain FIFO queue


def _integer(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def parse_queue_arguments(
    arguments: Mapping[str, object], describe: str, defaults: QueueDefaults | None = None
) -> QueuePolicy:
    """Build the policy of a queue; ``describe`` is "queue 'q' in vhost '/'" for errors.

    Raises:
        ChannelError: 406 for a value of the wrong type or range.
    """

    def invalid(name: str, expected: str) -> ChannelError:
        return ChannelError(
            406, f"invalid arg '{name}' for {describe}: {expected}, got {arguments[name]!r}"
        )

    def non_negative(name: str, upper: int | None = None) -> int | None:
        if name not in arguments:
            return None
        number = _integer(arguments[name])
        if number is None or number < 0 or (upper is not None and number > upper):
            raise invalid(name, "expected a non-negative integer" if upper is None else
                          f"expected an integer from 0 to {upper}")
        return number

    def text(name: str) -> str | None:
        if name not in arguments:
            return None
        value = arguments[name]
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if not isinstance(value, str):
            raise invalid(name, "expected a string")
        return value

    policy = QueuePolicy()
    policy.message_ttl = non_negative("x-message-ttl", _MAX_TTL_MS)
    expires = non_negative("x-expires", _MAX_TTL_MS)
    if expires == 0:
        raise invalid("x-expires", "expected a positive integer (milliseconds)")
    policy.expires = expires
    policy.max_length = non_negative("x-max-length")
    policy.max_length_bytes = non_negative("x-max-length-bytes")
    overflow = text("x-overflow")
    if overflow is not None and overflow not in OVERFLOW_MODES:
        raise invalid("x-overflow", f"expected one of {', '.join(OVERFLOW_MODES)}")
    policy.dead_letter_exchange = text("x-dead-letter-exchange")
    policy.dead_letter_routing_key = text("x-dead-letter-routing-key")
    if policy.dead_letter_routing_key is not None and policy.dead_letter_exchange is None:
        raise ChannelError(
            406,
            f"invalid arg 'x-dead-letter-routing-key' for {describe}: "
            "x-dead-letter-exchange is required too",
        )
    policy.delivery_limit = non_negative("x-delivery-limit")
    policy.consumer_timeout = non_negative("x-consumer-timeout")
    if "x-single-active-consumer" in arguments:
        value = arguments["x-single-active-consumer"]
        if not isinstance(value, bool):
            raise invalid("x-single-active-consumer", "expected a boolean")
        policy.single_active_consumer = value
    policy.max_priority = max_priority_argument(arguments, describe)
    queue_type = text("x-queue-type")
    if queue_type is not None and queue_type not in QUEUE_TYPES:
        raise invalid("x-queue-type", f"expected one of {', '.join(QUEUE_TYPES)}")
    if defaults is not None:
        _apply_defaults(policy, arguments, defaults)
    policy.overflow = overflow or (defaults.overflow if defaults else "drop-head")
    return policy


def _apply_defaults(
    policy: QueuePolicy, arguments: Mapping[str, object], defaults: QueueDefaults
) -> None:
    if "x-message-ttl" not in arguments:
        policy.message_ttl = defaults.message_ttl
    if "x-max-length" not in arguments:
        policy.max_length = defaults.max_length
    if "x-max-length-bytes" not in arguments:
        policy.max_length_bytes = defaults.max_length_bytes
    if "x-delivery-limit" not in arguments:
        policy.delivery_limit = defaults.delivery_limit
    if "x-consumer-timeout" not in arguments:
        policy.consumer_timeout = defaults.consumer_timeout
    if "x-expires" not in arguments:
        policy.expires = defaults.expires
