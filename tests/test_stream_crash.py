"""kill -9 the broker while a client publishes to a stream with confirms and a consumer group
reads it: after a restart every confirmed message is in the stream exactly once, in order,
and the group resumes at its commit, which never passes a message the client did not ack
(at least once).

The client runs in its own process (``python -m tests.test_stream_crash PORT STREAM``): a
publisher thread prints ``confirmed N`` for each confirmed body N (1, 2, 3, ...), a consumer
thread in the group prints ``acked N OFFSET`` after each ack it sent. Two rounds run in
``make test``; ``AMQPD_STREAM_CRASH_ROUNDS=50`` runs more (``AMQPD_CRASH_ROUNDS`` too, as
``make test-crash`` sets it).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
import pytest

from .broker_process import REPO_ROOT
from .test_crash import Amqpd

ROUNDS = int(os.environ.get("AMQPD_STREAM_CRASH_ROUNDS",
                            os.environ.get("AMQPD_CRASH_ROUNDS", "2")))
GROUP = "billing"
# Small segments: a kill also lands next to segment rolls, not only inside one segment.
STREAM_ARGUMENTS = {"x-queue-type": "stream", "x-stream-max-segment-size-bytes": 64 * 1024}
_OUTPUT = threading.Lock()


# -- the client process ------------------------------------------------------------------


def _report(line: str) -> None:
    with _OUTPUT:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def _publish(port: int, stream: str) -> None:
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    channel = connection.channel()
    channel.confirm_delivery()
    number = 0
    try:
        while True:
            number += 1
            channel.basic_publish("", stream, str(number).encode())
            _report(f"confirmed {number}")
    except Exception:  # the broker was killed: that is the point
        return


def _consume(port: int, stream: str) -> None:
    try:
        connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
        channel = connection.channel()
        channel.basic_qos(prefetch_count=20)

        def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
            time.sleep(0.002)  # slower than the publisher: the kill finds messages unacked
            ch.basic_ack(method.delivery_tag)
            _report(f"acked {body.decode()} {properties.headers['x-stream-offset']}")

        channel.basic_consume(stream, on_message, arguments={
            "x-stream-group": GROUP, "x-stream-offset": "first"})
        channel.start_consuming()
    except Exception:
        return


def client_main(port: int, stream: str) -> None:
    """Declare the stream, then publish and consume until the broker goes away."""
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    connection.channel().queue_declare(stream, durable=True, arguments=STREAM_ARGUMENTS)
    connection.close()
    threading.Thread(target=_consume, args=(port, stream), daemon=True).start()
    _publish(port, stream)


# -- the test ----------------------------------------------------------------------------


@dataclass
class StreamRound:
    confirmed: list[int]
    acked_offsets: set[int]
    stream: list[tuple[int, int]]  # (offset, body) from first after the restart
    resumed: list[tuple[int, int, bool]]  # (offset, body, redelivered) of the group


def read_back(port: int, stream: str) -> tuple[list[tuple[int, int]], list[tuple[int, int, bool]]]:
    """Everything in the stream from ``first``, then what the group gets when it comes back
    (no ``x-stream-offset``: it resumes at its commit), each until a second of silence."""
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    try:
        everything: list[tuple[int, int]] = []
        channel = connection.channel()
        channel.basic_qos(prefetch_count=500)
        for method, properties, body in channel.consume(
                stream, arguments={"x-stream-offset": "first"}, inactivity_timeout=1.0):
            if method is None:
                break
            everything.append((properties.headers["x-stream-offset"], int(body)))
            channel.basic_ack(method.delivery_tag)
        channel.cancel()
        resumed: list[tuple[int, int, bool]] = []
        group = connection.channel()
        group.basic_qos(prefetch_count=500)
        for method, properties, body in group.consume(
                stream, arguments={"x-stream-group": GROUP}, inactivity_timeout=1.0):
            if method is None:
                break
            resumed.append((properties.headers["x-stream-offset"], int(body), method.redelivered))
            group.basic_ack(method.delivery_tag)
        group.cancel()
        return everything, resumed
    finally:
        connection.close()


def crash_round(target: Amqpd, seed: int) -> StreamRound:
    rng = random.Random(seed)
    stream = f"stream-crash-{seed}"
    target.start()
    client = subprocess.Popen(
        [sys.executable, "-m", "tests.test_stream_crash", str(target.port), stream],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    time.sleep(rng.uniform(1.0, 2.0))
    target.kill9()
    output, _ = client.communicate(timeout=60)
    lines = [line.split() for line in output.splitlines()]
    confirmed = [int(words[1]) for words in lines if words[0] == "confirmed"]
    acked_offsets = {int(words[2]) for words in lines if words[0] == "acked"}
    target.restart()
    everything, resumed = read_back(target.port, stream)
    return StreamRound(confirmed, acked_offsets, everything, resumed)


def check(result: StreamRound) -> None:
    assert result.confirmed, "the publisher confirmed nothing before the crash"
    offsets = [offset for offset, _ in result.stream]
    bodies = [body for _, body in result.stream]
    assert offsets == list(range(len(offsets))), "offsets are contiguous from 0"
    # Exactly once, in order: the bodies are 1..n (the publisher never resends); everything
    # confirmed is there, and at most the unconfirmed tail beyond it.
    assert bodies == list(range(1, len(bodies) + 1))
    assert len(bodies) >= max(result.confirmed), (
        f"confirmed up to {max(result.confirmed)}, the stream holds {len(bodies)}")
    # The group resumes at its commit: everything before it was acked by the client (a
    # commit never passes an unacked message), and from there it gets the rest in order.
    # (Nothing at all: the commit was at the end of the stream.)
    commit = result.resumed[0][0] if result.resumed else len(result.stream)
    assert set(range(commit)) <= result.acked_offsets, (
        f"the group resumed at {commit}, past unacked offsets "
        f"{sorted(set(range(commit)) - result.acked_offsets)[:5]}")
    assert [(offset, body) for offset, body, _ in result.resumed] == result.stream[commit:]


@pytest.mark.timeout(60 + 30 * ROUNDS)
def test_stream_keeps_confirmed_messages_and_group_commits_through_kill_9(
    tmp_path: Path,
) -> None:
    for round_number in range(ROUNDS):
        target = Amqpd(tmp_path / f"data-{round_number}")
        try:
            check(crash_round(target, round_number))
        finally:
            target.stop()


if __name__ == "__main__":
    client_main(int(sys.argv[1]), sys.argv[2])
