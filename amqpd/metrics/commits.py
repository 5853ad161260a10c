"""Group commits of the store, as the I/O shell sees them: latency and fsyncs.

The flusher (``amqpd.server``) calls :meth:`CommitStats.observe` once per committed batch --
tens to hundreds of times a second at most, never per message -- with how long the batch took
from being taken off the journal until it was durable, and how many fsyncs it waited for.
"""

from __future__ import annotations

from bisect import bisect_left

#: Upper bounds (seconds) of the commit latency buckets: an fsync on a good SSD takes well
#: under a millisecond, on a network disk or a busy HDD tens of milliseconds.
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class CommitStats:
    """A histogram of commit latencies (non-cumulative bucket counts; the last one is +Inf)
    and the fsync count."""

    __slots__ = ("buckets", "count", "fsyncs", "total_seconds")

    def __init__(self) -> None:
        self.buckets = [0] * (len(COMMIT_BUCKETS) + 1)
        self.count = 0
        self.total_seconds = 0.0
        self.fsyncs = 0

    def observe(self, seconds: float, fsyncs: int) -> None:
        """One batch became durable after ``seconds``, having waited for ``fsyncs`` fsyncs."""
        # bisect_left: a latency equal to a bound belongs in that bucket (Prometheus' "le").
        self.buckets[bisect_left(COMMIT_BUCKETS, seconds)] += 1
        self.count += 1
        self.total_seconds += seconds
        self.fsyncs += fsyncs

    def cumulative(self) -> list[tuple[str, float]]:
        """(le, count of observations <= le) pairs, +Inf last, as a Prometheus histogram."""
        result: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*COMMIT_BUCKETS, float("inf")), self.buckets, strict=True):
            running += count
            result.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return result
