"""The management HTTP API, driven with a real HTTP client against a real broker (amqpd,
or RabbitMQ with AMQP_URL + AMQP_MANAGEMENT_URL), with pika creating real state."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote, urlparse

import httpx
import pika
import pytest


class Api:
    """httpx against the management API; paths are relative to ``/api/``."""

    def __init__(self, url: str, user: str | None = None, password: str | None = None):
        parsed = urlparse(url)
        self.base = f"{parsed.scheme}://{parsed.hostname}:{parsed.port}{parsed.path}"
        self.auth = (user or parsed.username or "guest", password or parsed.password or "guest")
        self.client = httpx.Client(timeout=10)

    def as_user(self, user: str, password: str) -> Api:
        return Api(self.base, user, password)

    def request(self, method: str, path: str, auth: bool = True, **kwargs: Any) -> httpx.Response:
        return self.client.request(method, self.base + path,
                                   auth=self.auth if auth else None, **kwargs)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def put(self, path: str, body: Any = None) -> httpx.Response:
        return self.request("PUT", path, json=body if body is not None else {})

    def post(self, path: str, body: Any) -> httpx.Response:
        return self.request("POST", path, json=body)

    def delete(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", path, **kwargs)

    def eventually(self, path: str, predicate: Callable[[Any], bool],
                   timeout: float = 10.0) -> Any:
        """RabbitMQ publishes stats every interval: poll until they show."""
        deadline = time.monotonic() + timeout
        while True:
            response = self.get(path)
            if response.status_code == 200 and predicate(response.json()):
                return response.json()
            if time.monotonic() > deadline:
                raise AssertionError(f"{path}: {response.status_code} {response.text[:500]}")
            time.sleep(0.2)


@pytest.fixture(scope="module")
def api(management_url: str) -> Iterator[Api]:
    client = Api(management_url)
    yield client
    client.client.close()


def unique(prefix: str) -> str:
    return f"mgmt.{prefix}.{uuid.uuid4().hex[:10]}"


V = "%2F"


def test_no_credentials_is_401_with_realm(api: Api) -> None:
    response = api.get("overview", auth=False)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Basic realm="RabbitMQ Management"'
    wrong = api.as_user("guest", "not-the-password").get("overview")
    assert wrong.status_code == 401
    assert wrong.json()["reason"] == "Login failed"


def test_overview_has_what_strict_clients_need(api: Api, broker_addr: tuple[str, int]) -> None:
    response = api.get("overview")
    assert response.status_code == 200
    body = response.json()
    for field in ("product_name", "product_version", "rabbitmq_version", "cluster_name",
                  "node", "erlang_version", "erlang_full_version", "listeners",
                  "object_totals", "queue_totals", "message_stats", "churn_rates",
                  "statistics_db_event_queue", "exchange_types"):
        assert field in body, field
    for field in ("connections", "channels", "queues", "exchanges", "consumers"):
        assert isinstance(body["object_totals"][field], int)
    assert any(listener["protocol"] == "amqp" and listener["port"] == broker_addr[1]
               for listener in body["listeners"])
    assert int(body["rabbitmq_version"].split(".")[0]) >= 3


def test_whoami_nodes_extensions_aliveness_health(api: Api) -> None:
    assert api.get("whoami").json() == {"name": "guest", "tags": ["administrator"]}
    # RabbitMQ fills in a node's figures at its first stats emission after boot.
    nodes = api.eventually("nodes", lambda items: "mem_used" in items[0])
    assert len(nodes) == 1 and nodes[0]["running"] is True
    assert isinstance(nodes[0]["mem_used"], int) and isinstance(nodes[0]["fd_used"], int)
    assert api.get(f"nodes/{nodes[0]['name']}").json()["name"] == nodes[0]["name"]
    assert isinstance(api.get("extensions").json(), list)
    assert api.get(f"aliveness-test/{V}").json() == {"status": "ok"}
    assert api.get("aliveness-test/no-such-vhost").status_code == 404
    for check in ("alarms", "local-alarms", "virtual-hosts"):
        response = api.get(f"health/checks/{check}")
        assert response.status_code == 200 and response.json()["status"] == "ok", check
    port = urlparse(api.base).port
    assert api.get(f"health/checks/port-listener/{port}").json()["status"] == "ok"
    closed = api.get("health/checks/port-listener/1")
    assert closed.status_code == 503 and closed.json()["status"] == "failed"


def test_queue_crud_listing_paging(api: Api) -> None:
    names = sorted(unique("crud") for _ in range(3))
    try:
        for name in names:
            assert api.put(f"queues/{V}/{name}", {"durable": True}).status_code == 201
        assert api.put(f"queues/{V}/{names[0]}", {"durable": True}).status_code == 204
        conflict = api.put(f"queues/{V}/{names[0]}", {"durable": False})
        assert conflict.status_code == 400
        assert "inequivalent arg 'durable'" in conflict.json()["reason"]
        # RabbitMQ fills in the statistics of a new queue at its next stats emission.
        # (idle_since can come one emission after the message counts.)
        queue = api.eventually(f"queues/{V}/{names[0]}",
                               lambda q: "messages" in q and "idle_since" in q)
        for field in ("name", "vhost", "type", "durable", "auto_delete", "exclusive",
                      "arguments", "state", "node", "consumers", "messages",
                      "messages_ready", "messages_unacknowledged", "message_bytes",
                      "idle_since", "consumer_utilisation", "messages_details"):
            assert field in queue, field
        assert queue["vhost"] == "/" and queue["durable"] is True and queue["type"] == "classic"
        prefix = names[0].rsplit(".", 1)[0]
        page = api.get(f"queues/{V}", params={"page": "1", "page_size": "2", "name": prefix,
                                              "sort": "name", "sort_reverse": "true",
                                              "columns": "name,messages",
                                              "unknown_param": "x"}).json()
        assert page["filtered_count"] == 3 and page["item_count"] == 2
        assert page["page_count"] == 2 and page["page_size"] == 2
        assert [item["name"] for item in page["items"]] == names[::-1][:2]
        # (RabbitMQ leaves out "messages" until the queue's first stats emission)
        assert "name" in page["items"][0] and set(page["items"][0]) <= {"name", "messages"}
        plain = api.get("queues", params={"columns": "name,vhost"}).json()
        assert {"name": names[1], "vhost": "/"} in plain
        assert api.get(f"queues/{V}", params={"page": "1", "page_size": "501"}).status_code \
            == 400
    finally:
        for name in names:
            api.delete(f"queues/{V}/{name}")
    assert api.get(f"queues/{V}/{names[0]}").status_code == 404
    assert api.delete(f"queues/{V}/{names[0]}").status_code == 404


def test_queue_counts_follow_pika(api: Api, pika_conn: pika.BlockingConnection) -> None:
    name = unique("counts")
    channel = pika_conn.channel()
    channel.queue_declare(name)
    try:
        channel.confirm_delivery()
        for index in range(3):
            channel.basic_publish("", name, f"m{index}".encode())
        method, _, _ = channel.basic_get(name, auto_ack=False)
        assert method is not None
        channel.basic_consume(name, lambda *args: None, auto_ack=False)
        pika_conn.process_data_events(0.2)
        body = api.eventually(
            f"queues/{V}/{quote(name, safe='')}",
            lambda q: q.get("messages_unacknowledged") == 3 and q.get("consumers") == 1
            and q.get("message_stats", {}).get("publish") == 3)
        assert body["messages"] == 3 and body["messages_ready"] == 0
        assert isinstance(body["message_stats"]["publish_details"]["rate"], float)
        totals = api.get("overview").json()
        assert totals["object_totals"]["consumers"] >= 1
        assert totals["message_stats"]["publish"] >= 3
    finally:
        channel.queue_delete(name)


def test_paged_listing_sorts_by_message_counts(
    api: Api, pika_conn: pika.BlockingConnection
) -> None:
    prefix = unique("sorted")
    counts = {f"{prefix}.a": 0, f"{prefix}.b": 3, f"{prefix}.c": 1}
    channel = pika_conn.channel()
    try:
        for name, count in counts.items():
            channel.queue_declare(name)
            for _ in range(count):
                channel.basic_publish("", name, b"m")
        expected = sorted(counts, key=lambda name: -counts[name])
        for sort in ("messages", "messages_ready"):
            page = api.eventually(
                f"queues/{V}?page=1&page_size=100&name={prefix}&sort={sort}&sort_reverse=true",
                lambda body, sort=sort: [item.get(sort) for item in body["items"]] == [3, 1, 0])
            assert [item["name"] for item in page["items"]] == expected
            plain = api.get(f"queues/{V}", params={"sort": sort, "sort_reverse": "true"}).json()
            assert [item["name"] for item in plain if item["name"] in counts] == expected
    finally:
        for name in counts:
            channel.queue_delete(name)


# *_details objects that describe a peer, not a rate (the same on RabbitMQ).
_NOT_RATES = {"connection_details", "channel_details", "owner_pid_details",
              "consumer_details", "exclusive_consumer_details"}


def _rate_details(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(path, object) of every ``*_details`` object that is a rate, at any depth."""
    if isinstance(value, list):
        for item in value:
            yield from _rate_details(item, path + "[]")
    elif isinstance(value, dict):
        for key, item in value.items():
            if key.endswith("_details") and key not in _NOT_RATES:
                yield f"{path}.{key}", item
            else:
                yield from _rate_details(item, f"{path}.{key}")


