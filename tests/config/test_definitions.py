"""`amqpd import-definitions`: a RabbitMQ definitions export to the YAML topology."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from amqpd.access.auth import check_password
from amqpd.broker.broker import Broker
from amqpd.cli import main
from amqpd.config.definitions import DefinitionsError, convert, convert_file
from amqpd.config.parse import load_topology
from amqpd.topology.apply import apply_topology
from amqpd.topology.export import dump

# Shaped like `rabbitmqctl export_definitions` of RabbitMQ 3.13 (see the RabbitMQ docs on
# definitions); the guest hash is the docs' example for the password "test12".
DEFINITIONS = {
    "rabbit_version": "3.13.7",
    "rabbitmq_version": "3.13.7",
    "product_name": "RabbitMQ",
    "product_version": "3.13.7",
    "users": [
        {"name": "guest", "password_hash": "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR",
         "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ["administrator"],
         "limits": {}},
        {"name": "shop", "password_hash": "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR",
         "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": "monitoring,policymaker",
         "limits": {"max-connections": 10}},
        {"name": "legacy", "password_hash": "abc",
         "hashing_algorithm": "rabbit_password_hashing_bcrypt", "tags": []},
    ],
    "vhosts": [
        {"name": "/", "description": "Default virtual host", "tags": [],
         "metadata": {"description": "Default virtual host", "tags": []}},
        {"name": "shop", "description": "", "tags": [], "metadata": {},
         "default_queue_type": "quorum"},
    ],
    "permissions": [
        {"user": "guest", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"},
        {"user": "shop", "vhost": "shop", "configure": "^shop-", "write": ".*", "read": ".*"},
    ],
    "topic_permissions": [
        {"user": "shop", "vhost": "shop", "exchange": "events", "write": "^orders",
         "read": ".*"},
    ],
    "parameters": [
        {"value": {"max-connections": 100}, "vhost": "shop", "component": "vhost-limits",
         "name": "limits"},
    ],
    "global_parameters": [
        {"name": "cluster_name", "value": "rabbit@shop-1"},
        {"name": "internal_cluster_id", "value": "rabbitmq-cluster-id-xyz"},
    ],
    "policies": [
        {"vhost": "shop", "name": "ttl", "pattern": "^shop-", "apply-to": "queues",
         "definition": {"message-ttl": 60000}, "priority": 0},
    ],
    "queues": [
        {"name": "shop-orders", "vhost": "shop", "durable": True, "auto_delete": False,
         "arguments": {"x-queue-type": "quorum", "x-delivery-limit": 5,
                       "x-dead-letter-exchange": "dlx"}},
        {"name": "shop-mails", "vhost": "shop", "durable": True, "auto_delete": False,
         "arguments": {"x-queue-type": "classic", "x-message-ttl": 3600000}},
        {"name": "dead", "vhost": "shop", "durable": True, "auto_delete": False,
         "arguments": {}},
        {"name": "scratch", "vhost": "/", "durable": False, "auto_delete": True,
         "arguments": {}},
    ],
    "exchanges": [
        {"name": "events", "vhost": "shop", "type": "topic", "durable": True,
         "auto_delete": False, "internal": False, "arguments": {}},
        {"name": "dlx", "vhost": "shop", "type": "fanout", "durable": True,
         "auto_delete": False, "internal": False, "arguments": {}},
        {"name": "audit", "vhost": "shop", "type": "headers", "durable": True,
         "auto_delete": False, "internal": True,
         "arguments": {"alternate-exchange": "dlx"}},
    ],
    "bindings": [
        {"source": "events", "vhost": "shop", "destination": "shop-orders",
         "destination_type": "queue", "routing_key": "order.*", "arguments": {}},
        {"source": "events", "vhost": "shop", "destination": "shop-mails",
         "destination_type": "queue", "routing_key": "order.placed", "arguments": {}},
        {"source": "events", "vhost": "shop", "destination": "audit",
         "destination_type": "exchange", "routing_key": "#", "arguments": {}},
        {"source": "dlx", "vhost": "shop", "destination": "dead",
         "destination_type": "queue", "routing_key": "", "arguments": {}},
        {"source": "audit", "vhost": "shop", "destination": "dead",
         "destination_type": "queue", "routing_key": "",
         "arguments": {"x-match": "all", "kind": "refund"}},
    ],
}


def test_conversion() -> None:
    result = convert(DEFINITIONS, "defs.json")
    topology = result.topology
    assert set(topology.vhosts) == {"/", "shop"}
    shop = topology.vhosts["shop"]
    assert shop.exchanges["audit"].internal is True
    assert shop.exchanges["audit"].arguments == {"alternate-exchange": "dlx"}
    assert shop.queues["shop-orders"].arguments["x-delivery-limit"] == 5
    assert [(b.source, b.destination, b.destination_type) for b in shop.bindings] == [
        ("events", "shop-orders", "queue"), ("events", "shop-mails", "queue"),
        ("events", "audit", "exchange"), ("dlx", "dead", "queue"), ("audit", "dead", "queue"),
    ]
    assert topology.vhosts["/"].queues["scratch"].auto_delete is True
    # RabbitMQ hashes carry over as they are, and still check the same password
    guest = topology.users["guest"]
    assert guest.password_hash == DEFINITIONS["users"][0]["password_hash"]  # type: ignore[index]
    assert check_password("test12", guest.password_hash)
    assert topology.users["shop"].tags == ["monitoring", "policymaker"]
    assert "legacy" not in topology.users
    assert [(p.user, p.vhost, p.configure) for p in topology.permissions] == [
        ("guest", "/", ".*"), ("shop", "shop", "^shop-")]


def test_everything_not_converted_is_reported() -> None:
    notes = convert(DEFINITIONS, "defs.json").notes
    expected = [
        "defs.json: topic_permissions: user 'shop' in vhost 'shop' on exchange 'events' not "
        "converted: amqpd has no topic permissions",
        "defs.json: parameters: vhost-limits/'limits' in vhost 'shop' not converted: amqpd "
        "has no runtime parameters",
        "defs.json: global_parameters: 'cluster_name' not converted: amqpd has no runtime "
        "parameters",
        "defs.json: global_parameters: 'internal_cluster_id' not converted: amqpd has no "
        "runtime parameters",
        "defs.json: vhosts: '/': description \"Default virtual host\" not converted",
        "defs.json: vhosts: '/': metadata {\"description\": \"Default virtual host\", "
        "\"tags\": []} not converted",
        "defs.json: vhosts: 'shop': default_queue_type \"quorum\" not converted",
        "defs.json: users: 'shop': limits {\"max-connections\": 10} not converted",
        "defs.json: users: 'legacy' skipped: password hash of rabbit_password_hashing_bcrypt "
        "cannot be checked by amqpd; set a new one with `amqpd hash-password`",
    ]
    assert notes == expected


def test_converted_yaml_loads_and_applies(tmp_path: Path) -> None:
    text = dump(convert(DEFINITIONS, "defs.json").topology)
    path = tmp_path / "topology.yaml"
    path.write_text(text)
    broker = Broker()
    apply_topology(broker, load_topology(path))
    assert broker.vhosts["shop"].exchanges["events"].type_name == "topic"
    assert broker.users.users["shop"].vhosts == {"shop"}
    policy = broker.vhosts["shop"].policies.get("ttl")
    assert policy is not None and policy.apply_to == "queues"
    assert broker.vhosts["shop"].queues["shop-orders"].policy.message_ttl == 60000


def test_policies_round_trip_through_definitions_and_yaml(tmp_path: Path) -> None:
    """definitions JSON -> YAML -> broker -> YAML export and definitions JSON again."""
    from amqpd.topology.export import topology_from_broker

    text = dump(convert(DEFINITIONS, "defs.json").topology)
    path = tmp_path / "topology.yaml"
    path.write_text(text)
    broker = Broker()
    apply_topology(broker, load_topology(path))
    exported = dump(topology_from_broker(broker))
    assert yaml.safe_load(exported)["vhosts"]["shop"]["policies"] == yaml.safe_load(text)[
        "vhosts"]["shop"]["policies"]
    again = Broker()
    apply_topology(again, convert({"policies": [
        dict(p.document("shop")) for p in broker.vhosts["shop"].policies]}, "x").topology)
    assert [p.document("shop") for p in again.vhosts["shop"].policies] == \
        DEFINITIONS["policies"]


def test_invalid_policy_in_definitions_is_refused_with_rabbitmqs_reason() -> None:
    from amqpd.topology.apply import TopologyError

    document = {"policies": [{"vhost": "/", "name": "bad", "pattern": "^q",
                              "definition": {"overflow": "sideways"}}]}
    with pytest.raises(TopologyError, match="is not a valid overflow value"):
        apply_topology(Broker(), convert(document, "defs.json").topology)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "defs.json"
    source.write_text(json.dumps(DEFINITIONS))
    assert main(["import-definitions", str(source)]) == 0
    captured = capsys.readouterr()
    document = yaml.safe_load(captured.out)
    assert document["vhosts"]["shop"]["queues"]["shop-orders"]["arguments"][
        "x-queue-type"] == "quorum"
    assert document["vhosts"]["shop"]["policies"]["ttl"] == {
        "pattern": "^shop-", "apply_to": "queues", "priority": 0,
        "definition": {"message-ttl": 60000}}
    assert "policies" not in captured.err
    assert main(["import-definitions", str(source), "-o", str(tmp_path / "out.yaml")]) == 0
    assert yaml.safe_load((tmp_path / "out.yaml").read_text()) == document


def test_not_json(tmp_path: Path) -> None:
    source = tmp_path / "defs.json"
    source.write_text("{nope")
    with pytest.raises(DefinitionsError, match=r"defs\.json:1:2: not valid JSON"):
        convert_file(source)
    with pytest.raises(DefinitionsError, match="expected a JSON object"):
        convert([], "x")
