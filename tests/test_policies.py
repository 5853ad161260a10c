"""Policies in the broker core: validation texts, matching, the merge with queue arguments,
and re-application to live queues and exchanges (no sockets; the interop suite checks the
same rules against RabbitMQ)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pamqp import commands

from amqpd.broker.broker import Broker
from amqpd.broker.message import Message, route_for
from amqpd.broker.policies import (
    PolicyError,
    effective_arguments,
    make_policy,
    select,
)
from amqpd.config.policy import policy_problem
from amqpd.protocol import codec
from amqpd.protocol.errors import ChannelError
from amqpd.store.policy_file import read_policies


def message(body: bytes = b"m") -> Message:
    properties = commands.Basic.Properties()
    return Message(route_for("", "q"), codec.encode_header_payload(len(body), properties), body)


# -- validation: RabbitMQ 3.10.8's reasons, word for word -------------------------------------


@pytest.mark.parametrize(("definition", "reason"), [
    ({}, "no policy provided"),
    ({"message-ttl": -1}, "-1 is not a valid message TTL"),
    ({"message-ttl": "x"}, '&lt;&lt;"x"&gt;&gt; is not a valid message TTL'),
    ({"message-ttl": 1.5}, "1.5 is not a valid message TTL"),
    ({"message-ttl": True}, "true is not a valid message TTL"),
    ({"expires": 0}, "0 is not a valid queue expiry"),
    ({"max-length": -1}, "-1 is not a valid maximum length"),
    ({"max-length": 1.0}, "1.0 is not a valid maximum length"),
    ({"max-length-bytes": "x"},
     '&lt;&lt;"x"&gt;&gt; is not a valid maximum length in bytes'),
    ({"delivery-limit": -1}, "-1 is not a valid delivery limit"),
    ({"overflow": "bad"}, '&lt;&lt;"bad"&gt;&gt; is not a valid overflow value'),
    ({"dead-letter-exchange": 5}, "5 is not a valid dead letter exchange name"),
    ({"dead-letter-routing-key": 5}, "5 is not a valid dead letter routing key"),
    ({"alternate-exchange": 5}, "5 is not a valid alternate exchange name"),
    ({"queue-mode": 1}, "1 is not a valid queue-mode value"),
    ({"max-priority": 1},
     '[{&lt;&lt;"max-priority"&gt;&gt;,1}] are not recognised policy settings'),
    ({"consumer-timeout": 1},
     '[{&lt;&lt;"consumer-timeout"&gt;&gt;,1}] are not recognised policy settings'),
    ({"foo": "bar", "baz": 1},
     '[{&lt;&lt;"baz"&gt;&gt;,1},{&lt;&lt;"foo"&gt;&gt;,&lt;&lt;"bar"&gt;&gt;}] are not '
     "recognised policy settings"),
])
def test_invalid_definitions_have_rabbitmq_reasons(definition: dict[str, object],
                                                   reason: str) -> None:
    assert policy_problem("^q", definition) == reason
    with pytest.raises(PolicyError) as caught:
        make_policy("p", "^q", definition)
    assert caught.value.reason == f"Validation failed\n\n{reason}\n"


def test_invalid_policy_fields() -> None:
    assert policy_problem("^q", {"max-length": 1}, "streams") == (
        "apply-to 'streams' unrecognised; should be 'queues', 'exchanges' or 'all'")
    assert policy_problem("^q", {"max-length": 1}, "all", "5") == (
        'priority should be a number, actually was &lt;&lt;"5"&gt;&gt;')
    assert policy_problem("^q", {"max-length": 1}, "all", None) == (
        "priority should be a number, actually was null")
    assert policy_problem(5, {"max-length": 1}) == "pattern should be a binary but was 5"
    problem = policy_problem("[", {"max-length": 1})
    assert problem is not None
    assert problem.startswith("pattern should be regular expression but is invalid: ")


@pytest.mark.parametrize("definition", [
    {"message-ttl": 4294967296}, {"expires": 1}, {"overflow": "reject-publish-dlx"},
    {"dead-letter-exchange": "", "dead-letter-routing-key": "k"},
    {"dead-letter-routing-key": "k"}, {"queue-mode": "lazy"}, {"ha-mode": "all"},
    {"max-age": "1D"}, {"queue-version": 2},
])
def test_accepted_definitions(definition: dict[str, object]) -> None:
    assert policy_problem("^q", definition, "queues", 1.5) is None


# -- matching -----------------------------------------------------------------------------------


def test_pattern_is_a_search_and_apply_to_filters() -> None:
    policy = make_policy("p", "orders", {"max-length": 1}, "queues")
    assert policy.applies_to("queues", "new-orders.eu")
    assert not policy.applies_to("exchanges", "orders")
    assert not make_policy("p", "^orders$", {"max-length": 1}).applies_to("queues", "orders2")
    both = make_policy("p", "", {"max-length": 1}, "all")
    assert both.applies_to("queues", "x") and both.applies_to("exchanges", "x")


def test_highest_priority_wins_and_ties_go_by_name() -> None:
    low = make_policy("a-low", "^q", {"max-length": 1}, priority=1)
    high = make_policy("z-high", "^q", {"max-length": 2}, priority=2.5)
    other = make_policy("b", "^q", {"max-length": 3}, priority=1)
    assert select([low, high, other], "queues", "q1") is high
    assert select([low, other], "queues", "q1") is low
    assert select([low, other], "queues", "x") is None


# -- merging ----------------------------------------------------------------------------------


def test_lower_wins_for_limits_and_argument_wins_for_the_rest() -> None:
    definition = {"message-ttl": 500, "max-length": 2, "expires": 1500, "delivery-limit": 9,
                  "max-length-bytes": 10, "dead-letter-exchange": "policy-dlx",
                  "overflow": "reject-publish"}
    merged = effective_arguments(
        {"x-message-ttl": 100000, "x-max-length": 1, "x-expires": 100000,
         "x-dead-letter-exchange": "own-dlx", "x-overflow": "drop-head"}, definition)
    assert merged == {"x-message-ttl": 500, "x-max-length": 1, "x-expires": 1500,
                      "x-delivery-limit": 9, "x-max-length-bytes": 10,
                      "x-dead-letter-exchange": "own-dlx", "x-overflow": "drop-head"}


def test_routing_key_without_exchange_means_nothing() -> None:
    assert effective_arguments({}, {"dead-letter-routing-key": "k"}) == {}
    assert effective_arguments({"x-dead-letter-exchange": "d"},
                               {"dead-letter-routing-key": "k"}) == {
        "x-dead-letter-exchange": "d", "x-dead-letter-routing-key": "k"}


def test_huge_policy_ttl_is_clamped() -> None:
    assert effective_arguments({}, {"message-ttl": 2**40}) == {"x-message-ttl": 2**32 - 1}


# -- live application -------------------------------------------------------------------------


def test_policy_applies_to_existing_and_new_queues_and_deletion_reapplies() -> None:
    vhost = Broker().vhosts["/"]
    existing = vhost.declare_queue("pq-old", None)
    for _ in range(5):
        existing.push(message())
    assert vhost.policies.put(make_policy("limit", "^pq", {"max-length": 2}, "queues"))
    assert existing.message_count == 2  # trimmed at once, as RabbitMQ
    assert existing.policy.max_length == 2
    new = vhost.declare_queue("pq-new", None, arguments={"x-max-length": 1})
    assert new.policy.max_length == 1  # the lower of argument and policy
    other = vhost.declare_queue("other", None)
    assert other.policy.max_length is None
    assert not vhost.policies.put(make_policy("limit", "^pq", {"max-length": 3}, "queues"))
    assert existing.policy.max_length == 3 and new.policy.max_length == 1
    assert vhost.policies.delete("limit")
    assert existing.policy.max_length is None
    assert not vhost.policies.delete("limit")


def test_expires_from_a_policy_deletes_an_unused_queue() -> None:
    vhost = Broker().vhosts["/"]
    queue = vhost.declare_queue("idle", None)
    vhost.policies.put(make_policy("exp", "^idle$", {"expires": 1000}))
    vhost.tick(queue.last_used + 2.0)
    assert "idle" not in vhost.queues


def test_dead_letter_exchange_from_policy_unless_argument() -> None:
    vhost = Broker().vhosts["/"]
    vhost.policies.put(make_policy("dlx", "^d", {"dead-letter-exchange": "pol"}))
    assert vhost.declare_queue("d1", None).policy.dead_letter_exchange == "pol"
    own = vhost.declare_queue("d2", None, arguments={"x-dead-letter-exchange": "own"})
    assert own.policy.dead_letter_exchange == "own"


def test_invalid_own_argument_is_still_refused() -> None:
    vhost = Broker().vhosts["/"]
    vhost.policies.put(make_policy("ttl", "^q", {"message-ttl": 5}))
    with pytest.raises(ChannelError):
        vhost.declare_queue("q", None, arguments={"x-message-ttl": "soon"})


def test_alternate_exchange_policy_and_argument() -> None:
    vhost = Broker().vhosts["/"]
    plain = vhost.declare_exchange("x1", "fanout")
    own = vhost.declare_exchange("x2", "fanout", arguments={"alternate-exchange": "mine"})
    vhost.policies.put(make_policy("ae", "^x", {"alternate-exchange": "pol"}, "exchanges"))
    assert plain.alternate == "pol" and own.alternate == "mine"
    assert vhost.declare_exchange("x3", "fanout").alternate == "pol"
    vhost.policies.delete("ae")
    assert plain.alternate is None and own.alternate == "mine"


def test_apply_to_queues_leaves_exchanges_alone() -> None:
    vhost = Broker().vhosts["/"]
    exchange = vhost.declare_exchange("same", "fanout")
    vhost.policies.put(make_policy("ae", "^same$", {"alternate-exchange": "pol"}, "queues"))
    assert exchange.alternate is None


def test_policies_file_written_on_change(tmp_path: Path) -> None:
    broker = Broker()
    broker.policy_file = tmp_path / "policies.json"
    vhost = broker.add_vhost("v")
    vhost.policies.put(make_policy("p", "^q", {"max-length": 1}, "queues", 2))
    assert read_policies(broker.policy_file) == [
        {"vhost": "v", "name": "p", "pattern": "^q", "apply-to": "queues",
         "definition": {"max-length": 1}, "priority": 2}]
    restored = Broker()
    restored.restore_policies(read_policies(broker.policy_file))
    policy = restored.vhosts["v"].policies.get("p")
    assert policy is not None and policy.priority == 2
    vhost.policies.clear()
    assert read_policies(broker.policy_file) == []
