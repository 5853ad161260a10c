"""``x-consistent-hash``: each message goes to exactly one destination, chosen by hash.

Interface of RabbitMQ's ``rabbitmq_consistent_hash_exchange`` plugin:

* the binding key is the destination's weight, a positive integer as a string;
* by default the routing key is hashed; the exchange argument ``hash-header`` names a
  header to hash instead, ``hash-property`` one of ``message_id``, ``correlation_id`` or
  ``timestamp``; giving both is refused.

The ring: every destination gets ``POINTS_PER_WEIGHT`` points per unit of weight (summed
over its bindings), at positions derived from a stable name of the destination (its type
name plus its ``name`` attribute, else ``str()``; never ``hash()``, which changes between
processes) and the point number. A message goes to the owner of
the first point at or after the hash of its key (wrapping around). Hashes are 64-bit
BLAKE2b, so the same key reaches the same destination in every process; adding or removing
a destination only moves the keys that land on its points. When the total weight gets so
large that the ring would exceed ``MAX_RING_POINTS``, each destination gets a share of
``MAX_RING_POINTS`` proportional to its weight instead (it keeps a prefix of its points, so
few keys move). The ring is rebuilt lazily, on the first route after bindings change.

Unlike the plugin we do not route a message whose hash header or property is missing (or
void): the plugin hashes "undefined" and so piles all such messages onto one arbitrary
queue. Returning no destination lets the alternate exchange or ``mandatory`` flag see it.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections.abc import Collection, Mapping
from datetime import datetime
from decimal import Decimal

from exchanges.base import Binding, D, PreconditionFailed, Routable
from exchanges.properties import read_property
from exchanges.registry import register
from exchanges.table import IndexedExchange
from exchanges.values import epoch_seconds, identity

POINTS_PER_WEIGHT = 1000  # keeps each destination's share within a few % of its weight
MAX_RING_POINTS = 1 << 16  # bounds memory and the (lazy) rebuild to a few tens of ms
HASH_PROPERTIES = ("correlation_id", "message_id", "timestamp")


def stable_hash(data: bytes) -> int:
    """A 64-bit hash that is the same in every process (unlike ``hash()``)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def hash_input(value: object) -> bytes | None:
    """The bytes hashed for a header or property value; None when there is nothing."""
    if value is None:
        return None
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, datetime):
        return str(epoch_seconds(value)).encode()  # as the plugin does for timestamps
    if isinstance(value, bool | int | float | Decimal):
        return repr(value).encode()
    return repr(identity(value)).encode()


def destination_name(destination: object) -> str:
    """The stable name that places a destination's points on the ring."""
    name = getattr(destination, "name", None)
    if not isinstance(name, str):
        name = str(destination)
    return f"{type(destination).__qualname__}\x00{name}"


def parse_weight(routing_key: str) -> int:
    digits = routing_key[1:] if routing_key.startswith("+") else routing_key
    if not (digits.isascii() and digits.isdigit()):
        raise PreconditionFailed(
            f"The binding key must be an integer weight (e.g. '1' or '10'): '{routing_key}'"
        )
    weight = int(digits)
    if weight < 1:
        raise PreconditionFailed("The binding key must be greater than 0")
    return weight


class ConsistentHashExchange(IndexedExchange[D]):
    """A hash ring searched with bisect."""

    type_name = "x-consistent-hash"

    def __init__(self, arguments: Mapping[str, object]) -> None:
        super().__init__(arguments)
        header = arguments.get("hash-header")
        prop = arguments.get("hash-property")
        if header is not None and prop is not None:
            raise PreconditionFailed("hash-header and hash-property are mutually exclusive")
        if header is not None and not isinstance(header, str):
            raise PreconditionFailed("hash-header must be a string (the header name to hash)")
        if prop is not None and prop not in HASH_PROPERTIES:
            raise PreconditionFailed(
                f"Unsupported property: {prop}; hash-property must be one of "
                + ", ".join(HASH_PROPERTIES)
            )
        self._hash_header: str | None = header
        self._hash_property: str | None = prop if isinstance(prop, str) else None
        self._weights: dict[D, int] = {}
        self._points: dict[D, list[int]] = {}  # per destination, grown on demand
        self._ring: list[int] = []
        self._owners: list[D] = []
        self._ring_stale = False

    def _attach(self, binding: Binding[D]) -> None:
        weight = parse_weight(binding.routing_key)
        self._weights[binding.destination] = self._weights.get(binding.destination, 0) + weight
        self._ring_stale = True

    def _detach(self, binding: Binding[D]) -> None:
        destination = binding.destination
        weight = self._weights[destination] - parse_weight(binding.routing_key)
        if weight:
            self._weights[destination] = weight
        else:
            del self._weights[destination]
            self._points.pop(destination, None)
        self._ring_stale = True

    def _rebuild(self) -> None:
        """Lay out the ring again. Done on the first route after bindings change, so
        declaring a topology of many bindings pays for one rebuild, not one per bind."""
        self._ring_stale = False
        total = sum(self._weights.values())
        scaled = total * POINTS_PER_WEIGHT > MAX_RING_POINTS
        destinations = list(self._weights)
        entries: list[tuple[int, str, int]] = []
        for index, destination in enumerate(destinations):
            weight = self._weights[destination]
            count = max(1, weight * MAX_RING_POINTS // total) if scaled else (
                weight * POINTS_PER_WEIGHT)
            name = destination_name(destination)
            entries.extend((point, name, index)
                           for point in self._points_of(destination, name, count))
        # Ties (64-bit collisions) break on the name, so every process builds the same ring.
        entries.sort()
        self._ring = [entry[0] for entry in entries]
        self._owners = [destinations[entry[2]] for entry in entries]

    def _points_of(self, destination: D, name: str, count: int) -> list[int]:
        points = self._points.setdefault(destination, [])
        if len(points) < count:
            prefix = name.encode("utf-8", "surrogatepass") + b"\x00"
            points.extend(stable_hash(prefix + str(i).encode())
                          for i in range(len(points), count))
        return points[:count]

    def _key_of(self, message: Routable) -> bytes | None:
        if self._hash_header is not None:
            headers = message.headers
            return hash_input(headers.get(self._hash_header)) if headers else None
        if self._hash_property is not None:
            return hash_input(read_property(message, self._hash_property))
        return message.routing_key.encode("utf-8", "surrogatepass")

    def route(self, message: Routable) -> Collection[D]:
        if self._ring_stale:
            self._rebuild()
        ring = self._ring
        if not ring:
            return ()
        key = self._key_of(message)
        if key is None:
            return ()
        index = bisect_left(ring, stable_hash(key))
        return (self._owners[index if index < len(ring) else 0],)


# A call, not a class decorator: mypyc compiles only undecorated classes to native ones.
register(ConsistentHashExchange)
