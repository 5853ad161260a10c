"""Policies (issue #12) with pika and the management API over HTTP, against amqpd and
RabbitMQ 3.10 alike (``AMQP_URL`` + ``AMQP_MANAGEMENT_URL``).

RabbitMQ applies a policy change asynchronously and shows it in the management API at its
next statistics emission (every 5 s), so checks poll (``Api.eventually``). Each test uses
its own name prefix and a pattern anchored on it, so its policies touch only its objects.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from config_broker import ConfigBroker
from test_management_api import Api

V = "%2F"


@pytest.fixture(scope="module")
def api(management_url: str) -> Iterator[Api]:
    client = Api(management_url)
    yield client
    client.client.close()


class Policies:
    """Sets policies under a unique prefix and deletes them (and the queues and exchanges
    named with the prefix) afterwards."""

    def __init__(self, api: Api, channel: Any):
        self.api = api
        self.channel = channel
        self.prefix = f"pol{uuid.uuid4().hex[:8]}"
        self.names: list[str] = []
        self.queues: list[str] = []
        self.exchanges: list[str] = []

    def name(self, suffix: str) -> str:
        return f"{self.prefix}.{suffix}"

    def queue(self, suffix: str, **arguments: Any) -> str:
        name = self.name(suffix)
        self.queues.append(name)
        self.channel.queue_declare(name, arguments=arguments or None)
        return name

    def exchange(self, suffix: str, type_name: str = "fanout") -> str:
        name = self.name(suffix)
        self.exchanges.append(name)
        self.channel.exchange_declare(name, type_name)
        return name

    def put(self, name: str, body: dict[str, Any]) -> Any:
        self.names.append(name)
        return self.api.put(f"policies/{V}/{self.prefix}-{name}", body)

    def policy_name(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def delete(self, name: str) -> Any:
        return self.api.delete(f"policies/{V}/{self.prefix}-{name}")

    def cleanup(self) -> None:
        for name in self.names:
            self.delete(name)
        for queue in self.queues:
            self.api.delete(f"queues/{V}/{queue}")
        for exchange in self.exchanges:
            self.api.delete(f"exchanges/{V}/{exchange}")


@pytest.fixture
def policies(api: Api, channel: Any) -> Iterator[Policies]:
    helper = Policies(api, channel)
    yield helper
    helper.cleanup()


def count(channel: Any, queue: str) -> int:
    return int(channel.queue_declare(queue, passive=True).method.message_count)


def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """RabbitMQ re-applies policies in each queue process, asynchronously."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.1)


def publish(channel: Any, queue: str, n: int, exchange: str = "") -> None:
    for i in range(n):
        channel.basic_publish(exchange, queue, str(i).encode())


# -- the API's shapes ---------------------------------------------------------------------


def test_put_get_list_delete(api: Api, policies: Policies) -> None:
    body = {"pattern": f"^{policies.prefix}\\.", "definition": {"max-length": 5},
            "priority": 3, "apply-to": "queues"}
    assert policies.put("p", body).status_code == 201
    assert policies.put("p", body).status_code == 204
    expected = {"vhost": "/", "name": policies.policy_name("p"),
                "pattern": f"^{policies.prefix}\\.", "apply-to": "queues",
                "definition": {"max-length": 5}, "priority": 3}
    assert api.get(f"policies/{V}/{policies.policy_name('p')}").json() == expected
    assert expected in api.get("policies").json()
    assert expected in api.get(f"policies/{V}").json()
    assert expected in api.get("definitions").json()["policies"]
    # Defaults: apply-to all, priority 0; a fractional priority is kept as it is.
    assert policies.put("d", {"pattern": "^$x", "definition": {"expires": 9}}).status_code \
        == 201
    got = api.get(f"policies/{V}/{policies.policy_name('d')}").json()
    assert (got["apply-to"], got["priority"]) == ("all", 0)
    policies.put("d", {"pattern": "^$x", "definition": {"expires": 9}, "priority": 2.7})
    assert api.get(f"policies/{V}/{policies.policy_name('d')}").json()["priority"] == 2.7
    assert policies.delete("p").status_code == 204
    missing = policies.delete("p")
    assert missing.status_code == 404
    assert missing.json() == {"error": "Object Not Found", "reason": "Not Found"}
    assert api.get(f"policies/{V}/{policies.policy_name('p')}").status_code == 404


