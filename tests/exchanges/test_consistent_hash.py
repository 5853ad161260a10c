"""x-consistent-hash: the plugin's interface, stability, and weighted distribution."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pamqp.commands import Basic

from exchanges import PreconditionFailed, get_exchange_type
from exchanges.consistent_hash import MAX_RING_POINTS, ConsistentHashExchange


@dataclass
class Msg:
    routing_key: str = ""
    headers: Mapping[str, object] | None = None
    properties: Any = None


@dataclass(frozen=True)
class Queue:
    """Like the server's queues: a distinct object with a stable name."""

    name: str


def make(weights: Mapping[str, int], arguments: Mapping[str, object] | None = None,
         ) -> ConsistentHashExchange[str]:
    ex: ConsistentHashExchange[str] = ConsistentHashExchange(arguments or {})
    for destination, weight in weights.items():
        assert ex.bind(destination, str(weight), {})
    return ex


def keys(count: int, seed: int = 7) -> list[str]:
    rnd = random.Random(seed)
    return [f"{rnd.getrandbits(64):x}" for _ in range(count)]


def one(ex: ConsistentHashExchange[str], msg: Msg) -> str | None:
    routed = list(ex.route(msg))
    assert len(routed) <= 1
    return routed[0] if routed else None


def test_registered() -> None:
    assert get_exchange_type("x-consistent-hash") is ConsistentHashExchange


@pytest.mark.parametrize("key", ["0", "-1", "abc", "", "1.5", " 1", "1 ", "²", "0x10"])
def test_weight_must_be_a_positive_integer(key: str) -> None:
    ex: ConsistentHashExchange[str] = ConsistentHashExchange({})
    with pytest.raises(PreconditionFailed, match="binding key must be"):
        ex.bind("q", key, {})
    assert len(ex) == 0


@pytest.mark.parametrize(("key", "weight"), [("1", 1), ("007", 7), ("+3", 3)])
def test_weights_rabbitmq_accepts(key: str, weight: int) -> None:
    ex: ConsistentHashExchange[str] = ConsistentHashExchange({})
    assert ex.bind("q", key, {})
    assert ex._weights == {"q": weight}


def test_hash_header_and_hash_property_are_exclusive() -> None:
    with pytest.raises(PreconditionFailed,
                       match="hash-header and hash-property are mutually exclusive"):
        ConsistentHashExchange({"hash-header": "h", "hash-property": "message_id"})


def test_unsupported_hash_property() -> None:
    with pytest.raises(PreconditionFailed, match="Unsupported property: content_type"):
        ConsistentHashExchange({"hash-property": "content_type"})


def test_hash_header_must_be_a_string() -> None:
    with pytest.raises(PreconditionFailed, match="hash-header must be a string"):
        ConsistentHashExchange({"hash-header": 5})


def test_no_bindings_routes_nowhere() -> None:
    assert one(make({}), Msg("k")) is None


def test_every_message_goes_to_exactly_one_destination_and_always_the_same() -> None:
    ex = make({"q1": 1, "q2": 1, "q3": 1})
    for key in keys(500):
        first = one(ex, Msg(key))
        assert first is not None
        assert one(ex, Msg(key)) == first


def test_distribution_follows_weights_within_ten_percent() -> None:
    weights = {"q1": 1, "q2": 2, "q3": 3}
    ex = make(weights)
    counts = Counter(one(ex, Msg(key)) for key in keys(10_000))
    total = sum(weights.values())
    for destination, weight in weights.items():
        expected = 10_000 * weight / total
        assert abs(counts[destination] - expected) <= 0.10 * expected, counts


def test_binding_order_does_not_matter() -> None:
    a = make({"q1": 1, "q2": 2, "q3": 3})
    b = make({"q3": 3, "q1": 1, "q2": 2})
    assert all(one(a, Msg(k)) == one(b, Msg(k)) for k in keys(1000))


def test_removing_a_destination_moves_only_its_keys() -> None:
    ex = make({"q1": 1, "q2": 1, "q3": 1, "q4": 1})
    sample = keys(2000)
    before = {k: one(ex, Msg(k)) for k in sample}
    assert ex.unbind("q4", "1", {})
    after = {k: one(ex, Msg(k)) for k in sample}
    moved = [k for k in sample if before[k] != after[k]]
    assert moved
    assert all(before[k] == "q4" for k in moved)
    assert "q4" not in after.values()


def test_adding_a_destination_only_takes_keys() -> None:
    ex = make({"q1": 1, "q2": 1})
    sample = keys(2000)
    before = {k: one(ex, Msg(k)) for k in sample}
    ex.bind("q3", "1", {})
    after = {k: one(ex, Msg(k)) for k in sample}
    assert all(after[k] in (before[k], "q3") for k in sample)
    assert 400 < sum(1 for k in sample if after[k] == "q3") < 930