def test_every_rate_details_object_carries_a_float_rate(
    api: Api, pika_conn: pika.BlockingConnection
) -> None:
    name = unique("details")
    channel = pika_conn.channel()
    channel.queue_declare(name)
    try:
        channel.basic_publish("", name, b"m")
        queue_path = f"queues/{V}/{quote(name, safe='')}"
        api.eventually(queue_path, lambda q: "messages_details" in q)
        found = set()
        for path in ("overview", "queues", queue_path, "vhosts", f"vhosts/{V}", "nodes"):
            for where, details in _rate_details(api.get(path).json(), path):
                assert isinstance(details, dict) and isinstance(details.get("rate"), float), \
                    f"{where}: {details!r}"
                found.add(where.rsplit(".", 1)[1])
        # The depth rates exist on queues, vhosts and the overview's queue_totals.
        assert {"messages_details", "messages_ready_details",
                "messages_unacknowledged_details", "publish_details"} <= found
    finally:
        channel.queue_delete(name)


def test_exchange_binding_publish_get_purge(api: Api) -> None:
    exchange, queue = unique("x"), unique("q")
    try:
        assert api.put(f"exchanges/{V}/{exchange}", {"type": "topic"}).status_code == 201
        assert api.put(f"exchanges/{V}/{exchange}", {"type": "topic"}).status_code == 204
        assert api.put(f"exchanges/{V}/{exchange}", {"type": "fanout"}).status_code == 400
        assert api.get(f"exchanges/{V}/{exchange}").json()["type"] == "topic"
        assert api.put(f"queues/{V}/{queue}", {"durable": False}).status_code == 201
        created = api.post(f"bindings/{V}/e/{exchange}/q/{queue}",
                           {"routing_key": "a.b/c d", "arguments": {"x-k": 1}})
        assert created.status_code == 201
        location = created.headers["location"]
        props = location.rsplit("/", 1)[1]
        binding = api.get(f"bindings/{V}/e/{exchange}/q/{queue}/{props}")
        assert binding.status_code == 200 and binding.json()["routing_key"] == "a.b/c d"
        assert api.post(f"bindings/{V}/e/{exchange}/q/{queue}",
                        {"routing_key": "plain"}).status_code == 201
        between = api.get(f"bindings/{V}/e/{exchange}/q/{queue}").json()
        assert sorted(b["routing_key"] for b in between) == ["a.b/c d", "plain"]
        assert any(b["source"] == exchange for b in api.get(f"bindings/{V}").json())
        source = api.get(f"exchanges/{V}/{exchange}/bindings/source").json()
        assert len(source) == 2
        routed = api.post(f"exchanges/{V}/{exchange}/publish",
                          {"routing_key": "plain", "payload": "hello",
                           "payload_encoding": "string",
                           "properties": {"headers": {"h": "v"}, "delivery_mode": 2}})
        assert routed.status_code == 200 and routed.json() == {"routed": True}
        unrouted = api.post(f"exchanges/{V}/{exchange}/publish",
                            {"routing_key": "nowhere", "payload": "x", "properties": {},
                             "payload_encoding": "string"})
        assert unrouted.json() == {"routed": False}
        api.post(f"exchanges/{V}/amq.default/publish",
                 {"routing_key": queue, "payload": "second", "properties": {},
                  "payload_encoding": "string"})
        peek = api.post(f"queues/{V}/{queue}/get",
                        {"count": 5, "ackmode": "ack_requeue_true", "encoding": "auto"}).json()
        assert [m["payload"] for m in peek] == ["hello", "second"]
        assert peek[0]["properties"]["headers"] == {"h": "v"}
        assert peek[0]["routing_key"] == "plain" and peek[0]["exchange"] == exchange
        api.eventually(f"queues/{V}/{queue}", lambda q: q.get("messages") == 2)
        assert api.delete(f"queues/{V}/{queue}/contents").status_code == 204
        api.eventually(f"queues/{V}/{queue}", lambda q: q.get("messages") == 0)
        assert api.delete(f"bindings/{V}/e/{exchange}/q/{queue}/{props}").status_code == 204
        assert api.get(f"bindings/{V}/e/{exchange}/q/{queue}/{props}").status_code == 404
    finally:
        api.delete(f"queues/{V}/{queue}")
        api.delete(f"exchanges/{V}/{exchange}")
    assert api.get(f"exchanges/{V}/{exchange}").status_code == 404