def test_put_into_a_missing_vhost(api: Api) -> None:
    response = api.put(f"policies/no-such-vhost-{uuid.uuid4().hex[:6]}/p",
                       {"pattern": "^k", "definition": {"message-ttl": 1}})
    assert response.status_code == 404
    assert response.json() == {"error": "not_found", "reason": "vhost_not_found"}


@pytest.mark.parametrize(("body", "reason"), [
    ({"pattern": "^k", "definition": {"overflow": "bad"}},
     '&lt;&lt;"bad"&gt;&gt; is not a valid overflow value'),
    ({"pattern": "^k", "definition": {"message-ttl": -1}}, "-1 is not a valid message TTL"),
    ({"pattern": "^k", "definition": {"expires": 0}}, "0 is not a valid queue expiry"),
    ({"pattern": "^k", "definition": {"max-length": "x"}},
     '&lt;&lt;"x"&gt;&gt; is not a valid maximum length'),
    ({"pattern": "^k", "definition": {"dead-letter-exchange": 5}},
     "5 is not a valid dead letter exchange name"),
    ({"pattern": "^k", "definition": {"max-priority": 10}},
     '[{&lt;&lt;"max-priority"&gt;&gt;,10}] are not recognised policy settings'),
    ({"pattern": "^k", "definition": {"consumer-timeout": 1000}},
     '[{&lt;&lt;"consumer-timeout"&gt;&gt;,1000}] are not recognised policy settings'),
    ({"pattern": "^k", "definition": {}}, "no policy provided"),
    ({"pattern": "^k", "definition": {"max-length": 1}, "apply-to": "streams"},
     "apply-to 'streams' unrecognised; should be 'queues', 'exchanges' or 'all'"),
    ({"pattern": "^k", "definition": {"max-length": 1}, "priority": "5"},
     'priority should be a number, actually was &lt;&lt;"5"&gt;&gt;'),
    ({"pattern": 5, "definition": {"max-length": 1}}, "pattern should be a binary but was 5"),
])
def test_invalid_policies_are_refused_with_rabbitmqs_reason(
        api: Api, body: dict[str, Any], reason: str) -> None:
    name = f"invalid-{uuid.uuid4().hex[:8]}"
    response = api.put(f"policies/{V}/{name}", body)
    assert response.status_code == 400
    assert response.json() == {"error": "bad_request",
                               "reason": f"Validation failed\n\n{reason}\n"}
    assert api.get(f"policies/{V}/{name}").status_code == 404


def test_missing_fields_and_bad_regex(api: Api) -> None:
    response = api.put(f"policies/{V}/missing", {"definition": {"max-length": 1}})
    assert response.status_code == 400
    assert response.json()["reason"] == "[{key_missing,pattern}]"
    response = api.put(f"policies/{V}/missing", {"pattern": "^k"})
    assert response.json()["reason"] == "[{key_missing,definition}]"
    # The regex error's words are PCRE's in RabbitMQ and Python's in amqpd.
    response = api.put(f"policies/{V}/badre", {"pattern": "[", "definition": {"max-length": 1}})
    assert response.status_code == 400
    assert response.json()["reason"].startswith(
        "Validation failed\n\npattern should be regular expression but is invalid: {")


