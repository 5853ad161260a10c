"""An operator moves or deletes a stream's consumer group (amqpd's own, as Kafka's
``kafka-consumer-groups --reset-offsets`` / ``--delete``; RabbitMQ has no groups): through
the management API (``PUT``/``DELETE /api/stream-groups/{vhost}/{queue}/{group}``) and
``amqpd ctl reset_stream_group_offset`` / ``delete_stream_group``; never under consumers."""

from __future__ import annotations

import time
from typing import Any

import pytest
from test_management_api import Api
from test_management_tools import ctl
from test_streams import _take, bodies, declare_stream, publish, pump

pytestmark = pytest.mark.amqpd_only


def _consume_and_ack(pika_connect: Any, q: str, group: str, count: int,
                     arguments: dict[str, Any] | None = None) -> list[int]:
    """A member of ``group`` takes ``count`` messages, acks them all and leaves: the
    offsets it got."""
    connection = pika_connect()
    channel = connection.channel()
    got = _take(connection, channel, q, count, {"x-stream-group": group, **(arguments or {})})
    channel.basic_ack(got[-1][0].delivery_tag, multiple=True)
    connection.process_data_events(time_limit=0.2)  # the ack reaches the broker
    connection.close()
    return [offset for _, offset, _ in got]


def _group(api: Api, q: str, group: str) -> dict[str, Any] | None:
    rows = api.get("stream-groups/%2F").json()
    return next((r for r in rows if r["queue"] == q and r["group"] == group), None)


def test_reset_replays_and_skips(pika_connect: Any, names: Any, management_url: str) -> None:
    q = names.queue()
    producer = pika_connect().channel()
    declare_stream(producer, q)
    publish(producer, q, bodies(10))
    path = f"stream-groups/%2F/{q}/audit"
    assert _consume_and_ack(pika_connect, q, "audit", 10, {"x-stream-offset": "first"}) == \
        list(range(10))
    api = Api(management_url)
    assert _group(api, q, "audit") == {"vhost": "/", "queue": q, "group": "audit",
                                       "committed_offset": 10, "lag": 0, "consumers": 0}

    reply = api.put(path, {"offset": "first"})  # replay everything
    assert reply.status_code == 200
    assert reply.json() == {"vhost": "/", "queue": q, "group": "audit",
                            "committed_offset": 0, "lag": 10, "consumers": 0}
    assert _consume_and_ack(pika_connect, q, "audit", 10) == list(range(10))

    assert api.put(path, {"offset": 7}).json()["committed_offset"] == 7
    assert _consume_and_ack(pika_connect, q, "audit", 3) == [7, 8, 9]

    assert api.put(path, {"offset": "last"}).json()["committed_offset"] == 9
    assert api.put(path, {"offset": "next"}).json() == {
        "vhost": "/", "queue": q, "group": "audit", "committed_offset": 10, "lag": 0,
        "consumers": 0}
    publish(producer, q, [b"after"])
    assert _consume_and_ack(pika_connect, q, "audit", 1) == [10]

    # A group never seen before is created at the offset (as Kafka does).
    assert api.put(f"stream-groups/%2F/{q}/fresh", {"offset": 4}).status_code == 200
    assert _consume_and_ack(pika_connect, q, "fresh", 7) == list(range(4, 11))


def test_reset_to_a_time(pika_connect: Any, names: Any, management_url: str) -> None:
    q = names.queue()
    producer = pika_connect().channel()
    declare_stream(producer, q)
    publish(producer, q, bodies(3, "old"))
    time.sleep(0.05)
    boundary = time.time()
    time.sleep(0.05)
    publish(producer, q, bodies(2, "new"))
    api = Api(management_url)
    reply = api.put(f"stream-groups/%2F/{q}/g", {"timestamp": boundary})
    assert reply.status_code == 200 and reply.json()["committed_offset"] == 3
    assert _consume_and_ack(pika_connect, q, "g", 2) == [3, 4]
    # An interval: that long ago, here before the first message.
    assert api.put(f"stream-groups/%2F/{q}/g", {"offset": "1h"}).json()["committed_offset"] == 0
    # ctl takes an ISO 8601 time (UTC when it names no zone).
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(boundary + 3600))
    result = ctl(management_url, "reset_stream_group_offset", q, "g", iso)
    assert "now at offset 5 (lag 0)" in result.stdout


