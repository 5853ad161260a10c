"""Policies in the YAML topology: parsing with positions, applying (all or nothing, changes
in place), the export round trip, and the management API's definitions export."""

from __future__ import annotations

import textwrap

import pytest
import yaml

from amqpd.broker.broker import Broker
from amqpd.config.nodes import ConfigError, Origin, compose_text
from amqpd.config.parse import parse_topology
from amqpd.topology.apply import TopologyError, apply_topology
from amqpd.topology.export import dump, topology_from_broker

TOPOLOGY = """\
vhosts:
  /:
    exchanges:
      orders.dlx: {type: fanout}
    queues:
      orders.eu: {}
      orders.us: {arguments: {x-max-length: 1}}
    policies:
      orders:
        pattern: "^orders\\\\."
        apply_to: queues
        priority: 1
        definition: {max-length: 10, dead-letter-exchange: orders.dlx}
      everything:
        pattern: ""
        definition: {alternate-exchange: unrouted}
"""


def parse(text: str) -> object:
    return parse_topology(compose_text(textwrap.dedent(text), Origin("F")), Origin("F"))


def test_yaml_policies_apply_and_round_trip() -> None:
    topology = parse(TOPOLOGY)
    broker = Broker()
    apply_topology(broker, topology)  # type: ignore[arg-type]
    vhost = broker.vhosts["/"]
    assert vhost.queues["orders.eu"].policy.max_length == 10
    assert vhost.queues["orders.us"].policy.max_length == 1  # the lower one
    assert vhost.queues["orders.eu"].policy.dead_letter_exchange == "orders.dlx"
    assert vhost.exchanges["orders.dlx"].alternate == "unrouted"
    exported = dump(topology_from_broker(broker))
    document = yaml.safe_load(exported)
    assert document["vhosts"]["/"]["policies"] == {
        "everything": {"pattern": "", "apply_to": "all", "priority": 0,
                       "definition": {"alternate-exchange": "unrouted"}},
        "orders": {"pattern": "^orders\\.", "apply_to": "queues", "priority": 1,
                   "definition": {"max-length": 10, "dead-letter-exchange": "orders.dlx"}},
    }
    again = Broker()
    apply_topology(again, parse(exported))  # type: ignore[arg-type]
    assert dump(topology_from_broker(again)) == exported
    # Applying the same topology again plans nothing.
    assert apply_topology(broker, parse(TOPOLOGY)).is_empty()  # type: ignore[arg-type]


def test_changed_policy_is_updated_in_place() -> None:
    broker = Broker()
    apply_topology(broker, parse(TOPOLOGY))  # type: ignore[arg-type]
    changed = TOPOLOGY.replace("max-length: 10", "max-length: 3")
    planned = apply_topology(broker, parse(changed))  # type: ignore[arg-type]
    assert planned.describe() == ["set policy 'orders' in vhost '/'"]
    assert broker.vhosts["/"].queues["orders.eu"].policy.max_length == 3


def test_a_failed_topology_leaves_the_policies_as_they_were() -> None:
    broker = Broker()
    apply_topology(broker, parse(TOPOLOGY))  # type: ignore[arg-type]
    broken = TOPOLOGY.replace("max-length: 10", "max-length: 3") + \
        "    bindings:\n      - {source: nowhere, destination: orders.eu}\n"
    with pytest.raises(TopologyError):
        apply_topology(broker, parse(broken))  # type: ignore[arg-type]
    assert broker.vhosts["/"].queues["orders.eu"].policy.max_length == 10


@pytest.mark.parametrize(("text", "message"), [
    ("vhosts:\n  /:\n    policies:\n      p: {definition: {max-length: 1}}\n",
     "F:4:10: vhosts['/'].policies.p: missing 'pattern'"),
    ("vhosts:\n  /:\n    policies:\n      p: {pattern: x, definition: {max-length: -1}}\n",
     "F:4:35: vhosts['/'].policies.p.definition: -1 is not a valid maximum length, expected "
     "RabbitMQ policy keys and values"),
    ("vhosts:\n  /:\n    policies:\n      p: {pattern: x, definition: {max-priority: 5}}\n",
     "F:4:35: vhosts['/'].policies.p.definition: [{<<\"max-priority\">>,5}] are not "
     "recognised policy settings, expected RabbitMQ policy keys and values"),
    ("vhosts:\n  /:\n    policies:\n      p: {pattern: x, apply_to: streams, "
     "definition: {max-length: 1}}\n",
     "F:4:33: vhosts['/'].policies.p.apply_to: got 'streams', expected one of queues, "
     "exchanges, all"),
    ("vhosts:\n  /:\n    policies:\n      p: {pattern: '[', definition: {max-length: 1}}\n",
     "F:4:20: vhosts['/'].policies.p.pattern: pattern should be regular expression but is "
     "invalid: {\"unterminated character set\",0}, expected a regular expression"),
    ("vhosts:\n  /:\n    policies:\n      p: {pattern: x, priority: high, "
     "definition: {max-length: 1}}\n",
     "F:4:33: vhosts['/'].policies.p.priority: got the string 'high', expected a number"),
])
def test_yaml_errors_have_positions(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    assert str(caught.value).startswith(message)
