"""Consumer groups of streams are visible to operators (amqpd's own: RabbitMQ has no
groups): committed offset and lag per group on the queue object of the management API, at
/api/stream-groups, in ``amqpd ctl list_stream_groups`` and as Prometheus gauges."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_management_api import Api
from test_management_tools import ctl
from test_streams import _take, bodies, declare_stream, publish

pytestmark = pytest.mark.amqpd_only


def test_group_lag_in_api_ctl_and_prometheus(
    pika_connect: Any, names: Any, management_url: str, prometheus_url: str
) -> None:
    q = names.queue()
    producer = pika_connect().channel()
    declare_stream(producer, q)
    publish(producer, q, bodies(10))
    consumer = pika_connect()
    channel = consumer.channel()
    got = _take(consumer, channel, q, 10, {"x-stream-group": "billing",
                                           "x-stream-offset": "first"})
    for method, offset, _ in got:
        if offset < 4:
            channel.basic_ack(method.delivery_tag)
    consumer.process_data_events(time_limit=0.2)  # the acks reach the broker
    api = Api(management_url)
    expected = {"group": "billing", "committed_offset": 4, "lag": 6, "consumers": 1}
    stream = api.get(f"queues/%2F/{q}").json()["stream"]
    assert stream["first_offset"] == 0 and stream["next_offset"] == 10
    assert stream["consumer_groups"] == [expected]
    rows = [r for r in api.get("stream-groups/%2F").json() if r["queue"] == q]
    assert rows == [{"vhost": "/", "queue": q, **expected}]
    listed = ctl(management_url, "list_stream_groups", "-q").stdout.splitlines()
    assert f"{q}\tbilling\t4\t6\t1" in listed
    text = httpx.get(prometheus_url, timeout=10).text
    samples = {
        (s.name, s.labels.get("queue"), s.labels.get("group")): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
        if s.name.startswith("amqpd_stream_group_")
    }
    assert samples[("amqpd_stream_group_lag_messages", q, "billing")] == 6
    assert samples[("amqpd_stream_group_committed_offset", q, "billing")] == 4
    consumer.close()