def test_only_policymakers_and_administrators_may_change_policies(
        api: Api, policies: Policies) -> None:
    password = "secret"
    users = {tag: f"{policies.prefix}-{tag}" for tag in ("management", "policymaker")}
    for tag, user in users.items():
        api.put(f"users/{user}", {"password": password, "tags": tag})
        api.put(f"permissions/{V}/{user}", {"configure": ".*", "write": ".*", "read": ".*"})
    lone = f"{policies.prefix}-nopermission"
    api.put(f"users/{lone}", {"password": password, "tags": "policymaker"})
    try:
        body = {"pattern": f"^{policies.prefix}\\.", "definition": {"max-length": 1}}
        name = policies.policy_name("tagged")
        policies.names.append("tagged")
        manager = api.as_user(users["management"], password)
        denied = manager.put(f"policies/{V}/{name}", body)
        assert denied.status_code == 401
        assert denied.json()["reason"] == "User not authorised to access object"
        maker = api.as_user(users["policymaker"], password)
        assert maker.put(f"policies/{V}/{name}", body).status_code == 201
        # Listing needs only a management tag and the vhost; one policy needs the tag.
        assert any(p["name"] == name for p in manager.get(f"policies/{V}").json())
        assert manager.get(f"policies/{V}/{name}").status_code == 401
        assert maker.get(f"policies/{V}/{name}").status_code == 200
        outsider = api.as_user(lone, password)
        assert outsider.get("policies").json() == []
        assert outsider.put(f"policies/{V}/{name}", body).status_code == 401
        assert manager.delete(f"policies/{V}/{name}").status_code == 401
        assert maker.delete(f"policies/{V}/{name}").status_code == 204
    finally:
        for user in [*users.values(), lone]:
            api.delete(f"users/{user}")


# -- effects ------------------------------------------------------------------------------


def test_max_length_and_ttl_on_an_existing_and_a_new_queue(
        api: Api, channel: Any, policies: Policies) -> None:
    old = policies.queue("old")
    publish(channel, old, 5)
    until(lambda: count(channel, old) == 5)
    assert policies.put("limits", {"pattern": f"^{policies.prefix}\\.", "apply-to": "queues",
                                   "definition": {"max-length": 2, "message-ttl": 400}}
                        ).status_code == 201
    # A lower max-length trims a live queue at once (drop-head) ...
    until(lambda: count(channel, old) == 2)
    # ... while the TTL only applies to messages published from now on.
    time.sleep(0.8)
    assert count(channel, old) == 2
    new = policies.queue("new")
    publish(channel, new, 3)
    until(lambda: count(channel, new) == 2)
    until(lambda: count(channel, new) == 0, timeout=5)
    shown = api.eventually(f"queues/{V}/{new}", lambda q: q.get("policy") is not None)
    assert shown["policy"] == policies.policy_name("limits")
    assert shown["effective_policy_definition"] == {"max-length": 2, "message-ttl": 400}
    assert shown["arguments"] == {}


def test_dead_lettering_from_a_policy(channel: Any, policies: Policies) -> None:
    dlx = policies.exchange("dlx")
    dead = policies.queue("dead")
    channel.queue_bind(dead, dlx)
    work = policies.queue("work")
    policies.put("dlx", {"pattern": f"^{policies.prefix}\\.work$", "apply-to": "queues",
                         "definition": {"dead-letter-exchange": dlx}})
    time.sleep(0.3)  # RabbitMQ re-applies in the queue's process
    publish(channel, work, 1)
    until(lambda: count(channel, work) == 1)
    method, _, _ = channel.basic_get(work)
    channel.basic_nack(method.delivery_tag, requeue=False)
    until(lambda: count(channel, dead) == 1)
    _, properties, _ = channel.basic_get(dead, auto_ack=True)
    assert properties.headers["x-death"][0]["reason"] == "rejected"


def test_highest_priority_policy_wins(api: Api, channel: Any, policies: Policies) -> None:
    queue = policies.queue("prio")
    pattern = f"^{policies.prefix}\\."
    policies.put("low", {"pattern": pattern, "priority": 1, "definition": {"max-length": 1}})
    policies.put("high", {"pattern": pattern, "priority": 5, "definition": {"max-length": 3}})
    shown = api.eventually(f"queues/{V}/{queue}",
                           lambda q: q.get("policy") == policies.policy_name("high"))
    assert shown["effective_policy_definition"] == {"max-length": 3}
    publish(channel, queue, 5)
    until(lambda: count(channel, queue) == 3)
    time.sleep(0.3)
    assert count(channel, queue) == 3  # one policy applies, never a merge of two


