"""Stream scenarios of ``interop/bench.py`` (``x-queue-type: stream``), run like the others.

  stream_publish      N x 256 B to a fresh stream with confirms (window 1,000); msgs/s and
                      the disk footprint: bytes of the stream's files / bytes of payload.
                      Every body is random (amqpd stores what consecutive records share
                      once: one repeated body would measure compression)
  stream_publish_4k   the same with N / 4 x 4 KiB bodies
  stream_consume_1    a stream pre-filled with N x 256 B (untimed), read from ``first`` by
  stream_consume_10   1 / 10 consumers at once (prefetch 1,000, one ack per message); each
                      reads the whole stream: total deliveries/s and the median per consumer

N is ``--prefill`` (200,000 by default). Load comes from ``loadgen``'s raw-socket workers
(one forked process per consumer), not from pika. The stream's files are found through the
broker's open descriptors (/proc/PID/fd: a file whose directory name contains the stream's
name), so the same code measures amqpd (``<data_dir>/streams/<vhost>/<stream>/``) and
RabbitMQ (``<mnesia dir>/stream/<vhost>_<stream>_<ts>/``); it needs the broker's PID and
the right to read its /proc entries (root for a RabbitMQ running as ``rabbitmq``).
"""

from __future__ import annotations

import os
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pamqp import commands

try:
    from interop import bench_scenarios as sc
    from interop import loadgen
except ImportError:  # run as a script: interop/ itself is on sys.path
    import bench_scenarios as sc  # type: ignore[no-redef]
    import loadgen  # type: ignore[no-redef]

STREAM_PREFETCH = 1000
CONSUMERS = {"stream_consume_1": 1, "stream_consume_10": 10}
BODIES = {"stream_publish": 256, "stream_publish_4k": 4096}


def declare_stream(ctx: sc.Ctx) -> str:
    """A fresh, uniquely named stream that ``ctx.cleanup`` deletes."""
    stream = ctx.name("s")
    ctx.queues.append(stream)
    ctx.control.rpc(
        commands.Queue.Declare(queue=stream, durable=True, arguments={"x-queue-type": "stream"}),
        commands.Queue.DeclareOk,
    )
    return stream


def stream_files(pid: int | None, stream: str) -> list[Path]:
    """The files of ``stream``'s directory, found through the descriptors ``pid`` holds open
    in it (empty without a PID or the right to read /proc/PID/fd)."""
    if pid is None:
        return []
    # RabbitMQ names the directory <vhost>_<stream>_<ts> with every other character as "_".
    rabbit_name = re.sub(r"[^A-Za-z0-9]", "_", stream)
    directories: set[Path] = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = Path(os.readlink(fd))
            except OSError:
                continue
            if stream in target.parent.name or rabbit_name in target.parent.name:
                directories.add(target.parent)
    except OSError:
        return []
    return [f for d in directories for f in d.iterdir() if f.is_file()]


def footprint_fields(pid: int | None, stream: str, payload_bytes: int) -> dict[str, Any]:
    """Bytes of the stream's files (apparent size and blocks allocated) over payload bytes."""
    files = stream_files(pid, stream)
    if not files:
        return {"disk_note": "stream files not found (no broker PID or no /proc access)"}
    stats = [f.stat() for f in files]
    apparent = sum(s.st_size for s in stats)
    allocated = sum(s.st_blocks * 512 for s in stats)
    return {
        "disk_bytes": apparent,
        "disk_allocated_bytes": allocated,
        "disk_files": len(files),
        "disk_over_payload": round(apparent / payload_bytes, 3),
        "disk_allocated_over_payload": round(allocated / payload_bytes, 3),
    }


def fill_stream(ctx: sc.Ctx, stream: str, count: int, body: bytes) -> sc.Timed:
    """Publish ``count`` messages of ``len(body)`` random bytes each, with confirms (window
    1,000); returns the timed phase. Random: amqpd stores what consecutive records share once,
    so one body repeated would measure compression, not the cost of storing messages."""
    worker = loadgen.Publisher(
        ctx.url, "", [stream], body, duration=ctx.opts.cap, limit=count, window=sc.CONFIRM_WINDOW,
        distinct_bodies=True,
    )
    return ctx.timed([worker])


