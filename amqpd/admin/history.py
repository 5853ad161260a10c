"""RabbitMQ's sample history on ``*_details`` objects, read from the rate rings.

``?lengths_age=60&lengths_incr=5`` extends the depth details (``messages_details``...) and
``?msg_rates_age=60&msg_rates_incr=5`` the ``message_stats`` ones with ``samples``
(``[{"sample": value, "timestamp": ms}]``, newest first, the first being the value now),
``avg`` (their mean) and ``avg_rate`` (change per second from the oldest to the newest), as
RabbitMQ does. The samples are the sampler's, every 5 s whatever ``*_incr`` asks for, and
only as far back as the ring goes: a minute broker-wide (the overview), 10 to 15 s for a
queue or a vhost (their rings hold three samples, so that 10,000 queues stay cheap).
Without these parameters nothing here runs.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from amqpd.admin.rates import DEPTH, DEPTH_FIELDS, UNACKED_DEPTH, Sample

LENGTHS = "lengths_age"
MSG_RATES = "msg_rates_age"
#: The broker-wide counters message_stats.deliver_get adds up.
_DELIVER_GET = ("deliver", "deliver_no_ack", "get", "get_no_ack")


def window(query: Mapping[str, str], parameter: str) -> float | None:
    """Seconds of history ``parameter`` asks for; None when absent or not a positive
    number (RabbitMQ ignores what it cannot use, as the rest of the query)."""
    text = query.get(parameter)
    if not text:
        return None
    try:
        age = float(text)
    except ValueError:
        return None
    return age if age > 0 else None


def wanted(query: Mapping[str, str]) -> bool:
    """Whether the request asks for any history."""
    return LENGTHS in query or MSG_RATES in query


def _value(values: Mapping[str, int], field: str) -> int | None:
    """A field's value in one sample; the sums RabbitMQ reports are derived."""
    if field in values:
        return values[field]
    if field == "messages" and DEPTH in values and UNACKED_DEPTH in values:
        return values[DEPTH] + values[UNACKED_DEPTH]
    if field == "deliver_get" and all(name in values for name in _DELIVER_GET):
        return sum(values[name] for name in _DELIVER_GET)
    return None


def add_history(target: dict[str, Any], fields: Iterable[str], ring: Iterable[Sample],
                age: float, now: float) -> None:
    """Extend ``target[field + "_details"]`` of each field ``target`` has with the samples
    of ``ring`` at most ``age`` seconds old (``now`` on the ring's clock)."""
    to_wall = time.time() - now
    history = [sample for sample in ring if now - sample[0] <= age]
    history.reverse()  # newest first, as RabbitMQ lists them
    for field in fields:
        details = target.get(f"{field}_details")
        current = target.get(field)
        if not isinstance(details, dict) or not isinstance(current, int):
            continue
        points = [(now, current)]
        for moment, values in history:
            value = _value(values, field)
            if value is not None:
                points.append((moment, value))
        span = points[0][0] - points[-1][0]
        details["samples"] = [{"sample": value, "timestamp": int((moment + to_wall) * 1000)}
                              for moment, value in points]
        details["avg"] = sum(value for _, value in points) / len(points)
        details["avg_rate"] = (points[0][1] - points[-1][1]) / span if span > 0 else 0.0


def add_object_history(item: dict[str, Any], query: Mapping[str, str],
                       ring: Iterable[Sample], now: float,
                       counters: Iterable[str] = ()) -> None:
    """The history a query asks for on one object: depths at its top level, ``counters``
    under its ``message_stats``."""
    samples = list(ring)
    lengths = window(query, LENGTHS)
    if lengths is not None:
        add_history(item, DEPTH_FIELDS, samples, lengths, now)
    rates = window(query, MSG_RATES)
    stats = item.get("message_stats")
    if rates is not None and isinstance(stats, dict):
        add_history(stats, counters, samples, rates, now)
