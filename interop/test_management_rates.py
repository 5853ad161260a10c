"""Rates of change of queue depths (``messages_details.rate`` and its ready / unacknowledged
siblings) on queues, vhosts and the overview's ``queue_totals``: pika publishes and drains at
a steady pace while httpx polls the management API (amqpd, or RabbitMQ with AMQP_URL +
AMQP_MANAGEMENT_URL).

Both brokers compute these rates from periodic samples (amqpd every 5 s, RabbitMQ every
``collect_statistics_interval``), so the tests poll until the sign shows and check only the
sign and a plausible magnitude -- never a timing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote, urlparse

import httpx
import pika
import pytest

# Messages per step and seconds between steps: at most 100 msgs/s either way.
BATCH = 20
STEP = 0.2
NOMINAL_RATE = BATCH / STEP
# The growth phase lasts at least this long, so the drain that follows (same pace) outlasts
# one sampling interval plus the base sample's age on either broker.
MIN_GROWTH_SECONDS = 8.0
PHASE_TIMEOUT = 30.0
POLL_EVERY = 0.4


class Management:
    """GETs against ``/api/`` with the credentials of the management URL."""

    def __init__(self, url: str):
        parsed = urlparse(url)
        self.base = f"{parsed.scheme}://{parsed.hostname}:{parsed.port}{parsed.path}"
        self.client = httpx.Client(
            auth=(parsed.username or "guest", parsed.password or "guest"), timeout=10)

    def get(self, path: str) -> Any:
        response = self.client.get(self.base + path)
        assert response.status_code == 200, f"{path}: {response.status_code} {response.text}"
        return response.json()


@pytest.fixture
def management(management_url: str) -> Iterator[Management]:
    api = Management(management_url)
    yield api
    api.client.close()


def rate(obj: dict[str, Any], field: str) -> float:
    """``obj[field + "_details"]["rate"]``, a float on both brokers; 0.0 while RabbitMQ has
    not emitted a new queue's statistics yet (amqpd shows every field at once)."""
    details = obj.get(f"{field}_details")
    if details is None:
        return 0.0
    value = details["rate"]
    assert isinstance(value, float), f"{field}_details.rate is {value!r}"
    return value


Check = Callable[[], bool]


def drive(step: Callable[[], None], checks: dict[str, Check], min_seconds: float = 0.0,
          stop: Callable[[], bool] = lambda: False) -> None:
    """Run ``step`` every STEP seconds, polling every unmet check every POLL_EVERY seconds,
    until each has been met once and ``min_seconds`` have passed; fail on PHASE_TIMEOUT or
    when ``stop`` says the phase ran out of material first."""
    started = time.monotonic()
    pending = dict(checks)
    next_poll = started
    while pending or time.monotonic() - started < min_seconds:
        step()
        now = time.monotonic()
        if now >= next_poll:
            pending = {name: check for name, check in pending.items() if not check()}
            next_poll = now + POLL_EVERY
        if stop() and pending:
            pytest.fail(f"ran out before these showed: {sorted(pending)}")
        if now - started > PHASE_TIMEOUT:
            pytest.fail(f"never seen within {PHASE_TIMEOUT}s: {sorted(pending)}")
        time.sleep(STEP)


def test_messages_rate_is_positive_while_growing_and_negative_while_draining(
    management: Management, channel: Any, names: Any, vhost: str
) -> None:
    queue = names.queue()
    channel.queue_declare(queue)
    queue_path = f"queues/{quote(vhost, safe='')}/{quote(queue, safe='')}"
    vhost_path = f"vhosts/{quote(vhost, safe='')}"
    seen: dict[str, list[float]] = {"queue": [], "ready": [], "drain": [], "drain_ready": []}

    def publish() -> None:
        for _ in range(BATCH):
            channel.basic_publish("", queue, b"x" * 64)

    def queue_grows() -> bool:
        item = management.get(queue_path)
        seen["queue"].append(rate(item, "messages"))
        seen["ready"].append(rate(item, "messages_ready"))
        rate(item, "messages_unacknowledged")
        return seen["queue"][-1] > 0 and seen["ready"][-1] > 0

    def vhost_grows() -> bool:
        return rate(management.get(vhost_path), "messages") > 0

    def totals_grow() -> bool:
        return rate(management.get("overview")["queue_totals"], "messages") > 0

    drive(publish, {"queue": queue_grows, "vhost": vhost_grows, "overview": totals_grow},
          min_seconds=MIN_GROWTH_SECONDS)
    positive = [r for r in seen["queue"] if r > 0]
    assert positive and max(positive) <= 2 * NOMINAL_RATE, seen["queue"]

    remaining = [management.get(queue_path).get("messages", 1)]

    def take() -> None:
        for _ in range(BATCH):
            method, _properties, _body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                remaining[0] = 0
                return

    def queue_drains() -> bool:
        item = management.get(queue_path)
        seen["drain"].append(rate(item, "messages"))
        seen["drain_ready"].append(rate(item, "messages_ready"))
        return seen["drain"][-1] < 0 and seen["drain_ready"][-1] < 0

    drive(take, {"queue": queue_drains}, stop=lambda: remaining[0] == 0)
    negative = [r for r in seen["drain"] if r < 0]
    assert negative and min(negative) >= -2 * NOMINAL_RATE, seen["drain"]


