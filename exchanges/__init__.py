"""Pure, synchronous AMQP 0-9-1 routing: exchange types and their bindings.

No I/O and no dependency on the server: an exchange type receives bindings and answers
"where does this message go?". The server looks types up with :func:`get_exchange_type`;
third-party types come from the ``amqpd.exchanges`` entry-point group.

Built-in types: ``direct``, ``fanout``, ``topic``, ``headers``, ``x-rules`` and
``x-consistent-hash`` and ``x-delayed-message``.
"""

# The type modules are imported for their register() side effect.
from exchanges import consistent_hash, delayed, direct, fanout, headers, rules, topic
from exchanges.base import (
    Binding,
    D,
    ExchangeError,
    ExchangeType,
    NotAllowed,
    PreconditionFailed,
    Routable,
)
from exchanges.registry import REGISTRY, get_exchange_type, register

__all__ = [
    "REGISTRY",
    "Binding",
    "D",
    "ExchangeError",
    "ExchangeType",
    "NotAllowed",
    "PreconditionFailed",
    "Routable",
    "consistent_hash",
    "delayed",
    "direct",
    "fanout",
    "get_exchange_type",
    "headers",
    "register",
    "rules",
    "topic",
]
