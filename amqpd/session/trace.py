"""Per-stage timestamps of sampled messages (opt-in): where a message's time goes between
the read that completed its publish and the write of its delivery.

Off unless ``AMQPD_TRACE_STAGES`` names a file. Then one message in ``AMQPD_TRACE_EVERY``
(default 10) published on this broker is stamped at each stage, with ``time.monotonic`` (the
connection's clock; nanosecond resolution on Linux):

- ``read``: the socket read that completed the publish was handed to the connection;
- ``parsed``: its frames are decoded and the message built;
- ``routed``: the exchange chose its queues;
- ``dispatched``: a consumer was chosen and the delivery begins (when the consumer has
  credit, enqueue and dispatch happen in the same call as routing);
- ``encoded``: basic.deliver and the content are in the connection's output;
- ``written``: the writer task handed that output to the transport (the bytes reach the
  kernel in the same event-loop turn: uvloop writes at its end).

Every traced first delivery becomes a line of six integers (nanoseconds, the first absolute,
the others relative to ``read``), appended to the file a thousand lines at a time and at
exit; ``interop/stage_trace.py`` runs a workload and summarises them. Off, each hook is one
test of the constant ``TRACING``.
"""

from __future__ import annotations

import atexit
import os
import time
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from amqpd.broker.message import Message
    from amqpd.session.output import ConnectionOutput

TRACE_FILE: Final = os.environ.get("AMQPD_TRACE_STAGES", "")
TRACING: Final = bool(TRACE_FILE)
SAMPLE_EVERY: Final = max(1, int(os.environ.get("AMQPD_TRACE_EVERY", "10") or 10))
STAGES: Final = ("read", "parsed", "routed", "dispatched", "encoded", "written")
# Sampled messages in flight; bounded, as one that is never delivered would stay here.
_MAX_ACTIVE: Final = 10_000
_FLUSH_EVERY: Final = 1000

_counter = 0
# id(message) -> (message, its stamps so far); the message is kept so that the id stays its.
_active: dict[int, tuple[object, list[float]]] = {}
_done: list[list[float]] = []


def published(message: Message, read_at_monotonic: float) -> None:
    """A message was built from a publish (``read_at_monotonic``: the connection's time of
    the read, from ``time.monotonic``); samples one in SAMPLE_EVERY."""
    global _counter
    _counter += 1
    if _counter % SAMPLE_EVERY:
        return
    if len(_active) >= _MAX_ACTIVE:
        _active.clear()
    _active[id(message)] = (message, [read_at_monotonic, time.monotonic()])


def routed(message: Message) -> None:
    """The exchange chose the message's queues."""
    traced = _active.get(id(message))
    if traced is not None and traced[0] is message and len(traced[1]) == 2:
        traced[1].append(time.monotonic())


def dispatched(message: Message) -> None:
    """A delivery of the message begins."""
    traced = _active.get(id(message))
    if traced is not None and traced[0] is message and len(traced[1]) == 3:
        traced[1].append(time.monotonic())


def encoded(output: ConnectionOutput, message: Message) -> None:
    """The delivery is in the output of ``output``; only the first delivery is traced."""
    traced = _active.get(id(message))
    if traced is not None and traced[0] is message and len(traced[1]) == 4:
        del _active[id(message)]
        traced[1].append(time.monotonic())
        output.traced_queued.append(traced[1])


def taken(output: ConnectionOutput) -> None:
    """The shell took the output: what is traced in it is written with this batch."""
    output.traced_taken.extend(output.traced_queued)
    output.traced_queued.clear()


def written(output: ConnectionOutput) -> None:
    """The shell handed the batch taken last to the transport."""
    if not output.traced_taken:
        return
    now = time.monotonic()
    for stamps in output.traced_taken:
        stamps.append(now)
        _done.append(stamps)
    output.traced_taken.clear()
    if len(_done) >= _FLUSH_EVERY:
        flush()


def flush() -> None:
    """Append the finished records to TRACE_FILE."""
    if not _done:
        return
    lines = []
    for stamps in _done:
        start = stamps[0]
        fields = [int(start * 1e9)] + [int((t - start) * 1e9) for t in stamps[1:]]
        lines.append(" ".join(map(str, fields)) + "\n")
    _done.clear()
    with open(TRACE_FILE, "a", encoding="ascii") as file:
        file.writelines(lines)


if TRACING:
    atexit.register(flush)