def test_arguments_against_the_policy(channel: Any, policies: Policies) -> None:
    """message-ttl, max-length and expires: the lower wins; dead-letter-exchange: the
    argument wins (RabbitMQ 3.10's rule for each key)."""
    own_dlx, policy_dlx = policies.exchange("own-dlx"), policies.exchange("pol-dlx")
    own_dead, policy_dead = policies.queue("own-dead"), policies.queue("pol-dead")
    channel.queue_bind(own_dead, own_dlx)
    channel.queue_bind(policy_dead, policy_dlx)
    lower_arg = policies.queue("arg-lower", **{"x-max-length": 1, "x-message-ttl": 100_000,
                                                "x-dead-letter-exchange": own_dlx})
    lower_policy = policies.queue("arg-higher", **{"x-max-length": 10})
    policies.put("mix", {"pattern": f"^{policies.prefix}\\.arg-", "definition": {
        "max-length": 2, "message-ttl": 300, "dead-letter-exchange": policy_dlx,
        "expires": 600_000}})
    time.sleep(0.3)
    publish(channel, lower_arg, 3)
    publish(channel, lower_policy, 3)
    until(lambda: count(channel, lower_arg) == 1 and count(channel, lower_policy) == 2)
    # The policy's 300 ms TTL beats the argument's 100 s; the expired message goes to the
    # queue's own dead-letter exchange, not the policy's (which only the other queue uses).
    until(lambda: count(channel, lower_arg) == 0 and count(channel, lower_policy) == 0,
          timeout=5)
    until(lambda: count(channel, own_dead) == 3 and count(channel, policy_dead) == 3)

    def origins(queue: str) -> set[str]:
        found = set()
        while (got := channel.basic_get(queue, auto_ack=True))[0] is not None:
            found.add(got[1].headers["x-death"][0]["queue"])
        return found

    assert origins(own_dead) == {lower_arg}
    assert origins(policy_dead) == {lower_policy}


def test_expires_lower_of_argument_and_policy(api: Api, policies: Policies) -> None:
    queue = policies.queue("exp", **{"x-expires": 100_000})
    policies.put("exp", {"pattern": f"^{policies.prefix}\\.exp$",
                         "definition": {"expires": 1000}})
    # Polled over HTTP: a passive queue.declare would renew the expiry each time.
    until(lambda: api.get(f"queues/{V}/{queue}").status_code == 404, timeout=10)


def test_deleting_a_policy_reapplies(api: Api, channel: Any, policies: Policies) -> None:
    queue = policies.queue("del")
    policies.put("gone", {"pattern": f"^{policies.prefix}\\.", "definition": {"max-length": 1}})
    api.eventually(f"queues/{V}/{queue}",
                   lambda q: q.get("policy") == policies.policy_name("gone"))
    assert policies.delete("gone").status_code == 204
    shown = api.eventually(f"queues/{V}/{queue}", lambda q: q.get("policy") is None)
    assert shown["effective_policy_definition"] == {}
    publish(channel, queue, 3)
    until(lambda: count(channel, queue) == 3)


def test_apply_to_exchanges_and_alternate_exchange(
        api: Api, channel: Any, policies: Policies) -> None:
    ae = policies.exchange("ae")
    caught = policies.queue("caught")
    channel.queue_bind(caught, ae)
    source = policies.exchange("src", "direct")
    same_name_queue = policies.queue("src")
    policies.put("ae", {"pattern": f"^{policies.prefix}\\.src$", "apply-to": "exchanges",
                        "definition": {"alternate-exchange": ae, "max-length": 0}})
    shown = api.eventually(f"exchanges/{V}/{source}", lambda x: "policy" in x)
    assert shown["policy"] == policies.policy_name("ae")
    assert "policy" not in api.get(f"exchanges/{V}/{ae}").json()
    time.sleep(0.3)
    channel.basic_publish(source, "nowhere", b"unroutable")
    until(lambda: count(channel, caught) == 1)
    # apply-to exchanges: the queue of the same name is not limited.
    publish(channel, same_name_queue, 2)
    until(lambda: count(channel, same_name_queue) == 2)
    queue_view = api.eventually(f"queues/{V}/{same_name_queue}", lambda q: "policy" in q)
    assert queue_view["policy"] is None


