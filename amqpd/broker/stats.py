"""Monotonic event counters of the whole broker, for the management API's message rates.

The hot path only ever does ``counters.name += 1`` on a slotted object; turning counts into
rates (sampling into rings, deltas over time) is the management layer's job
(:mod:`amqpd.admin.rates`), so nothing here allocates, locks or looks at a clock.
Per-queue counters are attributes of :class:`~amqpd.broker.queue.Queue` (``stat_*``).
"""

from __future__ import annotations

#: Counter names in RabbitMQ's ``message_stats`` / ``churn_rates`` vocabulary.
MESSAGE_COUNTERS = (
    "publish",
    "confirm",
    "deliver",
    "deliver_no_ack",
    "get",
    "get_no_ack",
    "get_empty",
    "ack",
    "redeliver",
    "return_unroutable",
    "drop_unroutable",
)
# Closed = created - open now, so closing needs no counter (and cannot double count).
CHURN_COUNTERS = (
    "connection_created",
    "channel_created",
)


class BrokerCounters:
    """Plain ints that only grow; read them, never reset them."""

    __slots__ = (*MESSAGE_COUNTERS, *CHURN_COUNTERS, "size_counts", "size_sum")

    def __init__(self) -> None:
        for name in MESSAGE_COUNTERS + CHURN_COUNTERS:
            setattr(self, name, 0)
        # Published body sizes: size_counts[k] counts bodies with 2**(k-1) < size <= 2**k
        # (index ``(size - 1).bit_length()``, one list increment per publish), so a
        # histogram with power-of-two buckets -- RabbitMQ's are 64, 256, ... 256 MiB -- is
        # exact at scrape time.
        self.size_counts: list[int] = [0] * 64
        self.size_sum = 0

    publish: int
    confirm: int
    deliver: int
    deliver_no_ack: int
    get: int
    get_no_ack: int
    get_empty: int
    ack: int
    redeliver: int
    return_unroutable: int
    drop_unroutable: int
    connection_created: int
    channel_created: int

    def size_buckets(self, bounds: tuple[int, ...]) -> list[tuple[int, int]]:
        """(bound, bodies of at most ``bound`` bytes) for power-of-two ``bounds``."""
        counts = self.size_counts
        return [(bound, sum(counts[: bound.bit_length()])) for bound in bounds]

    def snapshot(self) -> dict[str, int]:
        """Every counter by name (a copy)."""
        return {name: getattr(self, name) for name in MESSAGE_COUNTERS + CHURN_COUNTERS}
