"""Ack-deadline lease extension: a publish to ``amq.lease`` pushes a delivery's deadline out.

Why a publish: every AMQP client can publish with headers, so pika and aio-pika use the
extension unchanged -- no new method, no client patch -- and under publisher confirms the
extension is acknowledged like any publish. The request names a delivery tag of the *same
channel* (tags are per channel) and how long the worker still needs:

    headers = {"x-delivery-tag": 42, "x-extend-ms": 600000}
    channel.basic_publish(exchange="amq.lease", routing_key="", body=b"", properties=...)

The new deadline is now + x-extend-ms (it can also shorten a lease). The message body is
ignored, nothing is routed or stored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from amqpd.protocol.errors import ChannelError

LEASE_EXCHANGE = "amq.lease"
MAX_EXTENSION_MS = 7 * 24 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class LeaseRequest:
    """A parsed lease extension."""

    delivery_tag: int
    extend_ms: int


def parse_lease(headers: Mapping[str, object] | None) -> LeaseRequest:
    """Read ``x-delivery-tag`` and ``x-extend-ms`` from the publish headers.

    Raises:
        ChannelError: 406 when either is missing or not a positive integer.
    """
    headers = headers or {}
    values = []
    for name in ("x-delivery-tag", "x-extend-ms"):
        value = headers.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ChannelError(
                406,
                f"a publish to '{LEASE_EXCHANGE}' needs the header '{name}' as a "
                f"non-negative integer, got {value!r}",
                60, 40,
            )
        values.append(value)
    tag, extend_ms = values
    if extend_ms > MAX_EXTENSION_MS:
        raise ChannelError(
            406, f"x-extend-ms {extend_ms} is above the maximum of {MAX_EXTENSION_MS} ms", 60, 40
        )
    return LeaseRequest(tag, extend_ms)
