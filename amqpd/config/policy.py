"""Policies as RabbitMQ 3.10 validates them: the keys it accepts in a definition, the
values each key takes, and its reply texts, word for word.

Pure functions over plain data, so the YAML parser, the definitions import, the broker and
the management API refuse the same policies with the same reason. RabbitMQ's management API
answers ``{"error": "bad_request", "reason": "Validation failed\\n\\n<why>\\n"}``, where
``<why>`` prints values as Erlang terms, HTML-escaped (``&lt;&lt;"x"&gt;&gt;`` for the
string ``"x"``); :func:`policy_problem` returns that ``<why>``.

What 3.10.8 answered when asked (the interop tests check the same):

- ``apply-to`` is ``queues``, ``exchanges`` or ``all`` (``classic_queues``, ``quorum_queues``
  and ``streams`` arrived in 3.12: 3.10 refuses them);
- ``consumer-timeout`` and ``max-priority`` are not policy keys in 3.10 (3.12 added
  ``consumer-timeout``); neither is ``federation-upstream-set`` without the plugin;
- ``priority`` may be any JSON number (1.5 is kept as 1.5), default 0;
- ``message-ttl`` and ``expires`` have no upper bound in a policy.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

APPLY_TO = ("queues", "exchanges", "all")
OVERFLOW_MODES = ("drop-head", "reject-publish", "reject-publish-dlx")

#: Keys amqpd acts on.
EFFECTIVE_KEYS = (
    "message-ttl", "expires", "max-length", "max-length-bytes", "delivery-limit", "overflow",
    "dead-letter-exchange", "dead-letter-routing-key", "alternate-exchange",
)
#: Keys RabbitMQ 3.10 accepts that have no effect in amqpd (mirroring, queue modes and
#: versions, quorum and stream settings): kept so that definitions move both ways.
INERT_KEYS = (
    "ha-mode", "ha-params", "ha-sync-mode", "ha-sync-batch-size", "ha-promote-on-shutdown",
    "ha-promote-on-failure", "queue-mode", "queue-version", "queue-master-locator",
    "queue-leader-locator", "max-in-memory-length", "max-in-memory-bytes",
    "dead-letter-strategy", "max-age", "stream-max-segment-size-bytes",
    "initial-cluster-size",
)


def erlang_term(value: Any) -> str:
    """A JSON value as RabbitMQ's management API prints it in a reason (``~p``, then
    HTML-escaped): strings are binaries, ``null`` stays ``null``."""
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'&lt;&lt;"{escaped}"&gt;&gt;'
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ",".join(erlang_term(item) for item in value) + "]"
    if isinstance(value, Mapping):
        pairs = (f"{{{erlang_term(str(k))},{erlang_term(v)}}}" for k, v in value.items())
        return "[" + ",".join(pairs) + "]"
    return repr(value)


def _non_negative(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _positive(value: Any) -> bool:
    return _non_negative(value) and value > 0


def _text(value: Any) -> bool:
    return isinstance(value, str)


def _overflow(value: Any) -> bool:
    return value in OVERFLOW_MODES


def _queue_mode(value: Any) -> bool:
    return value in ("default", "lazy")


#: key -> (test, what RabbitMQ calls a valid value in its refusal).
_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "message-ttl": (_non_negative, "message TTL"),
    "expires": (_positive, "queue expiry"),
    "max-length": (_non_negative, "maximum length"),
    "max-length-bytes": (_non_negative, "maximum length in bytes"),
    "delivery-limit": (_non_negative, "delivery limit"),
    "overflow": (_overflow, "overflow value"),
    "dead-letter-exchange": (_text, "dead letter exchange name"),
    "dead-letter-routing-key": (_text, "dead letter routing key"),
    "alternate-exchange": (_text, "alternate exchange name"),
    "queue-mode": (_queue_mode, "queue-mode value"),
}


def definition_problem(definition: Any) -> str | None:
    """Why RabbitMQ would refuse this definition, or None."""
    if not isinstance(definition, Mapping):
        # RabbitMQ 3.10 crashes (500) on a definition that is not an object.
        return f"{erlang_term(definition)} is not a valid policy definition"
    if not definition:
        return "no policy provided"
    unknown = sorted(key for key in definition if key not in EFFECTIVE_KEYS + INERT_KEYS)
    if unknown:
        listed = ",".join(f"{{{erlang_term(key)},{erlang_term(definition[key])}}}"
                          for key in unknown)
        return f"[{listed}] are not recognised policy settings"
    for key in sorted(definition):
        check = _CHECKS.get(key)
        if check is not None and not check[0](definition[key]):
            return f"{erlang_term(definition[key])} is not a valid {check[1]}"
    return None


def policy_problem(pattern: Any, definition: Any, apply_to: Any = "all",
                   priority: Any = 0) -> str | None:
    """Why RabbitMQ would refuse this policy (the first problem, in RabbitMQ's order:
    priority, pattern, apply-to, definition), or None."""
    if isinstance(priority, bool) or not isinstance(priority, int | float):
        return f"priority should be a number, actually was {erlang_term(priority)}"
    if not isinstance(pattern, str):
        return f"pattern should be a binary but was {erlang_term(pattern)}"
    try:
        re.compile(pattern)
    except re.error as exc:
        # RabbitMQ prints PCRE's message and offset; Python's words differ.
        return (f'pattern should be regular expression but is invalid: {{"{exc.msg}",'
                f"{exc.pos or 0}}}")
    if apply_to not in APPLY_TO:
        return (f"apply-to '{apply_to}' unrecognised; should be 'queues', 'exchanges' or "
                "'all'")
    return definition_problem(definition)


def validation_failed(problem: str) -> str:
    """The whole ``reason`` of RabbitMQ's 400 for an invalid policy."""
    return f"Validation failed\n\n{problem}\n"
