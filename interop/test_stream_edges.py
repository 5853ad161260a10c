"""Edge cases of streams end to end: a 100 MB message, 10,000 consumer groups' offsets across
a restart, retention dropping segments under a slow reader, segment boundaries inside a
publish batch, and offsets outside the log (see test_streams.py for the common cases).
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aio_pika
import pika
import pytest

from interop.config_broker import ConfigBroker
from interop.test_streams import STREAM, bodies, declare_stream, publish, pump, read

pytestmark = pytest.mark.timeout(120)


# -- a 100 MB message --------------------------------------------------------------------


def test_100_mb_message_round_trip(pika_connect: Callable[[], Any], names: Any) -> None:
    """Under both brokers' 128 MiB max_message_size: published with a confirm, read back
    whole from ``first`` (sent in frame_max-sized body frames both ways)."""
    q = names.queue()
    body = hashlib.sha256(b"seed").digest() * (100 * 1024 * 1024 // 32)
    connection = pika_connect()
    channel = connection.channel()
    declare_stream(channel, q)
    publish(channel, q, [b"small before"])
    publish(channel, q, [body], headers={"kind": "big"})
    publish(channel, q, [b"small after"])
    reader = pika_connect().channel()
    got: list[tuple[int, bytes, Any]] = []
    reader.basic_qos(prefetch_count=1)
    for method, properties, received in reader.consume(
            q, arguments={"x-stream-offset": "first"}, inactivity_timeout=60):
        assert method is not None, f"only {len(got)} of 3 messages within 60 s"
        got.append((properties.headers["x-stream-offset"], received, properties.headers))
        reader.basic_ack(method.delivery_tag)
        if len(got) == 3:
            break
    reader.cancel()
    assert [(offset, len(data)) for offset, data, _ in got] == [
        (0, len(b"small before")), (1, len(body)), (2, len(b"small after"))]
    assert hashlib.sha256(got[1][1]).digest() == hashlib.sha256(body).digest()
    assert got[1][2]["kind"] in ("big", b"big")


# -- 10,000 consumer groups ----------------------------------------------------------------

GROUPS = 10_000
STREAMS = 1  # all groups on one stream, consumed on one channel
SPREAD = 20  # group i starts at offset i % SPREAD


async def _consume_groups(
    url: str, q: str, first_time: bool, first_offsets: dict[int, int],
) -> None:
    """One consumer per group, the groups of each stream on one channel, all on one
    connection; each group gets one delivery (prefetch 1), acked on the first visit.
    Returns once every group has had its first delivery and (first visit) a confirmed
    publish proved that the acks were committed."""
    connection = await aio_pika.connect(url, timeout=30)
    async with connection:
        done = asyncio.Event()

        def on_message_for(group: int) -> Callable[[Any], Any]:
            async def on_message(message: Any) -> None:
                if group not in first_offsets:
                    first_offsets[group] = message.headers["x-stream-offset"]
                    if first_time:
                        await message.ack()
                    if len(first_offsets) == GROUPS:
                        done.set()
            return on_message

        async def consume_on(stream: int) -> None:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=1)
            queue = await channel.get_queue(f"{q}.{stream}", ensure=False)
            for group in range(stream, GROUPS, STREAMS):
                arguments: dict[str, Any] = {"x-stream-group": f"g{group}"}
                if first_time:
                    arguments["x-stream-offset"] = group % SPREAD
                await queue.consume(on_message_for(group), arguments=arguments)

        await asyncio.gather(*(consume_on(n) for n in range(STREAMS)))
        await asyncio.wait_for(done.wait(), 60)
        if first_time:
            # The acks above came earlier on this connection: once this confirm arrives,
            # the group commit that carries their offsets has been fsync'd.
            channel = await connection.channel(publisher_confirms=True)
            await channel.default_exchange.publish(aio_pika.Message(b"sync"), f"{q}.0")


@pytest.mark.amqpd_only
def test_ten_thousand_group_offsets_survive_a_restart(tmp_path: Path) -> None:
    """10,000 groups of one stream, each with its own committed offset. An ack or a
    consume feeds only its own group, so this takes about as long as 100 streams of 100
    groups each would (it was O(groups^2) when every dispatch visited every group)."""
    q = "orders"
    broker = ConfigBroker(tmp_path, "{}\n", log_level="warning")
    url = f"amqp://guest:guest@127.0.0.1:{broker.port}/"
    try:
        channel = pika.BlockingConnection(pika.URLParameters(url)).channel()
        for stream in range(STREAMS):
            declare_stream(channel, f"{q}.{stream}")
            publish(channel, f"{q}.{stream}", bodies(SPREAD + 1))
        channel.connection.close()
        acked: dict[int, int] = {}
        asyncio.run(_consume_groups(url, q, True, acked))
        assert acked == {group: group % SPREAD for group in range(GROUPS)}
    finally:
        broker.stop()
    broker = ConfigBroker(tmp_path, "{}\n", log_level="warning")
    url = f"amqp://guest:guest@127.0.0.1:{broker.port}/"
    try:
        resumed: dict[int, int] = {}
        asyncio.run(_consume_groups(url, q, False, resumed))
        # Each group resumes right after the one message it acked (x-stream-offset is not
        # given again: a group with a commit ignores it anyway).
        assert resumed == {group: group % SPREAD + 1 for group in range(GROUPS)}
    finally:
        broker.stop()


OFFSET_GAPS = ("RabbitMQ 3.10 spends an offset on a tracking chunk at the start of each "
               "segment, so its offsets have gaps at segment boundaries; amqpd's are contiguous")


def in_order_once(got: list[bytes], published: list[bytes]) -> bool:
    """``got`` is a subsequence of ``published``: nothing twice, nothing out of order."""
    remaining = iter(published)
    return all(any(body == candidate for candidate in remaining) for body in got)


# -- retention under a slow reader ---------------------------------------------------------


@pytest.mark.rabbitmq_differs(reason=OFFSET_GAPS)
def test_retention_sweep_under_a_slow_consumer(
    pika_connect: Callable[[], Any], names: Any, server_product: str,
) -> None:
    q = names.queue()
    producer = pika_connect().channel()
    declare_stream(producer, q, **{"x-max-length-bytes": 20_000,
                                   "x-stream-max-segment-size-bytes": 2_000})
    publish(producer, q, bodies(10, "early"))
    connection = pika_connect()
    reader = connection.channel()
    reader.basic_qos(prefetch_count=5)
    held: list[tuple[Any, int]] = []
    got: list[tuple[int, bytes]] = []

    def on_message(_ch: Any, method: Any, properties: Any, body: bytes) -> None:
        offset = properties.headers["x-stream-offset"]
        got.append((offset, body))
        if len(got) <= 5:
            held.append((method, offset))  # the slow part: not acked until much later
        else:
            reader.basic_ack(method.delivery_tag)

    reader.basic_consume(q, on_message, arguments={"x-stream-offset": "first"})
    pump(connection, lambda: len(got) >= 5)
    assert [offset for offset, _ in got] == [0, 1, 2, 3, 4]
    # Meanwhile far more than x-max-length-bytes is published: retention drops the segments
    # the reader is in (amqpd checks on every roll and at most once a second).
    late = [f"late{i:04d}".encode() + bytes(90) for i in range(600)]
    for start in range(0, len(late), 100):
        publish(producer, q, late[start:start + 100])
        time.sleep(0.2)
    for method, _ in held:
        reader.basic_ack(method.delivery_tag)
    pump(connection, lambda: bool(got) and got[-1][1] == late[-1], timeout=15)
    offsets = [offset for offset, _ in got]
    assert offsets == sorted(set(offsets)), "offsets must increase, nothing twice"
    published = bodies(10, "early") + late
    assert in_order_once([body for _, body in got], published)
    assert got[-1][1] == late[-1]
    if server_product == "amqpd":
        assert got[-1][0] == len(published) - 1
        for offset, body in got:  # what was delivered is what sits at that offset
            assert body == published[offset]
        assert len(offsets) < len(published), "retention dropped segments not yet read"
        after_gap = next(o for a, o in itertools.pairwise(offsets) if o != a + 1)
        assert after_gap > 5


# -- segment boundaries inside a batch -----------------------------------------------------


@pytest.mark.anyio
@pytest.mark.rabbitmq_differs(reason=OFFSET_GAPS)
async def test_segment_boundaries_inside_one_publish_batch(
    aio_connect: Any, names: Any, server_product: str,
) -> None:
    """Hundreds of publishes in flight at once (one group commit or a few) on a stream with
    2,000-byte segments: the batch spans many segments, one message is larger than a whole
    segment; a tailing consumer and a replay from ``first`` both see every message once,
    in order."""
    q = names.queue()
    messages = [f"batch{i:04d}".encode() * 10 for i in range(400)]
    messages[150] = b"x" * 10_000  # a segment of its own
    connection = await aio_connect()
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(q, durable=True, arguments={
            **STREAM, "x-stream-max-segment-size-bytes": 2_000})
        tail_channel = await connection.channel()
        await tail_channel.set_qos(prefetch_count=1000)
        tail: list[tuple[int, bytes]] = []
        complete = asyncio.Event()

        async def on_message(message: Any) -> None:
            tail.append((message.headers["x-stream-offset"], message.body))
            await message.ack()
            if len(tail) == len(messages):
                complete.set()

        tail_queue = await tail_channel.get_queue(q, ensure=False)
        await tail_queue.consume(on_message, arguments={"x-stream-offset": "next"})
        await asyncio.gather(*(channel.default_exchange.publish(aio_pika.Message(body), q)
                               for body in messages))
        await asyncio.wait_for(complete.wait(), 30)
    assert [body for _, body in tail] == messages
    offsets = [offset for offset, _ in tail]
    assert offsets == sorted(set(offsets))
    if server_product == "amqpd":
        assert offsets == list(range(len(messages)))
    replay_connection = await aio_connect()
    async with replay_connection:
        replay_channel = await replay_connection.channel()
        await replay_channel.set_qos(prefetch_count=50)
        replay: list[tuple[int, bytes]] = []
        queue = await replay_channel.get_queue(q, ensure=False)
        async with queue.iterator(arguments={"x-stream-offset": "first"}) as iterator:
            async for message in iterator:
                replay.append((message.headers["x-stream-offset"], message.body))
                await message.ack()
                if len(replay) == len(messages):
                    break
    assert replay == tail


# -- offsets outside the log ---------------------------------------------------------------


def test_timestamp_before_the_first_message_reads_everything(
    pika_conn: Any, names: Any,
) -> None:
    q = names.queue()
    channel = pika_conn.channel()
    declare_stream(channel, q)
    publish(channel, q, bodies(4))
    long_ago = datetime.datetime(2000, 1, 1)
    assert read(channel, q, 4, {"x-stream-offset": long_ago}) == list(enumerate(bodies(4)))


@pytest.mark.amqpd_only
@pytest.mark.rabbitmq_differs(
    reason="RabbitMQ 3.10 attaches at the offset asked for and delivers nothing until the "
           "stream reaches it; amqpd starts at the next message (README: beyond the end)")
def test_offset_past_the_end_waits_for_the_next_message(
    pika_connect: Callable[[], Any], names: Any,
) -> None:
    q = names.queue()
    producer = pika_connect().channel()
    declare_stream(producer, q)
    publish(producer, q, bodies(3))
    connection = pika_connect()
    reader = connection.channel()
    reader.basic_qos(prefetch_count=10)
    got: list[tuple[int, bytes]] = []
    reader.basic_consume(
        q, lambda ch, m, p, b: got.append((p.headers["x-stream-offset"], b)),
        arguments={"x-stream-offset": 1_000_000})
    pump(connection, lambda: False, timeout=0.3)
    assert got == []
    publish(producer, q, [b"new"])
    pump(connection, lambda: bool(got))
    assert got == [(3, b"new")]