# -- amqpd only: YAML topology and restarts ------------------------------------------------


def _management(broker: ConfigBroker) -> Api:
    deadline = time.monotonic() + 10
    for line in broker.stdout_lines:
        if line.startswith("amqpd management listening on "):
            break
    else:
        while time.monotonic() < deadline:
            line = broker.stdout.get(timeout=10) or ""
            if line.startswith("amqpd management listening on "):
                break
    port = line.rstrip().rsplit(":", 1)[1]
    return Api(f"http://guest:guest@127.0.0.1:{port}/api/")


@pytest.mark.amqpd_only
def test_policies_survive_a_restart_and_come_from_yaml(tmp_path: Path) -> None:
    config = """
topology:
  vhosts:
    /:
      queues:
        orders.eu: {}
      policies:
        orders-limit:
          pattern: "^orders\\\\."
          apply_to: queues
          priority: 2
          definition: {max-length: 3, overflow: reject-publish}
"""
    broker = ConfigBroker(tmp_path, config, "--management-port", "0")
    try:
        api = _management(broker)
        assert api.get(f"queues/{V}/orders.eu").json()["policy"] == "orders-limit"
        assert api.put(f"policies/{V}/by-api", {"pattern": "^jobs$", "definition": {
            "message-ttl": 60000}}).status_code == 201
        assert broker.stop() == 0
    finally:
        broker.kill()
    broker = ConfigBroker(tmp_path, config, "--management-port", "0")
    try:
        api = _management(broker)
        names = {p["name"]: p for p in api.get("policies").json()}
        assert names["by-api"]["definition"] == {"message-ttl": 60000}
        assert names["orders-limit"]["priority"] == 2
        assert api.delete(f"policies/{V}/by-api").status_code == 204
        assert broker.stop() == 0
    finally:
        broker.kill()
    broker = ConfigBroker(tmp_path, config, "--management-port", "0")
    try:
        api = _management(broker)
        assert [p["name"] for p in api.get("policies").json()] == ["orders-limit"]
    finally:
        broker.stop()


# -- amqpd ctl and definitions imports (both work against RabbitMQ too) --------------------


def test_ctl_set_list_clear_policy(management_url: str, policies: Policies) -> None:
    from test_management_tools import ctl

    name = policies.policy_name("ctl")
    policies.names.append("ctl")
    done = ctl(management_url, "set_policy", "--priority", "3", "--apply-to", "queues", name,
               f"^{policies.prefix}\\.", '{"max-length":5}')
    assert done.stdout == (f'Setting policy "{name}" for pattern "^{policies.prefix}\\." to '
                           '"{"max-length":5}" with priority "3" for vhost "/" ...\n')
    listed = ctl(management_url, "list_policies").stdout.splitlines()
    assert listed[0] == "vhost\tname\tpattern\tapply-to\tdefinition\tpriority"
    assert f'/\t{name}\t^{policies.prefix}\\.\tqueues\t{{"max-length":5}}\t3' in listed
    refused = ctl(management_url, "set_policy", name, "^x", '{"overflow":"x"}', check=False)
    assert refused.returncode == 1
    assert "is not a valid overflow value" in refused.stderr
    assert ctl(management_url, "clear_policy", name).stdout == \
        f'Clearing policy "{name}" on vhost "/" ...\n'
    assert ctl(management_url, "clear_policy", name, check=False).returncode == 1


def test_definitions_import_sets_policies(api: Api, channel: Any, policies: Policies) -> None:
    queue = policies.queue("imported")
    name = policies.policy_name("imported")
    policies.names.append("imported")
    document = {"policies": [{"vhost": "/", "name": name, "pattern": f"^{policies.prefix}\\.",
                              "apply-to": "queues", "definition": {"max-length": 1},
                              "priority": 0}]}
    assert api.post("definitions", document).status_code in (201, 204)
    assert api.get(f"policies/{V}/{name}").json()["definition"] == {"max-length": 1}
    publish(channel, queue, 3)
    until(lambda: count(channel, queue) == 1)