def test_vhost_names_are_percent_encoded(api: Api) -> None:
    vhost = unique("vh") + "/slash"
    encoded = quote(vhost, safe="")
    try:
        assert api.put(f"vhosts/{encoded}").status_code == 201
        assert api.put(f"vhosts/{encoded}").status_code == 204
        # the creator got full permissions
        assert api.get(f"permissions/{encoded}/guest").json()["configure"] == ".*"
        assert api.put(f"queues/{encoded}/a%2Fq", {}).status_code == 201
        queues = api.get(f"queues/{encoded}").json()
        assert [(q["name"], q["vhost"]) for q in queues] == [("a/q", vhost)]
        assert api.get(f"vhosts/{encoded}").json()["name"] == vhost
    finally:
        assert api.delete(f"vhosts/{encoded}").status_code == 204
    assert api.get(f"vhosts/{encoded}").status_code == 404
    assert api.get(f"queues/{encoded}").status_code == 404


@pytest.mark.amqpd_only
@pytest.mark.rabbitmq_differs  # RabbitMQ answers 404 for an empty vhost segment
def test_empty_vhost_segment_is_default_vhost_as_flower_sends(api: Api) -> None:
    response = api.get("queues//")
    assert response.status_code == 200 and isinstance(response.json(), list)


def test_users_tags_and_permissions(api: Api) -> None:
    plain, monitor, manager = unique("u0"), unique("u1"), unique("u2")
    try:
        assert api.put(f"users/{plain}", {"password": "p", "tags": ""}).status_code == 201
        assert api.put(f"users/{monitor}", {"password": "p", "tags": "monitoring"}) \
            .status_code == 201
        assert api.put(f"users/{manager}", {"password": "p", "tags": ["management"]}) \
            .status_code == 201
        assert api.put(f"users/{manager}", {"password": "p", "tags": ["management"]}) \
            .status_code == 204
        user = api.get(f"users/{manager}").json()
        assert user["tags"] == ["management"] and user["hashing_algorithm"].startswith("rabbit")
        no_tag = api.as_user(plain, "p").get("overview")
        assert no_tag.status_code == 401 and no_tag.json()["reason"] == "Not management user"
        not_admin = api.as_user(monitor, "p").get("users")
        assert not_admin.status_code == 401
        assert not_admin.json()["reason"] == "Not administrator user"
        # monitoring sees every vhost's objects in the global lists, but a vhost's own
        # path needs a permission there (or administrator), as RabbitMQ
        assert api.as_user(monitor, "p").get("queues").status_code == 200
        assert api.as_user(monitor, "p").get(f"queues/{V}").status_code == 401
        no_vhost = api.as_user(manager, "p").get(f"queues/{V}")
        assert no_vhost.status_code == 401
        assert api.as_user(manager, "p").get("queues").json() == []
        assert api.put(f"permissions/{V}/{manager}",
                       {"configure": "^$", "write": ".*", "read": ".*"}).status_code == 201
        assert api.as_user(manager, "p").get(f"queues/{V}").status_code == 200
        assert {"user": manager, "vhost": "/", "configure": "^$", "write": ".*",
                "read": ".*"} in api.get("permissions").json()
        assert api.as_user(manager, "p").put(f"queues/{V}/{unique('denied')}", {}) \
            .status_code in (401, 403)
        assert api.delete(f"permissions/{V}/{manager}").status_code == 204
    finally:
        bulk = api.post("users/bulk-delete", {"users": [plain, monitor, manager]})
        assert bulk.status_code == 204
    assert api.get(f"users/{plain}").status_code == 404


