"""Scenarios of ``interop/bench.py`` that measure what a user feels under real load.

- ``latency_1k``, ``latency_5k``, ``latency_20k``: open-loop latency. The publisher (its own
  process and connection) sends message i at its scheduled time t0 + i / rate and stamps
  that scheduled time into the body; the consumer (another process and connection) records
  receive time minus scheduled time. A broker that stalls is charged for every message that
  waited, however the publisher was held up (no coordinated omission). Percentiles
  p50/p99/p99.9/max over everything after the first half second.
- ``parallel_6``, ``parallel_32``: N producer/consumer pairs at once, each pair with its own
  queue and its own two connections; the aggregate delivery rate at the consumers.
- ``large_64k``, ``large_1m``: producer and consumer on one queue with 64 KiB and 1 MiB
  bodies (split into 128 KiB frames); messages/s and MB/s at the consumer.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

try:
    from interop import bench_scenarios as sc
    from interop import loadgen
except ImportError:  # run as a script: interop/ itself is on sys.path
    import bench_scenarios as sc  # type: ignore[no-redef]
    import loadgen  # type: ignore[no-redef]

LATENCY_RATES = {"latency_1k": 1_000.0, "latency_5k": 5_000.0, "latency_20k": 20_000.0}
PARALLEL_PAIRS = {"parallel_6": 6, "parallel_32": 32}
LARGE_BODIES = {"large_64k": 64 * 1024, "large_1m": 1024 * 1024}
# Connections per generator process for the parallel scenarios: 32 pairs in 64 processes
# would take the CPU from the brokers on a small machine; a process serves its sockets in
# turn (non-blocking), so a held-back connection does not hold up the others.
CONNECTIONS_PER_PROCESS = 4
WARMUP_S = 0.5


def _latency(rate: float) -> Callable[[sc.Ctx], dict[str, Any]]:
    def scenario(ctx: sc.Ctx) -> dict[str, Any]:
        queue = ctx.new_queue()
        duration = max(ctx.opts.duration, 3.0)
        workers: list[loadgen.Worker] = [
            loadgen.Consumer(
                ctx.url, [queue], sc.PREFETCH, duration=duration + 2.0, stamps=True,
                warmup=WARMUP_S, stop_idle=1.0, name="consumer",
            ),
            loadgen.PacedPublisher(ctx.url, queue, sc.BODY_SIZE, rate=rate, duration=duration),
        ]
        timed = ctx.timed(workers)
        consumer = next(r for r in timed.results if r["name"] == "consumer")
        samples = sorted(consumer["latencies_ns"])
        if not samples:
            raise RuntimeError("no latency samples")
        publisher = next(r for r in timed.results if r["name"] == "paced-publisher")
        return {
            "p50_ms": round(sc.percentile(samples, 0.50), 3),
            "p99_ms": round(sc.percentile(samples, 0.99), 3),
            "p999_ms": round(sc.percentile(samples, 0.999), 3),
            "max_ms": round(samples[-1] / 1e6, 3),
            "mean_ms": round(statistics.fmean(samples) / 1e6, 3),
            "rate": rate,
            "messages": timed.count("paced-publisher"),
            "received": timed.count("consumer"),
            "samples": len(samples),
            # Sends that found more than 8 messages due: the generator itself fell behind
            # (the stamps still charge the wait to the measurement, as they should).
            "late_sends": publisher.get("late_sends", 0),
            "method": "open loop, scheduled-time stamps",
            "seconds": duration,
            **timed.cpu_fields(),
        }

    scenario.__doc__ = f"Open-loop latency at {rate:,.0f} msgs/s."
    return scenario


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _parallel(pairs: int) -> Callable[[sc.Ctx], dict[str, Any]]:
    def scenario(ctx: sc.Ctx) -> dict[str, Any]:
        queues = [ctx.new_queue() for _ in range(pairs)]
        duration = ctx.opts.duration
        groups = _chunks(queues, CONNECTIONS_PER_PROCESS)
        workers: list[loadgen.Worker] = [
            *(loadgen.Consumer(ctx.url, group, sc.PREFETCH, duration=duration, name="consumer")
              for group in groups),
            *(loadgen.PairPublisher(ctx.url, group, sc.BODY, duration=duration)
              for group in groups),
        ]
        timed = ctx.timed(workers)
        return {
            **sc.rate_fields(timed.count("consumer"), duration),
            "published_per_s": round(timed.count("publisher") / duration, 1),
            "pairs": pairs,
            "generator_processes": len(workers),
            **timed.cpu_fields(),
        }

    scenario.__doc__ = f"{pairs} producer/consumer pairs, own queues and connections."
    return scenario


def _large(body_size: int) -> Callable[[sc.Ctx], dict[str, Any]]:
    def scenario(ctx: sc.Ctx) -> dict[str, Any]:
        queue = ctx.new_queue()
        duration = ctx.opts.duration
        body = bytes(range(256)) * (body_size // 256)
        # A smaller prefetch for big bodies, as applications use: 100 x 1 MiB in flight.
        prefetch = 100 if body_size <= 64 * 1024 else 10
        workers: list[loadgen.Worker] = [
            loadgen.Consumer(ctx.url, [queue], prefetch, duration=duration, name="consumer"),
            loadgen.Publisher(ctx.url, "", [queue], body, duration=duration, batch=4),
        ]
        timed = ctx.timed(workers)
        consumed = timed.count("consumer")
        return {
            **sc.rate_fields(consumed, duration),
            "mb_per_s": round(consumed * body_size / duration / 1e6, 1),
            "body_bytes": body_size,
            "prefetch": prefetch,
            **timed.cpu_fields(),
        }

    scenario.__doc__ = f"Producer and consumer on one queue, {body_size:,}-byte bodies."
    return scenario


SCENARIOS: dict[str, Callable[[sc.Ctx], dict[str, Any]]] = {
    **{name: _latency(rate) for name, rate in LATENCY_RATES.items()},
    **{name: _parallel(pairs) for name, pairs in PARALLEL_PAIRS.items()},
    **{name: _large(size) for name, size in LARGE_BODIES.items()},
}

METRICS: dict[str, list[tuple[str, str, bool]]] = {
    **{
        name: [
            ("p50_ms", "p50 ms", False),
            ("p99_ms", "p99 ms", False),
            ("p999_ms", "p99.9 ms", False),
            ("max_ms", "max ms", False),
        ]
        for name in LATENCY_RATES
    },
    **{name: [("msgs_per_s", "msgs/s", True), ("mb_per_s", "MB/s", True)]
       for name in LARGE_BODIES},
}
