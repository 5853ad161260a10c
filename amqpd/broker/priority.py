"""Priorities: the ready structure of a priority queue and the ranking of consumers.

Priority queues (``x-max-priority`` on queue.declare, the ``priority`` property on
messages): :class:`PriorityReady` keeps one FIFO :class:`Lane` per priority level in use.
The head of the queue is the head of the highest lane, so "higher priority first, FIFO
within a priority" holds by construction, and a requeued message is merged back into its
own lane by its original position. A message without priority is priority 0 and one above
the queue's maximum counts as the maximum (RabbitMQ does both); its properties are not
changed. Each lane also carries its own paged tail (see ``amqpd.broker.priority_queue``).

Consumer priorities (``x-priority`` on basic.consume): :class:`ConsumerRanks` groups the
consumers of a queue by priority, highest first, round-robin inside a group. A queue only
builds one when a consumer with a non-zero priority joins, so the plain ring of consumers
stays the hot path.

Invalid arguments get RabbitMQ 3.10's reply texts word for word, Erlang terms included,
because that is what clients written against RabbitMQ may show or match.
"""

from __future__ import annotations

import bisect
import datetime
import decimal
from collections import deque
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from amqpd.protocol import codec
from amqpd.protocol.errors import ChannelError

if TYPE_CHECKING:
    from amqpd.broker.consumer import QueueConsumer
    from amqpd.broker.message import QueueEntry

#: The highest x-max-priority RabbitMQ accepts.
MAX_PRIORITY = 255


def _type_name(value: object) -> str:
    """The AMQP field type of a decoded table value, as RabbitMQ names it in errors."""
    if value is None:
        return "void"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str | bytes | bytearray):
        return "longstr"
    if isinstance(value, float):
        return "double"
    if isinstance(value, decimal.Decimal):
        return "decimal"
    if isinstance(value, datetime.datetime):
        return "timestamp"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, list | tuple):
        return "array"
    return type(value).__name__