def test_several_bindings_to_one_destination_add_their_weights() -> None:
    ex = make({"q1": 1, "q2": 1})
    assert ex.bind("q1", "2", {"x-extra": True})
    assert ex._weights == {"q1": 3, "q2": 1}
    counts = Counter(one(ex, Msg(k)) for k in keys(4000))
    assert counts["q1"] > 2.5 * counts["q2"]
    assert ex.unbind("q1", "2", {"x-extra": True})
    assert ex._weights == {"q1": 1, "q2": 1}


def test_unbind_destination() -> None:
    ex = make({"q1": 1, "q2": 1})
    ex.bind("q1", "3", {})
    assert ex.unbind_destination("q1") == 2
    assert {one(ex, Msg(k)) for k in keys(50)} == {"q2"}
    assert ex.unbind_destination("q2") == 1
    assert one(ex, Msg("k")) is None


def test_hash_header_routes_on_the_header_value() -> None:
    ex = make({"q1": 1, "q2": 1, "q3": 1}, {"hash-header": "user"})
    for user in keys(200):
        target = one(ex, Msg("a", {"user": user}))
        assert target is not None
        assert one(ex, Msg("another-key", {"user": user, "x": 1})) == target
    spread = {one(ex, Msg("same", {"user": user})) for user in keys(200)}
    assert spread == {"q1", "q2", "q3"}


@pytest.mark.parametrize("headers", [None, {}, {"other": 1}, {"user": None}])
def test_missing_hash_header_is_not_routed(headers: Mapping[str, object] | None) -> None:
    ex = make({"q1": 1, "q2": 1}, {"hash-header": "user"})
    assert one(ex, Msg("k", headers)) is None


def test_hash_header_values_of_any_type() -> None:
    ex = make({"q1": 1, "q2": 1}, {"hash-header": "h"})
    for value in (5, 5.5, True, b"bytes", Decimal("1.50"), datetime.now(UTC), {"a": [1]}):
        assert one(ex, Msg("", {"h": value})) is not None
    assert one(ex, Msg("", {"h": "x"})) == one(ex, Msg("", {"h": b"x"}))


def test_hash_property_message_id() -> None:
    ex = make({"q1": 1, "q2": 1, "q3": 1}, {"hash-property": "message_id"})
    targets = set()
    for message_id in keys(100):
        target = one(ex, Msg("k", None, Basic.Properties(message_id=message_id)))
        assert target is not None
        assert one(ex, Msg("z", None, {"message_id": message_id})) == target
        targets.add(target)
    assert targets == {"q1", "q2", "q3"}
    assert one(ex, Msg("k", None, Basic.Properties())) is None
    assert one(ex, Msg("k", None, None)) is None
    assert one(ex, Msg("k")) is None


def test_hash_property_timestamp_hashes_whole_seconds() -> None:
    ex = make({"q1": 1, "q2": 1, "q3": 1}, {"hash-property": "timestamp"})
    stamp = datetime(2024, 1, 1, 12, tzinfo=UTC)
    target = one(ex, Msg("", None, Basic.Properties(timestamp=stamp)))
    assert target is not None
    assert one(ex, Msg("", None, {"timestamp": stamp.replace(tzinfo=None)})) == target


def test_hash_property_correlation_id() -> None:
    ex = make({"q1": 1, "q2": 1}, {"hash-property": "correlation_id"})
    assert one(ex, Msg("", None, Basic.Properties(correlation_id="c"))) is not None


def test_huge_weights_keep_the_ring_bounded() -> None:
    ex = make({"q1": 10**9, "q2": 2 * 10**9, "q3": 1})
    assert one(ex, Msg("k")) is not None
    assert len(ex._ring) <= MAX_RING_POINTS + 3
    counts = Counter(one(ex, Msg(k)) for k in keys(3000))
    assert counts["q2"] > counts["q1"] > counts["q3"]


def test_same_key_same_destination_in_another_process() -> None:
    sample = keys(50)
    queues = [Queue("orders-1"), Queue("orders-2"), Queue("orders-3")]
    ex: ConsistentHashExchange[Queue] = ConsistentHashExchange({})
    for queue, weight in zip(queues, (1, 2, 3), strict=True):
        ex.bind(queue, str(weight), {})
    here = [next(iter(ex.route(Msg(k)))).name for k in sample]
    script = """
import json, sys
from dataclasses import dataclass
from exchanges.consistent_hash import ConsistentHashExchange

@dataclass(frozen=True)
class Queue:
    name: str

@dataclass
class Msg:
    routing_key: str
    headers: None = None

ex = ConsistentHashExchange({})
for name, weight in (("orders-3", 3), ("orders-1", 1), ("orders-2", 2)):
    ex.bind(Queue(name), str(weight), {})
print(json.dumps([next(iter(ex.route(Msg(k)))).name for k in json.loads(sys.argv[1])]))
"""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", script, json.dumps(sample)], env=env,
                         capture_output=True, text=True, check=True, timeout=60)
    assert json.loads(out.stdout) == here
