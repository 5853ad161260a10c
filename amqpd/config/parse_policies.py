"""The ``policies:`` section of a vhost in a topology document::

    vhosts:
      /:
        policies:
          orders-ttl:                       # the policy's name
            pattern: "^orders\\\\."          # a regex search of queue/exchange names
            apply_to: queues                # queues, exchanges or all (the default)
            priority: 1                     # default 0; the highest matching one applies
            definition: {message-ttl: 86400000, dead-letter-exchange: orders.dlx}

Checked as RabbitMQ checks a policy (:mod:`amqpd.config.policy`); every error is
``FILE:LINE:COLUMN: what is wrong, expected ...``.
"""

from __future__ import annotations

import html
from typing import Any

from yaml.nodes import MappingNode, Node, ScalarNode

from amqpd.config.model import PolicySpec
from amqpd.config.nodes import (
    BOOL,
    FLOAT,
    INT,
    NULL,
    STR,
    Origin,
    construct,
    describe,
    is_null,
    join,
    lead,
    mapping,
    require_keys,
    string,
    unknown_key,
)
from amqpd.config.policy import APPLY_TO, definition_problem, policy_problem

POLICY_KEYS = ("pattern", "apply_to", "priority", "definition")


def _plain(node: Node, origin: Origin, path: str) -> Any:
    """A definition value: a scalar, or a list/mapping of them."""
    if isinstance(node, ScalarNode):
        if node.tag not in (STR, INT, FLOAT, BOOL, NULL):
            raise origin.error(node, f"{lead(path)}got {describe(node)}, expected a string, "
                                     "number or boolean")
        return construct(node)
    if isinstance(node, MappingNode):
        return {key: _plain(value, origin, join(path, key))
                for key, _, value in mapping(node, origin, path)}
    return [_plain(item, origin, join(path, i)) for i, item in enumerate(node.value)]


def parse_policy(name: str, key_node: Node, node: Node | None, origin: Origin,
                 path: str) -> PolicySpec:
    """One policy (``name: {pattern, apply_to, priority, definition}``)."""
    if not name:
        raise origin.error(key_node, f"{lead(path)}got an empty policy name, expected a name")
    if node is None or is_null(node):
        raise origin.error(key_node, f"{lead(path)}got nothing, expected a mapping with "
                                     "pattern and definition")
    raw = mapping(node, origin, path, "a mapping with pattern, apply_to, priority and "
                                      "definition")
    for key, key_item, _ in raw:
        if key not in POLICY_KEYS:
            raise unknown_key(key, key_item, POLICY_KEYS, origin, path, "policy field")
    items = {key: value for key, _, value in raw}
    require_keys(list(items), ("pattern", "definition"), node, origin, path)
    pattern = string(items["pattern"], origin, join(path, "pattern"))
    apply_to = "all"
    if "apply_to" in items:
        apply_to = string(items["apply_to"], origin, join(path, "apply_to"))
        if apply_to not in APPLY_TO:
            raise origin.error(items["apply_to"], f"{join(path, 'apply_to')}: got "
                                                  f"{apply_to!r}, expected one of "
                                                  f"{', '.join(APPLY_TO)}")
    priority: Any = 0
    if "priority" in items:
        priority = _plain(items["priority"], origin, join(path, "priority"))
        if isinstance(priority, bool) or not isinstance(priority, int | float):
            raise origin.error(items["priority"], f"{join(path, 'priority')}: got "
                                                  f"{describe(items['priority'])}, expected "
                                                  "a number")
    definition_node = items["definition"]
    definition = _plain(definition_node, origin, join(path, "definition"))
    problem = definition_problem(definition)
    if problem is not None:
        raise origin.error(definition_node, f"{join(path, 'definition')}: "
                                            f"{html.unescape(problem)}, expected RabbitMQ "
                                            "policy keys and values")
    problem = policy_problem(pattern, definition, apply_to, priority)
    if problem is not None:
        raise origin.error(items["pattern"], f"{join(path, 'pattern')}: "
                                             f"{html.unescape(problem)}, expected a regular "
                                             "expression")
    return PolicySpec(name, pattern, definition, apply_to, priority, origin.at(key_node))


def parse_policies(node: Node, origin: Origin, path: str) -> dict[str, PolicySpec]:
    """``{name: policy}`` of one vhost."""
    return {name: parse_policy(name, key_node, value, origin, join(path, name))
            for name, key_node, value in mapping(node, origin, path,
                                                 "a mapping of policy names to policies")}
