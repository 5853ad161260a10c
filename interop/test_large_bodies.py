"""Large bodies delivered to a consumer over a real socket: the broker writes a large body
from the message's own bytes, in several buffers per write (amqpd/session/output.py)."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.mark.parametrize("sizes", [
    [65536] * 20,
    [1024 * 1024, 16383, 16384, 3 * 131064 + 5, 1, 0, 1024 * 1024],
])
def test_consumed_large_bodies_arrive_whole_and_in_order(channel: Any, names: Any,
                                                          sizes: list[int]) -> None:
    q = names.queue()
    channel.queue_declare(q)
    channel.confirm_delivery()
    bodies = [bytes([index % 251]) * size for index, size in enumerate(sizes)]
    for body in bodies:
        channel.basic_publish("", q, body)
    received: list[bytes] = []
    channel.basic_qos(prefetch_count=3)  # several deliveries per write, some held back

    def on_message(ch: Any, method: Any, _properties: Any, body: bytes) -> None:
        received.append(body)
        ch.basic_ack(method.delivery_tag)

    channel.basic_consume(q, on_message)
    connection = channel.connection
    while len(received) < len(bodies):
        connection.process_data_events(time_limit=5)
    assert [len(body) for body in received] == sizes
    assert received == bodies
