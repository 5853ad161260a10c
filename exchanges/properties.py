"""Reading AMQP basic properties off a routable message.

:class:`~exchanges.base.Routable` only promises ``routing_key`` and ``headers``. Types that
need more (``x-consistent-hash`` with ``hash-property``, ``x-rules`` with
``properties.NAME``) read an optional ``properties`` attribute, which may be a pamqp
``Basic.Properties``-like object, a mapping, or a method returning either. Anything missing
reads as absent (None), never as an error.
"""

from __future__ import annotations

from collections.abc import Mapping

# AMQP property names as clients know them; pamqp spells ``type`` as ``message_type``.
PROPERTY_NAMES = frozenset({
    "app_id", "cluster_id", "content_encoding", "content_type", "correlation_id",
    "delivery_mode", "expiration", "message_id", "priority", "reply_to", "timestamp", "type",
    "user_id",
})
_ATTRIBUTE = {"type": "message_type"}


def read_property(message: object, name: str) -> object:
    """The value of basic property ``name`` of ``message``, or None when absent."""
    properties = getattr(message, "properties", None)
    if properties is None:
        return None
    if callable(properties) and not isinstance(properties, Mapping):
        properties = properties()
        if properties is None:
            return None
    attribute = _ATTRIBUTE.get(name, name)
    if isinstance(properties, Mapping):
        value = properties.get(name)
        return properties.get(attribute) if value is None else value
    return getattr(properties, attribute, None)
