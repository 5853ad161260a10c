"""Rates from monotonic counters: samples in small fixed-size rings, deltas on request.

The broker only increments counters (:mod:`amqpd.broker.stats`, ``Queue.stat_*``). A
sampler task calls :meth:`Rates.sample` every :data:`SAMPLE_INTERVAL` seconds; a rate is
``(value now - value in an older sample) / seconds between them``, so nothing grows with
traffic and nothing can drift from the live state. Queue churn (created / deleted) is
found by comparing the queues seen at consecutive samples, which keeps the declare path
untouched; a queue that lives less than one interval is not counted.

Queue depths (ready and unacknowledged) ride along in every sample: their rate of change
(``messages_details.rate``, signed) is ``(depth now - depth in the base sample) / span``,
against the same base as the counters. Per-vhost totals get their own small rings so
``/api/vhosts`` and the overview answer from one sample per vhost, not one per queue.
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
#: Key of the ready-message depth recorded in each sample (queue, vhost and broker-wide).
DEPTH = "messages_ready"
#: Key of the delivered-but-unacknowledged depth recorded next to it.
UNACKED_DEPTH = "messages_unacknowledged"
#: The depth fields a rate of change is reported for; ``messages`` is their sum.
DEPTH_FIELDS = ("messages", DEPTH, UNACKED_DEPTH)

Sample = tuple[float, Mapping[str, int]]


def queue_counts(queue: Queue) -> dict[str, int]:
    """A queue's counters under their message_stats names."""
    return {
        "publish": queue.stat_publish,
        "deliver_get": queue.stat_deliver_get,
        "ack": queue.stat_ack,
        "redeliver": queue.stat_redeliver,
    }


def base_sample(ring: Iterable[Sample], now: float) -> Sample | None:
    """The newest sample at least MIN_SPAN old (None while there is none)."""
    base: Sample | None = None
    for sample in ring:  # oldest first: keep the newest one old enough
        if now - sample[0] >= MIN_SPAN:
            base = sample
    return base


def rate_between(
    ring: Iterable[Sample], now: float, current: Mapping[str, int]
) -> dict[str, float]:
    """Per-second rate of each counter since the newest sample at least MIN_SPAN old."""
    base = base_sample(ring, now)
    if base is None:
        return dict.fromkeys(current, 0.0)
    span = now - base[0]
    return {
        name: round(max(0, value - base[1].get(name, value)) / span, 1)
        for name, value in current.items()
    }


def depth_rates(ring: Iterable[Sample], now: float, ready: int,
                unacked: int) -> dict[str, float]:
    """Signed change per second of ``messages``, ``messages_ready`` and
    ``messages_unacknowledged`` since the base sample (0.0 while there is none)."""
    base = base_sample(ring, now)
    if base is None:
        return dict.fromkeys(DEPTH_FIELDS, 0.0)
    span = now - base[0]
    ready_then = base[1].get(DEPTH, ready)
    unacked_then = base[1].get(UNACKED_DEPTH, unacked)
    return {
        "messages": round((ready + unacked - ready_then - unacked_then) / span, 1),
        DEPTH: round((ready - ready_then) / span, 1),
        UNACKED_DEPTH: round((unacked - unacked_then) / span, 1),
    }


def depth_details(ready: int, unacked: int,
                  rates: Mapping[str, float] | None = None) -> dict[str, object]:
    """RabbitMQ's ``{"messages": 7, "messages_details": {"rate": -1.5}, ...}``."""
    rates = rates or {}
    return {
        "messages": ready + unacked,
        "messages_details": {"rate": rates.get("messages", 0.0)},
        DEPTH: ready,
        f"{DEPTH}_details": {"rate": rates.get(DEPTH, 0.0)},
        UNACKED_DEPTH: unacked,
        f"{UNACKED_DEPTH}_details": {"rate": rates.get(UNACKED_DEPTH, 0.0)},
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
        # Depth totals per vhost name (a vhost that goes away is pruned at the next sample).
        self.vhost_rings: dict[str, deque[Sample]] = {}
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

    def sample(self, unacked: Mapping[Queue, int] | None = None) -> None:
        """Record the counters and depths now (called every SAMPLE_INTERVAL by the sampler
        task); ``unacked`` is the delivered, unacknowledged count per queue (the channels
        hold them, not the queue: the caller walks the connections)."""
        now = self.clock()
        unacked = unacked or {}
        live: set[Queue] = set()
        ready_total = unacked_total = 0
        for vhost_name, vhost in list(self.broker.vhosts.items()):
            vhost_ready = vhost_unacked = 0
            for queue in vhost.queues.values():
                live.add(queue)
                ring = self.queue_rings.get(queue)
                if ring is None:
                    ring = self.queue_rings[queue] = deque(maxlen=3)
                # The depths ride along (levels, not counters: rate_between never reads
                # them; depth_rates and the dashboard's growth do).
                depth = queue.message_count
                held = unacked.get(queue, 0)
                vhost_ready += depth
                vhost_unacked += held
                ring.append((now, {**queue_counts(queue), DEPTH: depth, UNACKED_DEPTH: held}))
            vhost_ring = self.vhost_rings.get(vhost_name)
            if vhost_ring is None:
                vhost_ring = self.vhost_rings[vhost_name] = deque(maxlen=3)
            vhost_ring.append((now, {DEPTH: vhost_ready, UNACKED_DEPTH: vhost_unacked}))
            ready_total += vhost_ready
            unacked_total += vhost_unacked
        for gone in [queue for queue in self.queue_rings if queue not in live]:
            del self.queue_rings[gone]
        for name in [name for name in self.vhost_rings if name not in self.broker.vhosts]:
            del self.vhost_rings[name]
        if self._started:
            self.queue_created += sum(1 for queue in live if queue not in self._seen_queues)
            self.queue_deleted += sum(1 for queue in self._seen_queues if queue not in live)
        self._started = True
        self._seen_queues = live
        self.global_ring.append((now, {**self.global_counts(), DEPTH: ready_total,
                                       UNACKED_DEPTH: unacked_total}))

    def global_rates(self) -> tuple[dict[str, int], dict[str, float]]:
        """(counters now, their rates)."""
        current = self.global_counts()
        return current, rate_between(self.global_ring, self.clock(), current)

    def queue_rates(self, queue: Queue) -> tuple[dict[str, int], dict[str, float]]:
        """(a queue's counters now, their rates)."""
        current = queue_counts(queue)
        return current, rate_between(self.queue_rings.get(queue, ()), self.clock(), current)


    def queue_depth_rates(self, queue: Queue, unacked: int) -> dict[str, float]:
        """Signed depth rates of a queue holding ``unacked`` delivered messages now."""
        return depth_rates(self.queue_rings.get(queue, ()), self.clock(),
                           queue.message_count, unacked)

    def vhost_depth_rates(self, vhost: str, ready: int, unacked: int) -> dict[str, float]:
        """Signed depth rates of a vhost whose queues hold these totals now."""
        return depth_rates(self.vhost_rings.get(vhost, ()), self.clock(), ready, unacked)


def with_details(counts: Mapping[str, int], rates: Mapping[str, float],
                 names: Iterable[str]) -> dict[str, object]:
    """RabbitMQ's ``{"publish": 5, "publish_details": {"rate": 1.0}, ...}``."""
    result: dict[str, object] = {}
    for name in names:
        result[name] = counts.get(name, 0)
        result[f"{name}_details"] = {"rate": rates.get(name, 0.0)}
    return result