def test_refused_while_consumers_are_attached(pika_connect: Any, names: Any,
                                              management_url: str) -> None:
    q = names.queue()
    producer = pika_connect().channel()
    declare_stream(producer, q)
    publish(producer, q, bodies(5))
    connection = pika_connect()
    channel = connection.channel()
    got = _take(connection, channel, q, 5, {"x-stream-group": "busy",
                                            "x-stream-offset": "first"})
    api = Api(management_url)
    for reply in (api.put(f"stream-groups/%2F/{q}/busy", {"offset": "first"}),
                  api.delete(f"stream-groups/%2F/{q}/busy")):
        assert reply.status_code == 409
        assert reply.json() == {
            "error": "conflict",
            "reason": f"group 'busy' of queue '{q}' in vhost '/' has 1 consumer(s): "
                      "cancel them first"}
    # The member carries on: its acks commit as before.
    channel.basic_ack(got[-1][0].delivery_tag, multiple=True)
    pump(connection, lambda: (_group(api, q, "busy") or {}).get("committed_offset") == 5)
    connection.close()


def test_delete_forgets_the_group(pika_connect: Any, names: Any, management_url: str) -> None:
    q = names.queue()
    producer = pika_connect().channel()
    declare_stream(producer, q)
    publish(producer, q, bodies(4))
    _consume_and_ack(pika_connect, q, "temp", 4, {"x-stream-offset": "first"})
    api = Api(management_url)
    assert _group(api, q, "temp") is not None
    assert api.delete(f"stream-groups/%2F/{q}/temp").status_code == 204
    assert _group(api, q, "temp") is None
    assert api.delete(f"stream-groups/%2F/{q}/temp").status_code == 404
    # No commit any more: x-stream-offset says where a new member starts.
    assert _consume_and_ack(pika_connect, q, "temp", 4, {"x-stream-offset": "first"}) == \
        [0, 1, 2, 3]
    ctl(management_url, "delete_stream_group", q, "temp")
    assert _group(api, q, "temp") is None
    failed = ctl(management_url, "delete_stream_group", q, "temp", check=False)
    assert failed.returncode == 1 and "404" in failed.stderr


def test_bad_requests_get_clear_answers(pika_connect: Any, names: Any,
                                        management_url: str) -> None:
    q = names.queue()
    classic = names.queue()
    channel = pika_connect().channel()
    declare_stream(channel, q)
    channel.queue_declare(classic)
    api = Api(management_url)
    path = f"stream-groups/%2F/{q}/g"
    expected = ('expected {"offset": "first" | "last" | "next" | <offset> | <interval such '
                'as "1h">} or {"timestamp": <seconds since the epoch>}')
    for body, reason in [
        ({"offset": "sideways"}, f"invalid offset 'sideways': {expected}"),
        ({}, expected),
        ({"timestamp": "yesterday"}, "timestamp must be a number of seconds, got 'yesterday'"),
    ]:
        reply = api.put(path, body)
        assert reply.status_code == 400, body
        assert reply.json() == {"error": "bad_request", "reason": reason}
    reply = api.put(f"stream-groups/%2F/{classic}/g", {"offset": "first"})
    assert reply.status_code == 400
    assert reply.json()["reason"] == (f"queue '{classic}' in vhost '/' is not a stream: only "
                                      "streams have groups")
    assert api.put(f"stream-groups/%2F/{names.queue()}/g", {"offset": 0}).status_code == 404
    assert api.put(f"stream-groups/no-such-vhost/{q}/g", {"offset": 0}).status_code == 404

    # Moving a group is consuming: it needs read permission on the stream.
    user = names.queue()
    assert api.put(f"users/{user}", {"password": "pw", "tags": "management"}).status_code \
        in (201, 204)
    api.put(f"permissions/%2F/{user}", {"configure": ".*", "write": ".*", "read": ""})
    try:
        reply = api.as_user(user, "pw").put(path, {"offset": "first"})
        assert reply.status_code == 401
        assert reply.json()["reason"] == (f"access to queue '{q}' in vhost '/' refused for "
                                          f"user '{user}'")
    finally:
        api.delete(f"users/{user}")
    assert _group(api, q, "g") is None  # nothing was created by the refused calls