def _publish(body_size: int) -> Callable[[sc.Ctx], dict[str, Any]]:
    def scenario(ctx: sc.Ctx) -> dict[str, Any]:
        count = ctx.opts.prefill * 256 // body_size
        body = bytes(range(256)) * (body_size // 256)
        stream = declare_stream(ctx)
        timed = fill_stream(ctx, stream, count, body)
        nacked = sum(int(r.get("nacked", 0)) for r in timed.results)
        return {
            **sc.rate_fields(timed.count(), timed.end() - timed.t0),
            "mb_per_s": round(timed.count() * body_size / (timed.end() - timed.t0) / 1e6, 1),
            "body_bytes": body_size,
            "window": sc.CONFIRM_WINDOW,
            "nacked": nacked,
            **footprint_fields(ctx.broker_pid, stream, timed.count() * body_size),
            **timed.cpu_fields(),
        }

    scenario.__doc__ = f"{body_size:,}-byte bodies to a stream with confirms (window 1,000)."
    return scenario


@dataclass
class StreamConsumer(loadgen.Consumer):
    """``loadgen.Consumer`` with ``x-stream-offset: first`` on its basic.consume."""

    offset: str = "first"

    def setup(self) -> None:
        self.conns = [loadgen.Connection(self.url) for _ in self.queues]
        for conn, queue in zip(self.conns, self.queues, strict=True):
            conn.rpc(commands.Basic.Qos(prefetch_count=self.prefetch), commands.Basic.QosOk)
            conn.rpc(
                commands.Basic.Consume(queue=queue, arguments={"x-stream-offset": self.offset}),
                commands.Basic.ConsumeOk,
            )


def _consume(consumers: int) -> Callable[[sc.Ctx], dict[str, Any]]:
    def scenario(ctx: sc.Ctx) -> dict[str, Any]:
        count = ctx.opts.prefill
        stream = declare_stream(ctx)
        fill = fill_stream(ctx, stream, count, sc.BODY)
        fill_rate = round(count / (fill.end() - fill.t0), 1)
        ctx.partial["prefill_msgs_per_s"] = fill_rate
        workers: list[loadgen.Worker] = [
            StreamConsumer(ctx.url, [stream], STREAM_PREFETCH, duration=ctx.opts.cap,
                           expect=count, stop_idle=5.0)
            for _ in range(consumers)
        ]
        timed = ctx.timed(workers)
        per_consumer = [r["count"] / max(r["end"] - timed.t0, 1e-6) for r in timed.results]
        short = [r["count"] for r in timed.results if r["count"] < count]
        result = {
            **sc.rate_fields(timed.count(), timed.end() - timed.t0),
            "per_consumer_msgs_per_s": round(statistics.median(per_consumer), 1),
            "consumers": consumers,
            "prefill": count,
            "prefill_msgs_per_s": fill_rate,
            "prefetch": STREAM_PREFETCH,
            **timed.cpu_fields(),
        }
        if short:
            result["short_reads"] = short  # a consumer gave up before reading everything
        return result

    scenario.__doc__ = f"{consumers} consumer(s) reading a pre-filled stream from first."
    return scenario


SCENARIOS: dict[str, Callable[[sc.Ctx], dict[str, Any]]] = {
    **{name: _publish(size) for name, size in BODIES.items()},
    **{name: _consume(n) for name, n in CONSUMERS.items()},
}

METRICS: dict[str, list[tuple[str, str, bool]]] = {
    **{name: [("msgs_per_s", "msgs/s", True),
              ("disk_over_payload", "disk bytes / payload bytes", False)]
       for name in BODIES},
    **{name: [("msgs_per_s", "deliveries/s, all consumers", True),
              ("per_consumer_msgs_per_s", "msgs/s per consumer, median", True)]
       for name in CONSUMERS},
}