def test_connections_channels_consumers_and_close(
    api: Api, pika_params: pika.URLParameters,
) -> None:
    name = unique("conn")
    params = pika_params
    params.client_properties = {"connection_name": name}
    connection = pika.BlockingConnection(params)
    try:
        channel = connection.channel()
        queue = channel.queue_declare("", exclusive=True).method.queue
        channel.basic_qos(prefetch_count=7)
        channel.basic_consume(queue, lambda *args: None, consumer_tag=name)
        connection.process_data_events(0.1)

        def mine(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [c for c in items
                    if c.get("client_properties", {}).get("connection_name") == name]

        found = mine(api.eventually("connections", lambda items: bool(mine(items))))[0]
        for field in ("name", "node", "protocol", "user", "connected_at", "client_properties",
                      "vhost", "channels", "peer_host", "peer_port", "state"):
            assert field in found, field
        assert found["user"] == "guest" and found["vhost"] == "/"
        encoded = quote(found["name"], safe="")
        assert api.get(f"connections/{encoded}").json()["name"] == found["name"]
        assert any(c["name"] == found["name"] for c in api.get(f"vhosts/{V}/connections").json())
        channels = api.eventually(f"connections/{encoded}/channels",
                                  lambda items: len(items) == 1)
        assert channels[0]["number"] == 1 and channels[0]["prefetch_count"] == 7
        assert any(c["name"] == channels[0]["name"] for c in api.get("channels").json())
        consumers = api.eventually(f"consumers/{V}", lambda items: any(
            c["consumer_tag"] == name for c in items))
        consumer = next(c for c in consumers if c["consumer_tag"] == name)
        assert consumer["queue"] == {"name": queue, "vhost": "/"}
        assert consumer["ack_required"] is True
        closed = api.delete(f"connections/{encoded}", headers={"X-Reason": "test closes it"})
        assert closed.status_code == 204
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
            connection.process_data_events(2)
            connection.process_data_events(2)
        assert info.value.reply_code == 320
    finally:
        if connection.is_open:
            connection.close()
    assert api.get(f"connections/{encoded}").status_code == 404


def test_definitions_export_and_import(api: Api) -> None:
    exchange, queue = unique("dx"), unique("dq")
    definitions = {
        "exchanges": [{"name": exchange, "vhost": "/", "type": "fanout", "durable": True,
                       "auto_delete": False, "internal": False, "arguments": {}}],
        "queues": [{"name": queue, "vhost": "/", "durable": True, "auto_delete": False,
                    "arguments": {"x-max-length": 10}}],
        "bindings": [{"source": exchange, "vhost": "/", "destination": queue,
                      "destination_type": "queue", "routing_key": "", "arguments": {}}],
    }
    try:
        assert api.post("definitions", definitions).status_code in (200, 201, 204)
        assert api.get(f"queues/{V}/{queue}").json()["arguments"] == {"x-max-length": 10}
        exported = api.get("definitions").json()
        for key in ("rabbitmq_version", "users", "vhosts", "permissions", "queues",
                    "exchanges", "bindings", "policies", "parameters"):
            assert key in exported, key
        assert any(q["name"] == queue and q["vhost"] == "/" for q in exported["queues"])
        assert any(b["source"] == exchange and b["destination"] == queue
                   for b in exported["bindings"])
        assert any(u["name"] == "guest" for u in exported["users"])
        per_vhost = api.get(f"definitions/{V}").json()
        assert any(e["name"] == exchange for e in per_vhost["exchanges"])
        api.delete(f"queues/{V}/{queue}")
        api.delete(f"exchanges/{V}/{exchange}")
        vhost_doc = {"exchanges": [dict(e) for e in per_vhost["exchanges"]
                                   if e["name"] == exchange],
                     "queues": [dict(q) for q in per_vhost["queues"] if q["name"] == queue],
                     "bindings": [dict(b) for b in per_vhost["bindings"]
                                  if b["source"] == exchange]}
        assert api.post(f"definitions/{V}", vhost_doc).status_code in (200, 201, 204)
        assert api.get(f"bindings/{V}/e/{exchange}/q/{queue}").json()
    finally:
        api.delete(f"queues/{V}/{queue}")
        api.delete(f"exchanges/{V}/{exchange}")


def test_bad_input_then_amqp_still_served(api: Api, pika_connect: Callable[[], Any]) -> None:
    malformed = api.request("PUT", f"queues/{V}/{unique('bad')}", content=b"{not json",
                            headers={"content-type": "application/json"})
    assert malformed.status_code == 400
    assert malformed.json()["error"] == "bad_request" and malformed.json()["reason"]
    assert api.get("queues/no-such-vhost").status_code == 404
    assert api.get(f"queues/{V}/no-such-queue-{uuid.uuid4().hex}").status_code == 404
    assert api.get(f"exchanges/{V}/no-such-exchange-{uuid.uuid4().hex}").status_code == 404
    missing = api.get("no-such-endpoint")
    assert missing.status_code == 404 and missing.json()["error"] == "Object Not Found"
    assert api.put(f"exchanges/{V}/{unique('badtype')}", {"type": "no-such-type"}) \
        .status_code == 400
    connection = pika_connect()
    channel = connection.channel()
    name = channel.queue_declare("", exclusive=True).method.queue
    channel.basic_publish("", name, b"still alive")
    _, _, body = channel.basic_get(name, auto_ack=True)
    assert body == b"still alive"