def _integer_argument(arguments: Mapping[str, object], name: str, describe: str) -> int:
    value = arguments[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ChannelError(
            406, f"invalid arg '{name}' for {describe}: "
            f'"expected integer, got {_type_name(value)}"',
        )
    return value


def max_priority_argument(arguments: Mapping[str, object], describe: str) -> int:
    """The ``x-max-priority`` of a queue.declare (0 when absent).

    RabbitMQ 3.10 accepts 0 to 255; 0 (every message at the one level) is a FIFO queue.

    Raises:
        ChannelError: 406 with RabbitMQ's text for a non-integer, negative or too large value.
    """
    name = "x-max-priority"
    if name not in arguments:
        return 0
    value = _integer_argument(arguments, name, describe)
    if value < 0:
        raise ChannelError(406, f"invalid arg '{name}' for {describe}: {{value_negative,{value}}}")
    if value > MAX_PRIORITY:
        raise ChannelError(
            406, f"invalid arg '{name}' for {describe}: {{max_value_exceeded,{value}}}"
        )
    return value


def consumer_priority(arguments: Mapping[str, object] | None, describe: str) -> int:
    """The ``x-priority`` of a basic.consume (0 when absent; any integer, negative too).

    Raises:
        ChannelError: 406 with RabbitMQ's text when it is not an integer.
    """
    if not arguments or "x-priority" not in arguments:
        return 0
    return _integer_argument(arguments, "x-priority", describe)


class Lane:
    """The ready entries of one priority level, oldest first, and its paged tail: ``paged``
    entries newer than every entry in ``entries`` wait in the scratch file (keyed by the lane
    object itself) or, not written yet, in ``spill_buffer``."""

    __slots__ = ("entries", "level", "paged", "spill_buffer")

    def __init__(self, level: int) -> None:
        self.level = level
        self.entries: deque[QueueEntry] = deque()
        self.paged = 0
        self.spill_buffer: list[QueueEntry] = []

    def __repr__(self) -> str:
        return f"<Lane {self.level} ready={len(self.entries)} paged={self.paged}>"


class PriorityReady:
    """The ready entries of a priority queue: a lane per level, highest level first.

    Only levels with entries (in memory or paged) have a lane; ``_levels`` lists them in
    ascending order, so the head lane is ``_levels[-1]`` and a level appears or goes with
    one bisect. ``len()`` counts the entries in memory (tombstones included, as the FIFO
    queue's deque does), which is what flow control and memory accounting read.
    """

    __slots__ = ("_count", "_lanes", "_levels", "max_priority")

    def __init__(self, max_priority: int) -> None:
        self.max_priority = max_priority
        self._lanes: dict[int, Lane] = {}
        self._levels: list[int] = []
        self._count = 0

    def level_of(self, entry: QueueEntry) -> int:
        """The entry's priority, clamped to the queue's maximum."""
        priority = codec.priority(entry.message.header_payload)
        return priority if priority < self.max_priority else self.max_priority

    def lane(self, level: int) -> Lane:
        """The lane of a level, made active if it was not."""
        lane = self._lanes.get(level)
        if lane is None:
            lane = self._lanes[level] = Lane(level)
            bisect.insort(self._levels, level)
        return lane

    def lane_of(self, entry: QueueEntry) -> Lane:
        """The lane an entry belongs in."""
        return self.lane(self.level_of(entry))

    def head(self) -> Lane | None:
        """The highest lane with entries in memory or paged, or None."""
        levels = self._levels
        return self._lanes[levels[-1]] if levels else None

    def retire(self, lane: Lane) -> None:
        """Forget a lane that has run empty (nothing in memory, nothing paged)."""
        if self._lanes.get(lane.level) is lane:
            del self._lanes[lane.level]
            self._levels.remove(lane.level)

    def lanes(self) -> list[Lane]:
        """The active lanes, highest first."""
        return [self._lanes[level] for level in reversed(self._levels)]

    def added(self, count: int) -> None:
        """``count`` entries were put into (or, negative, taken out of) some lane directly."""
        self._count += count

    # The operations the queue's generic code uses on its ready deque:

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    def __iter__(self) -> Iterator[QueueEntry]:
        """Entries in memory in delivery order (highest level first, then by position)."""
        for lane in self.lanes():
            yield from lane.entries

    def append(self, entry: QueueEntry) -> None:
        """Add an entry at the end of its lane."""
        self.lane_of(entry).entries.append(entry)
        self._count += 1

    def popleft(self) -> QueueEntry:
        """Remove the head entry in memory (paging is the queue's business, not this one's).

        Raises:
            IndexError: when no entry is in memory, as ``deque.popleft`` does.
        """
        for lane in self.lanes():
            if lane.entries:
                entry = lane.entries.popleft()
                self._count -= 1
                if not lane.entries and not lane.paged:
                    self.retire(lane)
                return entry
        raise IndexError("pop from an empty priority queue")

    def clear(self) -> None:
        """Forget every lane (the queue deals with what was paged)."""
        self._lanes.clear()
        self._levels.clear()
        self._count = 0


class ConsumerRanks:
    """The consumers of a queue grouped by ``x-priority``, highest group first.

    ``next`` gives the next message to the highest-priority consumer that can take one,
    rotating inside its group so consumers of equal priority share round-robin; when
    every consumer of a group is out of credit (prefetch full, connection congested) the
    next group down gets it.
    """

    __slots__ = ("_groups", "_priority", "_single_active", "ring")

    def __init__(self, ring: deque[QueueConsumer], single_active: bool) -> None:
        # ``ring`` is the queue's own list of consumers, in the order they joined; with
        # single-active-consumer its first member is the active one whatever the
        # priorities (RabbitMQ 3.10 does not rank single active consumers either).
        self.ring = ring
        self._single_active = single_active
        self._priority: dict[QueueConsumer, int] = {}
        self._groups: list[tuple[int, deque[QueueConsumer]]] = []

    def add(self, consumer: QueueConsumer, priority: int) -> None:
        """Rank a consumer (it joins the end of its group)."""
        self._priority[consumer] = priority
        groups = self._groups
        for index, (group_priority, group) in enumerate(groups):
            if group_priority == priority:
                group.append(consumer)
                return
            if group_priority < priority:
                groups.insert(index, (priority, deque((consumer,))))
                return
        groups.append((priority, deque((consumer,))))

    def remove(self, consumer: QueueConsumer) -> None:
        """Forget a consumer."""
        priority = self._priority.pop(consumer, None)
        if priority is None:
            return
        for index, (group_priority, group) in enumerate(self._groups):
            if group_priority == priority:
                group.remove(consumer)
                if not group:
                    del self._groups[index]
                return

    @property
    def all_default(self) -> bool:
        """True when no consumer has a priority other than 0 (the plain ring will do)."""
        groups = self._groups
        return not groups or (len(groups) == 1 and groups[0][0] == 0)

    def next(self) -> QueueConsumer | None:
        """The consumer for the next message, or None when no consumer can take one."""
        if self._single_active:
            active = self.ring[0] if self.ring else None
            return active if active is not None and active.can_take() else None
        for _, group in self._groups:
            for _ in range(len(group)):
                consumer = group[0]
                group.rotate(-1)
                if consumer.can_take():
                    return consumer
        return None


__all__ = [
    "MAX_PRIORITY",
    "ConsumerRanks",
    "Lane",
    "PriorityReady",
    "consumer_priority",
    "max_priority_argument",
]
