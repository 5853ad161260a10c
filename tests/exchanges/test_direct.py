"""direct exchange, plus the binding bookkeeping every built-in type shares."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pytest

from exchanges import Binding, get_exchange_type
from exchanges.direct import DirectExchange


@dataclass
class Msg:
    routing_key: str
    headers: Mapping[str, object] | None = None


def make() -> DirectExchange[str]:
    return DirectExchange({})


def test_registered_under_its_amqp_name() -> None:
    assert get_exchange_type("direct") is DirectExchange


def test_routes_on_exact_key_only() -> None:
    ex = make()
    ex.bind("q1", "orders.eu", {})
    ex.bind("q2", "orders", {})
    assert list(ex.route(Msg("orders.eu"))) == ["q1"]
    assert list(ex.route(Msg("orders"))) == ["q2"]
    assert list(ex.route(Msg("orders.*"))) == []
    assert list(ex.route(Msg("ORDERS"))) == []


def test_empty_routing_key_is_a_key_like_any_other() -> None:
    ex = make()
    ex.bind("q", "", {})
    assert list(ex.route(Msg(""))) == ["q"]
    assert list(ex.route(Msg("x"))) == []


def test_several_destinations_each_once() -> None:
    ex = make()
    ex.bind("q1", "k", {})
    ex.bind("q2", "k", {})
    ex.bind("q1", "k", {"x-other": 1})  # a second binding to q1 with the same key
    assert sorted(ex.route(Msg("k"))) == ["q1", "q2"]
    assert len(ex) == 3


def test_bind_twice_returns_false_and_keeps_one_binding() -> None:
    ex = make()
    assert ex.bind("q", "k", {"a": 1}) is True
    assert ex.bind("q", "k", {"a": 1}) is False
    assert len(ex) == 1


def test_arguments_are_part_of_binding_identity_type_exactly() -> None:
    ex = make()
    assert ex.bind("q", "k", {"a": 1})
    assert ex.bind("q", "k", {"a": True})  # RabbitMQ: a bool is not the int 1
    assert ex.bind("q", "k", {"a": 1.0})
    assert ex.bind("q", "k", {"a": "1"})
    assert ex.bind("q", "k", {"a": {"n": [1, 2]}})
    assert not ex.bind("q", "k", {"a": {"n": [1, 2]}})
    assert len(ex) == 5
    assert list(ex.route(Msg("k"))) == ["q"]


def test_unbind_one_of_two_bindings_keeps_the_route() -> None:
    ex = make()
    ex.bind("q", "k", {})
    ex.bind("q", "k", {"x": 1})
    assert ex.unbind("q", "k", {"x": 1}) is True
    assert list(ex.route(Msg("k"))) == ["q"]
    assert ex.unbind("q", "k", {}) is True
    assert list(ex.route(Msg("k"))) == []
    assert len(ex) == 0


def test_unbind_missing_binding_returns_false() -> None:
    ex = make()
    ex.bind("q", "k", {"a": 1})
    assert ex.unbind("q", "k", {}) is False
    assert ex.unbind("q", "other", {"a": 1}) is False
    assert ex.unbind("other", "k", {"a": 1}) is False
    assert len(ex) == 1


def test_unbind_destination_removes_all_its_bindings() -> None:
    ex = make()
    ex.bind("q1", "a", {})
    ex.bind("q1", "b", {})
    ex.bind("q1", "b", {"x": 1})
    ex.bind("q2", "a", {})
    assert ex.unbind_destination("q1") == 3
    assert ex.unbind_destination("q1") == 0
    assert list(ex.route(Msg("a"))) == ["q2"]
    assert list(ex.route(Msg("b"))) == []
    assert [b.destination for b in ex.bindings()] == ["q2"]


def test_bindings_are_read_only_snapshots_of_the_arguments() -> None:
    ex = make()
    arguments: dict[str, object] = {"a": 1, "nested": {"b": [1]}}
    ex.bind("q", "k", arguments)
    arguments["a"] = 2
    nested = arguments["nested"]
    assert isinstance(nested, dict)
    nested["b"].append(2)
    (binding,) = ex.bindings()
    assert binding == Binding("q", "k", {"a": 1, "nested": {"b": [1]}})
    assert binding.arguments["a"] == 1
    with pytest.raises(TypeError):
        binding.arguments["a"] = 3  # type: ignore[index]
    # and the stored binding can still be removed with the original arguments
    assert ex.unbind("q", "k", {"a": 1, "nested": {"b": [1]}})


def test_binding_identity_equality_and_hash() -> None:
    one = Binding("q", "k", {"a": 1, "b": "x"})
    same = Binding("q", "k", {"b": "x", "a": 1})
    assert one == same
    assert hash(one) == hash(same)
    assert one != Binding("q", "k", {"a": True, "b": "x"})
    assert one != Binding("q", "k2", {"a": 1, "b": "x"})
    assert len({one, same}) == 1


def test_bindings_iteration_tolerates_unbinding() -> None:
    ex = make()
    for i in range(5):
        ex.bind(f"q{i}", "k", {})
    for binding in ex.bindings():
        ex.unbind(binding.destination, binding.routing_key, binding.arguments)
    assert len(ex) == 0


def test_route_result_is_not_changed_by_later_binds() -> None:
    ex = make()
    ex.bind("q1", "k", {})
    before = ex.route(Msg("k"))
    ex.bind("q2", "k", {})
    assert list(before) == ["q1"]
    assert sorted(ex.route(Msg("k"))) == ["q1", "q2"]


def test_exchange_declare_arguments_are_accepted() -> None:
    DirectExchange({"alternate-exchange": "ae", "x-anything": 1})
