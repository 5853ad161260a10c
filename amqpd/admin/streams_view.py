"""What the management API, ``amqpd ctl`` and Prometheus show of streams: each stream's
offsets and its consumer groups' committed offsets and lag (read live, nothing kept)."""

from __future__ import annotations

from typing import Any

from amqpd.streams.queue import StreamQueue


def stream_json(queue: StreamQueue) -> dict[str, Any]:
    """The stream's part of its queue object."""
    log = queue.log
    return {
        "stream": {
            "first_offset": log.first_offset,
            "next_offset": log.next_offset,
            "bytes": log.total_bytes,
            "consumer_groups": queue.group_report(),
        }
    }


def group_rows(queues: list[Any]) -> list[dict[str, Any]]:
    """One row per (stream, group), in the order of the given queues."""
    return [
        {"vhost": queue.vhost_name, "queue": queue.name, **row}
        for queue in queues if isinstance(queue, StreamQueue)
        for row in queue.group_report()
    ]