def test_unacknowledged_rate_rises_as_a_consumer_takes_without_acking(
    management: Management, pika_params: pika.URLParameters, channel: Any, names: Any,
    vhost: str
) -> None:
    queue = names.queue()
    channel.queue_declare(queue)
    for _ in range(200):
        channel.basic_publish("", queue, b"x" * 64)
    queue_path = f"queues/{quote(vhost, safe='')}/{quote(queue, safe='')}"
    # Let both brokers take a sample of the full, undelivered queue first.
    deadline = time.monotonic() + PHASE_TIMEOUT
    while management.get(queue_path).get("messages_ready") != 200:
        assert time.monotonic() < deadline, "the queue never showed 200 ready messages"
        time.sleep(POLL_EVERY)
    time.sleep(6)
    consumer_connection = pika.BlockingConnection(pika_params)
    try:
        consumer = consumer_connection.channel()
        consumer.basic_qos(prefetch_count=50)
        consumer.basic_consume(queue, lambda *args: None)  # never acks
        seen: list[tuple[float, float]] = []

        def keep_connection_alive() -> None:
            consumer_connection.process_data_events(0)

        def unacked_rises() -> bool:
            item = management.get(queue_path)
            seen.append((rate(item, "messages_unacknowledged"), rate(item, "messages_ready")))
            return seen[-1][0] > 0 and seen[-1][1] < 0

        drive(keep_connection_alive, {"unacked": unacked_rises})
        unacked_rate, ready_rate = next((u, r) for u, r in seen if u > 0 and r < 0)
        # 50 messages moved from ready to unacknowledged over at least a second.
        assert 0 < unacked_rate <= 50 and -50 <= ready_rate < 0, seen
    finally:
        consumer_connection.close()


HISTORY = "lengths_age=60&lengths_incr=5&msg_rates_age=60&msg_rates_incr=5"


def test_history_parameters_add_samples_and_averages(
    management: Management, channel: Any, names: Any, vhost: str
) -> None:
    queue = names.queue()
    channel.queue_declare(queue)
    for _ in range(5):
        channel.basic_publish("", queue, b"x")
    queue_path = f"queues/{quote(vhost, safe='')}/{quote(queue, safe='')}"
    deadline = time.monotonic() + PHASE_TIMEOUT
    while "messages_details" not in management.get(queue_path):  # RabbitMQ: next emission
        assert time.monotonic() < deadline, "the queue never showed its statistics"
        time.sleep(POLL_EVERY)
    assert "samples" not in management.get(queue_path)["messages_details"]
    overview = management.get(f"overview?{HISTORY}")
    checked = {
        "overview queue_totals.messages": overview["queue_totals"]["messages_details"],
        "overview message_stats.publish": overview["message_stats"]["publish_details"],
        "queue messages_ready": management.get(f"{queue_path}?{HISTORY}")
        ["messages_ready_details"],
        "vhost messages": management.get(f"vhosts/{quote(vhost, safe='')}?{HISTORY}")
        ["messages_details"],
    }
    for where, details in checked.items():
        samples = details["samples"]
        assert samples, where
        assert all(isinstance(s["sample"], int) and isinstance(s["timestamp"], int)
                   for s in samples), (where, samples)
        timestamps = [s["timestamp"] for s in samples]
        assert timestamps == sorted(timestamps, reverse=True), (where, timestamps)
        assert abs(timestamps[0] / 1000 - time.time()) < 120, (where, timestamps[0])
        for key in ("rate", "avg", "avg_rate"):
            assert isinstance(details[key], float), (where, key, details)
