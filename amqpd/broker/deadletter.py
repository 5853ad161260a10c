"""Dead-lettering: the ``x-death`` history RabbitMQ writes into a dead-lettered message.

RabbitMQ semantics (docs/dlx.md): the newest event is first in ``x-death``; an existing
entry for the same queue and reason has its ``count`` increased and moves to the front;
``x-first-death-{reason,queue,exchange}`` are set once; the ``expiration`` property is
removed (kept as ``original-expiration``) so the message does not expire again where it
lands; and a cycle of dead-lettering with no rejection in it is dropped.
"""

from __future__ import annotations

import datetime
from typing import Any

from amqpd.broker.message import Message, route_for
from amqpd.protocol import codec


def routing_keys_of(message: Message) -> list[str]:
    """The routing key plus any CC keys (BCC is gone by now), as RabbitMQ records them."""
    keys = [message.routing_key]
    headers = message.headers or {}
    cc = headers.get("CC")
    if isinstance(cc, list):
        keys += [key.decode() if isinstance(key, bytes) else str(key) for key in cc]
    return keys


def dead_lettered(
    message: Message,
    queue_name: str,
    reason: str,
    routing_key: str | None,
    now: datetime.datetime | None = None,
) -> Message:
    """A copy of ``message`` carrying the x-death history, ready to publish to the DLX."""
    # A fresh decode: the original message is shared with other queues and stays untouched.
    properties = codec.decode_properties(message.header_payload)
    headers: dict[str, Any] = dict(properties.headers or {})
    now = now or datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    deaths: list[Any] = [d for d in headers.get("x-death") or [] if isinstance(d, dict)]
    original_expiration = properties.expiration
    for index, death in enumerate(deaths):
        if death.get("queue") == queue_name and death.get("reason") == reason:
            updated = dict(death)
            updated["count"] = int(updated.get("count", 1)) + 1
            updated["time"] = now
            del deaths[index]
            deaths.insert(0, updated)
            break
    else:
        death = {
            "count": 1,
            "reason": reason,
            "queue": queue_name,
            "time": now,
            "exchange": message.exchange,
            "routing-keys": routing_keys_of(message),
        }
        if original_expiration is not None:
            death["original-expiration"] = original_expiration
        deaths.insert(0, death)
    headers["x-death"] = deaths
    headers.setdefault("x-first-death-reason", reason)
    headers.setdefault("x-first-death-queue", queue_name)
    headers.setdefault("x-first-death-exchange", message.exchange)
    headers["x-last-death-reason"] = reason
    headers["x-last-death-queue"] = queue_name
    headers["x-last-death-exchange"] = message.exchange
    properties.headers = headers
    properties.expiration = None
    copy = message.with_properties(properties)
    copy.ttl_ms = None
    if routing_key is not None:
        copy.route = route_for(message.exchange, routing_key)
    return copy


def is_cycle(message: Message, target_queue: str) -> bool:
    """RabbitMQ drops a dead-lettered message that would return to a queue it already died
    in, unless some death in its history was a rejection (the client decided, so it is not
    an automatic loop)."""
    deaths = (message.headers or {}).get("x-death") or []
    if not isinstance(deaths, list):
        return False
    seen = False
    for death in deaths:
        if not isinstance(death, dict):
            continue
        if death.get("reason") == "rejected":
            return False
        if death.get("queue") == target_queue:
            seen = True
    return seen
