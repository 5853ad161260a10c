"""Rates from monotonic counters: samples in small fixed-size rings, deltas on request.

The broker only increments counters (:mod:`amqpd.broker.stats`, ``Queue.stat_*``). A
sampler task calls :meth:`Rates.sample` every :data:`SAMPLE_INTERVAL` seconds; a rate is
``(value now - value in an older sample) / seconds between them``, so nothing grows with
traffic and nothing can drift from the live state. Queue churn (created / deleted) is
found by comparing the queues seen at consecutive samples, which keeps the declare path
untouched; a queue that lives less than one interval is not counted.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping

from amqpd.broker.broker import Broker
from amqpd.broker.queue import Queue

SAMPLE_INTERVAL = 5.0
#: Samples kept: one minute at the default interval.
RING_SIZE = 13
#: A rate is computed against a sample at least this old (shorter spans are noise).
MIN_SPAN = 1.0
QUEUE_COUNTERS = ("publish", "deliver_get", "ack", "redeliver")
#: Key of the ready-message depth recorded in each sample (queue and broker-wide).
DEPTH = "messages_ready"

Sample = tuple[float, Mapping[str, int]]


def queue_counts(queue: Queue) -> dict[str, int]:
    """A queue's counters under their message_stats names."""
    return {
        "publish": queue.stat_publish,
        "deliver_get": queue.stat_deliver_get,
        "ack": queue.stat_ack,
        "redeliver": queue.stat_redeliver,
    }


def rate_between(
    ring: Iterable[Sample], now: float, current: Mapping[str, int]
) -> dict[str, float]:
    """Per-second rate of each counter since the newest sample at least MIN_SPAN old."""
    base: Sample | None = None
    for sample in ring:  # oldest first: keep the newest one old enough
        if now - sample[0] >= MIN_SPAN:
            base = sample
    if base is None:
        return dict.fromkeys(current, 0.0)
    span = now - base[0]
    return {
        name: round(max(0, value - base[1].get(name, value)) / span, 1)
        for name, value in current.items()
    }


class Rates:
    """The rings of the broker-wide counters and of every queue."""

    def __init__(
        self,
        broker: Broker,
        extra: Callable[[], Mapping[str, int]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.broker = broker
        self.clock = clock
        # Counters computed by the caller at sample time (churn: closed = created - open).
        self.extra = extra
        self.global_ring: deque[Sample] = deque(maxlen=RING_SIZE)
        # A plain dict pruned to the live queues at every sample (a compiled queue takes no
        # weak reference); _seen_queues holds a deleted one for an interval anyway.
        self.queue_rings: dict[Queue, deque[Sample]] = {}
        # Strong references for one interval: a deleted queue must still be here to be
        # counted at the next sample.
        self._seen_queues: set[Queue] = set()
        self.queue_created = 0
        self.queue_deleted = 0
        self._started = False

    def global_counts(self) -> dict[str, int]:
        """Every broker-wide counter now, queue churn and the caller's extras included."""
        counts = self.broker.stats.snapshot()
        counts["queue_created"] = self.queue_created
        counts["queue_declared"] = self.queue_created
        counts["queue_deleted"] = self.queue_deleted
        if self.extra is not None:
            counts.update(self.extra())
        return counts

    def sample(self) -> None:
        """Record the counters now (called every SAMPLE_INTERVAL by the sampler task)."""
        now = self.clock()
        live: set[Queue] = set()
        ready_total = 0
        for vhost in list(self.broker.vhosts.values()):
            for queue in vhost.queues.values():
                live.add(queue)
                ring = self.queue_rings.get(queue)
                if ring is None:
                    ring = self.queue_rings[queue] = deque(maxlen=3)
                # The ready depth rides along (a level, not a counter: rate_between never
                # reads it; the dashboard derives a queue's growth from it).
                depth = queue.message_count
                ready_total += depth
                ring.append((now, {**queue_counts(queue), DEPTH: depth}))
        for gone in [queue for queue in self.queue_rings if queue not in live]:
            del self.queue_rings[gone]
        if self._started:
            self.queue_created += sum(1 for queue in live if queue not in self._seen_queues)
            self.queue_deleted += sum(1 for queue in self._seen_queues if queue not in live)
        self._started = True
        self._seen_queues = live
        self.global_ring.append((now, {**self.global_counts(), DEPTH: ready_total}))

    def global_rates(self) -> tuple[dict[str, int], dict[str, float]]:
        """(counters now, their rates)."""
        current = self.global_counts()
        return current, rate_between(self.global_ring, self.clock(), current)

    def queue_rates(self, queue: Queue) -> tuple[dict[str, int], dict[str, float]]:
        """(a queue's counters now, their rates)."""
        current = queue_counts(queue)
        return current, rate_between(self.queue_rings.get(queue, ()), self.clock(), current)


def with_details(counts: Mapping[str, int], rates: Mapping[str, float],
                 names: Iterable[str]) -> dict[str, object]:
    """RabbitMQ's ``{"publish": 5, "publish_details": {"rate": 1.0}, ...}``."""
    result: dict[str, object] = {}
    for name in names:
        result[name] = counts.get(name, 0)
        result[f"{name}_details"] = {"rate": rates.get(name, 0.0)}
    return result
